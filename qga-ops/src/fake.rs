//! In-memory implementations of every trait (feature `fake`), for tests of code
//! built on the ops and for embedding without touching a machine. Each records what
//! it was asked and can be told to fail its next call.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::{
    FsFreeze, GuestFile, Interface, Network, OpenMode, OpsError, Power, SeekOutcome, ShutdownMode,
    SuspendMode, Trim, TrimResult, Whence, WriteOutcome,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An injectable failure: the next call that checks it returns this error.
#[derive(Debug, Default)]
pub struct FailNext(Mutex<Option<OpsError>>);

impl FailNext {
    /// Makes the next call fail with `e`.
    pub fn set(&self, e: OpsError) {
        *lock(&self.0) = Some(e);
    }

    fn take(&self) -> Result<(), OpsError> {
        match lock(&self.0).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

type Contents = Arc<Mutex<Vec<u8>>>;

/// Files in memory, with the same mode, end-of-file and seek rules as [`crate::LinuxFiles`].
#[derive(Debug, Default)]
pub struct FakeFiles {
    files: Mutex<HashMap<PathBuf, Contents>>,
    /// Fails the next `open`.
    pub fail_open: FailNext,
    /// Fails the next read, write, seek, flush or close of any file.
    pub fail_io: Arc<FailNext>,
}

impl FakeFiles {
    /// Empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates or replaces a file.
    pub fn insert(&self, path: impl Into<PathBuf>, data: impl Into<Vec<u8>>) {
        lock(&self.files).insert(path.into(), Arc::new(Mutex::new(data.into())));
    }

    /// A file's current contents.
    pub fn contents(&self, path: impl AsRef<Path>) -> Option<Vec<u8>> {
        lock(&self.files)
            .get(path.as_ref())
            .map(|c| lock(c).clone())
    }
}

fn enoent(path: &Path, mode: &str) -> OpsError {
    OpsError::os(
        format!("failed to open file '{}' (mode: '{mode}')", path.display()),
        io::Error::from_raw_os_error(libc::ENOENT),
    )
}

impl crate::Files for FakeFiles {
    fn open(&self, path: &Path, mode_text: &str) -> Result<Box<dyn GuestFile>, OpsError> {
        let mode = OpenMode::parse(mode_text)?;
        self.fail_open.take()?;
        let mut files = lock(&self.files);
        let data = match files.get(path) {
            Some(d) => d.clone(),
            None if mode.creates() => {
                let d: Contents = Arc::default();
                files.insert(path.to_owned(), d.clone());
                d
            }
            None => return Err(enoent(path, mode_text)),
        };
        if mode.base == 'w' {
            lock(&data).clear();
        }
        Ok(Box::new(FakeFile {
            data,
            pos: 0,
            mode,
            fail: self.fail_io.clone(),
        }))
    }
}

struct FakeFile {
    data: Contents,
    pos: usize,
    mode: OpenMode,
    fail: Arc<FailNext>,
}

fn ebadf(context: &str) -> OpsError {
    OpsError::os(context, io::Error::from_raw_os_error(libc::EBADF))
}

impl GuestFile for FakeFile {
    fn read(&mut self, count: usize, buf: &mut Vec<u8>) -> Result<bool, OpsError> {
        self.fail.take()?;
        if !self.mode.readable() {
            return Err(ebadf("failed to read file"));
        }
        if count == 0 {
            return Ok(false);
        }
        let data = lock(&self.data);
        let start = self.pos.min(data.len());
        let end = start.saturating_add(count).min(data.len());
        buf.extend_from_slice(&data[start..end]);
        self.pos = end;
        // As the Linux file: `eof` describes this read only.
        Ok(end - start < count)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<WriteOutcome, OpsError> {
        self.fail.take()?;
        if !self.mode.writable() {
            return Err(ebadf("failed to write to file"));
        }
        let mut data = lock(&self.data);
        if self.mode.base == 'a' {
            self.pos = data.len();
        }
        let end = self.pos + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[self.pos..end].copy_from_slice(bytes);
        self.pos = end;
        Ok(WriteOutcome {
            count: bytes.len(),
            eof: false,
        })
    }

    fn seek(&mut self, offset: i64, whence: Whence) -> Result<SeekOutcome, OpsError> {
        self.fail.take()?;
        let len = lock(&self.data).len() as i64;
        let base = match whence {
            Whence::Set => 0,
            Whence::Cur => self.pos as i64,
            Whence::End => len,
        };
        let Some(target) = base.checked_add(offset).filter(|t| *t >= 0) else {
            return Err(OpsError::os(
                "failed to seek file",
                io::Error::from_raw_os_error(libc::EINVAL),
            ));
        };
        self.pos = target as usize;
        Ok(SeekOutcome {
            position: target as u64,
            eof: false,
        })
    }

    fn flush(&mut self) -> Result<(), OpsError> {
        self.fail.take()
    }

    fn close(self: Box<Self>) -> Result<(), OpsError> {
        self.fail.take()
    }
}

/// A freeze state machine over scripted mountpoints (in mount order).
#[derive(Debug, Default)]
pub struct FakeFsFreeze {
    mountpoints: Vec<String>,
    frozen: Mutex<Vec<String>>,
    /// Fails the next freeze or thaw (a failed freeze thaws everything first, as the
    /// real one does).
    pub fail_next: FailNext,
}

impl FakeFsFreeze {
    /// Freezable filesystems at these mountpoints, in mount order.
    pub fn new(mountpoints: &[&str]) -> Self {
        FakeFsFreeze {
            mountpoints: mountpoints.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Mountpoints currently frozen.
    pub fn frozen(&self) -> Vec<String> {
        lock(&self.frozen).clone()
    }
}

impl FsFreeze for FakeFsFreeze {
    fn freeze(&self, mountpoints: Option<&[String]>) -> Result<usize, OpsError> {
        let mut frozen = lock(&self.frozen);
        if let Err(e) = self.fail_next.take() {
            frozen.clear();
            return Err(e);
        }
        let mut count = 0;
        for m in self.mountpoints.iter().rev() {
            if mountpoints.is_some_and(|l| !l.contains(m)) {
                continue;
            }
            // Already frozen: the kernel says EBUSY, which is skipped.
            if !frozen.contains(m) {
                frozen.push(m.clone());
                count += 1;
            }
        }
        Ok(count)
    }

    fn thaw(&self) -> Result<usize, OpsError> {
        let mut frozen = lock(&self.frozen);
        let count = frozen.len();
        frozen.clear();
        self.fail_next.take()?;
        Ok(count)
    }
}

/// Trim over scripted mountpoints: each reports `trimmed` bytes, or a scripted error.
#[derive(Debug, Default)]
pub struct FakeTrim {
    /// (mountpoint, Ok(trimmed bytes) or Err(error text)), in mount order.
    pub mounts: Vec<(String, Result<u64, String>)>,
    /// Minimums asked for, one per call.
    pub calls: Mutex<Vec<Option<u64>>>,
    /// Fails the next call as a whole.
    pub fail_next: FailNext,
}

impl Trim for FakeTrim {
    fn trim(
        &self,
        minimum: Option<u64>,
        mountpoints: Option<&[String]>,
    ) -> Result<Vec<TrimResult>, OpsError> {
        self.fail_next.take()?;
        lock(&self.calls).push(minimum);
        Ok(self
            .mounts
            .iter()
            .rev()
            .filter(|(m, _)| mountpoints.is_none_or(|l| l.contains(m)))
            .map(|(m, r)| match r {
                Ok(n) => TrimResult {
                    path: m.clone(),
                    trimmed: Some(*n),
                    minimum: Some(minimum.unwrap_or(0)),
                    error: None,
                },
                Err(e) => TrimResult {
                    path: m.clone(),
                    trimmed: None,
                    minimum: None,
                    error: Some(e.clone()),
                },
            })
            .collect())
    }
}

/// A power call the fake received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCall {
    /// `shutdown(mode)`.
    Shutdown(ShutdownMode),
    /// `suspend(mode)`.
    Suspend(SuspendMode),
}

/// Records power calls instead of making them.
#[derive(Debug, Default)]
pub struct FakePower {
    calls: Mutex<Vec<PowerCall>>,
    /// Fails the next call.
    pub fail_next: FailNext,
}

impl FakePower {
    /// Calls received so far.
    pub fn calls(&self) -> Vec<PowerCall> {
        lock(&self.calls).clone()
    }
}

impl Power for FakePower {
    fn shutdown(&self, mode: ShutdownMode) -> Result<(), OpsError> {
        self.fail_next.take()?;
        lock(&self.calls).push(PowerCall::Shutdown(mode));
        Ok(())
    }

    fn suspend(&self, mode: SuspendMode) -> Result<(), OpsError> {
        self.fail_next.take()?;
        lock(&self.calls).push(PowerCall::Suspend(mode));
        Ok(())
    }
}

/// Scripted interfaces.
#[derive(Debug, Default)]
pub struct FakeNetwork {
    /// What `interfaces` returns.
    pub interfaces: Mutex<Vec<Interface>>,
    /// What `routes` returns.
    pub routes: Mutex<Vec<crate::Route>>,
    /// Fails the next call.
    pub fail_next: FailNext,
}

impl Network for FakeNetwork {
    fn interfaces(&self) -> Result<Vec<Interface>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.interfaces).clone())
    }

    fn routes(&self) -> Result<Vec<crate::Route>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.routes).clone())
    }
}

