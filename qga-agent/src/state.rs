//! State that outlives the process, in the state directory (qemu-ga's `-t`):
//! `qga.state` holds the next file handle, `qga.state.isfrozen` exists while
//! filesystems are frozen.
//!
//! The agent runs as root, so every name it touches in the state directory is
//! handled as if someone had planted a link there:
//!
//! * the directory must be owned by the user the agent runs as and writable by
//!   nobody else (a shared directory such as `/tmp`, even sticky, is refused). If the
//!   path itself is a symbolic link (`/var/run` -> `/run` on Debian) it is followed
//!   only when the link belongs to root or to that user. Each operation opens the
//!   directory once, re-checks it, and works relative to that descriptor;
//! * `qga.state` is read with `O_NOFOLLOW`: a link, or anything but a regular file,
//!   is an error that names the path and never shows what is behind it;
//! * `qga.state` is written to a new file with a random name (`O_CREAT|O_EXCL|
//!   O_NOFOLLOW`), fsynced, renamed over `qga.state` (which replaces a link there,
//!   never writes through it), then the directory is fsynced;
//! * the marker is created with `O_CREAT|O_EXCL|O_NOFOLLOW` and never truncated; an
//!   existing regular file is fine, a link (even a dangling one) or any other type is
//!   an error. [`StateDir::is_frozen`] only takes a regular file (`lstat`) as the
//!   marker; removing the marker unlinks the name itself, never a link's target.

use std::fmt;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// First file handle qemu-ga hands out.
pub const FIRST_HANDLE: i64 = 1000;

const STATE_FILE: &str = "qga.state";
const MARKER_FILE: &str = "qga.state.isfrozen";
/// Temp files are `.qga.state.<random hex>.tmp`.
const TEMP_PREFIX: &str = ".qga.state.";
/// `qga.state` is a few bytes; more than this is not ours.
const MAX_STATE_LEN: u64 = 64 * 1024;
/// What to do about an unsafe directory, appended to the refusal.
const ADVICE: &str = "pass -t a directory that only its owner can write, e.g. \
                      `install -d -m 0700 /var/lib/qga-agent` (a missing directory \
                      is created with mode 0700)";

/// The agent's persistent state files. `None` directory = in memory only (tests).
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: Option<PathBuf>,
}

/// Why a state file or the state directory could not be used. The text names the
/// path and never includes anything read from a file.
#[derive(Debug)]
#[non_exhaustive]
pub enum StateError {
    /// A system call on `path` failed (`op` says which step, e.g. "create a temporary
    /// file in").
    Os {
        /// The step that failed, as a verb phrase.
        op: &'static str,
        /// The file or directory it was about.
        path: PathBuf,
        /// The OS error (its errno is kept, see [`StateError::os_error`]).
        source: io::Error,
    },
    /// The state directory can be written by group or others.
    Writable {
        /// The state directory.
        path: PathBuf,
        /// Its permission bits, with the sticky bit.
        mode: u32,
    },
    /// The state directory belongs to another user than the one the agent runs as.
    NotOwner {
        /// The state directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective user of the agent.
        euid: u32,
    },
    /// The state directory path is a symbolic link owned by another user.
    UntrustedLink {
        /// The state directory path (the link).
        path: PathBuf,
        /// The owner of the link.
        owner: u32,
    },
    /// A state file (or the state directory) is a symbolic link or of the wrong type.
    WrongType {
        /// The file.
        path: PathBuf,
        /// What it is, e.g. "a symbolic link".
        found: &'static str,
        /// What it should be, e.g. "a regular file".
        expected: &'static str,
    },
    /// `qga.state` is larger than any state file the agent writes, or not UTF-8.
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        why: &'static str,
    },
}

