//! The local side of `get` and `put`: files streamed to and from the agent chunk by
//! chunk (`Client::copy_from_guest`, `Client::copy_to_guest`), so a large file is
//! never held in memory whole.
//!
//! `get` writes into a temporary file beside the destination and renames it over
//! the destination only once the copy is complete, so a failed copy leaves the
//! destination as it was (a destination that is no regular file, such as
//! `/dev/stdout` or a FIFO, is written directly).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A local file used by the copy as an async stream. The I/O is done in place,
/// blocking: `qga` runs one call on a current-thread runtime, with nothing else
/// to do while a chunk goes to or comes from the disk.
pub struct Blocking<T>(pub T);

impl<T: Read + Unpin> AsyncRead for Blocking<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self.0.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<T: Write + Unpin> AsyncWrite for Blocking<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.0.write(buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.0.flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Where `get` writes: a temporary file to rename over the destination, or the
/// destination itself when it is no regular file.
pub struct Destination {
    file: File,
    /// The temporary file's path, while there is one.
    temp: Option<PathBuf>,
    dest: PathBuf,
}

impl Destination {
    /// Prepares writing to `dest`. Nothing is changed at `dest` itself unless it is
    /// no regular file (then it is opened for writing, as it would be by a shell).
    pub fn create(dest: &Path) -> io::Result<Destination> {
        let meta = fs::metadata(dest).ok();
        if meta.as_ref().is_some_and(|m| !m.is_file()) {
            let file = OpenOptions::new().write(true).truncate(true).open(dest)?;
            return Ok(Destination {
                file,
                temp: None,
                dest: dest.to_owned(),
            });
        }
        let name = dest
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".qga-{}.part", std::process::id()));
        let temp = dest.with_file_name(temp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let d = Destination {
            file,
            temp: Some(temp),
            dest: dest.to_owned(),
        };
        if let Some(m) = meta {
            // An existing file keeps its permissions.
            if let Some(t) = &d.temp {
                fs::set_permissions(t, m.permissions())?;
            }
        }
        Ok(d)
    }

    /// The file to write the copy into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The copy is complete: the temporary file takes the destination's place.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some(t) = self.temp.take() {
            if let Err(e) = fs::rename(&t, &self.dest) {
                let _ = fs::remove_file(&t);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl Drop for Destination {
    /// Not committed: the temporary file goes.
    fn drop(&mut self) {
        if let Some(t) = &self.temp {
            let _ = fs::remove_file(t);
        }
    }
}

/// Opens `put`'s source: a file to read (not a directory), and its size when it
/// is a regular file.
pub fn source(path: &Path) -> io::Result<(File, Option<u64>)> {
    let file = File::open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    Ok((file, meta.is_file().then_some(meta.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_replaced_only_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        fs::write(&dest, b"old").unwrap();
        // Dropped without commit: the old file stays, no temporary is left.
        let mut d = Destination::create(&dest).unwrap();
        d.file().write_all(b"partial").unwrap();
        drop(d);
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // Committed: the new content, in the old file's place.
        let mut d = Destination::create(&dest).unwrap();
        d.file().write_all(b"new").unwrap();
        d.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // A new file appears only on commit.
        let fresh = dir.path().join("fresh.bin");
        let d = Destination::create(&fresh).unwrap();
        assert!(!fresh.exists());
        d.commit().unwrap();
        assert_eq!(fs::read(&fresh).unwrap(), b"");
    }

    #[test]
    fn a_destination_that_is_no_regular_file_is_written_in_place() {
        let mut d = Destination::create(Path::new("/dev/null")).unwrap();
        d.file().write_all(b"gone").unwrap();
        d.commit().unwrap();
        assert!(Path::new("/dev/null").exists());
    }

    #[test]
    fn a_directory_is_no_source() {
        let dir = tempfile::tempdir().unwrap();
        let e = source(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::IsADirectory);
        let f = dir.path().join("f");
        fs::write(&f, b"12345").unwrap();
        assert_eq!(source(&f).unwrap().1, Some(5));
    }
}
