//! Guest files: open with fopen-style modes, read, write, seek, flush, close.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::OpsError;

/// Opens guest files.
pub trait Files: Send + Sync {
    /// Opens `path` with an fopen-style `mode` (`r`, `w`, `a`, `r+`, `w+`, `a+`, each
    /// with an optional `b`); any other mode is `invalid file open mode '<mode>'`.
    fn open(&self, path: &Path, mode: &str) -> Result<Box<dyn GuestFile>, OpsError>;
}

/// An open guest file, with the stdio-like semantics qemu-ga's clients observe:
/// a read after a write sees the written data, and the end-of-file flag is set by a
/// read that hits the end and cleared by a seek.
pub trait GuestFile: Send {
    /// Appends up to `count` bytes to `buf`; returns the end-of-file flag (always
    /// false for `count == 0`, as qemu-ga reports it).
    fn read(&mut self, count: usize, buf: &mut Vec<u8>) -> Result<bool, OpsError>;
    /// Reads into `buf` as [`read`](Self::read) reads `buf.len()` bytes, and returns
    /// how many came and the end-of-file flag: the way to read a large count in
    /// pieces through one small buffer. `continuing` says that this request already
    /// got data from an earlier piece, so a descriptor with nothing ready (`EAGAIN`
    /// on a FIFO) ends the read with what came instead of failing it, exactly as one
    /// [`read`](Self::read) of the whole count would.
    ///
    /// The default goes through [`read`](Self::read) (for implementations that keep
    /// their data in memory).
    fn read_into(&mut self, buf: &mut [u8], continuing: bool) -> Result<(usize, bool), OpsError> {
        let _ = continuing;
        let mut v = Vec::new();
        let eof = self.read(buf.len(), &mut v)?;
        let n = v.len().min(buf.len());
        buf[..n].copy_from_slice(&v[..n]);
        Ok((n, eof))
    }
    /// Writes `data`.
    fn write(&mut self, data: &[u8]) -> Result<WriteOutcome, OpsError>;
    /// Moves the position; returns the new position.
    fn seek(&mut self, offset: i64, whence: Whence) -> Result<SeekOutcome, OpsError>;
    /// Flushes buffered data to the OS.
    fn flush(&mut self) -> Result<(), OpsError>;
    /// Closes the file.
    fn close(self: Box<Self>) -> Result<(), OpsError>;
}

/// Result of [`GuestFile::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Bytes written.
    pub count: usize,
    /// The end-of-file flag.
    pub eof: bool,
}

/// Result of [`GuestFile::seek`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeekOutcome {
    /// New position.
    pub position: u64,
    /// The end-of-file flag (always false after a seek).
    pub eof: bool,
}

/// Origin of a seek.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    /// From the start.
    Set,
    /// From the current position.
    Cur,
    /// From the end.
    End,
}

/// A validated fopen mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenMode {
    /// `r`, `w` or `a`.
    pub base: char,
    /// `+`: read and write.
    pub plus: bool,
}

impl OpenMode {
    /// Parses the modes qemu-ga accepts: `r rb w wb a ab r+ rb+ r+b w+ wb+ w+b a+ ab+ a+b`.
    pub fn parse(mode: &str) -> Result<Self, OpsError> {
        let (base, plus) = match mode {
            "r" | "rb" => ('r', false),
            "w" | "wb" => ('w', false),
            "a" | "ab" => ('a', false),
            "r+" | "rb+" | "r+b" => ('r', true),
            "w+" | "wb+" | "w+b" => ('w', true),
            "a+" | "ab+" | "a+b" => ('a', true),
            _ => return Err(OpsError::failed(format!("invalid file open mode '{mode}'"))),
        };
        Ok(OpenMode { base, plus })
    }

    /// Whether the mode may create the file.
    pub fn creates(self) -> bool {
        self.base != 'r'
    }

    /// Whether the file is opened for reading.
    pub fn readable(self) -> bool {
        self.base == 'r' || self.plus
    }

