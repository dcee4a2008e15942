//! Every `unsafe` block of the crate: the filesystem ioctls, the NVMe admin ioctl
//! and marking inherited descriptors close-on-exec before guest-exec spawns.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

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
