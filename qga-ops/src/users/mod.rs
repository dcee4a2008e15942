//! guest-set-user-password and guest-ssh-get/add/remove-authorized-keys.
//!
//! Passwords go to `chpasswd` on its standard input (`user:password\n`), never on a
//! command line, and are never logged.
//!
//! The ssh key commands work in a directory the user controls, while the agent runs
//! as root. qemu-ga 7.2 follows whatever the user planted there: through
//! `~/.ssh/authorized_keys -> /etc/shadow` it copies the shadow file into a file the
//! user owns, through `~/.ssh -> /root/.ssh` it rewrites root's keys and hands them
//! to the user. [`LinuxUsers`] does not:
//! - the home directory (an administrator's path, from the user database) is opened
//!   once; everything below it is reached relative to that descriptor, `.ssh` with
//!   `O_DIRECTORY | O_NOFOLLOW` and `authorized_keys` with `O_NOFOLLOW`, so a
//!   symbolic link is refused with an error naming it, never followed;
//! - the home directory, `.ssh` and `authorized_keys` must belong to the user or to
//!   root, `.ssh` must not be writable by group or others (sshd's StrictModes would
//!   ignore its keys anyway), and `authorized_keys` must be a regular file with a
//!   single link (a hard link to `/etc/shadow` is refused);
//! - a new file is written to a temporary file with a random name created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW` in `.ssh`, synced, renamed over
//!   `authorized_keys` in the same directory, and the directory is synced: readers
//!   see the old file or the new one, never half of it;
//! - with [`LinuxUsers::as_user`] (the default), the file work runs in a short-lived
//!   thread whose filesystem credentials are the user's (`setfsuid`, `setfsgid`,
//!   the user's primary group as its only group): the agent can do nothing there
//!   that the user could not do, and what it creates belongs to the user without a
//!   `chown`. The agent never changes the owner of anything it did not create.

mod sys;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fsync, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::OpsError;

/// Setting user passwords and managing users' ssh `authorized_keys`.
pub trait Users: Send + Sync {
    /// Sets `user`'s password to `password` (the decoded bytes), or to the crypt(3)
    /// hash `password` when `crypted`.
    fn set_password(&self, user: &str, password: &[u8], crypted: bool) -> Result<(), OpsError>;

    /// The keys of `user`'s `~/.ssh/authorized_keys`, in file order, each line
    /// trimmed, without blank lines and comments.
    fn authorized_keys(&self, user: &str) -> Result<Vec<String>, OpsError>;

    /// Adds `keys` that the file does not have yet (or, with `reset`, replaces the
    /// whole file with `keys`), creating `~/.ssh` and the file as needed.
    fn add_authorized_keys(&self, user: &str, keys: &[String], reset: bool)
        -> Result<(), OpsError>;

    /// Removes every line equal to one of `keys` (ignoring surrounding blanks);
    /// keys the file does not have, or a missing file, are not an error.
    fn remove_authorized_keys(&self, user: &str, keys: &[String]) -> Result<(), OpsError>;
}

/// A user, as the user database describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// The error for a user the database does not know. qemu-ga 7.2 says
/// `failed to lookup user 'x': Success` (GLib reports errno 0); we keep its prefix
/// and say what happened.
pub fn no_such_user(user: &str) -> OpsError {
    OpsError::failed(format!("failed to lookup user '{user}': no such user"))
}

/// Finds `user` in the text of a passwd(5) file (`name:x:uid:gid:gecos:home:shell`).
/// Malformed lines and NIS `+`/`-` entries are skipped.
pub fn parse_passwd(text: &[u8], user: &str) -> Option<Account> {
    if user.is_empty() {
        return None;
    }
    text.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let mut f = line.split(':');
        let name = f.next()?;
        if name != user || name.starts_with(['+', '-']) {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        let _gecos = f.next()?;
        let home = f.next()?;
        Some(Account {
            name: name.to_owned(),
            uid,
            gid,
            home: PathBuf::from(home),
        })
    })
}

