//! The one `unsafe` call of the users module: replacing the supplementary groups of
//! the calling thread only.
//!
//! glibc's `setgroups` (and so `nix::unistd::setgroups`) changes the groups of
//! every thread of the process (it signals each one), which would drop the whole
//! agent's groups. The kernel keeps credentials per thread, so the raw system call
//! changes only the short-lived thread that does a user's file work.

use std::io;

/// The 32-bit-gid `setgroups` system call (on 32-bit x86 and ARM `SYS_setgroups` is
/// the old 16-bit one).
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups32;
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups;

/// Sets the supplementary groups of the calling thread (not the process) to `gids`.
pub(crate) fn set_thread_groups(gids: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the kernel reads `gids.len()` gid_t values from `gids.as_ptr()`, which
    // points at that many initialised values that live across the call; nothing is
    // written. The raw call changes only this thread's credentials, which is what
    // the caller (a dedicated thread that ends right after its work) wants.
    let ret = unsafe { libc::syscall(SYS_SETGROUPS, gids.len(), gids.as_ptr()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
