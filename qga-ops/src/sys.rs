//! Every `unsafe` block of the crate: the filesystem ioctls, the NVMe admin ioctl,
//! marking inherited descriptors close-on-exec before guest-exec spawns, and the
//! raw `getdents64` directory listing the sysfs readers use.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// `_IOWR('X', 119, int)`: freeze a filesystem.
const FIFREEZE: libc::c_ulong = 0xC004_5877;
/// `_IOWR('X', 120, int)`: thaw a filesystem.
const FITHAW: libc::c_ulong = 0xC004_5878;
/// `_IOWR('X', 121, struct fstrim_range)`: discard unused blocks.
const FITRIM: libc::c_ulong = 0xC018_5879;

/// `struct fstrim_range` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FstrimRange {
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) minlen: u64,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// FIFREEZE on the filesystem holding the open directory `dir`.
pub(crate) fn freeze(dir: &File) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: `dir` is an open file descriptor for the whole call; FIFREEZE takes an
    // int argument that the kernel ignores, and `arg` lives across the call.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, &arg) })
}

/// FITHAW on the filesystem holding the open directory `dir`.
pub(crate) fn thaw(dir: &File) -> io::Result<()> {
    let arg: libc::c_int = 0;
    // SAFETY: as for `freeze`: a valid fd and an int argument that outlives the call.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW as _, &arg) })
}

/// FITRIM on the filesystem holding the open directory `dir`; the kernel updates
/// `range` (len = bytes trimmed, minlen = effective minimum).
pub(crate) fn trim(dir: &File, range: &mut FstrimRange) -> io::Result<()> {
    // SAFETY: a valid fd, and `range` is a properly laid out `struct fstrim_range`
    // that the kernel reads and writes only within its size during the call.
    check(unsafe { libc::ioctl(dir.as_raw_fd(), FITRIM as _, range as *mut FstrimRange) })
}

/// `struct nvme_passthru_cmd` (`struct nvme_admin_cmd`) from `<linux/nvme_ioctl.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct NvmeAdminCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    result: u32,
}

const _: () = assert!(std::mem::size_of::<NvmeAdminCmd>() == 72);

/// `_IOWR('N', 0x41, struct nvme_admin_cmd)`.
const NVME_IOCTL_ADMIN_CMD: libc::c_ulong = 0xC048_4E41;
/// Admin opcode Get Log Page.
const NVME_ADM_CMD_GET_LOG_PAGE: u8 = 0x02;
/// Log identifier of the SMART / health information log.
const NVME_LOG_SMART_INFO: u32 = 0x02;

/// Reads the SMART / health log (512 bytes) of the NVMe device node `dev` with the
/// admin Get Log Page command on the broadcast namespace, retaining asynchronous
/// events (RAE), as qemu-ga does. Read-only: the command changes nothing on the
/// device.
pub(crate) fn nvme_smart_log(dev: &Path) -> io::Result<[u8; crate::NVME_SMART_LOG_SIZE]> {
    let file = File::open(dev)?;
    let mut log = [0u8; crate::NVME_SMART_LOG_SIZE];
    let dwords = (crate::NVME_SMART_LOG_SIZE / 4 - 1) as u32;
    let mut cmd = NvmeAdminCmd {
        opcode: NVME_ADM_CMD_GET_LOG_PAGE,
        nsid: 0xFFFF_FFFF,
        addr: log.as_mut_ptr() as u64,
        data_len: crate::NVME_SMART_LOG_SIZE as u32,
        cdw10: NVME_LOG_SMART_INFO | (1 << 15) | (dwords << 16),
        ..Default::default()
    };
    // SAFETY: `file` is an open descriptor for the whole call; `cmd` is a properly
    // laid out `struct nvme_admin_cmd` (size checked above) that the kernel reads and
    // writes (`result`) within its size; `cmd.addr` points at `log`, which is
    // `data_len` bytes long, writable, and lives across the call. A device that is
    // not NVMe rejects the unknown ioctl (ENOTTY) without touching either.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            NVME_IOCTL_ADMIN_CMD as _,
            &mut cmd as *mut NvmeAdminCmd,
        )
    };
    check(ret)?;
    if ret > 0 {
        // A positive value is the NVMe status of a command the device refused.
        return Err(io::Error::other(format!("NVMe status {ret:#x}")));
    }
    Ok(log)
}

