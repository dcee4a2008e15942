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

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::mounts::{read_mountinfo, Mount};
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

fn read_attr(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let t = trimmed(&text).trim_start();
    (!t.is_empty()).then(|| t.to_owned())
}

impl LinuxStorage {
    fn sys_root(&self) -> PathBuf {
        fs::canonicalize(&self.sys).unwrap_or_else(|_| self.sys.clone())
    }

    /// The resolved form of `path`, with its `/sys`-relative spelling.
    fn resolve(&self, root: &Path, path: &Path) -> io::Result<SysPath> {
        let real = fs::canonicalize(path)?;
        let virt = match real.strip_prefix(root) {
            Ok(rest) => Path::new("/sys").join(rest).to_string_lossy().into_owned(),
            Err(_) => real.to_string_lossy().into_owned(),
        };
        Ok(SysPath { real, virt })
    }

    /// The on-disk path of a `/sys`-relative prefix of a resolved path.
    fn real_of(&self, root: &Path, virt: &str) -> PathBuf {
        match virt.strip_prefix("/sys/") {
            Some(rest) => root.join(rest),
            None => PathBuf::from(virt),
        }
    }

    /// libudev's device node: `/dev/` + `DEVNAME` of the device's `uevent`.
    fn devnode(&self, dir: &Path) -> Option<String> {
        udev::uevent_value(&dir.join("uevent"), "DEVNAME").map(|n| format!("/dev/{n}"))
    }

    /// Fills the walk from `devpath` (`/sys/dev/block/M:m` or a `slaves/` entry), as
    /// qemu-ga's build_guest_fsinfo_for_device.
    fn walk_device(&self, root: &Path, devpath: &Path, walk: &mut Walk) -> Result<(), OpsError> {
        let sp = match self.resolve(root, devpath) {
            Ok(sp) => sp,
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
        self.walk_resolved(root, &sp, walk)
    }

    /// [`Self::walk_device`] once `devpath` is resolved.
    fn walk_resolved(&self, root: &Path, sp: &SysPath, walk: &mut Walk) -> Result<(), OpsError> {
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
            let r = self.walk_slaves(root, sp, walk);
            walk.depth -= 1;
            r
        } else {
            self.real_device(root, sp, walk)
        }
    }

    fn walk_slaves(&self, root: &Path, sp: &SysPath, walk: &mut Walk) -> Result<(), OpsError> {
        let dir = sp.real.join("slaves");
        let ctx = || format!("readdir(\"{}\")", dir.display());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(OpsError::os(format!("opendir(\"{}\")", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| OpsError::os(ctx(), e))?;
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                self.walk_device(root, &entry.path(), walk)?;
            }
        }
        Ok(())
    }

    fn real_device(&self, root: &Path, sp: &SysPath, walk: &mut Walk) -> Result<(), OpsError> {
        // `uevent` read once for both the node and the serial's by-id lookup.
        let devname = udev::uevent_value(&sp.real.join("uevent"), "DEVNAME");
        let mut disk = DiskAddress {
            dev: devname.as_ref().map(|n| format!("/dev/{n}")),
            serial: self.serial(&sp.real, devname.as_deref()),
            ..DiskAddress::unknown()
        };
        let has_hwinf = address::fill(self, root, sp, &mut disk)?;
        if has_hwinf || disk.dev.is_some() || disk.serial.is_some() {
            walk.disks.push(disk);
        }
        Ok(())
    }

    /// The serial of the device at `dir`, whose `uevent` names it `devname`.
    fn serial(&self, dir: &Path, devname: Option<&str>) -> Option<String> {
        let udev = udev::Db::for_device(&self.udev_data, dir);
        if let Some(s) = udev.get("ID_SERIAL") {
            return Some(s);
        }
        let devname = devname?;
        let part = read_attr(&dir.join("partition"));
        let by_id = self.dev.join("disk/by-id");
        if let Some(s) = udev::serial_from_by_id(&by_id, devname, part.as_deref()) {
            return Some(s);
        }
        if !self.sysfs_serial {
            return None;
        }
        // A partition has no serial attribute of its own: take its disk's.
        let disk = if part.is_some() {
            dir.join("..")
        } else {
            dir.to_owned()
        };
        read_attr(&disk.join("serial")).or_else(|| read_attr(&disk.join("device/serial")))
    }

    fn alias(&self, dir: &Path) -> Option<String> {
        udev::Db::for_device(&self.udev_data, dir)
            .get("DM_NAME")
            .or_else(|| read_attr(&dir.join("dm/name")))
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
        let dev = read_attr(&self.sys.join("class/block").join(name).join("dev"))?;
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

    /// The address guest-get-disks reports for a (resolved) disk directory.
    fn disk_address(&self, root: &Path, dir: &SysPath) -> Option<DiskAddress> {
        let mut walk = Walk::default();
        self.walk_resolved(root, dir, &mut walk).ok()?;
        // qemu-ga takes the head of its prepended list: the last one found.
        walk.disks.pop()
    }

    fn dependencies(&self, dir: &Path) -> Option<Vec<String>> {
        let entries = fs::read_dir(dir.join("slaves")).ok()?;
        let mut deps: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| self.devnode(&e.path()))
            .collect();
        deps.reverse();
        Some(deps)
    }

    fn smart(&self, dev: &str) -> Option<NvmeSmart> {
        let node = self.dev.join(dev.strip_prefix("/dev/")?);
        (self.nvme_smart_log)(&node)
            .ok()
            .map(|log| NvmeSmart::parse(&log))
    }

    /// Partitions of `disk_dir`: subdirectories named `<disk><digit>...` or
    /// `<disk>p<digit>...`, in readdir order.
    fn partitions(
        &self,
        disk_name: &str,
        disk_dir: &Path,
        disk_dev: &str,
        out: &mut Vec<DiskInfo>,
    ) {
        let Ok(entries) = fs::read_dir(disk_dir) else {
            return;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
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
            let Some(dev) = self.devnode(&entry.path()) else {
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
        let entries = fs::read_dir(&block).map_err(|e| {
            OpsError::os(format!("Can't open directory \"{}\"", block.display()), e)
        })?;
        let mut out = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_type().is_ok_and(|t| t.is_symlink()) {
                continue;
            }
            let dir = entry.path();
            match fs::read_to_string(dir.join("size")) {
                Ok(size) if size != "0\n" => {}
                _ => continue,
            }
            let Some(dev) = self.devnode(&dir) else {
                continue;
            };
            // Resolved once, for this test and the address walk.
            let address = match self.resolve(&root, &dir) {
                Ok(sp) if !sp.virt.contains("/devices/virtual/block/") => {
                    self.disk_address(&root, &sp)
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
                dependencies: self.dependencies(&dir),
                address,
                alias: self.alias(&dir),
                smart,
            });
            let name = entry.file_name();
            self.partitions(&name.to_string_lossy(), &dir, &dev, &mut out);
        }
        out.reverse();
        Ok(out)
    }
}