impl StateError {
    fn os(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        StateError::Os {
            op,
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// The OS error behind this one, if a system call failed (e.g. `EMFILE`).
    pub fn os_error(&self) -> Option<&io::Error> {
        match self {
            StateError::Os { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The cause alone, without the path, for a reply to the host: the C library's
    /// text for an OS error (`Too many open files`), otherwise the full message.
    pub fn reason(&self) -> String {
        match self {
            StateError::Os { source, .. } => strerror(source),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Os { op, path, source } => {
                write!(f, "cannot {op} {}: {}", path.display(), strerror(source))
            }
            StateError::Writable { path, mode } => write!(
                f,
                "state directory {} is writable by group or others (mode {mode:04o}): \
                 refusing to use it; {ADVICE}",
                path.display()
            ),
            StateError::NotOwner { path, owner, euid } => write!(
                f,
                "state directory {} is owned by uid {owner}, not by uid {euid} that the \
                 agent runs as: refusing to use it; {ADVICE}",
                path.display()
            ),
            StateError::UntrustedLink { path, owner } => write!(
                f,
                "state directory {} is a symbolic link owned by uid {owner}: refusing to \
                 follow it; {ADVICE}",
                path.display()
            ),
            StateError::WrongType {
                path,
                found,
                expected,
            } => write!(
                f,
                "{} is {found}, not {expected}: refusing to use it (remove it; the agent \
                 creates what it needs)",
                path.display()
            ),
            StateError::Malformed { path, why } => {
                write!(f, "state file {} {why}", path.display())
            }
        }
    }
}

impl std::error::Error for StateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StateError::Os { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Lets `?` carry a state error out of a function returning `io::Result` (the
/// message is kept; the kind is the OS error's, or `Other`).
impl From<StateError> for io::Error {
    fn from(e: StateError) -> Self {
        let kind = e.os_error().map_or(io::ErrorKind::Other, io::Error::kind);
        io::Error::new(kind, e)
    }
}

/// The C library's text for an OS error, without std's " (os error N)".
fn strerror(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => {
            let suffix = format!(" (os error {code})");
            text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
        }
        None => text,
    }
}

fn file_type(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFIFO => "a named pipe",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "of an unknown type",
    }
}

fn is_type(st: &FileStat, t: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == t.bits()
}

/// A name no one can predict, for a temp file next to `qga.state`.
fn temp_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{TEMP_PREFIX}{:016x}.tmp", h.finish())
}

/// The state directory, opened and checked for one operation.
struct Dir<'a> {
    path: &'a Path,
    fd: OwnedFd,
}

impl Dir<'_> {
    fn open(path: &Path) -> Result<Dir<'_>, StateError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = match nix::fcntl::open(path, flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            // The last component is a link (ELOOP), or not a directory (ENOTDIR).
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = nix::sys::stat::lstat(path)
                    .map_err(|e| StateError::os("inspect state directory", path, e))?;
                if !is_type(&st, SFlag::S_IFLNK) {
                    return Err(StateError::WrongType {
                        path: path.to_owned(),
                        found: file_type(&st),
                        expected: "a directory",
                    });
                }
                if st.st_uid != 0 && st.st_uid != nix::unistd::geteuid().as_raw() {
                    return Err(StateError::UntrustedLink {
                        path: path.to_owned(),
                        owner: st.st_uid,
                    });
                }
                nix::fcntl::open(path, flags, Mode::empty())
                    .map_err(|e| StateError::os("open state directory", path, e))?
            }
            Err(e) => return Err(StateError::os("open state directory", path, e)),
        };
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| StateError::os("inspect state directory", path, e))?;
        let euid = nix::unistd::geteuid().as_raw();
        if st.st_uid != euid {
            return Err(StateError::NotOwner {
                path: path.to_owned(),
                owner: st.st_uid,
                euid,
            });
        }
        if st.st_mode & 0o022 != 0 {
            return Err(StateError::Writable {
                path: path.to_owned(),
                mode: st.st_mode & 0o7777,
            });
        }
        Ok(Dir { path, fd })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `lstat` of `name`; `None` if it does not exist.
    fn lstat(&self, name: &str) -> Result<Option<FileStat>, StateError> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(StateError::os("inspect", &self.join(name), e)),
        }
    }

    /// The error for `name`, which an `O_NOFOLLOW` open refused or found to be of the
    /// wrong type: says what is there, falling back to the OS error.
    fn wrong_type(&self, name: &str, err: Errno, op: &'static str) -> StateError {
        match self.lstat(name) {
            Ok(Some(st)) if !is_type(&st, SFlag::S_IFREG) => StateError::WrongType {
                path: self.join(name),
                found: file_type(&st),
                expected: "a regular file",
            },
            _ => StateError::os(op, &self.join(name), err),
        }
    }

    fn sync(&self) -> Result<(), StateError> {
        nix::unistd::fsync(&self.fd).map_err(|e| StateError::os("sync", self.path, e))
    }
}