/// Refuses what cannot go on chpasswd's `user:password` line, with qemu-ga's texts:
/// a newline in the password (`forbidden characters in raw password`, checked
/// first), a newline or `:` in the user name (`forbidden characters in username`).
/// A NUL byte is refused too (qemu-ga's C strings silently cut at it).
pub fn check_password_args(user: &str, password: &[u8]) -> Result<(), OpsError> {
    if password.iter().any(|&b| b == b'\n' || b == 0) {
        return Err(OpsError::failed("forbidden characters in raw password"));
    }
    if user.contains(['\n', ':', '\0']) {
        return Err(OpsError::failed("forbidden characters in username"));
    }
    Ok(())
}

/// Checks one public key as qemu-ga does (no comment, no newline), and also refuses
/// what cannot be a key line at all: carriage returns and NUL bytes. A blank key is
/// accepted, as 7.2 accepts it (libvirt's `set-user-sshkeys --file` sends one for
/// a file's trailing newline), and ignored by add and remove.
/// The text is qemu-ga's: `invalid OpenSSH public key: 'key'`.
pub fn check_key(key: &str) -> Result<(), OpsError> {
    let t = key.trim_ascii();
    if t.starts_with('#') || key.contains(['\n', '\r', '\0']) {
        return Err(OpsError::failed(format!(
            "invalid OpenSSH public key: '{key}'"
        )));
    }
    Ok(())
}

/// Checks every key (the first bad one is the error).
pub fn check_keys(keys: &[String]) -> Result<(), OpsError> {
    keys.iter().try_for_each(|k| check_key(k))
}

fn lines(contents: &[u8]) -> Vec<&[u8]> {
    if contents.is_empty() {
        return Vec::new();
    }
    let body = contents.strip_suffix(b"\n").unwrap_or(contents);
    body.split(|&b| b == b'\n').collect()
}

fn join(lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out
}

fn same_key(line: &[u8], key: &str) -> bool {
    line.trim_ascii() == key.as_bytes().trim_ascii()
}

/// The keys of an `authorized_keys` text: each line trimmed, blank lines and `#`
/// comments left out, in file order (qemu-ga 7.2 returns them reversed).
pub fn parse_authorized_keys(contents: &[u8]) -> Vec<String> {
    lines(contents)
        .into_iter()
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty() && !l.starts_with(b"#"))
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

/// `existing` (a file's text; `None`: no file, or a reset) with the `keys` it does
/// not have yet appended, one per line. Every other line (comments, options, blank
/// lines) is kept as it was; the result ends with a newline unless it is empty.
pub fn add_keys(existing: Option<&[u8]>, keys: &[String]) -> Vec<u8> {
    let mut out = existing.map(lines).unwrap_or_default();
    for k in keys.iter().filter(|k| !k.trim_ascii().is_empty()) {
        if !out.iter().any(|l| same_key(l, k)) {
            out.push(k.as_bytes());
        }
    }
    join(&out)
}

/// `existing` without the lines equal to one of `keys` (ignoring surrounding
/// blanks); every other line is kept as it was.
pub fn remove_keys(existing: &[u8], keys: &[String]) -> Vec<u8> {
    let mut out = lines(existing);
    out.retain(|l| {
        !keys
            .iter()
            .any(|k| !k.trim_ascii().is_empty() && same_key(l, k))
    });
    join(&out)
}

/// Linux: the user database, `chpasswd`, and the users' home directories.
#[derive(Debug, Clone)]
pub struct LinuxUsers {
    /// Where users are looked up: `None` (the default) asks the system's user
    /// database (getpwnam_r, so NSS users too, as qemu-ga); `Some(file)` reads a
    /// passwd(5) file instead (tests, containers).
    pub passwd: Option<PathBuf>,
    /// The `chpasswd` program: `None` (the default) searches `PATH` as qemu-ga does.
    pub chpasswd: Option<PathBuf>,
    /// Do the ssh file work with the user's filesystem credentials when the agent
    /// runs as root (default `true`). `false` keeps root's credentials; the
    /// descriptor-relative, no-symlink rules apply either way.
    pub as_user: bool,
}

