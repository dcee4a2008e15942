//! Filesystems and block devices: what qemu-ga 7.2 reports for guest-get-fsinfo and
//! guest-get-disks, read from sysfs, `/dev` and the udev database without libudev.
//!
//! # Where each member comes from
//!
//! qemu-ga asks libudev; libudev itself reads sysfs (the device node is
//! `/dev/` + `DEVNAME` from the device's `uevent`) and the udev database
//! (`/run/udev/data/b<major>:<minor>`, lines `E:KEY=value`) for properties set by
//! udev rules (`ID_SERIAL`, `DM_NAME`). We read the same files directly:
//!
//! - `dev`: `/dev/` + `DEVNAME` from `uevent`, as libudev.
//! - `serial`: `E:ID_SERIAL=` from the udev database, as libudev; when the
//!   database has no entry, the name of a `/dev/disk/by-id/<bus>-<serial>` link to
//!   the device (udev makes those from `ID_SERIAL` too, so they agree); and only if
//!   [`LinuxStorage::sysfs_serial`] is set, the sysfs `serial` attribute of the disk
//!   or its `device/`. qemu-ga reports no serial at all on a machine without udev
//!   (this VM: `/sys/block/vda/serial` says `overlayblk`, qemu-ga says nothing), so
//!   that last fallback is off by default. Beware that a sysfs serial is not always
//!   udev's `ID_SERIAL` (SCSI/ATA/NVMe compose it from vendor, model and serial).
//! - `alias`: `E:DM_NAME=` from the udev database, else the sysfs `dm/name` of the
//!   device (udev's rule copies `DM_NAME` from there, so they agree; qemu-ga without
//!   a udev database reports no alias).
//! - everything else (PCI address, bus type, bus/target/unit, CCW address,
//!   dependencies, partitions) from the sysfs paths exactly as qemu-ga parses them.
//!
//! Lists come out in qemu-ga's order: it prepends while walking directories in
//! `readdir` order, so mounts are listed last-mounted first, disks in reverse
//! `readdir` order of `/sys/block` with each disk's partitions before it.
//!
//! # NVMe SMART
//!
//! For disks whose address says `nvme`, guest-get-disks adds the SMART / health log
//! (log page 2, NVMe admin command Get Log Page on the broadcast namespace) as
//! qemu-ga 7.2 does; a failure to open the device or a failed command just leaves
//! `smart` out.

mod address;
mod udev;

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::mounts::{read_mountinfo, Mount};
use crate::sys::{self, Dents};
use crate::OpsError;

pub use address::{BusType, CcwAddress, DiskAddress, PciAddress};

/// One mounted filesystem (guest-get-fsinfo's `GuestFilesystemInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// Kernel name of the device the filesystem is on (`vda1`, `dm-0`, `md0`);
    /// `MAJ:MIN` when `/sys/dev/block/MAJ:MIN` does not exist (containers).
    pub name: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type (`ext4`, `xfs`, `btrfs`, ...); the wire member is `type`.
    pub fs_type: String,
    /// Bytes used: `(f_blocks - f_bfree) * f_frsize`; `None` when statvfs failed.
    pub used_bytes: Option<u64>,
    /// Bytes usable by unprivileged users: `(f_blocks - f_bfree + f_bavail) *
    /// f_frsize`; `None` when statvfs failed.
    pub total_bytes: Option<u64>,
    /// Whole size, root's reserve included: `f_blocks * f_frsize`. Not part of 7.2's
    /// wire format (added in QEMU 9.1 as `total-bytes-privileged`): a 7.2-compatible
    /// agent leaves it out.
    pub total_bytes_privileged: Option<u64>,
    /// The disks under the filesystem, through device-mapper and md stacking, in
    /// qemu-ga's order. On a partition, as in qemu-ga, the entry is the partition's
    /// (`dev` `/dev/vda1`) with its disk's hardware address.
    pub disks: Vec<DiskAddress>,
}

/// One block device (guest-get-disks' `GuestDiskInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Device node (`/dev/vda`, `/dev/vda1`, `/dev/dm-0`).
    pub name: String,
    /// True for a partition.
    pub partition: bool,
    /// Device nodes this one sits on: a disk's `slaves/` (`Some([])` for a plain
    /// disk), a partition's disk.
    pub dependencies: Option<Vec<String>>,
    /// Hardware address, for disks that are not virtual (`/devices/virtual/block`).
    pub address: Option<DiskAddress>,
    /// Device-mapper name (`vg-root`).
    pub alias: Option<String>,
    /// NVMe SMART / health log, for NVMe disks.
    pub smart: Option<NvmeSmart>,
}