/// One of each fake, kept as concrete types so tests can script and inspect them;
/// [`FakeOps::ops`] hands the same objects out as an [`crate::Ops`].
#[derive(Debug, Clone)]
pub struct FakeOps {
    /// Files.
    pub files: Arc<FakeFiles>,
    /// Freeze (mountpoints `/` and `/data`).
    pub freeze: Arc<FakeFsFreeze>,
    /// Trim (same mountpoints, 1 MiB and 2 MiB trimmed).
    pub trim: Arc<FakeTrim>,
    /// Power.
    pub power: Arc<FakePower>,
    /// Network (`lo` with 127.0.0.1/8 and ::1/128).
    pub network: Arc<FakeNetwork>,
    /// vCPUs and memory blocks (see [`FakeHardware`]'s default).
    pub hardware: Arc<FakeHardware>,
    /// Storage (`/` on a virtio disk `vda`, see [`FakeStorage::new`]).
    pub storage: Arc<FakeStorage>,
    /// System information (see [`FakeSystemInfo::default`]).
    pub sysinfo: Arc<FakeSystemInfo>,
    /// The clocks (records every guest-set-time).
    pub clock: Arc<FakeClock>,
}

impl Default for FakeOps {
    fn default() -> Self {
        let lo = Interface {
            name: "lo".into(),
            hardware_address: Some("00:00:00:00:00:00".into()),
            addresses: vec![
                (std::net::Ipv4Addr::LOCALHOST.into(), 8),
                (std::net::Ipv6Addr::LOCALHOST.into(), 128),
            ],
            statistics: Some(Default::default()),
        };
        FakeOps {
            files: Arc::default(),
            freeze: Arc::new(FakeFsFreeze::new(&["/", "/data"])),
            trim: Arc::new(FakeTrim {
                mounts: vec![("/".into(), Ok(1 << 20)), ("/data".into(), Ok(2 << 20))],
                ..Default::default()
            }),
            power: Arc::default(),
            network: Arc::new(FakeNetwork {
                interfaces: Mutex::new(vec![lo]),
                ..Default::default()
            }),
            hardware: Arc::default(),
            storage: Arc::new(FakeStorage::new()),
            sysinfo: Arc::default(),
            clock: Arc::default(),
        }
    }
}

