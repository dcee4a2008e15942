//! Guest files: open with fopen-style modes, read, write, seek, flush, close.
//!
//! [`LinuxFiles`] writes unbuffered and reads a regular file 64 KiB ahead for reads
//! under 64 KiB (one read(2) per 64 KiB of small sequential reads, as stdio), with the
//! results of unbuffered reads; FIFOs, sockets and devices are never read ahead.

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

/// Files on the local machine. Writes are unbuffered; reads under 64 KiB of a regular
/// file go through a 64 KiB read-ahead buffer (as stdio's), with the results of
/// unbuffered reads. FIFOs, sockets and devices are never read ahead.
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
        // Only a regular file is read ahead (see `LinuxFile`); one fstat tells.
        let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
        Ok(Box::new(LinuxFile {
            file,
            ahead: regular.then(ReadAhead::default),
        }))
    }
}

/// How much a regular file is read ahead. A 4 KiB read(2) of a cached file costs about
/// 1 us of a guest-file-read's ~10 us round trip, and 4 KiB is qemu-ga's default
/// count: small sequential reads pay one read(2) per 64 KiB instead of one per
/// request, as with qemu-ga's stdio handle.
const READ_AHEAD: usize = 64 * 1024;

/// An open local file. Writes are unbuffered: every write reaches the kernel at once,
/// so a read after a write sees it and `flush` has nothing left to do.
///
/// Reads of a regular file smaller than [`READ_AHEAD`] go through a read-ahead buffer;
/// the results (bytes, counts, `eof`, positions) are those of unbuffered reads of the
/// same file, as long as nobody else rewrites or truncates the part already read
/// ahead (appends are seen). Other files (FIFOs, sockets, character devices) are
/// never read ahead: reading more than asked would take data from them that the
/// client never gets.
#[derive(Debug)]
struct LinuxFile {
    file: File,
    /// `Some` for a regular file.
    ahead: Option<ReadAhead>,
}

/// The read-ahead buffer of a regular file. The kernel's offset is past the logical
/// position by the bytes not handed out yet ([`unread`](Self::unread)).
#[derive(Default)]
struct ReadAhead {
    /// Empty until the first small read, then [`READ_AHEAD`] bytes, reused.
    buf: Vec<u8>,
    /// The bytes not handed out yet: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("capacity", &self.buf.len())
            .field("unread", &self.unread())
            .finish()
    }
}

impl ReadAhead {
    fn unread(&self) -> usize {
        self.end - self.start
    }

    /// Hands out up to `max` buffered bytes.
    fn take(&mut self, max: usize) -> &[u8] {
        let from = self.start;
        self.start += self.unread().min(max);
        &self.buf[from..self.start]
    }

    /// Forgets the buffered bytes (the caller has moved the kernel's offset).
    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Moves the kernel's offset back to the logical position and empties the buffer,
    /// so that what comes next (a write) happens where an unbuffered handle is.
    fn rewind(&mut self, file: &File) -> io::Result<()> {
        if self.unread() > 0 {
            // At most READ_AHEAD: fits an i64.
            (&*file).seek(SeekFrom::Current(-(self.unread() as i64)))?;
            self.clear();
        }
        Ok(())
    }

    /// One read(2) of up to [`READ_AHEAD`] bytes into the empty buffer. 0 is the end
    /// for now, and leaves nothing behind: the next read asks the kernel again and
    /// gets whatever was appended since.
    fn refill(&mut self, file: &File) -> io::Result<usize> {
        debug_assert_eq!(self.unread(), 0);
        if self.buf.is_empty() {
            self.buf = vec![0; READ_AHEAD];
        }
        let n = retry(|| (&*file).read(&mut self.buf))?;
        self.start = 0;
        self.end = n;
        Ok(n)
    }