impl Default for LinuxUsers {
    fn default() -> Self {
        LinuxUsers {
            passwd: None,
            chpasswd: None,
            as_user: true,
        }
    }
}

/// Largest `authorized_keys` read (16 MiB): a bigger file is refused, not loaded.
pub const MAX_AUTHORIZED_KEYS_SIZE: u64 = 16 << 20;

const SSH_DIR: &str = ".ssh";
const KEYS_FILE: &str = "authorized_keys";

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds `name` in the directories of `path` (a `PATH` value), as a shell would;
/// with no `PATH`, in the usual system directories.
pub fn find_in_path(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    let path = path
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

impl LinuxUsers {
    fn lookup(&self, user: &str) -> Result<Account, OpsError> {
        let account = match &self.passwd {
            Some(file) => {
                let text = std::fs::read(file)
                    .map_err(|e| OpsError::os(format!("failed to lookup user '{user}'"), e))?;
                parse_passwd(&text, user)
            }
            None => match nix::unistd::User::from_name(user) {
                Ok(u) => u.map(|u| Account {
                    name: u.name,
                    uid: u.uid.as_raw(),
                    gid: u.gid.as_raw(),
                    home: u.dir,
                }),
                Err(e) => {
                    return Err(OpsError::os(
                        format!("failed to lookup user '{user}'"),
                        errno_io(e),
                    ))
                }
            },
        };
        let account = account.ok_or_else(|| no_such_user(user))?;
        if !account.home.is_absolute() {
            return Err(OpsError::failed(format!(
                "user '{user}' has no absolute home directory ('{}')",
                account.home.display()
            )));
        }
        Ok(account)
    }

    fn chpasswd(&self) -> Option<PathBuf> {
        match &self.chpasswd {
            Some(p) => is_executable(p).then(|| p.clone()),
            None => find_in_path("chpasswd", std::env::var_os("PATH")),
        }
    }

    /// Opens the user's home and runs `work` on it, with the user's filesystem
    /// credentials when configured and possible.
    /// A missing home directory is `missing_home()`'s answer, as for a missing
    /// `.ssh` (qemu-ga never looks at the home directory itself).
    fn in_home<R: Send>(
        &self,
        account: &Account,
        missing_home: impl FnOnce() -> Result<R, OpsError>,
        work: impl FnOnce(&Home<'_>) -> Result<R, OpsError> + Send,
    ) -> Result<R, OpsError> {
        // The home path is the administrator's: follow it as it is.
        let fd = match nix::fcntl::open(
            &account.home,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return missing_home(),
            Err(e) => {
                return Err(OpsError::os(
                    format!("failed to open home directory '{}'", account.home.display()),
                    errno_io(e),
                ))
            }
        };
        let home = Home {
            fd,
            path: &account.home,
            account,
        };
        home.check_owner(&home.fd, &account.home)?;
        let switch = self.as_user && nix::unistd::geteuid().is_root() && account.uid != 0;
        if !switch {
            return work(&home);
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                become_user(account)?;
                work(&home)
            })
            .join()
            .unwrap_or_else(|_| Err(OpsError::failed("ssh key worker thread panicked")))
        })
    }
}

/// Gives the calling thread (only) `account`'s filesystem identity: its primary
/// group as the only group, then its fsgid and fsuid. Dropping fsuid 0 also drops
/// the thread's filesystem capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER...).
fn become_user(account: &Account) -> Result<(), OpsError> {
    let failed = |what: &str| {
        OpsError::failed(format!(
            "failed to take the {what} of user '{}'",
            account.name
        ))
    };
    sys::set_thread_groups(&[account.gid]).map_err(|e| {
        OpsError::os(
            format!("failed to take the groups of user '{}'", account.name),
            e,
        )
    })?;
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    nix::unistd::setfsgid(gid);
    // Both calls return the previous value: asking again tells whether it took.
    if nix::unistd::setfsgid(gid) != gid {
        return Err(failed("group id"));
    }
    nix::unistd::setfsuid(uid);
    if nix::unistd::setfsuid(uid) != uid {
        return Err(failed("user id"));
    }
    Ok(())
}