impl FakeOps {
    /// Fresh fakes with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fakes as trait objects.
    pub fn ops(&self) -> crate::Ops {
        crate::Ops {
            files: self.files.clone(),
            freeze: self.freeze.clone(),
            trim: self.trim.clone(),
            power: self.power.clone(),
            network: self.network.clone(),
            hardware: self.hardware.clone(),
            storage: self.storage.clone(),
            sysinfo: self.sysinfo.clone(),
            clock: self.clock.clone(),
        }
    }
}

/// vCPUs and memory blocks in memory; the set methods change them with the Linux
/// implementation's rules (the first failing vCPU request stops the list; a
/// missing memory block is `not-found`).
#[derive(Debug)]
pub struct FakeHardware {
    /// What `vcpus` returns; `set_vcpus` changes `online`.
    pub vcpus: Mutex<Vec<crate::Vcpu>>,
    /// What `memory_blocks` returns; `set_memory_blocks` changes `online`.
    pub memory_blocks: Mutex<Vec<crate::MemoryBlock>>,
    /// What `memory_block_size` returns.
    pub block_size: Mutex<u64>,
    /// Fails the next call.
    pub fail_next: FailNext,
}

impl Default for FakeHardware {
    /// cpu0 (online, cannot be offlined), cpu1 (online); memory blocks 0
    /// (cannot be offlined) and 1, both online; 128 MiB blocks.
    fn default() -> Self {
        let cpu = |id, can_offline| crate::Vcpu {
            logical_id: id,
            online: true,
            can_offline,
        };
        let block = |i, can_offline| crate::MemoryBlock {
            phys_index: i,
            online: true,
            can_offline,
        };
        FakeHardware {
            vcpus: Mutex::new(vec![cpu(0, false), cpu(1, true)]),
            memory_blocks: Mutex::new(vec![block(0, false), block(1, true)]),
            block_size: Mutex::new(128 << 20),
            fail_next: FailNext::default(),
        }
    }
}

