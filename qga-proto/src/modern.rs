//! Commands qemu-ga gained after the 1.2 seed: everything 7.2 registers on Linux, plus
//! `guest-get-load` (QEMU 10.0) and `guest-network-get-route` (QEMU 9.1), in current
//! QEMU's shapes.
//!
//! Member names are the wire names. `uint64` members are `u64`; QAPI's `number` is
//! `f64`. Where 7.2 and current QEMU differ, the type says which it follows.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::args::{invalid_type, ArgType};
use crate::commands::{command, Empty};
use crate::json::Members;
use crate::ArgumentError;

// ---------------------------------------------------------------------------
// Time, host name, users, OS.

command! {
    /// `guest-get-time`: the guest's clock, in nanoseconds since the epoch.
    GuestGetTime = "guest-get-time" -> i64;
    success_response: true;
    required {}
    optional {}
}

command! {
    /// `guest-set-time`: with `time`, set the system clock to it and then the
    /// hardware clock from the system clock (`hwclock -w`); without, set the system
    /// clock from the hardware clock (`hwclock -s`).
    GuestSetTime = "guest-set-time" -> Empty;
    success_response: true;
    required {}
    optional {
        /// Nanoseconds since the epoch.
        time: i64 = "time",
    }
}

command! {
    /// `guest-get-host-name`.
    GuestGetHostName = "guest-get-host-name" -> GuestHostName;
    success_response: true;
    required {}
    optional {}
}

/// guest-get-host-name's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestHostName {
    /// The host name (gethostname).
    #[serde(rename = "host-name")]
    pub host_name: String,
}

command! {
    /// `guest-get-users`: logged-in users, once each, with their earliest login.
    GuestGetUsers = "guest-get-users" -> Vec<GuestUser>;
    success_response: true;
    required {}
    optional {}
}

/// One logged-in user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestUser {
    /// User name.
    pub user: String,
    /// Login time in seconds since the epoch (fractional).
    #[serde(rename = "login-time")]
    pub login_time: f64,
    /// Windows logon domain (never sent by a Linux agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

command! {
    /// `guest-get-timezone`.
    GuestGetTimezone = "guest-get-timezone" -> GuestTimezone;
    success_response: true;
    required {}
    optional {}
}

/// guest-get-timezone's reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestTimezone {
    /// Zone abbreviation (`UTC`, `CET`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Offset from UTC in seconds, east positive.
    pub offset: i64,
}

command! {
    /// `guest-get-osinfo`: kernel (uname) and distribution (os-release).
    GuestGetOsinfo = "guest-get-osinfo" -> GuestOsInfo;
    success_response: true;
    required {}
    optional {}
}

/// guest-get-osinfo's reply (`GuestOSInfo`); every member optional.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    /// `uname -r`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// `uname -v`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// `uname -m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// os-release `ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// os-release `NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// os-release `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// os-release `VERSION`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// os-release `VERSION_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// os-release `VARIANT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// os-release `VARIANT_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<String>,
}

command! {
    /// `guest-get-load` (QEMU 10.0; not in 7.2): load averages.
    GuestGetLoad = "guest-get-load" -> GuestLoadAverage;
    success_response: true;
    required {}
    optional {}
}

/// guest-get-load's reply.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GuestLoadAverage {
    /// 1-minute load average.
    pub load1m: f64,
    /// 5-minute load average.
    pub load5m: f64,
    /// 15-minute load average.
    pub load15m: f64,
}

// ---------------------------------------------------------------------------
// CPUs and memory.

/// One logical CPU (`GuestLogicalProcessor`), in guest-get-vcpus' reply and
/// guest-set-vcpus' arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestLogicalProcessor {
    /// CPU number.
    #[serde(rename = "logical-id")]
    pub logical_id: i64,
    /// Online (get), or the state to set (set).
    pub online: bool,
    /// Whether it can be taken offline (get); ignored by set.
    #[serde(
        rename = "can-offline",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub can_offline: Option<bool>,
}

