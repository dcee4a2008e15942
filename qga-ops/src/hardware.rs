//! vCPUs and memory blocks: listing and onlining/offlining them through sysfs
//! (guest-get-vcpus, guest-set-vcpus, guest-get-memory-blocks,
//! guest-set-memory-blocks, guest-get-memory-block-info), with qemu-ga 7.2's
//! semantics and error texts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nix::fcntl::OFlag;

use crate::sys::{self, Dent, Dents, NameBuf};
use crate::OpsError;

/// One logical processor (guest-get-vcpus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vcpu {
    /// N of `cpuN`.
    pub logical_id: i64,
    /// Whether it is online.
    pub online: bool,
    /// Whether it has an `online` file, i.e. the kernel lets it be offlined
    /// (on x86 cpu0 usually has none).
    pub can_offline: bool,
}

/// One entry of guest-set-vcpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuRequest {
    /// N of `cpuN`.
    pub logical_id: i64,
    /// The state wanted.
    pub online: bool,
}

/// One memory block (guest-get-memory-blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBlock {
    /// N of `memoryN`.
    pub phys_index: u64,
    /// `state` starts with `online`; true when there is no `state` file.
    pub online: bool,
    /// The first byte of `removable` is not `0`; false when there is no
    /// `removable` file (or no `state` file).
    pub can_offline: bool,
}

/// One entry of guest-set-memory-blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBlockRequest {
    /// N of `memoryN`.
    pub phys_index: u64,
    /// The state wanted.
    pub online: bool,
}

/// What happened to one memory block request (`GuestMemoryBlockResponseType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryBlockResult {
    /// `success`.
    Success,
    /// `not-found`: no `memoryN` directory.
    NotFound,
    /// `operation-not-supported`: no memory directory at all, or offlining a
    /// block that has no `state` file.
    OperationNotSupported,
    /// `operation-failed`: the block's directory or `state` file could not be
    /// opened, read or written.
    OperationFailed,
}

/// The reply for one memory block request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBlockResponse {
    /// The block asked for.
    pub phys_index: u64,
    /// What happened.
    pub response: MemoryBlockResult,
    /// The errno behind a failure, as 7.2 reports it (note that 7.2 also sets
    /// it, to ENOENT, on the `success` it pretends when onlining a block that
    /// has no `state` file).
    pub error_code: Option<i64>,
}

/// vCPU and memory block hotplug state.
pub trait Hardware: Send + Sync {
    /// guest-get-vcpus: every `cpuN` entry of the cpu directory, in directory
    /// (readdir) order as 7.2; no `online` file => online true, can_offline false.
    fn vcpus(&self) -> Result<Vec<Vcpu>, OpsError>;

    /// guest-set-vcpus: processes requests in order, stops at the first failure;
    /// returns how many were processed; an error only when the FIRST one fails
    /// (7.2 semantics). A request for the state a vCPU is already in writes nothing.
    fn set_vcpus(&self, req: &[VcpuRequest]) -> Result<i64, OpsError>;

    /// guest-get-memory-blocks: every `memoryN` directory, in directory order;
    /// no memory directory at all => empty list (7.2), an empty one => error.
    fn memory_blocks(&self) -> Result<Vec<MemoryBlock>, OpsError>;

    /// guest-set-memory-blocks: one response per request (7.2 semantics); a
    /// request for the state a block is already in writes nothing.
    fn set_memory_blocks(
        &self,
        req: &[MemoryBlockRequest],
    ) -> Result<Vec<MemoryBlockResponse>, OpsError>;

    /// guest-get-memory-block-info: `block_size_bytes`, parsed as hex.
    fn memory_block_size(&self) -> Result<u64, OpsError>;
}

/// Linux implementation over sysfs; every path is configurable so that tests
/// (and the write side above all) run against a fixture tree.
#[derive(Debug, Clone)]
pub struct LinuxHardware {
    /// `/sys/devices/system/cpu`.
    pub sys_cpu: PathBuf,
    /// `/sys/devices/system/memory`.
    pub sys_memory: PathBuf,
}

/// Where the kernel lists memory blocks.
const SYS_MEMORY: &str = "/sys/devices/system/memory";

impl Default for LinuxHardware {
    fn default() -> Self {
        LinuxHardware {
            sys_cpu: "/sys/devices/system/cpu".into(),
            sys_memory: SYS_MEMORY.into(),
        }
    }
}