impl crate::Hardware for FakeHardware {
    fn vcpus(&self) -> Result<Vec<crate::Vcpu>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.vcpus).clone())
    }

    fn set_vcpus(&self, req: &[crate::VcpuRequest]) -> Result<i64, OpsError> {
        self.fail_next.take()?;
        let mut vcpus = lock(&self.vcpus);
        let mut processed = 0;
        for r in req {
            let err = match vcpus.iter_mut().find(|v| v.logical_id == r.logical_id) {
                None => Some(OpsError::os(
                    format!("open(\"/sys/devices/system/cpu/cpu{}/\")", r.logical_id),
                    io::Error::from_raw_os_error(libc::ENOENT),
                )),
                Some(v) if !v.can_offline && !r.online => Some(OpsError::failed(format!(
                    "logical processor #{} can't be offlined",
                    r.logical_id
                ))),
                Some(v) => {
                    v.online = r.online;
                    None
                }
            };
            if let Some(e) = err {
                if processed == 0 {
                    return Err(e);
                }
                break;
            }
            processed += 1;
        }
        Ok(processed)
    }

    fn memory_blocks(&self) -> Result<Vec<crate::MemoryBlock>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.memory_blocks).clone())
    }

    /// A block that cannot be offlined refuses with `operation-failed` and
    /// EBUSY, as the kernel does for an unremovable block.
    fn set_memory_blocks(
        &self,
        req: &[crate::MemoryBlockRequest],
    ) -> Result<Vec<crate::MemoryBlockResponse>, OpsError> {
        use crate::MemoryBlockResult as R;
        self.fail_next.take()?;
        let mut blocks = lock(&self.memory_blocks);
        Ok(req
            .iter()
            .map(|r| {
                let (response, error_code) =
                    match blocks.iter_mut().find(|b| b.phys_index == r.phys_index) {
                        None => (R::NotFound, Some(libc::ENOENT as i64)),
                        Some(b) if b.online != r.online && !r.online && !b.can_offline => {
                            (R::OperationFailed, Some(libc::EBUSY as i64))
                        }
                        Some(b) => {
                            b.online = r.online;
                            (R::Success, None)
                        }
                    };
                crate::MemoryBlockResponse {
                    phys_index: r.phys_index,
                    response,
                    error_code,
                }
            })
            .collect())
    }

    fn memory_block_size(&self) -> Result<u64, OpsError> {
        self.fail_next.take()?;
        Ok(*lock(&self.block_size))
    }
}