command! {
    /// `guest-get-vcpus`.
    GuestGetVcpus = "guest-get-vcpus" -> Vec<GuestLogicalProcessor>;
    success_response: true;
    required {}
    optional {}
}

command! {
    /// `guest-set-vcpus`: bring CPUs online or offline, in order, stopping at the
    /// first failure; returns how many were processed (an error only when the first
    /// one fails).
    GuestSetVcpus = "guest-set-vcpus" -> i64;
    success_response: true;
    required {
        /// The CPUs and the state wanted.
        vcpus: Vec<GuestLogicalProcessor> = "vcpus",
    }
    optional {}
}

/// One memory block (`GuestMemoryBlock`), in guest-get-memory-blocks' reply and
/// guest-set-memory-blocks' arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestMemoryBlock {
    /// Block number (`memoryN`).
    #[serde(rename = "phys-index")]
    pub phys_index: u64,
    /// Online (get), or the state to set (set).
    pub online: bool,
    /// Whether it can be taken offline (get); ignored by set.
    #[serde(
        rename = "can-offline",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub can_offline: Option<bool>,
}

command! {
    /// `guest-get-memory-blocks`.
    GuestGetMemoryBlocks = "guest-get-memory-blocks" -> Vec<GuestMemoryBlock>;
    success_response: true;
    required {}
    optional {}
}

command! {
    /// `guest-set-memory-blocks`: one response per requested block.
    GuestSetMemoryBlocks = "guest-set-memory-blocks" -> Vec<GuestMemoryBlockResponse>;
    success_response: true;
    required {
        /// The blocks and the state wanted.
        mem_blks: Vec<GuestMemoryBlock> = "mem-blks",
    }
    optional {}
}

/// Outcome of one block in guest-set-memory-blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestMemoryBlockResponseType {
    /// Done (or already in that state).
    Success,
    /// No such block.
    NotFound,
    /// The block cannot change state (e.g. not removable).
    OperationNotSupported,
    /// Writing the new state failed; see `error-code`.
    OperationFailed,
}

/// One block's response in guest-set-memory-blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryBlockResponse {
    /// Block number.
    #[serde(rename = "phys-index")]
    pub phys_index: u64,
    /// Outcome.
    pub response: GuestMemoryBlockResponseType,
    /// errno behind a failure.
    #[serde(
        rename = "error-code",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_code: Option<i64>,
}

command! {
    /// `guest-get-memory-block-info`.
    GuestGetMemoryBlockInfo = "guest-get-memory-block-info" -> GuestMemoryBlockInfo;
    success_response: true;
    required {}
    optional {}
}

/// guest-get-memory-block-info's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestMemoryBlockInfo {
    /// Size of one memory block in bytes.
    pub size: u64,
}

command! {
    /// `guest-get-cpustats` (7.1): per-CPU times from `/proc/stat`, in milliseconds.
    GuestGetCpustats = "guest-get-cpustats" -> Vec<GuestCpuStats>;
    success_response: true;
    required {}
    optional {}
}

/// One CPU's times (`GuestCpuStats`, a union on `type`; only `linux` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GuestCpuStats {
    /// `"type": "linux"`.
    Linux(GuestLinuxCpuStats),
}

/// Linux CPU times in milliseconds; the optional ones depend on the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestLinuxCpuStats {
    /// CPU number.
    pub cpu: i64,
    /// User time.
    pub user: u64,
    /// Niced user time.
    pub nice: u64,
    /// System time.
    pub system: u64,
    /// Idle time.
    pub idle: u64,
    /// Waiting for I/O.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iowait: Option<u64>,
    /// Servicing interrupts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irq: Option<u64>,
    /// Servicing softirqs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softirq: Option<u64>,
    /// Stolen by the hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steal: Option<u64>,
    /// Running guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<u64>,
    /// Running niced guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guestnice: Option<u64>,
}