/// `N` of a `cpuN` entry, as 7.2's `sscanf("cpu%ld")`: digits after `cpu`,
/// anything after them ignored; `cpufreq`, `cpuidle` are no vCPUs.
fn cpu_id(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("cpu")?;
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `N` of a `memoryN` entry, as 7.2's `strtoul(name + 6)`: leading digits, 0
/// when there are none.
fn memory_index(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("memory")?;
    let end = rest
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(rest.len());
    Some(
        rest[..end]
            .parse()
            .unwrap_or(if end == 0 { 0 } else { u64::MAX }),
    )
}

/// `strtol(text, NULL, 16)` on at most the first 20 bytes (7.2 reads 20), as an
/// unsigned 64-bit value: leading blanks, a sign, an optional `0x`, then hex
/// digits; no digits => 0, overflow saturates.
fn parse_hex_size(bytes: &[u8]) -> u64 {
    let bytes = &bytes[..bytes.len().min(20)];
    let mut i = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let negative = match bytes.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    if bytes.get(i) == Some(&b'0')
        && matches!(bytes.get(i + 1), Some(b'x' | b'X'))
        && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
    }
    let mut value: i64 = 0;
    let mut overflow = false;
    for b in &bytes[i..] {
        let Some(d) = (*b as char).to_digit(16) else {
            break;
        };
        match value.checked_mul(16).and_then(|v| v.checked_add(d as i64)) {
            Some(v) => value = v,
            None => overflow = true,
        }
    }
    let signed = match (overflow, negative) {
        (true, false) => i64::MAX,
        (true, true) => i64::MIN,
        (false, false) => value,
        (false, true) => value.wrapping_neg(),
    };
    signed as u64
}

fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// Opens `name` inside the already open directory `dir` (`openat`, as 7.2 does):
/// one path component to look up instead of the whole sysfs path again.
fn open_in(dir: &File, name: &str, flags: OFlag) -> io::Result<File> {
    sys::open_at(Some(dir.as_fd()), name, flags)
}

fn errno(e: &io::Error) -> i64 {
    e.raw_os_error().unwrap_or(0) as i64
}

/// Reads up to `buf.len()` bytes at offset 0 into `buf`, with 7.2's texts for
/// `ga_read_sysfs_file` (`open sysfs file "state": ...`).
fn read_sysfs(dir: &File, name: &str, buf: &mut [u8]) -> Result<usize, (OpsError, i64)> {
    read_sysfs_at(dir, name.as_bytes(), name, buf)
}

/// [`read_sysfs`] of `path` relative to `dir`, its errors naming the file `name`.
fn read_sysfs_at(
    dir: &File,
    path: &[u8],
    name: &str,
    buf: &mut [u8],
) -> Result<usize, (OpsError, i64)> {
    let file = sys::open_at(Some(dir.as_fd()), path, OFlag::O_RDONLY).map_err(|e| {
        let code = errno(&e);
        (OpsError::os(format!("open sysfs file \"{name}\""), e), code)
    })?;
    read_open_sysfs(&file, name, buf)
}

/// The pread half of [`read_sysfs`]: the number of bytes read, never 0.
fn read_open_sysfs(file: &File, name: &str, buf: &mut [u8]) -> Result<usize, (OpsError, i64)> {
    match sys::pread0(file, buf) {
        Ok(0) => Err((
            OpsError::failed(format!("pread sysfs file \"{name}\": unexpected EOF")),
            0,
        )),
        Ok(n) => Ok(n),
        Err(e) => {
            let code = errno(&e);
            Err((
                OpsError::os(format!("pread sysfs file \"{name}\""), e),
                code,
            ))
        }
    }
}

fn is_online_state(state: &[u8]) -> bool {
    state.starts_with(b"online")
}

impl LinuxHardware {
    /// `<sys_cpu>/cpuN/`, with the trailing slash 7.2 puts in its error texts.
    fn cpu_dir(&self, id: i64) -> String {
        format!("{}/cpu{id}/", self.sys_cpu.display())
    }

    /// `<sys_memory>/memoryN/` (7.2 prints the index as signed).
    fn memory_dir(&self, index: u64) -> String {
        format!("{}/memory{}/", self.sys_memory.display(), index as i64)
    }