/// The NVMe SMART / health information log (log page 2). The wire splits each
/// 128-bit counter into `-lo` and `-hi` halves: `lo = v as u64`, `hi = (v >> 64) as
/// u64`. The smart union's `type` is always `nvme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NvmeSmart {
    /// Critical warning bits.
    pub critical_warning: i64,
    /// Composite temperature, kelvin.
    pub temperature: i64,
    /// Available spare, percent.
    pub available_spare: i64,
    /// Available spare threshold, percent.
    pub available_spare_threshold: i64,
    /// Percentage used.
    pub percentage_used: i64,
    /// Data units (1000 * 512 bytes) read.
    pub data_units_read: u128,
    /// Data units written.
    pub data_units_written: u128,
    /// Host read commands.
    pub host_read_commands: u128,
    /// Host write commands.
    pub host_write_commands: u128,
    /// Controller busy time, minutes.
    pub controller_busy_time: u128,
    /// Power cycles.
    pub power_cycles: u128,
    /// Power-on hours.
    pub power_on_hours: u128,
    /// Unsafe shutdowns.
    pub unsafe_shutdowns: u128,
    /// Media and data integrity errors.
    pub media_errors: u128,
    /// Number of error information log entries.
    pub number_of_error_log_entries: u128,
}

/// Size of the SMART / health log page.
pub const NVME_SMART_LOG_SIZE: usize = 512;

impl NvmeSmart {
    /// Decodes the 512-byte log page (little-endian, as the NVMe specification lays
    /// it out).
    pub fn parse(log: &[u8; NVME_SMART_LOG_SIZE]) -> Self {
        let u128_at = |off: usize| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&log[off..off + 16]);
            u128::from_le_bytes(b)
        };
        NvmeSmart {
            critical_warning: log[0].into(),
            temperature: u16::from_le_bytes([log[1], log[2]]).into(),
            available_spare: log[3].into(),
            available_spare_threshold: log[4].into(),
            percentage_used: log[5].into(),
            data_units_read: u128_at(32),
            data_units_written: u128_at(48),
            host_read_commands: u128_at(64),
            host_write_commands: u128_at(80),
            controller_busy_time: u128_at(96),
            power_cycles: u128_at(112),
            power_on_hours: u128_at(128),
            unsafe_shutdowns: u128_at(144),
            media_errors: u128_at(160),
            number_of_error_log_entries: u128_at(176),
        }
    }
}

/// Lists filesystems and block devices.
pub trait Storage: Send + Sync {
    /// guest-get-fsinfo: every filesystem of the mount list freeze uses, last
    /// mounted first.
    fn fs_info(&self) -> Result<Vec<FsInfo>, OpsError>;
    /// guest-get-disks: every block device of non-zero size with its partitions.
    fn disks(&self) -> Result<Vec<DiskInfo>, OpsError>;
}

/// The raw statvfs numbers the byte counts are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsUsage {
    /// `f_frsize`: fragment size, the unit of the block counts.
    pub frsize: u64,
    /// `f_blocks`: size in fragments.
    pub blocks: u64,
    /// `f_bfree`: free fragments.
    pub bfree: u64,
    /// `f_bavail`: fragments free for unprivileged users.
    pub bavail: u64,
}

impl FsUsage {
    /// statvfs(2) on `path`.
    pub fn statvfs(path: &Path) -> io::Result<FsUsage> {
        let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        Ok(FsUsage {
            frsize: s.fragment_size() as u64,
            blocks: s.blocks() as u64,
            bfree: s.blocks_free() as u64,
            bavail: s.blocks_available() as u64,
        })
    }

    /// `(used, total, total_privileged)` bytes as qemu-ga computes them (unsigned,
    /// wrapping like its C arithmetic).
    pub fn bytes(&self) -> (u64, u64, u64) {
        let used = self.blocks.wrapping_sub(self.bfree);
        let total = used.wrapping_add(self.bavail);
        (
            used.wrapping_mul(self.frsize),
            total.wrapping_mul(self.frsize),
            self.blocks.wrapping_mul(self.frsize),
        )
    }
}