/// Scripted filesystems and disks.
#[derive(Debug, Default)]
pub struct FakeStorage {
    /// What `fs_info` returns.
    pub fs_info: Mutex<Vec<crate::FsInfo>>,
    /// What `disks` returns.
    pub disks: Mutex<Vec<crate::DiskInfo>>,
    /// Fails the next call (of either method).
    pub fail_next: FailNext,
}

impl FakeStorage {
    /// One ext4 root filesystem on a virtio-blk disk `vda` at PCI 0000:00:02.0, and
    /// that disk: what qemu-ga reports in a plain VM.
    pub fn new() -> Self {
        let address = crate::DiskAddress {
            pci: crate::PciAddress {
                domain: 0,
                bus: 0,
                slot: 2,
                function: 0,
            },
            bus_type: crate::BusType::Virtio,
            bus: 0,
            target: 0,
            unit: 0,
            serial: None,
            dev: Some("/dev/vda".into()),
            ccw: None,
        };
        FakeStorage {
            fs_info: Mutex::new(vec![crate::FsInfo {
                name: "vda".into(),
                mountpoint: "/".into(),
                fs_type: "ext4".into(),
                used_bytes: Some(1 << 30),
                total_bytes: Some(10 << 30),
                total_bytes_privileged: Some(11 << 30),
                disks: vec![address.clone()],
            }]),
            disks: Mutex::new(vec![crate::DiskInfo {
                name: "/dev/vda".into(),
                partition: false,
                dependencies: Some(Vec::new()),
                address: Some(address),
                alias: None,
                smart: None,
            }]),
            fail_next: FailNext::default(),
        }
    }
}

impl crate::Storage for FakeStorage {
    fn fs_info(&self) -> Result<Vec<crate::FsInfo>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.fs_info).clone())
    }

    fn disks(&self) -> Result<Vec<crate::DiskInfo>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.disks).clone())
    }
}

/// Scripted system information: each call returns (a clone of) its field, unless
/// `fail_next` is set. Tests change the fields through their mutexes.
#[derive(Debug)]
pub struct FakeSystemInfo {
    /// What `time_ns` returns.
    pub time_ns: Mutex<i64>,
    /// What `host_name` returns.
    pub host_name: Mutex<String>,
    /// What `timezone` returns.
    pub timezone: Mutex<crate::Timezone>,
    /// What `os_info` returns.
    pub os_info: Mutex<crate::OsInfo>,
    /// What `users` returns.
    pub users: Mutex<Vec<crate::LoggedInUser>>,
    /// What `load` returns.
    pub load: Mutex<crate::LoadAverage>,
    /// What `cpu_stats` returns.
    pub cpu_stats: Mutex<Vec<crate::CpuStats>>,
    /// What `disk_stats` returns.
    pub disk_stats: Mutex<Vec<crate::DiskStats>>,
    /// Fails the next call, whichever it is.
    pub fail_next: FailNext,
}