    fn read_vcpu(&self, id: i64) -> Result<Vcpu, OpsError> {
        let dir = self.cpu_dir(id);
        let dirf =
            open_dir(Path::new(&dir)).map_err(|e| OpsError::os(format!("open(\"{dir}\")"), e))?;
        let online_path = || format!("{dir}/online");
        let file = match open_in(&dirf, "online", OFlag::O_RDONLY) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(Vcpu {
                    logical_id: id,
                    online: true,
                    can_offline: false,
                })
            }
            Err(e) => return Err(OpsError::os(format!("open(\"{}\")", online_path()), e)),
        };
        let status = read_status_byte(&file, &online_path())?;
        Ok(Vcpu {
            logical_id: id,
            online: status != b'0',
            can_offline: true,
        })
    }

    /// [`Self::read_vcpu`] in one open, `cpuN/online` relative to the open cpu
    /// directory `dir`, for an entry that is a directory named exactly `cpuN` (as
    /// sysfs names them). `None` when the slow path must answer: another name
    /// (7.2 opens `cpuN/` by the number it parsed), an unexpected error (its text
    /// comes from the slow path). ENOENT means no `online` file: the directory was
    /// just listed (if the vCPU went away meanwhile, the answer is the one 7.2
    /// gives when that happens between its two opens).
    fn read_vcpu_fast(&self, dir: &File, entry: Dent<'_>, id: i64) -> Option<Vcpu> {
        if entry.d_type != libc::DT_DIR {
            return None;
        }
        let mut path = NameBuf::new();
        if !(path.push(b"cpu") && path.push_int(id)) || path.as_bytes() != entry.bytes() {
            return None;
        }
        if !path.push(b"/online") {
            return None;
        }
        match sys::open_at(Some(dir.as_fd()), path.as_bytes(), OFlag::O_RDONLY) {
            Ok(file) => {
                let mut status = [0u8; 1];
                match sys::pread0(&file, &mut status) {
                    Ok(1) => Some(Vcpu {
                        logical_id: id,
                        online: status[0] != b'0',
                        can_offline: true,
                    }),
                    _ => None,
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Some(Vcpu {
                logical_id: id,
                online: true,
                can_offline: false,
            }),
            Err(_) => None,
        }
    }

    fn write_vcpu(&self, req: &VcpuRequest) -> Result<(), OpsError> {
        let dir = self.cpu_dir(req.logical_id);
        let dirf =
            open_dir(Path::new(&dir)).map_err(|e| OpsError::os(format!("open(\"{dir}\")"), e))?;
        let online_path = format!("{dir}/online");
        let file = match open_in(&dirf, "online", OFlag::O_RDWR) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                if req.online {
                    // No `online` file: the vCPU is always online.
                    return Ok(());
                }
                return Err(OpsError::failed(format!(
                    "logical processor #{} can't be offlined",
                    req.logical_id
                )));
            }
            Err(e) => return Err(OpsError::os(format!("open(\"{online_path}\")"), e)),
        };
        let status = read_status_byte(&file, &online_path)?;
        if req.online != (status != b'0') {
            let new = if req.online { b"1" } else { b"0" };
            file.write_at(new, 0)
                .map_err(|e| OpsError::os(format!("pwrite(\"{online_path}\")"), e))?;
        }
        Ok(())
    }

    /// One block, its directory `memoryN` opened inside `parent` (the open memory
    /// directory), its files inside that.
    ///
    /// `shared_removable` is `Some` when every block's `removable` is known to
    /// show the same value (see [`removable_is_constant`]): the first value read
    /// is kept there and stands for the other blocks' files.
    fn read_memory_block(
        &self,
        parent: &File,
        index: u64,
        shared_removable: Option<&mut Option<bool>>,
    ) -> Result<MemoryBlock, OpsError> {
        // Usual case, two opens instead of three: `memoryN/state` and
        // `memoryN/removable` straight from the memory directory, their names
        // built on the stack. When `state` cannot be opened so, the block is read
        // step by step as 7.2 does, for its errors and its no-`state` case.
        let mut path = NameBuf::new();
        // 7.2 prints the index as signed.
        let fits = path.push(b"memory") && path.push_int(index as i64) && path.push(b"/");
        let dir_len = path.as_bytes().len();
        if fits && path.push(b"state") {
            if let Ok(state) = sys::open_at(Some(parent.as_fd()), path.as_bytes(), OFlag::O_RDONLY)
            {
                let mut sbuf = [0u8; 10];
                let n = read_open_sysfs(&state, "state", &mut sbuf).map_err(|(e, _)| e)?;
                drop(state);
                if let Some(&mut Some(can_offline)) = shared_removable {
                    return Ok(MemoryBlock {
                        phys_index: index,
                        online: is_online_state(&sbuf[..n]),
                        can_offline,
                    });
                }
                let mut removable = NameBuf::new();
                removable.push(&path.as_bytes()[..dir_len]);
                removable.push(b"removable");
                let mut rbuf = [0u8; 1];
                let can_offline =
                    match read_sysfs_at(parent, removable.as_bytes(), "removable", &mut rbuf) {
                        Ok(_) => {
                            let value = rbuf[0] != b'0';
                            if let Some(shared) = shared_removable {
                                *shared = Some(value);
                            }
                            value
                        }
                        Err((_, code)) if code == libc::ENOENT as i64 => false,
                        Err((e, _)) => return Err(e),
                    };
                return Ok(MemoryBlock {
                    phys_index: index,
                    online: is_online_state(&sbuf[..n]),
                    can_offline,
                });
            }
        }
        let name = format!("memory{}", index as i64);
        let dir = sys::open_at(
            Some(parent.as_fd()),
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(|e| OpsError::os(format!("open(\"{}\")", self.memory_dir(index)), e))?;
        let dir = &dir;
        let mut sbuf = [0u8; 10];
        let n = match read_sysfs(dir, "state", &mut sbuf) {
            Ok(n) => n,
            // An old kernel without `state`: always online.
            Err((_, code)) if code == libc::ENOENT as i64 => {
                return Ok(MemoryBlock {
                    phys_index: index,
                    online: true,
                    can_offline: false,
                })
            }
            Err((e, _)) => return Err(e),
        };
        let mut rbuf = [0u8; 1];
        let can_offline = match read_sysfs(dir, "removable", &mut rbuf) {
            Ok(_) => rbuf[0] != b'0',
            Err((_, code)) if code == libc::ENOENT as i64 => false,
            Err((e, _)) => return Err(e),
        };
        Ok(MemoryBlock {
            phys_index: index,
            online: is_online_state(&sbuf[..n]),
            can_offline,
        })
    }

    fn write_memory_block(&self, req: &MemoryBlockRequest) -> MemoryBlockResponse {
        let reply = |response, error_code| MemoryBlockResponse {
            phys_index: req.phys_index,
            response,
            error_code,
        };
        // 7.2 first checks the memory directory itself; an error other than
        // ENOENT leaves the response at its zero value, `success`, with the errno.
        if let Err(e) = std::fs::read_dir(&self.sys_memory) {
            let code = errno(&e);
            return if code == libc::ENOENT as i64 {
                reply(MemoryBlockResult::OperationNotSupported, Some(code))
            } else {
                reply(MemoryBlockResult::Success, Some(code))
            };
        }
        let dir = match open_dir(Path::new(&self.memory_dir(req.phys_index))) {
            Ok(d) => d,
            Err(e) => {
                let code = errno(&e);
                return if code == libc::ENOENT as i64 {
                    reply(MemoryBlockResult::NotFound, Some(code))
                } else {
                    reply(MemoryBlockResult::OperationFailed, Some(code))
                };
            }
        };
        let dir = &dir;
        let mut sbuf = [0u8; 10];
        let state = match read_sysfs(dir, "state", &mut sbuf) {
            Ok(n) => &sbuf[..n],
            Err((_, code)) if code == libc::ENOENT as i64 => {
                // No `state`: onlining "succeeds" (with the errno, as 7.2),
                // offlining is not supported.
                return if req.online {
                    reply(MemoryBlockResult::Success, Some(code))
                } else {
                    reply(MemoryBlockResult::OperationNotSupported, Some(code))
                };
            }
            Err((_, code)) => return reply(MemoryBlockResult::OperationFailed, Some(code)),
        };
        if req.online != is_online_state(state) {
            let new: &[u8] = if req.online { b"online" } else { b"offline" };
            let written = open_in(dir, "state", OFlag::O_WRONLY).and_then(|f| f.write_at(new, 0));
            if let Err(e) = written {
                return reply(MemoryBlockResult::OperationFailed, Some(errno(&e)));
            }
        }
        reply(MemoryBlockResult::Success, None)
    }
}

