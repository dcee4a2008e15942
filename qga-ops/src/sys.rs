//! Every `unsafe` block of the crate: the filesystem ioctls.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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