/// Marks every open descriptor from 3 up close-on-exec, so that a program we start
/// gets only its stdio: GLib's spawn (qemu-ga) closes them all in the child, and
/// descriptors the agent inherited from whoever started it are not marked.
/// One `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11+); on older kernels,
/// each descriptor listed in `/proc/self/fd`. Best effort: without either, nothing
/// is marked.
pub(crate) fn cloexec_from_3() {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if ret == 0 {
        return;
    }
    // ENOSYS (before 5.9) or EINVAL (the flag, before 5.11).
    cloexec_from_3_by_listing();
}

/// [`cloexec_from_3`] through `/proc/self/fd`.
fn cloexec_from_3_by_listing() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<libc::c_int> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_GETFD/F_SETFD only read and set the descriptor flag of a number;
        // one closed meanwhile (the listing's own descriptor) just gets EBADF.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// `openat(dir, path, flags | O_CLOEXEC)`; `dir` `None` is the working directory.
/// The path is NUL-terminated on the stack (nix's `NixPath`), so a relative sysfs
/// name costs no allocation.
pub(crate) fn open_at<P: ?Sized + nix::NixPath>(
    dir: Option<BorrowedFd<'_>>,
    path: &P,
    flags: OFlag,
) -> io::Result<File> {
    let flags = flags | OFlag::O_CLOEXEC;
    match dir {
        Some(d) => nix::fcntl::openat(d, path, flags, Mode::empty()),
        None => nix::fcntl::open(path, flags, Mode::empty()),
    }
    .map(File::from)
    .map_err(io::Error::from)
}

/// Opens a directory for [`Dents`], as `opendir` does (`O_RDONLY | O_NONBLOCK |
/// O_DIRECTORY | O_CLOEXEC`), with the same errors.
pub(crate) fn open_dir_at<P: ?Sized + nix::NixPath>(
    dir: Option<BorrowedFd<'_>>,
    path: &P,
) -> io::Result<File> {
    open_at(
        dir,
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_DIRECTORY,
    )
}

/// A whole `/proc` text file (`stat`, `mountinfo`, `net/dev`): [`read_text`] of it.
pub(crate) fn read_proc_text(path: &Path) -> io::Result<String> {
    read_text(&mut File::open(path)?)
}