/// An open home directory.
struct Home<'a> {
    fd: OwnedFd,
    path: &'a Path,
    account: &'a Account,
}

/// An open `~/.ssh`.
struct SshDir<'a> {
    fd: OwnedFd,
    path: PathBuf,
    account: &'a Account,
}

fn refuse_symlink(path: &Path) -> OpsError {
    OpsError::failed(format!(
        "refusing to follow symbolic link '{}'",
        path.display()
    ))
}

/// qemu-ga's text for a missing `authorized_keys` (GLib's message inside).
fn read_missing(path: &Path) -> OpsError {
    let p = path.display();
    OpsError::failed(format!(
        "failed to read '{p}': Failed to open file \u{201c}{p}\u{201d}: No such file or directory"
    ))
}

impl Home<'_> {
    /// The owner of `st` must be the user or root.
    fn check_owner(&self, fd: &OwnedFd, path: &Path) -> Result<FileStat, OpsError> {
        let st = fstat(fd).map_err(|e| {
            OpsError::os(format!("failed to stat '{}'", path.display()), errno_io(e))
        })?;
        check_owner(&st, self.account, path)?;
        Ok(st)
    }

    fn ssh_path(&self) -> PathBuf {
        self.path.join(SSH_DIR)
    }

    /// Opens `.ssh` without following a link; `None` if it does not exist and
    /// `create` is false.
    fn ssh_dir(&self, create: bool) -> Result<Option<SshDir<'_>>, OpsError> {
        let path = self.ssh_path();
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut created = false;
        let fd = loop {
            match openat(&self.fd, SSH_DIR, flags, Mode::empty()) {
                Ok(fd) => break fd,
                Err(Errno::ENOENT) if create && !created => {
                    match mkdirat(&self.fd, SSH_DIR, Mode::from_bits_truncate(0o700)) {
                        Ok(()) => created = true,
                        // Someone else made it in the meantime: use theirs, checked.
                        Err(Errno::EEXIST) => {}
                        Err(e) => {
                            return Err(OpsError::os(
                                format!("failed to create directory '{}'", path.display()),
                                errno_io(e),
                            ))
                        }
                    }
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    return Err(self.not_a_dir(&path, e));
                }
                Err(e) => {
                    return Err(OpsError::os(
                        format!("failed to open directory '{}'", path.display()),
                        errno_io(e),
                    ))
                }
            }
        };
        let mut st = self.check_owner(&fd, &path)?;
        if created {
            // Only a directory this call made, still owned by whoever made it
            // (root, when not working as the user), is handed to the user. With
            // root's credentials a user racing us could rename another root-owned
            // directory of theirs to `.ssh` between mkdirat and openat; with the
            // user's (the default) the directory is theirs and nothing is chowned.
            let me = nix::unistd::geteuid().as_raw();
            if st.st_uid != self.account.uid && st.st_uid == me {
                chown_created(&fd, self.account, &path)?;
            }
            fchmod(&fd, Mode::from_bits_truncate(0o700)).map_err(|e| {
                OpsError::os(
                    format!(
                        "failed to set permissions of directory '{}'",
                        path.display()
                    ),
                    errno_io(e),
                )
            })?;
            st.st_mode = (st.st_mode & !0o7777) | 0o700;
        }
        if st.st_mode & 0o022 != 0 {
            return Err(OpsError::failed(format!(
                "refusing to use '{}': it is writable by group or others (mode {:o})",
                path.display(),
                st.st_mode & 0o7777
            )));
        }
        Ok(Some(SshDir {
            fd,
            path,
            account: self.account,
        }))
    }

    fn not_a_dir(&self, path: &Path, e: Errno) -> OpsError {
        match fstatat(&self.fd, SSH_DIR, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st)
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
                    == SFlag::S_IFLNK =>
            {
                refuse_symlink(path)
            }
            _ => OpsError::os(
                format!("failed to open directory '{}'", path.display()),
                errno_io(e),
            ),
        }
    }
}