/// Whether every memory block's `removable` file shows the same value, so that
/// one read stands for all: the directory `dir` is sysfs (not a copy, not a
/// fixture) of Linux 5.7 or later. Since 5.7 ("drivers/base/memory.c: indicate
/// all memory blocks as removable", 53cdc1cb29e8) the attribute is a legacy stub
/// printing `IS_ENABLED(CONFIG_MEMORY_HOTREMOVE)` for every block; before, it
/// was a per-block heuristic and each file is read. It halves the system calls
/// of guest-get-memory-blocks (196 blocks here: 1,159 -> 591).
fn removable_is_constant(dir: &File) -> bool {
    use std::sync::OnceLock;
    /// The running kernel cannot change under the process.
    static NEW_ENOUGH: OnceLock<bool> = OnceLock::new();
    let on_sysfs = nix::sys::statfs::fstatfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::SYSFS_MAGIC);
    on_sysfs
        && *NEW_ENOUGH.get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .and_then(|r| release_at_least(&r, (5, 7)))
                .unwrap_or(false)
        })
}

/// Whether a kernel release (`6.18.44-fc`, `5.7.0`, `4.18.0-553.el8`) is at least
/// `major.minor`; `None` when it does not start with two numbers.
fn release_at_least(release: &str, (major, minor): (u32, u32)) -> Option<bool> {
    let mut parts = release.trim().split(['.', '-']);
    let maj: u32 = parts.next()?.parse().ok()?;
    let min: u32 = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((maj, min) >= (major, minor))
}