    /// Whether the file is opened for writing.
    pub fn writable(self) -> bool {
        self.base != 'r' || self.plus
    }
}

/// Files on the local machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxFiles;

impl LinuxFiles {
    fn options(mode: OpenMode) -> OpenOptions {
        let mut o = OpenOptions::new();
        o.read(mode.readable());
        match mode.base {
            'w' => {
                o.write(true).truncate(true);
            }
            'a' => {
                o.append(true);
            }
            _ => {
                o.write(mode.plus);
            }
        }
        // As qemu-ga: never become the controlling terminal, never block the agent.
        // std sets O_CLOEXEC itself.
        o.custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK);
        o
    }
}

impl Files for LinuxFiles {
    fn open(&self, path: &Path, mode_text: &str) -> Result<Box<dyn GuestFile>, OpsError> {
        let mode = OpenMode::parse(mode_text)?;
        let describe = || format!("'{}' (mode: '{mode_text}')", path.display());
        let file = if mode.creates() {
            // Exclusive create first: a new file gets mode 0666 whatever the umask, an
            // existing one keeps its mode.
            match Self::options(mode).create_new(true).open(path) {
                Ok(f) => {
                    f.set_permissions(Permissions::from_mode(0o666))
                        .map_err(|e| {
                            OpsError::os(
                                format!("failed to set permission 0666 on new file {}", describe()),
                                e,
                            )
                        })?;
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::options(mode)
                    .open(path)
                    .map_err(|e| OpsError::os(format!("failed to open file {}", describe()), e))?,
                Err(e) => {
                    return Err(OpsError::os(
                        format!("failed to open file {}", describe()),
                        e,
                    ))
                }
            }
        } else {
            Self::options(mode)
                .open(path)
                .map_err(|e| OpsError::os(format!("failed to open file {}", describe()), e))?
        };
        Ok(Box::new(LinuxFile { file }))
    }
}

/// An open local file. Unbuffered: every write reaches the kernel at once, so a read
/// after a write sees it and `flush` has nothing left to do.
#[derive(Debug)]
struct LinuxFile {
    file: File,
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl GuestFile for LinuxFile {
    fn read(&mut self, count: usize, buf: &mut Vec<u8>) -> Result<bool, OpsError> {
        if count == 0 {
            // qemu-ga reports eof false for an empty read, whatever came before.
            return Ok(false);
        }
        let start = buf.len();
        buf.reserve(count);
        // `eof` describes this read only: data appended since an earlier read hit the
        // end is returned (qemu-ga's stdio handle keeps returning nothing until a
        // seek), and a read that gets all it asked for is not at the end.
        let mut eof = false;
        let mut got = 0;
        while got < count {
            let want = count - got;
            let n = retry(|| (&self.file).take(want as u64).read_to_end(buf));
            match n {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => got += n,
                // No data yet on a FIFO or socket: hand back what was read. qemu-ga
                // loses it and reports the error; we only report when nothing came.
                // (`read_to_end` keeps what it read before the error in `buf`.)
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && buf.len() > start => break,
                Err(e) => {
                    buf.truncate(start);
                    return Err(OpsError::os("failed to read file", e));
                }
            }
        }
        Ok(eof)
    }

    fn read_into(&mut self, buf: &mut [u8], continuing: bool) -> Result<(usize, bool), OpsError> {
        // The same loop as `read`, one read(2) per pass into the caller's buffer: a
        // regular file fills it in one call.
        let mut got = 0;
        while got < buf.len() {
            match retry(|| (&self.file).read(&mut buf[got..])) {
                Ok(0) => return Ok((got, true)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && (got > 0 || continuing) => break,
                Err(e) => return Err(OpsError::os("failed to read file", e)),
            }
        }
        Ok((got, false))
    }

    fn write(&mut self, data: &[u8]) -> Result<WriteOutcome, OpsError> {
        let mut done = 0;
        while done < data.len() {
            match retry(|| (&self.file).write(&data[done..])) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && done > 0 => break,
                Err(e) => return Err(OpsError::os("failed to write to file", e)),
            }
        }
        // A write never reports the end, even after a read hit it (qemu-ga clears
        // its stdio EOF flag after every call, and a write does not set it).
        Ok(WriteOutcome {
            count: done,
            eof: false,
        })
    }

    fn seek(&mut self, offset: i64, whence: Whence) -> Result<SeekOutcome, OpsError> {
        let pos = match whence {
            Whence::Set => {
                if offset < 0 {
                    return Err(OpsError::os(
                        "failed to seek file",
                        io::Error::from_raw_os_error(libc::EINVAL),
                    ));
                }
                SeekFrom::Start(offset as u64)
            }
            Whence::Cur => SeekFrom::Current(offset),
            Whence::End => SeekFrom::End(offset),
        };
        let position = self
            .file
            .seek(pos)
            .map_err(|e| OpsError::os("failed to seek file", e))?;
        Ok(SeekOutcome {
            position,
            eof: false,
        })
    }

    fn flush(&mut self) -> Result<(), OpsError> {
        self.file
            .flush()
            .map_err(|e| OpsError::os("failed to flush file", e))
    }

    fn close(self: Box<Self>) -> Result<(), OpsError> {
        // close(2) errors are reported by nix; std's Drop would swallow them.
        let fd = std::os::fd::OwnedFd::from(self.file);
        nix::unistd::close(fd).map_err(|e| {
            OpsError::os(
                "failed to close handle",
                io::Error::from_raw_os_error(e as i32),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `count` bytes through `read_into` in `piece`-byte steps, as the agent does.
    fn in_pieces(f: &mut dyn GuestFile, count: usize, piece: usize) -> (Vec<u8>, bool) {
        let (mut got, mut eof) = (Vec::new(), false);
        let mut buf = vec![0u8; piece];
        while got.len() < count {
            let want = (count - got.len()).min(piece);
            let (n, e) = f.read_into(&mut buf[..want], !got.is_empty()).unwrap();
            got.extend_from_slice(&buf[..n]);
            eof = e;
            if n < want || e {
                break;
            }
        }
        (got, eof)
    }

    #[test]
    fn reading_in_pieces_is_one_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let fakes = crate::fake::FakeFiles::default();
        let mut w = fakes.open(&path, "w").unwrap();
        w.write(&data).unwrap();
        let files: [&dyn Files; 2] = [&LinuxFiles, &fakes];
        for files in files {
            for (count, piece) in [
                (0, 7),
                (1, 1),
                (9_999, 3),
                (10_000, 3),
                (10_001, 3),
                (10_000, 5_000),
                (20_000, 4_096),
            ] {
                let mut a = files.open(&path, "r").unwrap();
                let mut b = files.open(&path, "r").unwrap();
                let mut whole = Vec::new();
                let eof = a.read(count, &mut whole).unwrap();
                assert_eq!(
                    in_pieces(&mut *b, count, piece),
                    (whole, eof),
                    "{count} by {piece}"
                );
                // And the next read, from where each stopped.
                let mut whole = Vec::new();
                let eof = a.read(count, &mut whole).unwrap();
                assert_eq!(
                    in_pieces(&mut *b, count, piece),
                    (whole, eof),
                    "{count} by {piece}, again"
                );
            }
        }
    }

    #[test]
    fn a_dry_fifo_fails_a_read_but_ends_a_continued_one() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut f = LinuxFiles.open(&fifo, "r").unwrap();
        let mut writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            f.read_into(&mut buf, false).unwrap_err().to_string(),
            "failed to read file: Resource temporarily unavailable"
        );
        assert_eq!(f.read_into(&mut buf, true).unwrap(), (0, false));
        writer.write_all(b"abc").unwrap();
        assert_eq!(f.read_into(&mut buf, false).unwrap(), (3, false));
        assert_eq!(&buf[..3], b"abc");
        drop(writer);
        assert_eq!(f.read_into(&mut buf, false).unwrap(), (0, true));
    }
}