    /// Reads `count` bytes through the buffer, giving them to `put` as they come, with
    /// the unbuffered loop's results: the count, and `eof` when a read(2) returned 0
    /// before the count was reached. `EAGAIN` after some data (or when `continuing`)
    /// ends the read, as in [`read_direct`] (a regular file never says it, but the
    /// rule is the same for every file).
    fn read(
        &mut self,
        file: &File,
        count: usize,
        continuing: bool,
        mut put: impl FnMut(&[u8]),
    ) -> io::Result<(usize, bool)> {
        let mut got = 0;
        loop {
            let piece = self.take(count - got);
            got += piece.len();
            put(piece);
            if got == count {
                return Ok((got, false));
            }
            match self.refill(file) {
                Ok(0) => return Ok((got, true)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && (got > 0 || continuing) => {
                    return Ok((got, false))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The unbuffered read loop: appends up to `count` bytes to `buf` straight from the
/// kernel; returns the end-of-file flag. `start` is where this request's data began
/// in `buf` (earlier bytes of it may have come from the read-ahead buffer).
fn read_direct(file: &File, count: usize, buf: &mut Vec<u8>, start: usize) -> io::Result<bool> {
    buf.reserve(count);
    // `eof` describes this read only: data appended since an earlier read hit the
    // end is returned (qemu-ga's stdio handle keeps returning nothing until a
    // seek), and a read that gets all it asked for is not at the end.
    let mut got = 0;
    while got < count {
        let want = count - got;
        match retry(|| (&*file).take(want as u64).read_to_end(buf)) {
            Ok(0) => return Ok(true),
            Ok(n) => got += n,
            // No data yet on a FIFO or socket: hand back what was read. qemu-ga
            // loses it and reports the error; we only report when nothing came.
            // (`read_to_end` keeps what it read before the error in `buf`.)
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && buf.len() > start => break,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// The unbuffered loop of [`GuestFile::read_into`]: one read(2) per pass straight into
/// the caller's buffer (a regular file fills it in one call).
fn read_into_direct(file: &File, buf: &mut [u8], continuing: bool) -> io::Result<(usize, bool)> {
    let mut got = 0;
    while got < buf.len() {
        match retry(|| (&*file).read(&mut buf[got..])) {
            Ok(0) => return Ok((got, true)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && (got > 0 || continuing) => break,
            Err(e) => return Err(e),
        }
    }
    Ok((got, false))
}

impl GuestFile for LinuxFile {
    fn read(&mut self, count: usize, buf: &mut Vec<u8>) -> Result<bool, OpsError> {
        if count == 0 {
            // qemu-ga reports eof false for an empty read, whatever came before.
            return Ok(false);
        }
        let start = buf.len();
        let result = match &mut self.ahead {
            None => read_direct(&self.file, count, buf, start),
            Some(ahead) if count < READ_AHEAD => ahead
                .read(&self.file, count, false, |b| buf.extend_from_slice(b))
                .map(|(_, eof)| eof),
            // A large read: what is buffered first, then straight from the kernel (no
            // copy through the buffer, which stays empty).
            Some(ahead) => {
                let piece = ahead.take(count);
                let got = piece.len();
                buf.extend_from_slice(piece);
                read_direct(&self.file, count - got, buf, start)
            }
        };
        result.map_err(|e| {
            buf.truncate(start);
            OpsError::os("failed to read file", e)
        })
    }

    fn read_into(&mut self, buf: &mut [u8], continuing: bool) -> Result<(usize, bool), OpsError> {
        let result = match &mut self.ahead {
            None => read_into_direct(&self.file, buf, continuing),
            Some(ahead) if buf.len() < READ_AHEAD => {
                let mut got = 0;
                ahead.read(&self.file, buf.len(), continuing, |b| {
                    buf[got..got + b.len()].copy_from_slice(b);
                    got += b.len();
                })
            }
            Some(ahead) => {
                let piece = ahead.take(buf.len());
                let got = piece.len();
                buf[..got].copy_from_slice(piece);
                read_into_direct(&self.file, &mut buf[got..], continuing || got > 0)
                    .map(|(n, eof)| (got + n, eof))
            }
        };
        result.map_err(|e| OpsError::os("failed to read file", e))
    }

    fn write(&mut self, data: &[u8]) -> Result<WriteOutcome, OpsError> {
        // Write where an unbuffered handle would: at the logical position, not past
        // the bytes read ahead (an O_APPEND handle writes at the end either way).
        if let Some(ahead) = &mut self.ahead {
            ahead
                .rewind(&self.file)
                .map_err(|e| OpsError::os("failed to write to file", e))?;
        }
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
        let invalid = || {
            OpsError::os(
                "failed to seek file",
                io::Error::from_raw_os_error(libc::EINVAL),
            )
        };
        let unread = self.ahead.as_ref().map_or(0, ReadAhead::unread);
        let pos = match whence {
            Whence::Set => {
                if offset < 0 {
                    return Err(invalid());
                }
                SeekFrom::Start(offset as u64)
            }
            // From the logical position, behind the kernel's by the unread bytes. An
            // offset so negative that this overflows is before the start: EINVAL, as
            // the kernel says for it unbuffered.
            Whence::Cur => {
                SeekFrom::Current(offset.checked_sub(unread as i64).ok_or_else(invalid)?)
            }
            Whence::End => SeekFrom::End(offset),
        };
        // A failed lseek leaves the offset alone, so the buffer stays valid until then.
        let position = self
            .file
            .seek(pos)
            .map_err(|e| OpsError::os("failed to seek file", e))?;
        if let Some(ahead) = &mut self.ahead {
            ahead.clear();
        }
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
        // close(2) errors are reported by nix; std's Drop would swallow them. The
        // read-ahead buffer goes with the handle.
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
