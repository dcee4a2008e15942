//! Filesystem freeze and thaw (FIFREEZE/FITHAW), with the optional hook script.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::mounts::{read_mountinfo, Mount};
use crate::{sys, OpsError};

/// Freezes and thaws guest filesystems.
pub trait FsFreeze: Send + Sync {
    /// Freezes every freezable filesystem (`None`) or only the listed mountpoints
    /// (compared as strings with the mount table; unknown entries are ignored, `[]`
    /// freezes nothing). Returns how many were frozen. On an error everything is
    /// thawed again before the error is returned.
    fn freeze(&self, mountpoints: Option<&[String]>) -> Result<usize, OpsError>;
    /// Thaws every filesystem; returns how many were thawed.
    fn thaw(&self) -> Result<usize, OpsError>;
}

/// The agent's view of the freeze: its own flag, not the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FreezeState {
    /// Nothing frozen by us.
    #[default]
    Thawed,
    /// Filesystems frozen by us; only a few commands may run.
    Frozen,
}

impl FreezeState {
    /// The state after a freeze call that froze `count` filesystems: frozen only if
    /// at least one was (qemu-ga clears the flag again when nothing was frozen).
    pub fn after_freeze(count: usize) -> Self {
        if count > 0 {
            FreezeState::Frozen
        } else {
            FreezeState::Thawed
        }
    }
}

/// Linux implementation: the mount table from mountinfo, ioctls on each mountpoint.
#[derive(Debug, Clone)]
pub struct LinuxFsFreeze {
    /// The hook run with `freeze` before and `thaw` after (qemu-ga's `-F`).
    pub hook: Option<PathBuf>,
    /// Where to read the mount table (default `/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
}

impl Default for LinuxFsFreeze {
    fn default() -> Self {
        LinuxFsFreeze {
            hook: None,
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
        }
    }
}

/// Runs the fsfreeze hook with one argument, as qemu-ga 7.2 does: executable check
/// first, stdio to /dev/null, in its own session, waited for.
pub fn run_hook(hook: &Path, arg: &str) -> Result<(), OpsError> {
    nix::unistd::access(hook, nix::unistd::AccessFlags::X_OK).map_err(|e| {
        OpsError::Hook(format!(
            "can't access fsfreeze hook '{}': {}",
            hook.display(),
            crate::error::strerror(&io::Error::from_raw_os_error(e as i32))
        ))
    })?;
    let status = Command::new(hook)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .map_err(|e| {
            OpsError::Hook(format!(
                "failed to create child process: {}",
                crate::error::strerror(&e)
            ))
        })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(n) => Err(OpsError::Hook(format!(
            "fsfreeze hook has failed with status {n}"
        ))),
        None => Err(OpsError::Hook(
            "fsfreeze hook has terminated abnormally".to_owned(),
        )),
    }
}

use std::os::unix::process::CommandExt;

impl LinuxFsFreeze {
    fn mounts(&self) -> Result<Vec<Mount>, OpsError> {
        read_mountinfo(&self.mountinfo)
    }

    /// FITHAW on every mount, repeated until it fails; counts mounts thawed at least
    /// once. Open failures are skipped.
    fn thaw_mounts(mounts: &[Mount]) -> usize {
        let mut count = 0;
        for m in mounts {
            let Ok(dir) = File::open(&m.dir) else {
                continue;
            };
            let mut thawed = false;
            // A filesystem frozen n times needs n thaws; stop at the first failure
            // (EINVAL: not frozen). Bounded so a misbehaving kernel cannot spin us.
            for _ in 0..64 {
                if sys::thaw(&dir).is_err() {
                    break;
                }
                thawed = true;
            }
            count += usize::from(thawed);
        }
        count
    }
}

impl FsFreeze for LinuxFsFreeze {
    fn freeze(&self, mountpoints: Option<&[String]>) -> Result<usize, OpsError> {
        if let Some(hook) = &self.hook {
            run_hook(hook, "freeze")?;
        }
        let mounts = self.mounts()?;
        let mut count = 0;
        // Children before parents: reverse mount order.
        for m in mounts.iter().rev() {
            if let Some(list) = mountpoints {
                if !list.contains(&m.dir) {
                    continue;
                }
            }
            let result = File::open(&m.dir)
                .map_err(|e| OpsError::os(format!("failed to open {}", m.dir), e))
                .and_then(|dir| match sys::freeze(&dir) {
                    Ok(()) => Ok(true),
                    // Not freezable, or already frozen (a bind mount of a frozen fs).
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EBUSY)) => {
                        Ok(false)
                    }
                    Err(e) => Err(OpsError::os(format!("failed to freeze {}", m.dir), e)),
                });
            match result {
                Ok(frozen) => count += usize::from(frozen),
                Err(e) => {
                    Self::thaw_mounts(&mounts);
                    if let Some(hook) = &self.hook {
                        let _ = run_hook(hook, "thaw");
                    }
                    return Err(e);
                }
            }
        }
        Ok(count)
    }

    fn thaw(&self) -> Result<usize, OpsError> {
        let mounts = self.mounts()?;
        let count = Self::thaw_mounts(&mounts);
        if let Some(hook) = &self.hook {
            run_hook(hook, "thaw")?;
        }
        Ok(count)
    }
}