/// The first byte of an open `online` file (7.2's `pread(fd, &status, 1, 0)`).
fn read_status_byte(file: &File, path: &str) -> Result<u8, OpsError> {
    let mut status = [0u8; 1];
    match file.read_at(&mut status, 0) {
        Ok(0) => Err(OpsError::failed(format!(
            "pread(\"{path}\"): unexpected EOF"
        ))),
        Ok(_) => Ok(status[0]),
        Err(e) => Err(OpsError::os(format!("pread(\"{path}\")"), e)),
    }
}

impl Hardware for LinuxHardware {
    fn vcpus(&self) -> Result<Vec<Vcpu>, OpsError> {
        let list_error = |e| {
            OpsError::os(
                format!("failed to list entries: {}", self.sys_cpu.display()),
                e,
            )
        };
        let dir = sys::open_dir_at(None, self.sys_cpu.as_path()).map_err(list_error)?;
        let mut dents = Dents::new();
        let mut out = Vec::new();
        while let Some(entry) = dents.next(dir.as_fd()).map_err(list_error)? {
            let Some(id) = std::str::from_utf8(entry.bytes()).ok().and_then(cpu_id) else {
                continue;
            };
            let vcpu = match self.read_vcpu_fast(&dir, entry, id) {
                Some(v) => v,
                None => self.read_vcpu(id)?,
            };
            out.push(vcpu);
        }
        if out.is_empty() {
            // 7.2 asserts here ("there's no guest with zero VCPUs") and dies.
            return Err(OpsError::failed(format!(
                "no vCPUs found in {}",
                self.sys_cpu.display()
            )));
        }
        Ok(out)
    }

    fn set_vcpus(&self, req: &[VcpuRequest]) -> Result<i64, OpsError> {
        let mut processed = 0;
        for r in req {
            if let Err(e) = self.write_vcpu(r) {
                if processed == 0 {
                    return Err(e);
                }
                break;
            }
            processed += 1;
        }
        Ok(processed)
    }

    fn memory_blocks(&self) -> Result<Vec<MemoryBlock>, OpsError> {
        let listing_error = |e| {
            OpsError::os(
                format!("Can't open directory\"{}/\"", self.sys_memory.display()),
                e,
            )
        };
        // Each block's files are opened relative to this directory.
        let parent = match sys::open_dir_at(None, self.sys_memory.as_path()) {
            Ok(d) => d,
            // No memory hotplug in this kernel: 7.2 returns an empty list.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
            Err(e) => return Err(listing_error(e)),
        };
        let mut removable = removable_is_constant(&parent).then_some(None);
        let mut dents = Dents::new();
        let mut out = Vec::new();
        while let Some(entry) = dents.next(parent.as_fd()).map_err(listing_error)? {
            let Some(index) = std::str::from_utf8(entry.bytes())
                .ok()
                .and_then(memory_index)
            else {
                continue;
            };
            // readdir's d_type: a symlink to a directory does not count.
            if entry.file_type(parent.as_fd()) != Some(libc::DT_DIR) {
                continue;
            }
            out.push(self.read_memory_block(&parent, index, removable.as_mut())?);
        }
        if out.is_empty() {
            return Err(OpsError::failed("guest reported zero memory blocks!"));
        }
        Ok(out)
    }