/// The rest of a file as text, in 16 KiB steps. `fs::read_to_string` sizes its
/// buffer by `statx`, which says 0 for procfs files, then reads 32, 32, 64, 128...
/// bytes: 8 reads for a 1.5 KB `/proc/stat` or mountinfo, where this makes one
/// read and the one that sees the end. Not valid UTF-8: `InvalidData`, as
/// `read_to_string`.
pub(crate) fn read_text(file: &mut File) -> io::Result<String> {
    use std::io::Read;
    const STEP: usize = 16 * 1024;
    let mut buf = vec![0u8; STEP];
    let mut len = 0;
    loop {
        if buf.len() - len < STEP / 2 {
            buf.resize(buf.len() + STEP, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// One `pread(fd, buf, 0)`: how many bytes were read. A sysfs attribute gives its
/// whole value to the first read (the value is at most a page), so small
/// attributes need neither `read_to_string`'s `statx` nor its read to EOF.
pub(crate) fn pread0(file: &File, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// The whole of a small file opened relative to `dir`: a sysfs attribute (at most a
/// page, all of it given by the first read) or a small regular file (`/run/udev`
/// entries, fixture trees). Reads in 4 KiB steps and stops at a short read, which
/// for those files is the end: no `statx` and no extra read for EOF, as
/// `fs::read` makes. Not for procfs seq files (`mountinfo`), whose reads stop at
/// page boundaries.
pub(crate) fn read_small_at<P: ?Sized + nix::NixPath>(
    dir: Option<BorrowedFd<'_>>,
    path: &P,
) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_at(dir, path, OFlag::O_RDONLY)?;
    let mut buf = [0u8; 4096];
    let mut out = Vec::new();
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// The path the kernel has for an open descriptor (`/proc/self/fd/N`): what
/// `realpath` of the path it was opened by gives, in three system calls (open,
/// this readlink, close) instead of `canonicalize`'s readlink per component.
/// `None` when that cannot be trusted (no `/proc`, a path outside this root,
/// a removed file), so the caller falls back to `canonicalize`.
pub(crate) fn fd_path(file: &File) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut link = NameBuf::new();
    if !(link.push(b"/proc/self/fd/") && link.push_int(file.as_raw_fd().into())) {
        return None;
    }
    let target = nix::fcntl::readlink(link.as_bytes()).ok()?;
    let bytes = target.as_bytes();
    if !bytes.starts_with(b"/") || bytes.ends_with(b" (deleted)") {
        return None;
    }
    Some(target.into())
}

/// `d_type` of a directory entry (`DT_DIR`, `DT_LNK`, ...; `DT_UNKNOWN` when the
/// filesystem does not say).
pub(crate) type DType = u8;

/// One directory entry, borrowed from the [`Dents`] buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dent<'a> {
    /// The name, NUL-terminated as the kernel wrote it (so it can be passed to
    /// `openat` relative to the directory as is).
    pub(crate) name: &'a CStr,
    /// The entry's `d_type`.
    pub(crate) d_type: DType,
}

impl Dent<'_> {
    /// The name's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.name.to_bytes()
    }

    /// Its type as `std::fs::DirEntry::file_type` gives it: `d_type`, or when that
    /// is `DT_UNKNOWN` the `lstat` of the entry (`None` if that fails).
    pub(crate) fn file_type(&self, dir: BorrowedFd<'_>) -> Option<DType> {
        if self.d_type != libc::DT_UNKNOWN {
            return Some(self.d_type);
        }
        let st = nix::sys::stat::fstatat(dir, self.name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .ok()?;
        Some(match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => libc::DT_DIR,
            libc::S_IFLNK => libc::DT_LNK,
            libc::S_IFREG => libc::DT_REG,
            libc::S_IFBLK => libc::DT_BLK,
            libc::S_IFCHR => libc::DT_CHR,
            libc::S_IFIFO => libc::DT_FIFO,
            libc::S_IFSOCK => libc::DT_SOCK,
            _ => libc::DT_UNKNOWN,
        })
    }
}

/// A directory listing with raw `getdents64`, entries in the kernel's (`readdir`)
/// order, `.` and `..` left out. Unlike `std::fs::read_dir` (glibc's `opendir`), it
/// makes no `fstat` and no allocation per entry: one buffer for the whole listing.
pub(crate) struct Dents {
    /// What the last getdents64 call wrote.
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Dents {
    /// glibc's `opendir` buffer size: sysfs directories of a few hundred entries
    /// (`/sys/devices/system/memory`) come in one call.
    const SIZE: usize = 32 * 1024;

    pub(crate) fn new() -> Self {
        Self::with_capacity(Self::SIZE)
    }

    /// A listing with a smaller buffer, for directories known to be short
    /// (`slaves/`), walked recursively.
    pub(crate) fn with_capacity(size: usize) -> Self {
        // Not zeroed (a 32 KiB memset costs about a microsecond, as much as a
        // sysfs open): the kernel fills it, and only what it wrote is read.
        Dents {
            buf: Vec::with_capacity(size.max(512)),
            pos: 0,
            done: false,
        }
    }

    /// The next entry of the directory open as `dir` (always the same one).
    pub(crate) fn next(&mut self, dir: BorrowedFd<'_>) -> io::Result<Option<Dent<'_>>> {
        let (start, end) = loop {
            if self.pos >= self.buf.len() {
                if self.done {
                    return Ok(None);
                }
                self.buf.clear();
                let cap = self.buf.capacity();
                // SAFETY: getdents64 writes at most `cap` bytes of `struct
                // linux_dirent64` records into the buffer's allocation, which is
                // `cap` bytes long, writable and lives across the call; `dir` is an
                // open descriptor.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        dir.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        cap,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    return Err(e);
                }
                self.pos = 0;
                // SAFETY: the kernel initialized the first `n` bytes (at most
                // `cap`); nothing past them is ever read.
                unsafe { self.buf.set_len((n as usize).min(cap)) };
                if self.buf.is_empty() {
                    self.done = true;
                    return Ok(None);
                }
            }
            // struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type;
            // char d_name[]; }
            let rec = &self.buf[self.pos..];
            if rec.len() < 20 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let reclen = u16::from_ne_bytes([rec[16], rec[17]]) as usize;
            if reclen < 20 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let start = self.pos;
            self.pos += reclen;
            let name = &self.buf[start + 19..start + reclen];
            if name.starts_with(b".\0") || name.starts_with(b"..\0") {
                continue;
            }
            break (start, start + reclen);
        };
        let rec = &self.buf[start..end];
        let Ok(name) = CStr::from_bytes_until_nul(&rec[19..]) else {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        };
        Ok(Some(Dent {
            name,
            d_type: rec[18],
        }))
    }
}

/// A short byte string built on the stack (`memory196/state`), for `openat` names.
pub(crate) struct NameBuf {
    buf: [u8; 64],
    len: usize,
}

impl NameBuf {
    pub(crate) fn new() -> Self {
        NameBuf {
            buf: [0; 64],
            len: 0,
        }
    }

    /// Appends `bytes`; false (and nothing appended) when they do not fit.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> bool {
        let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) else {
            return false;
        };
        dst.copy_from_slice(bytes);
        self.len += bytes.len();
        true
    }

    /// Appends `v` in decimal.
    pub(crate) fn push_int(&mut self, v: i64) -> bool {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut u = v.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (u % 10) as u8;
            u /= 10;
            if u == 0 {
                break;
            }
        }
        (v >= 0 || self.push(b"-")) && self.push(&digits[i..])
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn dents_lists_what_read_dir_lists_with_types() {
        let dir = tempfile::tempdir().unwrap();
        let mut want = Vec::new();
        for i in 0..700 {
            // Enough long names to need several getdents64 calls.
            let name = format!("entry-with-a-rather-long-name-{i:04}");
            if i % 3 == 0 {
                std::fs::create_dir(dir.path().join(&name)).unwrap();
            } else {
                std::fs::write(dir.path().join(&name), "").unwrap();
            }
            want.push((name, i % 3 == 0));
        }
        std::os::unix::fs::symlink("x", dir.path().join("link")).unwrap();
        want.push(("link".into(), false));
        let fd = open_dir_at(None, dir.path()).unwrap();
        let mut dents = Dents::new();
        let mut got = Vec::new();
        let mut link_type = None;
        while let Some(e) = dents.next(fd.as_fd()).unwrap() {
            let name = String::from_utf8(e.bytes().to_vec()).unwrap();
            let t = e.file_type(fd.as_fd());
            if name == "link" {
                link_type = t;
            }
            got.push((name, t == Some(libc::DT_DIR)));
        }
        assert_eq!(link_type, Some(libc::DT_LNK));
        // The same order as std's listing, which is readdir's.
        let std_order: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            got.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            std_order
        );
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // Exhausted stays exhausted.
        assert!(dents.next(fd.as_fd()).unwrap().is_none());
        assert_eq!(
            open_dir_at(None, &dir.path().join("link"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn small_reads_and_fd_paths() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        for len in [0usize, 1, 4095, 4096, 4097, 10_000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            std::fs::write(real.join("f"), &data).unwrap();
            assert_eq!(read_small_at(None, &real.join("f")).unwrap(), data, "{len}");
        }
        std::fs::create_dir(real.join("d")).unwrap();
        std::os::unix::fs::symlink("d", real.join("l")).unwrap();
        let d = open_dir_at(None, &real.join("l")).unwrap();
        assert_eq!(fd_path(&d).unwrap(), real.join("d"));
        assert_eq!(
            read_small_at(Some(d.as_fd()), "missing")
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
        // A removed directory is not reported as a path.
        std::fs::remove_dir(real.join("d")).unwrap();
        assert_eq!(fd_path(&d), None);
        // The uevent of a real sysfs device comes whole from one read.
        if let Ok(text) = std::fs::read("/sys/devices/system/cpu/cpu0/uevent") {
            assert_eq!(
                read_small_at(None, "/sys/devices/system/cpu/cpu0/uevent").unwrap(),
                text
            );
        }
    }

    #[test]
    fn name_buf_formats_like_format() {
        for v in [0i64, 7, 196, -1, i64::MAX, i64::MIN] {
            let mut n = NameBuf::new();
            assert!(n.push(b"memory") && n.push_int(v) && n.push(b"/state"));
            assert_eq!(n.as_bytes(), format!("memory{v}/state").as_bytes());
        }
        let mut n = NameBuf::new();
        assert!(!n.push(&[b'x'; 65]));
        assert!(n.as_bytes().is_empty());
    }

    /// A descriptor without close-on-exec (`dup` never sets it), and whether a
    /// descriptor has it.
    fn inheritable() -> libc::c_int {
        // SAFETY: dup of stdin (or of whatever fd 0 is); checked below.
        let fd = unsafe { libc::dup(0) };
        assert!(fd > 2, "dup failed");
        assert!(!cloexec(fd));
        fd
    }

    fn cloexec(fd: libc::c_int) -> bool {
        // SAFETY: F_GETFD only reads a flag.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn every_descriptor_from_3_gets_close_on_exec_both_ways() {
        for mark in [cloexec_from_3 as fn(), cloexec_from_3_by_listing] {
            let fd = inheritable();
            mark();
            assert!(cloexec(fd));
            // SAFETY: closing the descriptor this test made.
            unsafe { libc::close(fd) };
        }
    }
}
