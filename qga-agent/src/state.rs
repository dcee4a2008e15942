//! State that outlives the process, in the state directory (qemu-ga's `-t`):
//! `qga.state` holds the next file handle, `qga.state.isfrozen` exists while
//! filesystems are frozen.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// First file handle qemu-ga hands out.
pub const FIRST_HANDLE: i64 = 1000;

/// The agent's persistent state files. `None` directory = in memory only (tests).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: Option<PathBuf>,
}

impl StateDir {
    /// State kept in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(StateDir { dir: Some(dir) })
    }

    /// State that is never written anywhere.
    pub fn in_memory() -> Self {
        StateDir { dir: None }
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(name))
    }

    /// The persisted next handle (`fd_counter`), [`FIRST_HANDLE`] if none is stored.
    /// A garbage value reads as 0, as qemu-ga does.
    pub fn load_counter(&self) -> io::Result<i64> {
        let Some(path) = self.file("qga.state") else {
            return Ok(FIRST_HANDLE);
        };
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .find_map(|l| l.trim().strip_prefix("fd_counter="))
                .map(|v| v.trim().parse().unwrap_or(0))
                .unwrap_or(FIRST_HANDLE)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(FIRST_HANDLE),
            Err(e) => Err(e),
        }
    }

    /// Stores the next handle atomically (temp file, fsync, rename), so a crash
    /// never leaves a counter that would hand out an old handle again.
    pub fn store_counter(&self, next: i64) -> io::Result<()> {
        let Some(path) = self.file("qga.state") else {
            return Ok(());
        };
        write_atomically(&path, format!("[global]\nfd_counter={next}\n").as_bytes())
    }

    /// Whether the frozen marker exists (a previous agent died with filesystems frozen).
    pub fn is_frozen(&self) -> bool {
        self.file("qga.state.isfrozen").is_some_and(|p| p.exists())
    }

    /// Creates or removes the frozen marker.
    pub fn set_frozen(&self, frozen: bool) -> io::Result<()> {
        let Some(path) = self.file("qga.state.isfrozen") else {
            return Ok(());
        };
        if frozen {
            use std::os::unix::fs::OpenOptionsExt;
            let f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            f.sync_all()?;
            sync_dir(&path);
            Ok(())
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => {
                    sync_dir(&path);
                    Ok(())
                }
            }
        }
    }
}

fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
}

fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    sync_dir(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_and_marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path()).unwrap();
        assert_eq!(s.load_counter().unwrap(), FIRST_HANDLE);
        s.store_counter(1005).unwrap();
        assert_eq!(
            StateDir::new(dir.path()).unwrap().load_counter().unwrap(),
            1005
        );
        // qemu-ga's own file format is read too.
        fs::write(dir.path().join("qga.state"), "[global]\nfd_counter=1009\n").unwrap();
        assert_eq!(s.load_counter().unwrap(), 1009);
        fs::write(dir.path().join("qga.state"), "[global]\nfd_counter=abc\n").unwrap();
        assert_eq!(s.load_counter().unwrap(), 0);
        assert!(!s.is_frozen());
        s.set_frozen(true).unwrap();
        assert!(s.is_frozen());
        s.set_frozen(false).unwrap();
        s.set_frozen(false).unwrap();
        assert!(!s.is_frozen());
    }
}