    fn set_memory_blocks(
        &self,
        req: &[MemoryBlockRequest],
    ) -> Result<Vec<MemoryBlockResponse>, OpsError> {
        Ok(req.iter().map(|r| self.write_memory_block(r)).collect())
    }

    fn memory_block_size(&self) -> Result<u64, OpsError> {
        // The kernel fixes its memory block size at boot (the architecture probes
        // it once) and sysfs prints that constant, so on the real sysfs the first
        // value read is kept for the life of the process. Any other root (a
        // fixture tree, a test's directory) is read every time.
        static REAL: OnceLock<u64> = OnceLock::new();
        let real = self.sys_memory == Path::new(SYS_MEMORY);
        if real {
            if let Some(&size) = REAL.get() {
                return Ok(size);
            }
        }
        let size = self.read_memory_block_size()?;
        if real {
            let _ = REAL.set(size);
        }
        Ok(size)
    }
}

impl LinuxHardware {
    fn read_memory_block_size(&self) -> Result<u64, OpsError> {
        // Usual case, one open: the file by its whole path. When that fails, the
        // directory and then the file, as 7.2, for its error texts.
        let mut path = self.sys_memory.clone().into_os_string();
        path.push("/block_size_bytes");
        if let Ok(file) = sys::open_at(None, Path::new(&path), OFlag::O_RDONLY) {
            let mut buf = [0u8; 20];
            return match read_open_sysfs(&file, "block_size_bytes", &mut buf) {
                Ok(n) => Ok(parse_hex_size(&buf[..n])),
                Err((e, _)) => Err(e),
            };
        }
        let dir = format!("{}/", self.sys_memory.display());
        let dirf =
            open_dir(Path::new(&dir)).map_err(|e| OpsError::os(format!("open(\"{dir}\")"), e))?;
        let mut buf = [0u8; 20];
        let n = read_sysfs(&dirf, "block_size_bytes", &mut buf).map_err(|(e, _)| e)?;
        Ok(parse_hex_size(&buf[..n]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_names_as_sscanf_cpu_ld() {
        assert_eq!(cpu_id("cpu0"), Some(0));
        assert_eq!(cpu_id("cpu17"), Some(17));
        assert_eq!(cpu_id("cpu3x"), Some(3));
        assert_eq!(cpu_id("cpufreq"), None);
        assert_eq!(cpu_id("cpuidle"), None);
        assert_eq!(cpu_id("cpu"), None);
        assert_eq!(cpu_id("online"), None);
    }

    #[test]
    fn memory_names_as_strtoul() {
        assert_eq!(memory_index("memory0"), Some(0));
        assert_eq!(memory_index("memory196"), Some(196));
        assert_eq!(memory_index("memory_x"), Some(0));
        assert_eq!(memory_index("block_size_bytes"), None);
    }

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert_eq!(release_at_least("6.18.44-fc-v857\n", (5, 7)), Some(true));
        assert_eq!(release_at_least("5.7.0", (5, 7)), Some(true));
        assert_eq!(release_at_least("5.6.19-300.fc32", (5, 7)), Some(false));
        assert_eq!(
            release_at_least("4.18.0-553.el8_10.x86_64", (5, 7)),
            Some(false)
        );
        assert_eq!(release_at_least("5.10-rc1", (5, 7)), Some(true));
        assert_eq!(release_at_least("garbage", (5, 7)), None);
        assert_eq!(release_at_least("6", (5, 7)), None);
    }

    #[test]
    fn removable_is_shared_only_on_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!removable_is_constant(&File::open(dir.path()).unwrap()));
        if let Ok(mem) = File::open("/sys/devices/system/memory") {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            assert_eq!(
                removable_is_constant(&mem),
                release_at_least(&release, (5, 7)) == Some(true)
            );
        }
    }

    #[test]
    fn block_size_is_strtol_base_16() {
        assert_eq!(parse_hex_size(b"8000000\n"), 0x800_0000);
        assert_eq!(parse_hex_size(b"0x10\n"), 16);
        assert_eq!(parse_hex_size(b"  ff"), 255);
        assert_eq!(parse_hex_size(b"zz"), 0);
        assert_eq!(parse_hex_size(b""), 0);
        assert_eq!(parse_hex_size(b"-1"), u64::MAX);
        assert_eq!(parse_hex_size(b"ffffffffffffffffff"), i64::MAX as u64);
        // Only 20 bytes are read.
        assert_eq!(parse_hex_size(b"0000000000000000000123"), 1);
    }
}