impl StateDir {
    /// State kept in `dir`, created with mode 0700 if missing. Fails if the
    /// directory is unsafe (see the module docs) or cannot be opened.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, StateError> {
        let dir = dir.into();
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
        {
            Ok(()) => {}
            // Let the checks below say what is wrong (a file, a link elsewhere...).
            Err(_) if fs::symlink_metadata(&dir).is_ok() => {}
            Err(e) => return Err(StateError::os("create state directory", &dir, e)),
        }
        Dir::open(&dir)?;
        Ok(StateDir { dir: Some(dir) })
    }

    /// State that is never written anywhere.
    pub fn in_memory() -> Self {
        StateDir { dir: None }
    }

    /// The state directory, `None` for [`StateDir::in_memory`].
    pub fn path(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The persisted next handle (`fd_counter`), [`FIRST_HANDLE`] if none is stored.
    /// A garbage value reads as 0, as qemu-ga does. A `qga.state` that is a link or
    /// not a regular file is an error.
    pub fn load_counter(&self) -> Result<i64, StateError> {
        let Some(path) = &self.dir else {
            return Ok(FIRST_HANDLE);
        };
        let dir = Dir::open(path)?;
        let file_path = dir.join(STATE_FILE);
        // O_NONBLOCK: a named pipe planted here must not hang the open.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = match nix::fcntl::openat(&dir.fd, STATE_FILE, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(FIRST_HANDLE),
            Err(e @ (Errno::ELOOP | Errno::ENXIO)) => {
                return Err(dir.wrong_type(STATE_FILE, e, "open"))
            }
            Err(e) => return Err(StateError::os("open", &file_path, e)),
        };
        let st =
            nix::sys::stat::fstat(&fd).map_err(|e| StateError::os("inspect", &file_path, e))?;
        if !is_type(&st, SFlag::S_IFREG) {
            return Err(StateError::WrongType {
                path: file_path,
                found: file_type(&st),
                expected: "a regular file",
            });
        }
        let mut bytes = Vec::new();
        fs::File::from(fd)
            .take(MAX_STATE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StateError::os("read", &file_path, e))?;
        if bytes.len() as u64 > MAX_STATE_LEN {
            return Err(StateError::Malformed {
                path: file_path,
                why: "is larger than 64 KiB: it is not a state file",
            });
        }
        let Ok(text) = String::from_utf8(bytes) else {
            return Err(StateError::Malformed {
                path: file_path,
                why: "is not UTF-8 text: it is not a state file",
            });
        };
        Ok(text
            .lines()
            .find_map(|l| l.trim().strip_prefix("fd_counter="))
            .map(|v| v.trim().parse().unwrap_or(0))
            .unwrap_or(FIRST_HANDLE))
    }

    /// Stores the next handle atomically (new temp file, fsync, rename, fsync of the
    /// directory), so a crash never leaves a counter that would hand out an old
    /// handle again. Needs two free descriptors; without them the error carries the
    /// OS error (see [`StateError::reason`]: `Too many open files`).
    pub fn store_counter(&self, next: i64) -> Result<(), StateError> {
        let Some(path) = &self.dir else {
            return Ok(());
        };
        let dir = Dir::open(path)?;
        let data = format!("[global]\nfd_counter={next}\n");
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut attempts = 0;
        let (name, fd) = loop {
            let name = temp_name();
            match nix::fcntl::openat(
                &dir.fd,
                name.as_str(),
                flags,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => break (name, fd),
                Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(e) => return Err(StateError::os("create a temporary file in", dir.path, e)),
            }
        };
        let written = {
            let mut f = fs::File::from(fd);
            f.write_all(data.as_bytes())
                .map_err(|e| StateError::os("write", &dir.join(&name), e))
                .and_then(|()| {
                    f.sync_all()
                        .map_err(|e| StateError::os("sync", &dir.join(&name), e))
                })
        };
        let renamed = written.and_then(|()| {
            nix::fcntl::renameat(&dir.fd, name.as_str(), &dir.fd, STATE_FILE)
                .map_err(|e| StateError::os("replace", &dir.join(STATE_FILE), e))
        });
        if let Err(e) = renamed {
            let _ = nix::unistd::unlinkat(
                &dir.fd,
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(e);
        }
        dir.sync()
    }

    /// Whether the frozen marker exists (a previous agent died with filesystems
    /// frozen). Only a regular file counts; a link or an unusable directory reads
    /// as not frozen ([`StateDir::frozen`] tells why).
    pub fn is_frozen(&self) -> bool {
        self.frozen().unwrap_or(false)
    }

    /// Whether the frozen marker exists, as [`StateDir::is_frozen`], with an error
    /// when something that is not a regular file (e.g. a link) holds its name or
    /// the directory cannot be used.
    pub fn frozen(&self) -> Result<bool, StateError> {
        let Some(path) = &self.dir else {
            return Ok(false);
        };
        let dir = Dir::open(path)?;
        match dir.lstat(MARKER_FILE)? {
            None => Ok(false),
            Some(st) if is_type(&st, SFlag::S_IFREG) => Ok(true),
            Some(st) => Err(StateError::WrongType {
                path: dir.join(MARKER_FILE),
                found: file_type(&st),
                expected: "a regular file",
            }),
        }
    }

    /// Creates or removes the frozen marker. Creating never follows a link nor
    /// truncates: an existing regular file is kept, anything else is an error.
    /// Removing unlinks the name itself (a link there goes, its target stays).
    pub fn set_frozen(&self, frozen: bool) -> Result<(), StateError> {
        let Some(path) = &self.dir else {
            return Ok(());
        };
        let dir = Dir::open(path)?;
        if frozen {
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            match nix::fcntl::openat(&dir.fd, MARKER_FILE, flags, Mode::from_bits_truncate(0o600)) {
                Ok(fd) => {
                    nix::unistd::fsync(&fd)
                        .map_err(|e| StateError::os("sync", &dir.join(MARKER_FILE), e))?;
                }
                // O_EXCL reports any existing name, a dangling link included.
                Err(Errno::EEXIST) => match dir.lstat(MARKER_FILE)? {
                    Some(st) if is_type(&st, SFlag::S_IFREG) => {}
                    Some(_) => return Err(dir.wrong_type(MARKER_FILE, Errno::EEXIST, "create")),
                    None => {
                        return Err(StateError::os(
                            "create",
                            &dir.join(MARKER_FILE),
                            Errno::EEXIST,
                        ))
                    }
                },
                Err(e) => return Err(StateError::os("create", &dir.join(MARKER_FILE), e)),
            }
        } else {
            match nix::unistd::unlinkat(
                &dir.fd,
                MARKER_FILE,
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e @ Errno::EISDIR) => return Err(dir.wrong_type(MARKER_FILE, e, "remove")),
                Err(e) => return Err(StateError::os("remove", &dir.join(MARKER_FILE), e)),
            }
        }
        dir.sync()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn counter_and_marker_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::new(dir.path()).unwrap();
        assert_eq!(s.load_counter().unwrap(), FIRST_HANDLE);
        s.store_counter(1005).unwrap();
        assert_eq!(
            StateDir::new(dir.path()).unwrap().load_counter().unwrap(),
            1005
        );
        // qemu-ga's own file format is read too.
        fs::write(dir.path().join("qga.state"), "[global]\nfd_counter=1009\n").unwrap();
        assert_eq!(s.load_counter().unwrap(), 1009);
        fs::write(dir.path().join("qga.state"), "[global]\nfd_counter=abc\n").unwrap();
        assert_eq!(s.load_counter().unwrap(), 0);
        assert!(!s.is_frozen());
        s.set_frozen(true).unwrap();
        assert!(s.is_frozen());
        // An existing marker is fine and kept as it is.
        s.set_frozen(true).unwrap();
        assert!(s.is_frozen());
        s.set_frozen(false).unwrap();
        s.set_frozen(false).unwrap();
        assert!(!s.is_frozen());
        // No temp file is left behind.
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["qga.state"]);
    }

    #[test]
    fn missing_directory_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/b");
        StateDir::new(&state).unwrap();
        assert_eq!(mode_of(&state), 0o700);
    }

    #[test]
    fn temp_names_differ() {
        let a = temp_name();
        let b = temp_name();
        assert_ne!(a, b);
        assert!(a.starts_with(TEMP_PREFIX) && a.ends_with(".tmp"), "{a}");
    }

    #[test]
    fn reason_is_the_os_text_alone() {
        let e = StateError::os("create a temporary file in", Path::new("/s"), Errno::EMFILE);
        assert_eq!(e.reason(), "Too many open files");
        assert_eq!(
            e.to_string(),
            "cannot create a temporary file in /s: Too many open files"
        );
        assert_eq!(
            e.os_error().and_then(io::Error::raw_os_error),
            Some(libc::EMFILE)
        );
        let io: io::Error = e.into();
        assert!(io.to_string().ends_with("Too many open files"), "{io}");
    }
}