impl Default for FakeSystemInfo {
    /// A small Linux guest: host `fake-guest`, UTC, Debian 12 on 6.1.0 x86_64, one
    /// user `root` logged in at 1700000000.5, two CPUs, one disk `vda` with the
    /// 20-column counters, load 0.5/0.25/0.125, time 1700000000123456000 ns.
    fn default() -> Self {
        let some = |s: &str| Some(s.to_owned());
        let cpu = |n: i64| crate::CpuStats {
            cpu: n,
            user: 1000,
            nice: 0,
            system: 500,
            idle: 9000,
            iowait: Some(10),
            irq: Some(0),
            softirq: Some(20),
            steal: Some(0),
            guest: Some(0),
            guestnice: Some(0),
        };
        let all = |v: u64| crate::DiskCounters {
            read_sectors: Some(v),
            read_ios: Some(v),
            read_merges: Some(v),
            write_sectors: Some(v),
            write_ios: Some(v),
            write_merges: Some(v),
            discard_sectors: Some(v),
            discard_ios: Some(v),
            discard_merges: Some(v),
            flush_ios: Some(v),
            read_ticks: Some(v),
            write_ticks: Some(v),
            discard_ticks: Some(v),
            flush_ticks: Some(v),
            ios_pgr: Some(0),
            total_ticks: Some(v),
            weight_ticks: Some(v),
        };
        FakeSystemInfo {
            time_ns: Mutex::new(1_700_000_000_123_456_000),
            host_name: Mutex::new("fake-guest".into()),
            timezone: Mutex::new(crate::Timezone {
                zone: some("UTC"),
                offset: 0,
            }),
            os_info: Mutex::new(crate::OsInfo {
                kernel_release: some("6.1.0-18-amd64"),
                kernel_version: some("#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"),
                machine: some("x86_64"),
                id: some("debian"),
                name: some("Debian GNU/Linux"),
                pretty_name: some("Debian GNU/Linux 12 (bookworm)"),
                version: some("12 (bookworm)"),
                version_id: some("12"),
                variant: None,
                variant_id: None,
            }),
            users: Mutex::new(vec![crate::LoggedInUser {
                user: "root".into(),
                login_time: 1_700_000_000.5,
            }]),
            load: Mutex::new(crate::LoadAverage {
                load1m: 0.5,
                load5m: 0.25,
                load15m: 0.125,
            }),
            cpu_stats: Mutex::new(vec![cpu(0), cpu(1)]),
            disk_stats: Mutex::new(vec![crate::DiskStats {
                name: "vda".into(),
                major: 254,
                minor: 0,
                counters: all(100),
            }]),
            fail_next: FailNext::default(),
        }
    }
}

impl crate::SystemInfo for FakeSystemInfo {
    fn time_ns(&self) -> Result<i64, OpsError> {
        self.fail_next.take()?;
        Ok(*lock(&self.time_ns))
    }

    fn host_name(&self) -> Result<String, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.host_name).clone())
    }

    fn timezone(&self) -> Result<crate::Timezone, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.timezone).clone())
    }

    fn os_info(&self) -> Result<crate::OsInfo, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.os_info).clone())
    }

    fn users(&self) -> Result<Vec<crate::LoggedInUser>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.users).clone())
    }

    fn load(&self) -> Result<crate::LoadAverage, OpsError> {
        self.fail_next.take()?;
        Ok(*lock(&self.load))
    }

    fn cpu_stats(&self) -> Result<Vec<crate::CpuStats>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.cpu_stats).clone())
    }

    fn disk_stats(&self) -> Result<Vec<crate::DiskStats>, OpsError> {
        self.fail_next.take()?;
        Ok(lock(&self.disk_stats).clone())
    }
}

/// Records what guest-set-time asked for; sets nothing.
#[derive(Debug, Default)]
pub struct FakeClock {
    /// Every call's argument, in order.
    pub calls: Mutex<Vec<Option<i64>>>,
    /// Fails the next call.
    pub fail_next: FailNext,
}

impl crate::Clock for FakeClock {
    fn set_time(&self, ns: Option<i64>) -> Result<(), OpsError> {
        self.fail_next.take()?;
        lock(&self.calls).push(ns);
        Ok(())
    }
}
