//! The side effects of a QEMU Guest Agent, behind narrow traits.
//!
//! Everything a guest agent does to the machine lives here: [`Files`] /
//! [`GuestFile`] (guest-file-*), [`FsFreeze`] (guest-fsfreeze-*), [`Trim`]
//! (guest-fstrim), [`Power`] (guest-shutdown, guest-suspend-*), [`Network`]
//! (guest-network-get-interfaces, guest-network-get-route) and [`Hardware`]
//! (guest-get/set-vcpus, guest-get/set-memory-blocks, guest-get-memory-block-info).
//! Each has a Linux implementation following
//! qemu-ga 7.2's semantics, and (feature `fake`) an in-memory one that records
//! calls and takes injected errors. [`Ops`] bundles one of each as trait objects.
//! [`Storage`] (guest-get-fsinfo, guest-get-disks) reads sysfs and udev's database, no libudev.
//! [`SystemInfo`] answers guest-get-time, -host-name, -timezone, -osinfo, -users,
//! -load, -cpustats and -diskstats; [`Clock`] sets the clocks (guest-set-time).
//! [`Processes`] runs guest-exec's programs and answers guest-exec-status. [`Users`] sets passwords (through `chpasswd`)
//! and manages users' ssh `authorized_keys` without following links the user
//! planted (see [`LinuxUsers`]).
//!
//! Errors are [`OpsError`], whose `Display` is the reference agent's text
//! (`failed to open file '/x' (mode: 'r'): No such file or directory`), so an agent
//! can reply with it as is. The crate knows nothing of the wire protocol (no
//! `qga-proto`): the agent maps its domain types to wire types. It keeps no
//! process-wide state; every implementation is `Send + Sync`. All `unsafe` code
//! is in three small private modules, each call with its SAFETY comment: `sys` (the
//! FIFREEZE/FITHAW/FITRIM and NVMe admin ioctls, marking descriptors close-on-exec),
//! `sysinfo::ffi` (uname, gethostname, sysconf, tzset, localtime_r) and `users::sys`
//! (a per-thread setgroups).
//!
//! # Embedding in a custom agent
//!
//! Take an [`Ops`] (real: [`Ops::linux`]; fakes: `FakeOps::new().ops()`), call the
//! trait methods from your command handlers, and map results to your replies. Keep
//! the frozen flag ([`FreezeState`]) in your agent: qemu-ga persists it in its state
//! directory so a restarted agent knows filesystems are still frozen.
//!
//! ```
//! # #[cfg(feature = "fake")] {
//! use qga_ops::fake::FakeOps;
//! use qga_ops::{FreezeState, Whence};
//! use std::path::Path;
//!
//! let fakes = FakeOps::new();
//! let ops = fakes.ops();
//!
//! // guest-file-open / write / seek / read, as an agent's handlers would do them.
//! let mut f = ops.files.open(Path::new("/tmp/x"), "w+").unwrap();
//! assert_eq!(f.write(b"hello").unwrap().count, 5);
//! f.seek(0, Whence::Set).unwrap();
//! let mut buf = Vec::new();
//! let eof = f.read(4096, &mut buf).unwrap();
//! assert_eq!((buf.as_slice(), eof), (&b"hello"[..], true));
//!
//! // Errors carry the reference agent's texts.
//! let err = ops.files.open(Path::new("/nope"), "r").err().unwrap();
//! assert_eq!(err.to_string(), "failed to open file '/nope' (mode: 'r'): No such file or directory");
//! assert_eq!(ops.files.open(Path::new("/x"), "rw").err().unwrap().to_string(),
//!            "invalid file open mode 'rw'");
//!
//! // Freeze only what is listed; the agent keeps the frozen flag.
//! let n = ops.freeze.freeze(Some(&["/data".to_string()])).unwrap();
//! assert_eq!(FreezeState::after_freeze(n), FreezeState::Frozen);
//! assert_eq!(fakes.freeze.frozen(), ["/data"]);
//! assert_eq!(ops.freeze.thaw().unwrap(), 1);
//! # }
//! ```
#![warn(missing_docs)]

mod clock;
mod error;
mod exec;
#[cfg(feature = "fake")]
pub mod fake;
mod files;
mod freeze;
mod hardware;
pub mod mounts;
mod network;
mod power;
mod stats;
mod storage;
mod sys;
mod sysinfo;
mod trim;
mod users;

use std::path::PathBuf;
use std::sync::Arc;

