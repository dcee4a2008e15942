//! Shutdown and suspend.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::OpsError;

/// How to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Stop the machine without powering off.
    Halt,
    /// Power off (qemu-ga's default).
    Powerdown,
    /// Restart.
    Reboot,
}

/// How to suspend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendMode {
    /// To disk (hibernate).
    Disk,
    /// To RAM.
    Ram,
    /// Both: save to disk, then suspend to RAM.
    Hybrid,
}

/// Powers the guest down or suspends it. Success usually means the machine is going
/// away (or has been suspended and resumed), so callers send no reply.
pub trait Power: Send + Sync {
    /// Shuts the guest down.
    fn shutdown(&self, mode: ShutdownMode) -> Result<(), OpsError>;
    /// Suspends the guest; returns after resume.
    fn suspend(&self, mode: SuspendMode) -> Result<(), OpsError>;
}

/// Where the Linux implementation finds its programs and sysfs files. Tests point
/// these at scripts in a temp dir.
#[derive(Debug, Clone)]
pub struct PowerConfig {
    /// `poweroff`, `halt` and `reboot`, run without arguments when present.
    pub poweroff: PathBuf,
    /// See `poweroff`.
    pub halt: PathBuf,
    /// See `poweroff`.
    pub reboot: PathBuf,
    /// `shutdown`, run with qemu-ga 7.2's arguments when the above are missing.
    pub shutdown: PathBuf,
    /// systemd's `systemctl`; used only when systemd is running (`systemd_marker` exists).
    pub systemctl: PathBuf,
    /// Exists when systemd is PID 1 (`/run/systemd/system`).
    pub systemd_marker: PathBuf,
    /// pm-utils' directory (`pm-is-supported`, `pm-suspend`, ...), usually `/usr/sbin`.
    pub pm_utils_dir: PathBuf,
    /// `/sys/power/state`.
    pub sys_power_state: PathBuf,
    /// `/sys/power/disk`.
    pub sys_power_disk: PathBuf,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            poweroff: "/sbin/poweroff".into(),
            halt: "/sbin/halt".into(),
            reboot: "/sbin/reboot".into(),
            shutdown: "/sbin/shutdown".into(),
            systemctl: "/bin/systemctl".into(),
            systemd_marker: "/run/systemd/system".into(),
            pm_utils_dir: "/usr/sbin".into(),
            sys_power_state: "/sys/power/state".into(),
            sys_power_disk: "/sys/power/disk".into(),
        }
    }
}

/// Linux implementation.
///
/// Shutdown runs `poweroff`, `halt` or `reboot` without arguments if the program
/// exists (as current QEMU does), else `shutdown -h -P|-H|-r +0 "hypervisor initiated
/// shutdown"` (as qemu-ga 7.2). Programs run without a shell, stdio to /dev/null,
/// and are waited for.
///
/// Suspend tries, in order, the ways that report support for the mode: systemd
/// (`systemctl hibernate|suspend|hybrid-sleep`, only when systemd is running),
/// pm-utils (`pm-is-supported` then `pm-hibernate|pm-suspend|pm-suspend-hybrid`),
/// then sysfs (`disk`/`mem` written to `/sys/power/state`; hybrid writes `suspend`
/// to `/sys/power/disk` first). If none supports the mode the error is `the requested
/// suspend mode is not supported by the guest`; if all that support it fail, the last
/// failure is returned. Unlike qemu-ga 7.2 it never reports success without having
/// suspended.
#[derive(Debug, Clone, Default)]
pub struct LinuxPower {
    /// Program and sysfs paths.
    pub config: PowerConfig,
}

/// Runs `program` with `args`, stdio on /dev/null, and waits for it.
pub(crate) fn run(program: &Path, args: &[&str]) -> io::Result<ExitStatus> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
}