fn check_owner(st: &FileStat, account: &Account, path: &Path) -> Result<(), OpsError> {
    if st.st_uid != account.uid && st.st_uid != 0 {
        return Err(OpsError::failed(format!(
            "refusing to use '{}': it belongs to uid {}, neither to '{}' nor to root",
            path.display(),
            st.st_uid,
            account.name
        )));
    }
    Ok(())
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn chown_created(fd: &OwnedFd, account: &Account, path: &Path) -> Result<(), OpsError> {
    fchown(
        fd,
        Some(Uid::from_raw(account.uid)),
        Some(Gid::from_raw(account.gid)),
    )
    .map_err(|e| {
        OpsError::os(
            format!("failed to set ownership of '{}'", path.display()),
            errno_io(e),
        )
    })
}

/// A random-enough suffix for temporary names (they are created with O_EXCL, so
/// a guessed name only costs a retry).
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

impl SshDir<'_> {
    fn keys_path(&self) -> PathBuf {
        self.path.join(KEYS_FILE)
    }

    /// The file's contents, `None` if there is none. A link, a file that is not
    /// regular, has other links, or belongs to someone else is refused.
    fn read(&self) -> Result<Option<Vec<u8>>, OpsError> {
        let path = self.keys_path();
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, KEYS_FILE, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refuse_symlink(&path)),
            Err(e) => {
                return Err(OpsError::os(
                    format!("failed to read '{}'", path.display()),
                    errno_io(e),
                ))
            }
        };
        let st = fstat(&fd).map_err(|e| {
            OpsError::os(format!("failed to read '{}'", path.display()), errno_io(e))
        })?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(OpsError::failed(format!(
                "refusing to read '{}': not a regular file",
                path.display()
            )));
        }
        if st.st_nlink != 1 {
            return Err(OpsError::failed(format!(
                "refusing to use '{}': it has {} hard links",
                path.display(),
                st.st_nlink
            )));
        }
        check_owner(&st, self.account, &path)?;
        if st.st_size as u64 > MAX_AUTHORIZED_KEYS_SIZE {
            return Err(OpsError::failed(format!(
                "refusing to read '{}': larger than {} bytes",
                path.display(),
                MAX_AUTHORIZED_KEYS_SIZE
            )));
        }
        let mut data = Vec::new();
        File::from(fd)
            .take(MAX_AUTHORIZED_KEYS_SIZE + 1)
            .read_to_end(&mut data)
            .map_err(|e| OpsError::os(format!("failed to read '{}'", path.display()), e))?;
        Ok(Some(data))
    }

    /// Replaces `authorized_keys` with `contents` atomically: a temporary file in
    /// `.ssh` (random name, O_EXCL | O_NOFOLLOW, mode 0600, the user's), synced,
    /// renamed over the file, then the directory synced.
    fn write(&self, contents: &[u8]) -> Result<(), OpsError> {
        let path = self.keys_path();
        let werr =
            |e: io::Error| OpsError::os(format!("failed to write to '{}'", path.display()), e);
        // Replacing a link would be harmless (rename replaces the link itself), but
        // the user put it there for a reason: say so instead.
        match fstatat(&self.fd, KEYS_FILE, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFLNK => return Err(refuse_symlink(&path)),
            Ok(st) if file_type(&st) != SFlag::S_IFREG => {
                return Err(OpsError::failed(format!(
                    "refusing to replace '{}': not a regular file",
                    path.display()
                )))
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(werr(errno_io(e))),
        }
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut attempt = 0;
        let (tmp, fd) = loop {
            let tmp = format!(".{KEYS_FILE}.qga-{}", random_suffix());
            match openat(
                &self.fd,
                tmp.as_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (tmp, fd),
                Err(Errno::EEXIST) if attempt < 16 => attempt += 1,
                Err(e) => return Err(werr(errno_io(e))),
            }
        };
        let result = self.fill(&fd, &tmp, contents).and_then(|()| {
            renameat(&self.fd, tmp.as_str(), &self.fd, KEYS_FILE).map_err(|e| werr(errno_io(e)))
        });
        if result.is_err() {
            let _ = unlinkat(&self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            return result;
        }
        fsync(&self.fd).map_err(|e| werr(errno_io(e)))
    }

    /// Owner, mode, contents and sync of the temporary file this call created.
    fn fill(&self, fd: &OwnedFd, tmp: &str, contents: &[u8]) -> Result<(), OpsError> {
        let path = self.keys_path();
        let werr =
            |e: io::Error| OpsError::os(format!("failed to write to '{}'", path.display()), e);
        let st = fstat(fd).map_err(|e| werr(errno_io(e)))?;
        if st.st_uid != self.account.uid {
            chown_created(fd, self.account, &self.path.join(tmp))?;
        }
        fchmod(fd, Mode::from_bits_truncate(0o600)).map_err(|e| {
            OpsError::os(
                format!("failed to set permissions of '{}'", path.display()),
                errno_io(e),
            )
        })?;
        let mut file = File::from(fd.try_clone().map_err(werr)?);
        file.write_all(contents).map_err(werr)?;
        file.sync_all().map_err(werr)
    }
}

impl Users for LinuxUsers {
    fn set_password(&self, user: &str, password: &[u8], crypted: bool) -> Result<(), OpsError> {
        check_password_args(user, password)?;
        let program = self
            .chpasswd()
            .ok_or_else(|| OpsError::failed("cannot find 'passwd' program in PATH"))?;
        let mut cmd = Command::new(&program);
        if crypted {
            cmd.arg("-e");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| OpsError::os(format!("failed to run '{}'", program.display()), e))?;
        let mut line = Vec::with_capacity(user.len() + password.len() + 2);
        line.extend_from_slice(user.as_bytes());
        line.push(b':');
        line.extend_from_slice(password);
        line.push(b'\n');
        // A child that exits early breaks the pipe: its exit status tells.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&line);
        }
        // Best effort: do not leave the password lying in freed memory.
        line.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&line);
        let status = child
            .wait()
            .map_err(|e| OpsError::os(format!("failed to wait for '{}'", program.display()), e))?;
        if !status.success() {
            return Err(OpsError::failed(
                "child process has failed to set user password",
            ));
        }
        Ok(())
    }

    fn authorized_keys(&self, user: &str) -> Result<Vec<String>, OpsError> {
        let account = self.lookup(user)?;
        let missing_path = account.home.join(SSH_DIR).join(KEYS_FILE);
        self.in_home(
            &account,
            || Err(read_missing(&missing_path)),
            |home| {
                let missing = || read_missing(&home.ssh_path().join(KEYS_FILE));
                let dir = home.ssh_dir(false)?.ok_or_else(missing)?;
                let data = dir.read()?.ok_or_else(missing)?;
                Ok(parse_authorized_keys(&data))
            },
        )
    }

    fn add_authorized_keys(
        &self,
        user: &str,
        keys: &[String],
        reset: bool,
    ) -> Result<(), OpsError> {
        check_keys(keys)?;
        let account = self.lookup(user)?;
        let ssh_path = account.home.join(SSH_DIR);
        let missing_home = || {
            Err(OpsError::os(
                format!("failed to create directory '{}'", ssh_path.display()),
                io::Error::from_raw_os_error(libc::ENOENT),
            ))
        };
        self.in_home(&account, missing_home, |home| {
            let dir = home.ssh_dir(true)?.ok_or_else(|| {
                OpsError::failed(format!(
                    "failed to create directory '{}'",
                    home.ssh_path().display()
                ))
            })?;
            let existing = if reset { None } else { dir.read()? };
            dir.write(&add_keys(existing.as_deref(), keys))
        })
    }

    fn remove_authorized_keys(&self, user: &str, keys: &[String]) -> Result<(), OpsError> {
        check_keys(keys)?;
        let account = self.lookup(user)?;
        self.in_home(
            &account,
            || Ok(()),
            |home| {
                let Some(dir) = home.ssh_dir(false)? else {
                    return Ok(());
                };
                let Some(existing) = dir.read()? else {
                    return Ok(());
                };
                let new = remove_keys(&existing, keys);
                if new == existing {
                    return Ok(());
                }
                dir.write(&new)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn passwd_lines() {
        let text = b"root:x:0:0:root:/root:/bin/bash\n+nis::::::\nbad\nalice:x:1000:100:A,,,:/home/alice:/bin/sh\n";
        let a = parse_passwd(text, "alice").unwrap();
        assert_eq!(
            (a.uid, a.gid, a.home.as_path()),
            (1000, 100, Path::new("/home/alice"))
        );
        assert_eq!(parse_passwd(text, "root").unwrap().uid, 0);
        assert_eq!(parse_passwd(text, "bob"), None);
        assert_eq!(parse_passwd(text, ""), None);
        assert_eq!(parse_passwd(text, "+nis"), None);
        assert_eq!(parse_passwd(text, "bad"), None);
    }

    #[test]
    fn key_rules() {
        assert!(check_key("ssh-ed25519 AAAA x").is_ok());
        // Blank keys pass (7.2 takes them; add and remove ignore them).
        assert!(check_key("").is_ok() && check_key("  ").is_ok());
        let keys = |v: &[&str]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(add_keys(None, &keys(&["k a", "", " "])), b"k a\n");
        assert_eq!(remove_keys(b"k a\n\nk b\n", &keys(&[""])), b"k a\n\nk b\n");
        for bad in ["#c", " # c", "a\nb", "a\rb", "a\0b"] {
            let e = check_key(bad).unwrap_err().to_string();
            assert_eq!(e, format!("invalid OpenSSH public key: '{bad}'"));
        }
    }

    #[test]
    fn add_remove_parse() {
        let f = b"# c\nk1 a\n\n  k2 b  \n";
        assert_eq!(parse_authorized_keys(f), ["k1 a", "k2 b"]);
        assert_eq!(
            add_keys(Some(f), &keys(&["k2 b", "k3", "k3"])),
            b"# c\nk1 a\n\n  k2 b  \nk3\n"
        );
        assert_eq!(add_keys(None, &keys(&[])), b"");
        assert_eq!(add_keys(Some(b"k1"), &keys(&["k2"])), b"k1\nk2\n");
        assert_eq!(remove_keys(f, &keys(&["k2 b", "nope"])), b"# c\nk1 a\n\n");
        assert_eq!(remove_keys(b"k\nk\n", &keys(&["k"])), b"");
    }

    #[test]
    fn password_chars() {
        assert!(check_password_args("u", b"p w").is_ok());
        let e = |u: &str, p: &[u8]| check_password_args(u, p).unwrap_err().to_string();
        assert_eq!(e("u:x", b"a\n"), "forbidden characters in raw password");
        assert_eq!(e("u", b"a\0"), "forbidden characters in raw password");
        assert_eq!(e("u:x", b"a"), "forbidden characters in username");
        assert_eq!(e("u\n", b"a"), "forbidden characters in username");
    }

    #[test]
    fn path_search() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("prog");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        assert_eq!(find_in_path("prog", Some(d.path().into())), None);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths(["/nonexistent".as_ref(), d.path()]).unwrap();
        assert_eq!(find_in_path("prog", Some(path)), Some(p));
    }
}