command! {
    /// `guest-get-devices` (5.2): Windows only. qemu-ga 7.2 on Linux registers it
    /// disabled; so does this agent, rather than inventing a list.
    GuestGetDevices = "guest-get-devices" -> Vec<GuestDeviceInfo>;
    success_response: true;
    required {}
    optional {}
}

/// One device with its driver (Windows agents only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDeviceInfo {
    /// Driver name.
    #[serde(rename = "driver-name")]
    pub driver_name: String,
    /// Driver date, ns since the epoch.
    #[serde(
        rename = "driver-date",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub driver_date: Option<i64>,
    /// Driver version.
    #[serde(
        rename = "driver-version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub driver_version: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<GuestDeviceId>,
}

/// A device id (`GuestDeviceId`, a union on `type`; only `pci` exists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GuestDeviceId {
    /// `"type": "pci"`.
    Pci {
        /// PCI vendor id.
        #[serde(rename = "vendor-id")]
        vendor_id: u16,
        /// PCI device id.
        #[serde(rename = "device-id")]
        device_id: u16,
    },
}

// ---------------------------------------------------------------------------
// Disks and filesystems.

command! {
    /// `guest-get-fsinfo`: mounted filesystems with usage and the disks under them.
    GuestGetFsinfo = "guest-get-fsinfo" -> Vec<GuestFilesystemInfo>;
    success_response: true;
    required {}
    optional {}
}

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFilesystemInfo {
    /// Kernel device name (`vda1`, `dm-0`).
    pub name: String,
    /// Mount point.
    pub mountpoint: String,
    /// Filesystem type.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Bytes used.
    #[serde(
        rename = "used-bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub used_bytes: Option<u64>,
    /// Bytes available to unprivileged users plus used (as qemu-ga computes it).
    #[serde(
        rename = "total-bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_bytes: Option<u64>,
    /// Total size including root-reserved blocks (QEMU 9.1; not in 7.2).
    #[serde(
        rename = "total-bytes-privileged",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub total_bytes_privileged: Option<u64>,
    /// The disks the filesystem lives on.
    pub disk: Vec<GuestDiskAddress>,
}

/// Bus of a disk (`GuestDiskBusType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub enum GuestDiskBusType {
    Ide,
    Fdc,
    Scsi,
    Virtio,
    Xen,
    Usb,
    Uml,
    Sata,
    Sd,
    Unknown,
    Ieee1394,
    Ssa,
    Fibre,
    Raid,
    Iscsi,
    Sas,
    Mmc,
    Virtual,
    FileBackedVirtual,
    Nvme,
}

/// A PCI address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestPciAddress {
    /// Domain.
    pub domain: i64,
    /// Bus.
    pub bus: i64,
    /// Slot.
    pub slot: i64,
    /// Function.
    pub function: i64,
}

/// An s390 channel I/O address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestCcwAddress {
    /// Channel subsystem id.
    pub cssid: i64,
    /// Subchannel set id.
    pub ssid: i64,
    /// Subchannel number.
    pub subchno: i64,
    /// Device number.
    pub devno: i64,
}

/// Where a disk sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDiskAddress {
    /// The controller's PCI address.
    #[serde(rename = "pci-controller")]
    pub pci_controller: GuestPciAddress,
    /// Bus type.
    #[serde(rename = "bus-type")]
    pub bus_type: GuestDiskBusType,
    /// Bus number.
    pub bus: i64,
    /// Target number.
    pub target: i64,
    /// Unit (LUN).
    pub unit: i64,
    /// Disk serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Device node (`/dev/vda`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
    /// Channel I/O address (s390).
    #[serde(
        rename = "ccw-address",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ccw_address: Option<GuestCcwAddress>,
}