/// Linux implementation over sysfs, `/dev`, the udev database and the mount table.
/// Every path (and the two system calls) can be replaced, so tests run the same code
/// over fixture trees.
#[derive(Debug, Clone)]
pub struct LinuxStorage {
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// Device directory (`/dev`): `disk/by-id` links and btrfs mount sources are
    /// looked up here. Reported device nodes are always `/dev/NAME`.
    pub dev: PathBuf,
    /// Mount table (`/proc/self/mountinfo`).
    pub mountinfo: PathBuf,
    /// udev database (`/run/udev/data`).
    pub udev_data: PathBuf,
    /// statvfs of a mount point (default [`FsUsage::statvfs`]).
    pub statvfs: fn(&Path) -> io::Result<FsUsage>,
    /// Reads the NVMe SMART log of a device node (default: the NVMe admin ioctl).
    pub nvme_smart_log: fn(&Path) -> io::Result<[u8; NVME_SMART_LOG_SIZE]>,
    /// Also take serials from sysfs `serial` attributes when udev knows none (off by
    /// default: qemu-ga reports none then; see the module docs).
    pub sysfs_serial: bool,
}

impl Default for LinuxStorage {
    fn default() -> Self {
        LinuxStorage {
            sys: "/sys".into(),
            dev: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            udev_data: "/run/udev/data".into(),
            statvfs: FsUsage::statvfs,
            nvme_smart_log: crate::sys::nvme_smart_log,
            sysfs_serial: false,
        }
    }
}

/// What one walk from a device collects: the first name and the disks (in walk
/// order; qemu-ga prepends, so callers reverse).
#[derive(Default)]
struct Walk {
    name: Option<String>,
    disks: Vec<DiskAddress>,
    depth: usize,
}

/// How deep device stacking may go (dm on md on ... ); sysfs has no cycles, a
/// broken tree might.
const MAX_STACK_DEPTH: usize = 64;

/// A sysfs path both as it is on disk and as it reads under `/sys` (the form
/// qemu-ga matches substrings in, whatever root the tree is under).
pub(crate) struct SysPath {
    real: PathBuf,
    virt: String,
}

fn trimmed(text: &str) -> &str {
    text.trim_end_matches(['\n', ' ', '\t', '\r'])
}

/// A small file (a sysfs attribute, a udev database entry) as text: `None` when
/// it cannot be read or is not UTF-8, as `fs::read_to_string(..).ok()`.
pub(super) fn read_text<P: ?Sized + nix::NixPath>(
    dir: Option<BorrowedFd<'_>>,
    path: &P,
) -> Option<String> {
    String::from_utf8(sys::read_small_at(dir, path).ok()?).ok()
}

/// A trimmed, non-empty attribute at `path` (under the open directory `dir` when
/// it is relative).
fn read_attr(dir: Option<BorrowedFd<'_>>, path: &Path) -> Option<String> {
    let text = read_text(dir, path)?;
    let t = trimmed(&text).trim_start();
    (!t.is_empty()).then(|| t.to_owned())
}

/// A device directory as the per-device readers see it: a path `rel` under an
/// open directory `fd` (the device's own directory with `rel` empty, or
/// `/sys/block` with `rel` the disk's name).
#[derive(Clone, Copy)]
struct At<'a> {
    fd: BorrowedFd<'a>,
    rel: &'a Path,
}

impl At<'_> {
    fn join(&self, name: &str) -> PathBuf {
        self.rel.join(name)
    }
}

/// `/dev/` + `DEVNAME` of a `uevent` text, as libudev's device node.
fn devnode_of(uevent: &str) -> Option<String> {
    udev::uevent_value(uevent, "DEVNAME").map(|n| format!("/dev/{n}"))
}

impl LinuxStorage {
    fn sys_root(&self) -> PathBuf {
        fs::canonicalize(&self.sys).unwrap_or_else(|_| self.sys.clone())
    }