impl Power for LinuxPower {
    fn shutdown(&self, mode: ShutdownMode) -> Result<(), OpsError> {
        let c = &self.config;
        let (direct, flag) = match mode {
            ShutdownMode::Halt => (&c.halt, "-H"),
            ShutdownMode::Powerdown => (&c.poweroff, "-P"),
            ShutdownMode::Reboot => (&c.reboot, "-r"),
        };
        let status = if is_executable(direct) {
            run(direct, &[])
        } else {
            let h = if mode == ShutdownMode::Reboot {
                None
            } else {
                Some("-h")
            };
            let mut args: Vec<&str> = h.into_iter().collect();
            args.extend([flag, "+0", "hypervisor initiated shutdown"]);
            run(&c.shutdown, &args)
        }
        .map_err(|e| OpsError::os("failed to create child process", e))?;
        match status.code() {
            Some(0) => Ok(()),
            Some(_) => Err(OpsError::failed("child process has failed to shutdown")),
            None => Err(OpsError::failed("child process has terminated abnormally")),
        }
    }

    fn suspend(&self, mode: SuspendMode) -> Result<(), OpsError> {
        let c = &self.config;
        let mut last_error = None;
        let mut supported = false;

        // 1. systemd, only when it is the running init (a systemctl that cannot reach
        //    systemd answers "status" with 1..3 too, which qemu-ga takes for support).
        if c.systemd_marker.exists() && is_executable(&c.systemctl) {
            let (unit, verb) = match mode {
                SuspendMode::Disk => ("systemd-hibernate", "hibernate"),
                SuspendMode::Ram => ("systemd-suspend", "suspend"),
                SuspendMode::Hybrid => ("systemd-hybrid-sleep", "hybrid-sleep"),
            };
            if let Ok(st) = run(&c.systemctl, &["status", unit]) {
                if matches!(st.code(), Some(1..=3)) {
                    supported = true;
                    match run(&c.systemctl, &[verb]) {
                        Ok(st) if st.success() => return Ok(()),
                        Ok(st) => {
                            last_error = Some(OpsError::failed(format!(
                                "the helper program 'systemctl {verb}' returned an unexpected exit status code ({})",
                                st.code().unwrap_or(-1)
                            )))
                        }
                        Err(e) => last_error = Some(OpsError::os("failed to create child process", e)),
                    }
                }
            }
        }

        // 2. pm-utils.
        let is_supported = c.pm_utils_dir.join("pm-is-supported");
        if is_executable(&is_supported) {
            let (arg, program) = match mode {
                SuspendMode::Disk => ("--hibernate", "pm-hibernate"),
                SuspendMode::Ram => ("--suspend", "pm-suspend"),
                SuspendMode::Hybrid => ("--suspend-hybrid", "pm-suspend-hybrid"),
            };
            if run(&is_supported, &[arg]).is_ok_and(|st| st.success()) {
                supported = true;
                match run(&c.pm_utils_dir.join(program), &[]) {
                    Ok(st) if st.success() => return Ok(()),
                    Ok(st) => {
                        last_error = Some(OpsError::failed(format!(
                            "the helper program '{program}' returned an unexpected exit status code ({})",
                            st.code().unwrap_or(-1)
                        )))
                    }
                    Err(_) => {
                        last_error = Some(OpsError::failed(format!(
                            "the helper program '{program}' was not found"
                        )))
                    }
                }
            }
        }

        // 3. The kernel's sysfs interface.
        let states = std::fs::read_to_string(&c.sys_power_state).unwrap_or_default();
        let has = |word: &str| states.split_whitespace().any(|w| w == word);
        let disk_modes = std::fs::read_to_string(&c.sys_power_disk).unwrap_or_default();
        let sysfs_ok = match mode {
            SuspendMode::Disk => has("disk"),
            SuspendMode::Ram => has("mem"),
            SuspendMode::Hybrid => {
                has("disk")
                    && disk_modes
                        .split_whitespace()
                        .any(|w| w.trim_matches(['[', ']']) == "suspend")
            }
        };
        if sysfs_ok {
            let write = |path: &Path, what: &str| {
                std::fs::write(path, what).map_err(|e| {
                    OpsError::os(format!("suspend: cannot write to '{}'", path.display()), e)
                })
            };
            let result = match mode {
                SuspendMode::Disk => write(&c.sys_power_state, "disk"),
                SuspendMode::Ram => write(&c.sys_power_state, "mem"),
                SuspendMode::Hybrid => write(&c.sys_power_disk, "suspend")
                    .and_then(|()| write(&c.sys_power_state, "disk")),
            };
            return result;
        }
        match (supported, last_error) {
            (true, Some(e)) => Err(e),
            _ => Err(OpsError::failed(
                "the requested suspend mode is not supported by the guest",
            )),
        }
    }
}