command! {
    /// `guest-get-disks` (5.2): every block device, partitions included.
    GuestGetDisks = "guest-get-disks" -> Vec<GuestDiskInfo>;
    success_response: true;
    required {}
    optional {}
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDiskInfo {
    /// Device node (`/dev/vda`).
    pub name: String,
    /// Whether it is a partition.
    pub partition: bool,
    /// Devices it is built on (partition: its disk; dm/md: their members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependencies: Option<Vec<String>>,
    /// Where the disk sits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<GuestDiskAddress>,
    /// Another name (device-mapper name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// Health data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart: Option<GuestDiskSmart>,
}

/// Disk health (`GuestDiskSmart`, a union on `type`; only nvme carries data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum GuestDiskSmart {
    /// `"type": "nvme"`.
    Nvme(GuestNvmeSmart),
}

/// NVMe SMART / health log (`GuestNVMeSmart`). 128-bit counters are split in
/// `-lo`/`-hi` halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct GuestNvmeSmart {
    pub critical_warning: i64,
    pub temperature: i64,
    pub available_spare: i64,
    pub available_spare_threshold: i64,
    pub percentage_used: i64,
    pub data_units_read_lo: u64,
    pub data_units_read_hi: u64,
    pub data_units_written_lo: u64,
    pub data_units_written_hi: u64,
    pub host_read_commands_lo: u64,
    pub host_read_commands_hi: u64,
    pub host_write_commands_lo: u64,
    pub host_write_commands_hi: u64,
    pub controller_busy_time_lo: u64,
    pub controller_busy_time_hi: u64,
    pub power_cycles_lo: u64,
    pub power_cycles_hi: u64,
    pub power_on_hours_lo: u64,
    pub power_on_hours_hi: u64,
    pub unsafe_shutdowns_lo: u64,
    pub unsafe_shutdowns_hi: u64,
    pub media_errors_lo: u64,
    pub media_errors_hi: u64,
    pub number_of_error_log_entries_lo: u64,
    pub number_of_error_log_entries_hi: u64,
}

command! {
    /// `guest-get-diskstats` (7.1): `/proc/diskstats`.
    GuestGetDiskstats = "guest-get-diskstats" -> Vec<GuestDiskStatsInfo>;
    success_response: true;
    required {}
    optional {}
}

/// One device's I/O counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDiskStatsInfo {
    /// Device name.
    pub name: String,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Counters.
    pub stats: GuestDiskStats,
}

/// I/O counters; which are present depends on the kernel's column count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[allow(missing_docs)]
pub struct GuestDiskStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_sectors: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_merges: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ios: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ios_pgr: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ticks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_ticks: Option<u64>,
}

// ---------------------------------------------------------------------------
// Network.

command! {
    /// `guest-network-get-route` (QEMU 9.1; not in 7.2): IPv4 and IPv6 routes.
    GuestNetworkGetRoute = "guest-network-get-route" -> Vec<GuestNetworkRoute>;
    success_response: true;
    required {}
    optional {}
}

/// One route (`GuestNetworkRoute`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetworkRoute {
    /// Interface name.
    pub iface: String,
    /// Destination network.
    pub destination: String,
    /// Metric.
    pub metric: i64,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Netmask (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    /// Initial round-trip time (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub irtt: Option<i64>,
    /// Route flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u64>,
    /// References to the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refcnt: Option<i64>,
    /// Lookups of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#use: Option<i64>,
    /// TCP window (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<i64>,
    /// MTU (IPv4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// Destination prefix length (IPv6, hex text as in the kernel's table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desprefixlen: Option<String>,
    /// Source network (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Source prefix length (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srcprefixlen: Option<String>,
    /// Next hop (IPv6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nexthop: Option<String>,
    /// 4 or 6.
    pub version: i64,
}

// ---------------------------------------------------------------------------
// Processes.