pub use clock::{Clock, LinuxClock, SetRealtime};
pub use error::OpsError;
pub use exec::{
    CaptureMode, Captured, ExecLimits, ExecRequest, ExecStatus, LinuxProcesses, Processes,
    Termination, MAX_OUTPUT,
};
pub use files::{Files, GuestFile, LinuxFiles, OpenMode, SeekOutcome, Whence, WriteOutcome};
pub use freeze::{run_hook, FreezeState, FsFreeze, LinuxFsFreeze};
pub use hardware::{
    Hardware, LinuxHardware, MemoryBlock, MemoryBlockRequest, MemoryBlockResponse,
    MemoryBlockResult, Vcpu, VcpuRequest,
};
pub use network::{
    interfaces_from_rtnetlink_dumps, parse_proc_net_dev, parse_proc_net_ipv6_route,
    parse_proc_net_route, DumpError, Interface, InterfaceStats, LinuxNetwork, Network, Route,
    RtnetlinkSocket,
};
pub use power::{LinuxPower, Power, PowerConfig, ShutdownMode, SuspendMode};
pub use stats::{
    parse_diskstats, parse_loadavg, parse_proc_stat, CpuStats, DiskCounters, DiskStats, LoadAverage,
};
pub use storage::{
    BusType, CcwAddress, DiskAddress, DiskInfo, FsInfo, FsUsage, LinuxStorage, NvmeSmart,
    PciAddress, Storage, NVME_SMART_LOG_SIZE,
};
pub use sysinfo::{
    clock_ticks, parse_os_release, parse_utmp, LinuxSystemInfo, LoggedInUser, OsInfo, OsRelease,
    SystemInfo, Timezone, USER_PROCESS, UTMP_RECORD_SIZE,
};
pub use trim::{LinuxTrim, Trim, TrimResult};
pub use users::{
    add_keys, check_key, check_keys, check_password_args, find_in_path, no_such_user,
    parse_authorized_keys, parse_passwd, remove_keys, Account, LinuxUsers, Users,
    MAX_AUTHORIZED_KEYS_SIZE,
};

/// One implementation of each trait, as shared trait objects.
#[derive(Clone)]
pub struct Ops {
    /// guest-file-*.
    pub files: Arc<dyn Files>,
    /// guest-fsfreeze-*.
    pub freeze: Arc<dyn FsFreeze>,
    /// guest-fstrim.
    pub trim: Arc<dyn Trim>,
    /// guest-shutdown, guest-suspend-*.
    pub power: Arc<dyn Power>,
    /// guest-network-get-interfaces.
    pub network: Arc<dyn Network>,
    /// guest-get/set-vcpus, guest-get/set-memory-blocks, guest-get-memory-block-info.
    pub hardware: Arc<dyn Hardware>,
    /// guest-get-fsinfo, guest-get-disks.
    pub storage: Arc<dyn Storage>,
    /// guest-get-time, -host-name, -timezone, -osinfo, -users, -load, -cpustats,
    /// -diskstats.
    pub sysinfo: Arc<dyn SystemInfo>,
    /// guest-set-time.
    pub clock: Arc<dyn Clock>,
    /// guest-exec, guest-exec-status.
    pub processes: Arc<dyn Processes>,
    /// guest-set-user-password, guest-ssh-get/add/remove-authorized-keys.
    pub users: Arc<dyn Users>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ops { .. }")
    }
}

/// Settings of the Linux implementations.
#[derive(Debug, Clone, Default)]
pub struct LinuxConfig {
    /// The fsfreeze hook script (qemu-ga's `-F`), if any.
    pub fsfreeze_hook: Option<PathBuf>,
    /// Program and sysfs paths for shutdown and suspend.
    pub power: PowerConfig,
    /// sysfs paths for vCPUs and memory blocks.
    pub hardware: LinuxHardware,
    /// Paths and calls behind guest-get-fsinfo and guest-get-disks.
    pub storage: LinuxStorage,
    /// Source paths of the system information (os-release override, `/proc`, utmp).
    pub sysinfo: LinuxSystemInfo,
    /// The clock setter and hwclock program behind guest-set-time.
    pub clock: LinuxClock,
    /// Bounds of guest-exec's captured output and finished-process table.
    pub exec: ExecLimits,
    /// User database, `chpasswd` and how the ssh key files are written.
    pub users: LinuxUsers,
}

impl Ops {
    /// The Linux implementations.
    pub fn linux(config: LinuxConfig) -> Self {
        Ops {
            files: Arc::new(LinuxFiles),
            freeze: Arc::new(LinuxFsFreeze {
                hook: config.fsfreeze_hook,
                ..Default::default()
            }),
            trim: Arc::new(LinuxTrim::default()),
            power: Arc::new(LinuxPower {
                config: config.power,
            }),
            network: Arc::new(LinuxNetwork::default()),
            hardware: Arc::new(config.hardware),
            storage: Arc::new(config.storage),
            sysinfo: Arc::new(config.sysinfo),
            clock: Arc::new(config.clock),
            processes: Arc::new(LinuxProcesses::new(config.exec)),
            users: Arc::new(config.users),
        }
    }
}
