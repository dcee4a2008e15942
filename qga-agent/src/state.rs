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
//!   only when the link belongs to root or to that user. At start, every directory
//!   above it must belong to root or that user and be writable by nobody else unless
//!   sticky, so no one else can swap it. Each operation re-checks the directory and
//!   holds at most one descriptor at a time (a state file or the directory, for its
//!   fsync), so the agent keeps working with a single free descriptor;
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
use nix::fcntl::OFlag;
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
    /// A directory above the state directory could be changed by another user.
    UnsafeParent {
        /// The state directory.
        path: PathBuf,
        /// The directory above it that is not safe.
        parent: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
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
            StateError::UnsafeParent {
                path,
                parent,
                problem,
            } => write!(
                f,
                "state directory {} is inside {}, which {problem}: refusing to use it; \
                 {ADVICE}",
                path.display(),
                parent.display()
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

/// The state directory, checked for one operation. Every operation touches at most
/// one descriptor at a time (an agent out of descriptors still loads its state with
/// a single free one), by path: that is safe because [`check_ancestors`] made sure at
/// start that only root or the agent's user can change any directory on the way.
struct Dir<'a> {
    path: &'a Path,
}

impl Dir<'_> {
    /// Checks the directory itself (a trusted link to it is followed).
    fn check(path: &Path) -> Result<Dir<'_>, StateError> {
        let euid = nix::unistd::geteuid().as_raw();
        let lst = nix::sys::stat::lstat(path)
            .map_err(|e| StateError::os("inspect state directory", path, e))?;
        if is_type(&lst, SFlag::S_IFLNK) && lst.st_uid != 0 && lst.st_uid != euid {
            return Err(StateError::UntrustedLink {
                path: path.to_owned(),
                owner: lst.st_uid,
            });
        }
        let st = nix::sys::stat::stat(path)
            .map_err(|e| StateError::os("inspect state directory", path, e))?;
        if !is_type(&st, SFlag::S_IFDIR) {
            return Err(StateError::WrongType {
                path: path.to_owned(),
                found: file_type(&st),
                expected: "a directory",
            });
        }
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
        Ok(Dir { path })
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// `lstat` of `name`; `None` if it does not exist.
    fn lstat(&self, name: &str) -> Result<Option<FileStat>, StateError> {
        let path = self.join(name);
        match nix::sys::stat::lstat(&path) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(StateError::os("inspect", &path, e)),
        }
    }

    /// The error for `name`, which an `O_NOFOLLOW` open refused: says what is
    /// there, falling back to the OS error.
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

    /// Opens `name` (never following a link) with `flags`.
    fn open(&self, name: &str, flags: OFlag) -> Result<OwnedFd, Errno> {
        nix::fcntl::open(
            &self.join(name),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
    }

    /// Makes a rename or unlink in the directory durable.
    fn sync(&self) -> Result<(), StateError> {
        let fd = nix::fcntl::open(
            self.path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StateError::os("open state directory", self.path, e))?;
        nix::unistd::fsync(&fd).map_err(|e| StateError::os("sync", self.path, e))
    }
}

/// Refuses a state directory that someone other than root or the agent's user could
/// swap: every directory above it (after resolving links) must belong to one of them
/// and be writable by nobody else, unless it is sticky (like `/tmp`: there only an
/// entry's owner can rename it).
fn check_ancestors(path: &Path) -> Result<(), StateError> {
    let euid = nix::unistd::geteuid().as_raw();
    let real = fs::canonicalize(path).map_err(|e| StateError::os("resolve", path, e))?;
    for parent in real.ancestors().skip(1) {
        let st = nix::sys::stat::stat(parent).map_err(|e| StateError::os("inspect", parent, e))?;
        let problem = if st.st_uid != 0 && st.st_uid != euid {
            "belongs to another user"
        } else if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            "is writable by group or others without the sticky bit"
        } else {
            continue;
        };
        return Err(StateError::UnsafeParent {
            path: path.to_owned(),
            parent: parent.to_owned(),
            problem,
        });
    }
    Ok(())
}

impl StateDir {
    /// State kept in `dir`, created with mode 0700 if missing. Fails if the
    /// directory is unsafe (see the module docs) or cannot be used.
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
        Dir::check(&dir)?;
        check_ancestors(&dir)?;
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
        let dir = Dir::check(path)?;
        let file_path = dir.join(STATE_FILE);
        // O_NONBLOCK: a named pipe planted here must not hang the open.
        let fd = match dir.open(STATE_FILE, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
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
    /// handle again. Needs one free descriptor; without it the error carries the
    /// OS error (see [`StateError::reason`]: `Too many open files`).
    pub fn store_counter(&self, next: i64) -> Result<(), StateError> {
        let Some(path) = &self.dir else {
            return Ok(());
        };
        let dir = Dir::check(path)?;
        let data = format!("[global]\nfd_counter={next}\n");
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
        let mut attempts = 0;
        let (name, fd) = loop {
            let name = temp_name();
            match dir.open(&name, flags) {
                Ok(fd) => break (name, fd),
                Err(Errno::EEXIST) if attempts < 16 => attempts += 1,
                Err(e) => return Err(StateError::os("create a temporary file in", path, e)),
            }
        };
        let temp = dir.join(&name);
        let written = {
            let mut f = fs::File::from(fd);
            f.write_all(data.as_bytes())
                .map_err(|e| StateError::os("write", &temp, e))
                .and_then(|()| f.sync_all().map_err(|e| StateError::os("sync", &temp, e)))
        };
        // rename replaces a link at qga.state, never writes through it.
        let renamed = written.and_then(|()| {
            fs::rename(&temp, dir.join(STATE_FILE))
                .map_err(|e| StateError::os("replace", &dir.join(STATE_FILE), e))
        });
        if let Err(e) = renamed {
            let _ = fs::remove_file(&temp);
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
        let dir = Dir::check(path)?;
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
        let dir = Dir::check(path)?;
        let marker = dir.join(MARKER_FILE);
        if frozen {
            match dir.open(
                MARKER_FILE,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            ) {
                Ok(fd) => {
                    nix::unistd::fsync(&fd).map_err(|e| StateError::os("sync", &marker, e))?;
                }
                // O_EXCL reports any existing name, a dangling link included.
                Err(Errno::EEXIST) => match dir.lstat(MARKER_FILE)? {
                    Some(st) if is_type(&st, SFlag::S_IFREG) => return Ok(()),
                    _ => return Err(dir.wrong_type(MARKER_FILE, Errno::EEXIST, "create")),
                },
                Err(e) => return Err(StateError::os("create", &marker, e)),
            }
        } else {
            match fs::remove_file(&marker) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {
                    return Err(dir.wrong_type(MARKER_FILE, Errno::EISDIR, "remove"))
                }
                Err(e) => return Err(StateError::os("remove", &marker, e)),
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