command! {
    /// `guest-exec`: start a program (no shell; PATH search); returns its pid. Poll
    /// guest-exec-status for its exit and output.
    GuestExec = "guest-exec" -> GuestExecResult;
    success_response: true;
    required {
        /// Program to run.
        path: String = "path",
    }
    optional {
        /// Arguments (without argv\[0\]).
        arg: Vec<String> = "arg",
        /// The whole environment (`NAME=value` entries), replacing the agent's.
        env: Vec<String> = "env",
        /// Base64 data written to the child's stdin, which is then closed.
        input_data: String = "input-data",
        /// What output to capture (7.2: a boolean; QEMU 8.0: also a mode name).
        capture_output: GuestExecCaptureOutput = "capture-output",
    }
}

/// guest-exec's reply (`GuestExec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestExecResult {
    /// Process id to poll with guest-exec-status.
    pub pid: i64,
}

/// `capture-output`: a boolean (7.2; true = separated) or a mode (QEMU 8.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GuestExecCaptureOutput {
    /// `true` captures stdout and stderr separately, `false` nothing.
    Flag(bool),
    /// A named mode.
    Mode(GuestExecCaptureOutputMode),
}

impl Default for GuestExecCaptureOutput {
    fn default() -> Self {
        GuestExecCaptureOutput::Flag(false)
    }
}

impl GuestExecCaptureOutput {
    /// The mode this value stands for.
    pub fn mode(self) -> GuestExecCaptureOutputMode {
        match self {
            GuestExecCaptureOutput::Flag(true) => GuestExecCaptureOutputMode::Separated,
            GuestExecCaptureOutput::Flag(false) => GuestExecCaptureOutputMode::None,
            GuestExecCaptureOutput::Mode(m) => m,
        }
    }
}

/// The named capture modes (`GuestExecCaptureOutputMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestExecCaptureOutputMode {
    /// Capture nothing.
    None,
    /// Capture stdout only.
    Stdout,
    /// Capture stderr only.
    Stderr,
    /// Capture both, separately.
    Separated,
    /// Capture both into `out-data`, interleaved as written.
    Merged,
}

impl ArgType for GuestExecCaptureOutput {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        match raw.get().as_bytes().first() {
            Some(b't' | b'f') => bool::from_raw(name, raw).map(GuestExecCaptureOutput::Flag),
            Some(b'"') => {
                let s = String::from_raw(name, raw)?;
                let mode = match s.as_str() {
                    "none" => GuestExecCaptureOutputMode::None,
                    "stdout" => GuestExecCaptureOutputMode::Stdout,
                    "stderr" => GuestExecCaptureOutputMode::Stderr,
                    "separated" => GuestExecCaptureOutputMode::Separated,
                    "merged" => GuestExecCaptureOutputMode::Merged,
                    _ => {
                        return Err(ArgumentError::InvalidValue {
                            name: name.to_owned(),
                            value: s,
                        })
                    }
                };
                Ok(GuestExecCaptureOutput::Mode(mode))
            }
            _ => Err(invalid_type(name, "GuestExecCaptureOutput")),
        }
    }
}

command! {
    /// `guest-exec-status`: a started process's state; its entry is dropped by the
    /// first reply that says `exited: true`.
    GuestExecStatus = "guest-exec-status" -> GuestExecStatusResult;
    success_response: true;
    required {
        /// Pid from guest-exec.
        pid: i64 = "pid",
    }
    optional {}
}

/// guest-exec-status's reply (`GuestExecStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestExecStatusResult {
    /// Whether the process has ended.
    pub exited: bool,
    /// Exit status, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exitcode: Option<i64>,
    /// Signal number, when a signal ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i64>,
    /// Captured stdout (base64), when non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_data: Option<String>,
    /// Captured stderr (base64), when non-empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_data: Option<String>,
    /// stdout went past the capture limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_truncated: Option<bool>,
    /// stderr went past the capture limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err_truncated: Option<bool>,
}

// ---------------------------------------------------------------------------
// Users: passwords and ssh keys.