    /// Opens the device directory `path` (links followed) and gives its resolved
    /// form, with its `/sys`-relative spelling: what `canonicalize` gives, from the
    /// open descriptor's `/proc/self/fd` link (three system calls instead of a
    /// readlink per component), `canonicalize` itself when that is unavailable.
    /// Something that is not a directory (or a directory we may not list) is
    /// opened `O_PATH`, never for reading.
    fn open_resolved(&self, root: &Path, path: &Path) -> io::Result<(SysPath, File)> {
        let file = match sys::open_dir_at(None, path) {
            Ok(f) => f,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::EACCES)) => {
                sys::open_at(None, path, OFlag::O_PATH)?
            }
            Err(e) => return Err(e),
        };
        let real = match sys::fd_path(&file) {
            Some(real) => real,
            None => fs::canonicalize(path)?,
        };
        let virt = match real.strip_prefix(root) {
            Ok(rest) => Path::new("/sys").join(rest).to_string_lossy().into_owned(),
            Err(_) => real.to_string_lossy().into_owned(),
        };
        Ok((SysPath { real, virt }, file))
    }

    /// The on-disk path of a `/sys`-relative prefix of a resolved path.
    fn real_of(&self, root: &Path, virt: &str) -> PathBuf {
        match virt.strip_prefix("/sys/") {
            Some(rest) => root.join(rest),
            None => PathBuf::from(virt),
        }
    }

    /// libudev's device node: `/dev/` + `DEVNAME` of the device's `uevent`.
    fn devnode(&self, at: At<'_>) -> Option<String> {
        devnode_of(&read_text(Some(at.fd), &at.join("uevent"))?)
    }

    /// Fills the walk from `devpath` (`/sys/dev/block/M:m` or a `slaves/` entry), as
    /// qemu-ga's build_guest_fsinfo_for_device.
    fn walk_device(&self, root: &Path, devpath: &Path, walk: &mut Walk) -> Result<(), OpsError> {
        let (sp, dir) = match self.open_resolved(root, devpath) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The device may be missing in a container: name it after the path.
                if walk.name.is_none() {
                    walk.name = devpath
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned());
                }
                return Ok(());
            }
            Err(e) => {
                return Err(OpsError::os(
                    format!("realpath(\"{}\")", devpath.display()),
                    e,
                ))
            }
        };
        self.walk_resolved(root, &sp, &dir, walk)
    }

    /// [`Self::walk_device`] once `devpath` is resolved and open as `dir`.
    fn walk_resolved(
        &self,
        root: &Path,
        sp: &SysPath,
        dir: &File,
        walk: &mut Walk,
    ) -> Result<(), OpsError> {
        if walk.name.is_none() {
            walk.name = sp
                .real
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
        }
        if sp.virt.contains("/devices/virtual/block/") {
            if walk.depth >= MAX_STACK_DEPTH {
                return Err(OpsError::failed(format!(
                    "block devices stacked deeper than {MAX_STACK_DEPTH} at '{}'",
                    sp.real.display()
                )));
            }
            walk.depth += 1;
            let r = self.walk_slaves(root, sp, dir, walk);
            walk.depth -= 1;
            r
        } else {
            let at = At {
                fd: dir.as_fd(),
                rel: Path::new(""),
            };
            let uevent = read_text(Some(at.fd), "uevent");
            let devname = uevent
                .as_deref()
                .and_then(|u| udev::uevent_value(u, "DEVNAME"));
            let db = udev::Db::for_device(&self.udev_data, at.fd, at.rel, uevent.as_deref());
            if let Some(disk) = self.device_disk(root, sp, at, devname, &db)? {
                walk.disks.push(disk);
            }
            Ok(())
        }
    }

    fn walk_slaves(
        &self,
        root: &Path,
        sp: &SysPath,
        dir: &File,
        walk: &mut Walk,
    ) -> Result<(), OpsError> {
        let path = sp.real.join("slaves");
        let slaves = match sys::open_dir_at(Some(dir.as_fd()), "slaves") {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(OpsError::os(format!("opendir(\"{}\")", path.display()), e)),
        };
        // Small: this runs once per level of a stack.
        let mut dents = Dents::with_capacity(4096);
        while let Some(entry) = dents
            .next(slaves.as_fd())
            .map_err(|e| OpsError::os(format!("readdir(\"{}\")", path.display()), e))?
        {
            if entry.file_type(slaves.as_fd()) == Some(libc::DT_LNK) {
                let link = path.join(std::ffi::OsStr::from_bytes(entry.bytes()));
                self.walk_device(root, &link, walk)?;
            }
        }
        Ok(())
    }

    /// The disk entry of a device that is not virtual (at `at`, resolved as `sp`),
    /// whose `uevent` names it `devname`: `None` when qemu-ga finds nothing about
    /// it.
    fn device_disk(
        &self,
        root: &Path,
        sp: &SysPath,
        at: At<'_>,
        devname: Option<String>,
        db: &udev::Db,
    ) -> Result<Option<DiskAddress>, OpsError> {
        let mut disk = DiskAddress {
            dev: devname.as_ref().map(|n| format!("/dev/{n}")),
            serial: self.serial(at, db, devname.as_deref()),
            ..DiskAddress::unknown()
        };
        let has_hwinf = address::fill(self, root, sp, &mut disk)?;
        Ok((has_hwinf || disk.dev.is_some() || disk.serial.is_some()).then_some(disk))
    }

    /// The serial of the device at `at`, whose `uevent` names it `devname` and
    /// whose udev database entry is `db`.
    fn serial(&self, at: At<'_>, db: &udev::Db, devname: Option<&str>) -> Option<String> {
        if let Some(s) = db.get("ID_SERIAL") {
            return Some(s);
        }
        let devname = devname?;
        let by_id = sys::open_dir_at(None, &self.dev.join("disk/by-id")).ok();
        // The partition number matters only to the two lookups below.
        if by_id.is_none() && !self.sysfs_serial {
            return None;
        }
        let part = read_attr(Some(at.fd), &at.join("partition"));
        if let Some(by_id) = by_id {
            if let Some(s) = udev::serial_from_by_id(&by_id, devname, part.as_deref()) {
                return Some(s);
            }
        }
        if !self.sysfs_serial {
            return None;
        }
        // A partition has no serial attribute of its own: take its disk's.
        let disk = if part.is_some() {
            at.join("..")
        } else {
            at.rel.to_owned()
        };
        read_attr(Some(at.fd), &disk.join("serial"))
            .or_else(|| read_attr(Some(at.fd), &disk.join("device/serial")))
    }

    fn alias(&self, at: At<'_>, db: &udev::Db) -> Option<String> {
        db.get("DM_NAME")
            .or_else(|| read_attr(Some(at.fd), &at.join("dm/name")))
    }

    /// The major:minor of a btrfs mount's source device (its major is 0 in
    /// mountinfo): the device node's number when it is one, else the sysfs `dev` of
    /// the block device its (resolved) name names. `None` skips the mount, as
    /// qemu-ga skips a btrfs mount whose source it cannot stat.
    fn btrfs_device(&self, source: &str) -> Option<(u32, u32)> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let rest = source.strip_prefix("/dev/")?;
        let node = self.dev.join(rest);
        let meta = fs::metadata(&node).ok()?;
        if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            return Some((libc::major(rdev), libc::minor(rdev)));
        }
        let name = fs::canonicalize(&node).ok()?.file_name()?.to_owned();
        let dev = read_attr(None, &self.sys.join("class/block").join(name).join("dev"))?;
        let (maj, min) = dev.split_once(':')?;
        Some((maj.parse().ok()?, min.parse().ok()?))
    }

    fn fs_entry(&self, root: &Path, m: &Mount) -> Result<FsInfo, OpsError> {
        let mut walk = Walk::default();
        let devpath = self.sys.join(format!("dev/block/{}:{}", m.major, m.minor));
        self.walk_device(root, &devpath, &mut walk)?;
        walk.disks.reverse();
        let (used_bytes, total_bytes, total_bytes_privileged) =
            match (self.statvfs)(Path::new(&m.dir)) {
                Ok(u) => {
                    let (a, b, c) = u.bytes();
                    (Some(a), Some(b), Some(c))
                }
                Err(_) => (None, None, None),
            };
        Ok(FsInfo {
            name: walk.name.unwrap_or_default(),
            mountpoint: m.dir.clone(),
            fs_type: m.fstype.clone(),
            used_bytes,
            total_bytes,
            total_bytes_privileged,
            disks: walk.disks,
        })
    }

    fn dependencies(&self, at: At<'_>) -> Option<Vec<String>> {
        let slaves = sys::open_dir_at(Some(at.fd), &at.join("slaves")).ok()?;
        let mut dents = Dents::new();
        let mut deps = Vec::new();
        // A listing error ends the listing, as it ends std's `read_dir`.
        while let Ok(Some(entry)) = dents.next(slaves.as_fd()) {
            let at = At {
                fd: slaves.as_fd(),
                rel: Path::new(std::ffi::OsStr::from_bytes(entry.bytes())),
            };
            deps.extend(self.devnode(at));
        }
        deps.reverse();
        Some(deps)
    }

    fn smart(&self, dev: &str) -> Option<NvmeSmart> {
        let node = self.dev.join(dev.strip_prefix("/dev/")?);
        (self.nvme_smart_log)(&node)
            .ok()
            .map(|log| NvmeSmart::parse(&log))
    }

    /// Partitions of the disk directory open as `disk_dir`: subdirectories named
    /// `<disk><digit>...` or `<disk>p<digit>...`, in readdir order.
    fn partitions(
        &self,
        disk_name: &str,
        disk_dir: &File,
        disk_dev: &str,
        out: &mut Vec<DiskInfo>,
    ) {
        let dir = disk_dir.as_fd();
        let mut dents = Dents::new();
        // A listing error ends the listing, as it ends std's `read_dir`.
        while let Ok(Some(entry)) = dents.next(dir) {
            if entry.file_type(dir) != Some(libc::DT_DIR) {
                continue;
            }
            let name = String::from_utf8_lossy(entry.bytes());
            let Some(rest) = name.strip_prefix(disk_name) else {
                continue;
            };
            let rest = rest
                .strip_prefix('p')
                .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                .unwrap_or(rest);
            if !rest.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            let at = At {
                fd: dir,
                rel: Path::new(std::ffi::OsStr::from_bytes(entry.bytes())),
            };
            let Some(dev) = self.devnode(at) else {
                continue;
            };
            out.push(DiskInfo {
                name: dev,
                partition: true,
                dependencies: Some(vec![disk_dev.to_owned()]),
                address: None,
                alias: None,
                smart: None,
            });
        }
    }
}

