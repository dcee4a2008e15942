//! FITRIM on mounted filesystems.

use std::fs::File;
use std::path::PathBuf;

use crate::mounts::read_mountinfo;
use crate::sys::{self, FstrimRange};
use crate::OpsError;

/// One filesystem's trim outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrimResult {
    /// Mountpoint.
    pub path: String,
    /// Bytes the kernel reported trimmed, on success.
    pub trimmed: Option<u64>,
    /// Effective minimum extent the kernel used, on success.
    pub minimum: Option<u64>,
    /// Why this filesystem was not trimmed (`trim not supported`, `failed to trim: ...`).
    pub error: Option<String>,
}

/// Discards unused blocks of guest filesystems.
pub trait Trim: Send + Sync {
    /// Trims every mounted filesystem (`None`) or only the listed mountpoints, with
    /// free extents of at least `minimum` bytes; one result per filesystem, in reverse
    /// mount order. Fails as a whole only if the mount table cannot be read.
    fn trim(
        &self,
        minimum: Option<u64>,
        mountpoints: Option<&[String]>,
    ) -> Result<Vec<TrimResult>, OpsError>;
}

/// Linux implementation.
#[derive(Debug, Clone)]
pub struct LinuxTrim {
    /// Where to read the mount table (default `/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

impl Default for LinuxTrim {
    fn default() -> Self {
        LinuxTrim {
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

impl Trim for LinuxTrim {
    fn trim(
        &self,
        minimum: Option<u64>,
        mountpoints: Option<&[String]>,
    ) -> Result<Vec<TrimResult>, OpsError> {
        let mounts = read_mountinfo(&self.mountinfo)?;
        let mut results = Vec::new();
        for m in mounts.iter().rev() {
            if let Some(list) = mountpoints {
                if !list.contains(&m.dir) {
                    continue;
                }
            }
            let mut result = TrimResult {
                path: m.dir.clone(),
                trimmed: None,
                minimum: None,
                error: None,
            };
            match File::open(&m.dir) {
                Err(e) => {
                    result.error = Some(format!("failed to open: {}", crate::error::strerror(&e)))
                }
                Ok(dir) => {
                    // A fresh range per filesystem: the kernel rewrites it.
                    let mut range = FstrimRange {
                        start: 0,
                        len: u64::MAX,
                        minlen: minimum.unwrap_or(0),
                    };
                    match sys::trim(&dir, &mut range) {
                        Ok(()) => {
                            result.trimmed = Some(range.len);
                            result.minimum = Some(range.minlen);
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOTTY | libc::EOPNOTSUPP)
                            ) =>
                        {
                            result.error = Some("trim not supported".to_owned())
                        }
                        Err(e) => {
                            result.error =
                                Some(format!("failed to trim: {}", crate::error::strerror(&e)))
                        }
                    }
                }
            }
            results.push(result);
        }
        Ok(results)
    }
}