command! {
    /// `guest-set-user-password`: `password` is base64; `crypted` says it is already
    /// a crypt(3) hash.
    GuestSetUserPassword = "guest-set-user-password" -> Empty;
    success_response: true;
    required {
        /// User name.
        username: String = "username",
        /// The password (or hash), base64-encoded.
        password: String = "password",
        /// Whether `password` is already hashed.
        crypted: bool = "crypted",
    }
    optional {}
}

command! {
    /// `guest-ssh-get-authorized-keys` (5.2).
    GuestSshGetAuthorizedKeys = "guest-ssh-get-authorized-keys" -> GuestAuthorizedKeys;
    success_response: true;
    required {
        /// User name.
        username: String = "username",
    }
    optional {}
}

/// guest-ssh-get-authorized-keys' reply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestAuthorizedKeys {
    /// Public keys, one per line of `authorized_keys`.
    pub keys: Vec<String>,
}

command! {
    /// `guest-ssh-add-authorized-keys` (5.2): add keys (or, with `reset`, replace all).
    GuestSshAddAuthorizedKeys = "guest-ssh-add-authorized-keys" -> Empty;
    success_response: true;
    required {
        /// User name.
        username: String = "username",
        /// Public keys to add.
        keys: Vec<String> = "keys",
    }
    optional {
        /// Replace the file's keys instead of adding to them.
        reset: bool = "reset",
    }
}

command! {
    /// `guest-ssh-remove-authorized-keys` (5.2): absent keys are not an error.
    GuestSshRemoveAuthorizedKeys = "guest-ssh-remove-authorized-keys" -> Empty;
    success_response: true;
    required {
        /// User name.
        username: String = "username",
        /// Public keys to remove.
        keys: Vec<String> = "keys",
    }
    optional {}
}

// ---------------------------------------------------------------------------
// Nested argument structs, validated with prefixed member names
// (`vcpus[0].online`), as qemu-ga's visitor reports them.

fn nested_members<'a>(name: &str, raw: &'a RawValue) -> Result<Members<'a>, ArgumentError> {
    if !raw.get().starts_with('{') {
        return Err(invalid_type(name, "object"));
    }
    Members::parse_object(raw.get()).map_err(ArgumentError::Json)
}

fn required<T: ArgType>(name: &str, m: &Members<'_>, member: &str) -> Result<T, ArgumentError> {
    let path = format!("{name}.{member}");
    match m.get(member) {
        Some(raw) => T::from_raw(&path, raw),
        None => Err(ArgumentError::Missing(path)),
    }
}

fn optional<T: ArgType>(
    name: &str,
    m: &Members<'_>,
    member: &str,
) -> Result<Option<T>, ArgumentError> {
    m.get(member)
        .map(|raw| T::from_raw(&format!("{name}.{member}"), raw))
        .transpose()
}

fn check_unexpected(name: &str, m: &Members<'_>, declared: &[&str]) -> Result<(), ArgumentError> {
    crate::commands::reject_unexpected(m, declared).map_err(|e| match e {
        ArgumentError::Unexpected(member) => ArgumentError::Unexpected(format!("{name}.{member}")),
        other => other,
    })
}

impl ArgType for GuestLogicalProcessor {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        let m = nested_members(name, raw)?;
        let logical_id = required(name, &m, "logical-id")?;
        let online = required(name, &m, "online")?;
        let can_offline = optional(name, &m, "can-offline")?;
        check_unexpected(name, &m, &["logical-id", "online", "can-offline"])?;
        Ok(GuestLogicalProcessor {
            logical_id,
            online,
            can_offline,
        })
    }
}

impl ArgType for GuestMemoryBlock {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        let m = nested_members(name, raw)?;
        let phys_index = required(name, &m, "phys-index")?;
        let online = required(name, &m, "online")?;
        let can_offline = optional(name, &m, "can-offline")?;
        check_unexpected(name, &m, &["phys-index", "online", "can-offline"])?;
        Ok(GuestMemoryBlock {
            phys_index,
            online,
            can_offline,
        })
    }
}