impl Storage for LinuxStorage {
    fn fs_info(&self) -> Result<Vec<FsInfo>, OpsError> {
        let root = self.sys_root();
        let mut out = Vec::new();
        for mut m in read_mountinfo(&self.mountinfo)? {
            if m.major == 0 {
                // Only btrfs is left with major 0: use its source's device.
                let Some((major, minor)) = self.btrfs_device(&m.source) else {
                    continue;
                };
                (m.major, m.minor) = (major, minor);
            }
            out.push(self.fs_entry(&root, &m)?);
        }
        out.reverse();
        Ok(out)
    }

    fn disks(&self) -> Result<Vec<DiskInfo>, OpsError> {
        let root = self.sys_root();
        let block = self.sys.join("block");
        let block_dir = sys::open_dir_at(None, &block).map_err(|e| {
            OpsError::os(format!("Can't open directory \"{}\"", block.display()), e)
        })?;
        let mut dents = Dents::new();
        let mut out = Vec::new();
        // A listing error ends the listing, as it ends std's `read_dir`.
        while let Ok(Some(entry)) = dents.next(block_dir.as_fd()) {
            if entry.file_type(block_dir.as_fd()) != Some(libc::DT_LNK) {
                continue;
            }
            let name = std::ffi::OsStr::from_bytes(entry.bytes());
            // The disk's files, through its link in /sys/block.
            let linked = At {
                fd: block_dir.as_fd(),
                rel: Path::new(name),
            };
            match read_text(Some(linked.fd), &linked.join("size")) {
                Some(size) if size != "0\n" => {}
                _ => continue,
            }
            let Some(uevent) = read_text(Some(linked.fd), &linked.join("uevent")) else {
                continue;
            };
            let Some(devname) = udev::uevent_value(&uevent, "DEVNAME") else {
                continue;
            };
            let dev = format!("/dev/{devname}");
            let opened = self.open_resolved(&root, &block.join(name));
            // Its files once its directory is open (the same files).
            let at = match &opened {
                Ok((_, dir)) => At {
                    fd: dir.as_fd(),
                    rel: Path::new(""),
                },
                Err(_) => linked,
            };
            let db = udev::Db::for_device(&self.udev_data, at.fd, at.rel, Some(&uevent));
            let address = match &opened {
                Ok((sp, _)) if !sp.virt.contains("/devices/virtual/block/") => {
                    // qemu-ga takes the head of its prepended list: the only one
                    // found for a disk that is not virtual.
                    self.device_disk(&root, sp, at, Some(devname), &db)
                        .ok()
                        .flatten()
                }
                _ => None,
            };
            let smart = match &address {
                Some(a) if a.bus_type == BusType::Nvme => self.smart(&dev),
                _ => None,
            };
            out.push(DiskInfo {
                name: dev.clone(),
                partition: false,
                dependencies: self.dependencies(at),
                address,
                alias: self.alias(at, &db),
                smart,
            });
            let listed = match &opened {
                Ok(_) => None,
                Err(_) => sys::open_dir_at(Some(linked.fd), linked.rel).ok(),
            };
            let disk_dir = match (&opened, &listed) {
                (Ok((_, dir)), _) => dir,
                (Err(_), Some(dir)) => dir,
                (Err(_), None) => continue,
            };
            self.partitions(&name.to_string_lossy(), disk_dir, &dev, &mut out);
        }
        out.reverse();
        Ok(out)
    }
}
