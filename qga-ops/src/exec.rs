//! guest-exec and guest-exec-status: run a program without a shell, capture its
//! output, report how it ended.

use crate::OpsError;

/// Largest output captured per stream (qemu-ga's 16 MiB); the rest is read and
/// discarded, and the stream is reported truncated.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024;

/// Which of the child's output streams are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// Neither: stdout and stderr go to `/dev/null`.
    #[default]
    None,
    /// stdout only (stderr to `/dev/null`).
    Stdout,
    /// stderr only (stdout to `/dev/null`).
    Stderr,
    /// Both, each on its own pipe.
    Separated,
    /// Both on one pipe, reported as stdout, interleaved in write order.
    Merged,
}

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program: a path, or a bare name looked up in the agent's `PATH`.
    pub path: String,
    /// Arguments after `argv[0]` (which is `path`).
    pub args: Vec<String>,
    /// The whole environment (`NAME=value` entries); `None` inherits the agent's.
    pub env: Option<Vec<String>>,
    /// Written to the child's stdin, which is then closed; `None`: stdin is
    /// `/dev/null`.
    pub input: Option<Vec<u8>>,
    /// What output to capture.
    pub capture: CaptureMode,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// It exited with this status.
    Exited(i32),
    /// This signal killed it.
    Signaled(i32),
    /// It ended, but its status was collected by someone else (a process that
    /// ignores SIGCHLD has its children reaped by the kernel).
    Unknown,
}

/// One captured stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// What was captured (at most the capture limit).
    pub data: Vec<u8>,
    /// The stream wrote more than the limit; the rest was discarded.
    pub truncated: bool,
}

/// A process's state, as guest-exec-status reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    /// How it ended; `None` while it runs (or while a captured stream is still
    /// open). A status with `Some` is the last one: the entry is then forgotten.
    pub ended: Option<Termination>,
    /// Captured stdout (merged output too), once ended, when capturing it.
    pub stdout: Option<Captured>,
    /// Captured stderr, once ended, when capturing it separately.
    pub stderr: Option<Captured>,
}

/// Starting processes and polling them (guest-exec, guest-exec-status).
pub trait Processes: Send + Sync {
    /// Starts `req` and returns its pid. The child runs detached from the caller:
    /// its output is drained and it is waited for in the background.
    fn spawn(&self, req: &ExecRequest) -> Result<i64, OpsError>;

    /// The state of a process started by [`Processes::spawn`]. The first status
    /// that reports it ended forgets it: asking again, or about a pid never
    /// started, is `Invalid parameter 'pid'`.
    fn status(&self, pid: i64) -> Result<ExecStatus, OpsError>;
}

// ---------------------------------------------------------------------------
// Linux.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::spawn::{posix_spawnp, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{pipe2, Pid};

/// Bounds of [`LinuxProcesses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    /// Output captured per stream ([`MAX_OUTPUT`], as qemu-ga).
    pub max_output: usize,
    /// Finished processes kept until a guest-exec-status reports them (1024).
    pub max_finished: usize,
    /// Captured bytes those finished processes may hold together (256 MiB).
    pub max_finished_bytes: usize,
}

impl Default for ExecLimits {
    fn default() -> Self {
        ExecLimits {
            max_output: MAX_OUTPUT,
            max_finished: 1024,
            max_finished_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Stack of the per-child helper threads: they only loop over `poll`/`read` into a
/// heap buffer, or block in `waitpid`.
const THREAD_STACK: usize = 128 * 1024;
/// One read from a child's pipe.
const CHUNK: usize = 64 * 1024;

/// guest-exec on Linux, with qemu-ga's semantics and a few deliberate differences:
///
/// * **Spawning**: `posix_spawnp(3)`, no shell. A bare name is looked up in the
///   agent's `PATH` (as GLib's `G_SPAWN_SEARCH_PATH`), `argv[0]` is `path` as
///   given, `env` entries are passed verbatim. An executable file the kernel
///   refuses as a format (`ENOEXEC`: a script without `#!`) is run as
///   `/bin/sh FILE ARGS...`, as GLib does. Before each spawn every descriptor
///   of the process from 3 up is marked close-on-exec (the agent's own are
///   already; this catches ones it inherited), where GLib closes them in the child. A failure that the exec itself
///   reports (missing program, no permission) is qemu-ga 7.2's
///   `Guest agent command failed, error was 'Failed to execute child process “/bin/x” (No such file or directory)'`.
/// * **The child**: stdin is the input pipe or `/dev/null`; uncaptured output goes
///   to `/dev/null`; merged output shares one pipe. It inherits only fds 0-2,
///   gets an empty signal mask
///   and every signal at its default action (the agent ignores SIGPIPE; qemu-ga
///   resets only that one), and runs in **its own process group** (qemu-ga keeps it
///   in the agent's): a `kill 0` in the child, or a terminal's Ctrl-C meant for a
///   foreground agent, no longer hits the other side, and the whole job can be
///   signalled as a group. It is not made a session leader, so it keeps the
///   agent's session.
/// * **Background work**: each child gets a waiter thread (blocking `waitpid` on
///   its pid only, so programs that other ops run, such as the fsfreeze hook, are
///   never reaped by us, and no zombie outlives its process) and, when it has
///   pipes, one I/O thread that `poll`s them: feeding stdin, capturing output. One
///   pair per child rather than one thread for all: no shared poll set to wake and
///   rebuild, no reliance on pidfds (Linux 5.3+) for reaping on old guest
///   kernels, and a slow child cannot delay another's bookkeeping. The cost, two
///   small-stack threads per *running* child, is paid only while it runs.
/// * **Capture**: up to [`ExecLimits::max_output`] bytes per stream; the buffer
///   grows to at most that much; the rest is read and thrown away
///   (`truncated: true`).
/// * **Status**: like qemu-ga, a process counts as ended only once it has been
///   reaped *and* every captured stream reached end of file (a background
///   grandchild holding the pipe keeps it "running"); output is reported with
///   the final status only, and that status forgets the process.
/// * **Bound**: at most [`ExecLimits::max_finished`] finished-but-unreported
///   processes holding at most [`ExecLimits::max_finished_bytes`] of output are
///   kept (qemu-ga keeps them all, forever). Past either bound the oldest finished
///   one is dropped; asking about it then gets `Invalid parameter 'pid'`, as for a
///   pid never started. If the kernel hands a new child the pid of a finished,
///   unreported one, the old entry is dropped the same way.
#[derive(Debug, Clone, Default)]
pub struct LinuxProcesses {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    limits: ExecLimits,
    table: Mutex<Table>,
    /// Bytes allocated for capture buffers, running and finished.
    held: AtomicUsize,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<i64, Entry>,
    /// Finished entries in the order they finished: sequence number to pid.
    finished: BTreeMap<u64, i64>,
    finished_bytes: usize,
    next_seq: u64,
}

#[derive(Debug)]
struct Entry {
    /// Set by the waiter thread.
    ended: Option<Termination>,
    /// The I/O thread is done (or there is none): captured streams are at EOF.
    io_done: bool,
    stdout: Option<Captured>,
    stderr: Option<Captured>,
    /// Its key in `Table::finished`, once finished.
    finished_seq: Option<u64>,
}

impl Entry {
    fn bytes(&self) -> usize {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flatten()
            .map(|c| c.data.capacity())
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid_pid() -> OpsError {
    OpsError::failed("Invalid parameter 'pid'")
}

/// The first executable regular file called `name` in the agent's `PATH` (the
/// default search path when it has none), as posix_spawnp found it.
fn search_path(name: &str) -> Option<CString> {
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::PermissionsExt;
    let dirs = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    std::env::split_paths(&dirs)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .and_then(|p| CString::new(p.into_os_string().into_vec()).ok())
}

fn spawn_failed(path: &str, e: Errno) -> OpsError {
    OpsError::failed(format!(
        "Guest agent command failed, error was 'Failed to execute child process “{path}” ({})'",
        e.desc()
    ))
}

impl LinuxProcesses {
    /// An empty process table with these bounds.
    pub fn new(limits: ExecLimits) -> Self {
        LinuxProcesses {
            shared: Arc::new(Shared {
                limits,
                ..Default::default()
            }),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> ExecLimits {
        self.shared.limits
    }

    /// Bytes allocated for captured output right now, of running and finished
    /// processes together (for monitoring, and for tests that check the bound).
    pub fn held_bytes(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// Finished processes whose final status nobody asked for yet.
    pub fn finished(&self) -> usize {
        lock(&self.shared.table).finished.len()
    }

    /// Processes started and not yet reported ended, running or finished.
    pub fn tracked(&self) -> usize {
        lock(&self.shared.table).entries.len()
    }
}

fn cstring(path: &str, s: &[u8]) -> Result<CString, OpsError> {
    // A NUL cannot reach execve; say so as the exec would.
    CString::new(s).map_err(|_| spawn_failed(path, Errno::EINVAL))
}

/// A pipe whose both ends are close-on-exec, with the end the child gets moved to
/// fd 3 or above, so that a dup2 onto 0-2 never clobbers another of its pipes
/// (an agent started with 0-2 closed would get pipes there).
fn pipe() -> Result<(OwnedFd, OwnedFd), OpsError> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| OpsError::os("failed to create a pipe", io::Error::from(e)))?;
    // std's try_clone duplicates with F_DUPFD_CLOEXEC from 3 up.
    let high = |fd: OwnedFd| -> Result<OwnedFd, OpsError> {
        use std::os::fd::AsRawFd;
        if fd.as_raw_fd() > 2 {
            return Ok(fd);
        }
        fd.try_clone()
            .map_err(|e| OpsError::os("failed to create a pipe", e))
    };
    Ok((high(r)?, high(w)?))
}

/// The parent's ends of a child's pipes.
struct ParentFds {
    stdin: Option<(OwnedFd, Vec<u8>)>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl Processes for LinuxProcesses {
    fn spawn(&self, req: &ExecRequest) -> Result<i64, OpsError> {
        let path = req.path.as_str();
        let os = |what: &str, e: Errno| OpsError::os(what.to_owned(), io::Error::from(e));

        let program = cstring(path, path.as_bytes())?;
        let mut argv = vec![program.clone()];
        for a in &req.args {
            argv.push(cstring(path, a.as_bytes())?);
        }
        let envp = match &req.env {
            Some(env) => env
                .iter()
                .map(|e| cstring(path, e.as_bytes()))
                .collect::<Result<Vec<_>, _>>()?,
            None => std::env::vars_os()
                .map(|(k, v)| {
                    let mut e = k.as_bytes().to_vec();
                    e.push(b'=');
                    e.extend_from_slice(v.as_bytes());
                    cstring(path, &e)
                })
                .collect::<Result<Vec<_>, _>>()?,
        };

        let mut actions = PosixSpawnFileActions::init().map_err(|e| os("posix_spawn", e))?;
        let mut keep_until_spawned: Vec<OwnedFd> = Vec::new();
        let mut parent = ParentFds {
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let dev_null = |actions: &mut PosixSpawnFileActions, fd: i32, flags: OFlag| {
            actions
                .add_open(fd, "/dev/null", flags, Mode::empty())
                .map_err(|e| os("posix_spawn", e))
        };
        let dup = |actions: &mut PosixSpawnFileActions, from: &OwnedFd, to: i32| {
            use std::os::fd::AsRawFd;
            actions
                .add_dup2(from.as_raw_fd(), to)
                .map_err(|e| os("posix_spawn", e))
        };

        match &req.input {
            Some(data) => {
                let (r, w) = pipe()?;
                dup(&mut actions, &r, 0)?;
                keep_until_spawned.push(r);
                parent.stdin = Some((w, data.clone()));
            }
            None => dev_null(&mut actions, 0, OFlag::O_RDONLY)?,
        }
        let (out, err) = match req.capture {
            CaptureMode::None => (false, false),
            CaptureMode::Stdout => (true, false),
            CaptureMode::Stderr => (false, true),
            CaptureMode::Separated | CaptureMode::Merged => (true, true),
        };
        if out {
            let (r, w) = pipe()?;
            dup(&mut actions, &w, 1)?;
            if req.capture == CaptureMode::Merged {
                dup(&mut actions, &w, 2)?;
            }
            keep_until_spawned.push(w);
            parent.stdout = Some(r);
        } else {
            dev_null(&mut actions, 1, OFlag::O_WRONLY)?;
        }
        if req.capture != CaptureMode::Merged {
            if err {
                let (r, w) = pipe()?;
                dup(&mut actions, &w, 2)?;
                keep_until_spawned.push(w);
                parent.stderr = Some(r);
            } else {
                dev_null(&mut actions, 2, OFlag::O_WRONLY)?;
            }
        }

        let mut attr = PosixSpawnAttr::init().map_err(|e| os("posix_spawn", e))?;
        attr.set_flags(
            PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
                | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
        )
        .map_err(|e| os("posix_spawn", e))?;
        attr.set_pgroup(Pid::from_raw(0))
            .map_err(|e| os("posix_spawn", e))?;
        attr.set_sigmask(&SigSet::empty())
            .map_err(|e| os("posix_spawn", e))?;
        attr.set_sigdefault(&SigSet::all())
            .map_err(|e| os("posix_spawn", e))?;

        crate::sys::cloexec_from_3();
        let pid = match posix_spawnp(&program, &actions, &attr, &argv, &envp) {
            // An executable file the kernel cannot run (a script without `#!`): as
            // GLib (so qemu-ga) and the shells do, run it with /bin/sh.
            Err(Errno::ENOEXEC) => {
                let script = if path.contains('/') {
                    Some(program.clone())
                } else {
                    search_path(path)
                };
                let Some(script) = script else {
                    return Err(spawn_failed(path, Errno::ENOEXEC));
                };
                let shell = c"/bin/sh".to_owned();
                let mut sh_argv = vec![shell.clone(), script];
                sh_argv.extend(argv.into_iter().skip(1));
                posix_spawnp(&shell, &actions, &attr, &sh_argv, &envp)
            }
            other => other,
        }
        .map_err(|e| spawn_failed(path, e))?;
        // The child has its copies; ours must go, or its readers never see EOF.
        drop(keep_until_spawned);
        self.shared.start(pid, parent)
    }

    fn status(&self, pid: i64) -> Result<ExecStatus, OpsError> {
        let mut table = lock(&self.shared.table);
        let entry = table.entries.get(&pid).ok_or_else(invalid_pid)?;
        if entry.finished_seq.is_none() {
            return Ok(ExecStatus::default());
        }
        let entry = table.remove(pid).ok_or_else(invalid_pid)?;
        self.shared.held.fetch_sub(entry.bytes(), Ordering::Relaxed);
        Ok(ExecStatus {
            ended: entry.ended,
            stdout: entry.stdout,
            stderr: entry.stderr,
        })
    }
}

impl Table {
    /// Removes an entry and its finished record.
    fn remove(&mut self, pid: i64) -> Option<Entry> {
        let entry = self.entries.remove(&pid)?;
        if let Some(seq) = entry.finished_seq {
            self.finished.remove(&seq);
            self.finished_bytes -= entry.bytes();
        }
        Some(entry)
    }
}

impl Shared {
    /// Records a spawned child and starts its threads.
    fn start(self: &Arc<Self>, pid: Pid, fds: ParentFds) -> Result<i64, OpsError> {
        let key = i64::from(pid.as_raw());
        let has_io = fds.stdin.is_some() || fds.stdout.is_some() || fds.stderr.is_some();
        {
            let mut table = lock(&self.table);
            // The kernel reused the pid of a finished, unreported child.
            if let Some(old) = table.remove(key) {
                self.held.fetch_sub(old.bytes(), Ordering::Relaxed);
            }
            table.entries.insert(
                key,
                Entry {
                    ended: None,
                    io_done: !has_io,
                    stdout: None,
                    stderr: None,
                    finished_seq: None,
                },
            );
        }
        let shared = Arc::clone(self);
        let waiter = std::thread::Builder::new()
            .name(format!("qga-exec-wait-{key}"))
            .stack_size(THREAD_STACK)
            .spawn(move || shared.wait(pid));
        if let Err(e) = waiter {
            // Without a waiter the child would become a zombie: stop it here.
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            lock(&self.table).entries.remove(&key);
            return Err(OpsError::os("failed to start a waiter thread", e));
        }
        if has_io {
            let shared = Arc::clone(self);
            let io = std::thread::Builder::new()
                .name(format!("qga-exec-io-{key}"))
                .stack_size(THREAD_STACK)
                .spawn(move || shared.pump(key, fds));
            if let Err(e) = io {
                // The pipes went with the failed closure. Nobody will learn this
                // pid: stop the child and forget it (its waiter still reaps it).
                let _ = kill(pid, Signal::SIGKILL);
                lock(&self.table).entries.remove(&key);
                return Err(OpsError::os("failed to start an output thread", e));
            }
        }
        Ok(key)
    }

    /// The waiter thread: reaps exactly this pid.
    fn wait(&self, pid: Pid) {
        let ended = loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => break Termination::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => break Termination::Signaled(sig as i32),
                // Stops and continues are not reported without WUNTRACED/WCONTINUED.
                Ok(_) | Err(Errno::EINTR) => continue,
                // Someone else reaped it (an embedder that ignores SIGCHLD).
                Err(_) => break Termination::Unknown,
            }
        };
        let key = i64::from(pid.as_raw());
        let mut table = lock(&self.table);
        if let Some(entry) = table.entries.get_mut(&key) {
            entry.ended = Some(ended);
            self.maybe_finish(&mut table, key);
        }
    }

    /// The I/O thread: feeds stdin and captures output until every pipe is closed.
    fn pump(&self, key: i64, fds: ParentFds) {
        let limit = self.limits.max_output;
        let mut stdin = fds.stdin.map(|(fd, data)| {
            // Non-blocking, so a write never waits for a child that stopped reading.
            let _ = fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            (File::from(fd), data, 0usize)
        });
        let mut streams: [Option<(File, Captured)>; 2] = [
            fds.stdout.map(|fd| (File::from(fd), Captured::default())),
            fds.stderr.map(|fd| (File::from(fd), Captured::default())),
        ];
        let captures = [streams[0].is_some(), streams[1].is_some()];
        let mut done: [Option<Captured>; 2] = [None, None];
        let mut buf = vec![0u8; CHUNK];
        loop {
            if let Some((_, data, at)) = &stdin {
                if *at >= data.len() {
                    stdin = None; // closes it: the child sees EOF
                }
            }
            let mut pfds = Vec::with_capacity(3);
            if let Some((f, _, _)) = &stdin {
                pfds.push(PollFd::new(f.as_fd(), PollFlags::POLLOUT));
            }
            for (f, _) in streams.iter().flatten() {
                pfds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
            if pfds.is_empty() {
                break;
            }
            match poll(&mut pfds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
            let ready: Vec<bool> = pfds
                .iter()
                .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(pfds);
            let mut ready = ready.into_iter();
            if stdin.is_some() && ready.next() == Some(true) {
                let (f, data, at) = stdin.as_mut().expect("checked");
                match f.write(&data[*at..]) {
                    Ok(n) => *at += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // EPIPE: the child closed its stdin; the rest is not wanted.
                    Err(_) => stdin = None,
                }
            }
            for (i, slot) in streams.iter_mut().enumerate() {
                if slot.is_none() || ready.next() != Some(true) {
                    continue;
                }
                let (f, cap) = slot.as_mut().expect("checked");
                match f.read(&mut buf) {
                    Ok(0) => done[i] = slot.take().map(|(_, c)| c),
                    Ok(n) => self.append(cap, &buf[..n], limit),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => done[i] = slot.take().map(|(_, c)| c),
                }
            }
        }
        // A poll failure leaves streams open: keep what they captured.
        for (i, slot) in streams.iter_mut().enumerate() {
            if let Some((_, c)) = slot.take() {
                done[i] = Some(c);
            }
        }
        let [out, err] = done;
        self.io_finished(
            key,
            out.or_else(|| captures[0].then(Captured::default)),
            err.or_else(|| captures[1].then(Captured::default)),
        );
    }

    /// Appends a chunk to a capture, growing its buffer to at most `limit`.
    fn append(&self, cap: &mut Captured, chunk: &[u8], limit: usize) {
        let take = chunk.len().min(limit - cap.data.len());
        if take < chunk.len() {
            cap.truncated = true;
        }
        if take == 0 {
            return;
        }
        let need = cap.data.len() + take;
        let before = cap.data.capacity();
        if need > before {
            let target = need.max(before * 2).max(CHUNK).min(limit);
            cap.data.reserve_exact(target - cap.data.len());
            self.held
                .fetch_add(cap.data.capacity() - before, Ordering::Relaxed);
        }
        cap.data.extend_from_slice(&chunk[..take]);
    }

    fn io_finished(&self, key: i64, stdout: Option<Captured>, stderr: Option<Captured>) {
        let mut table = lock(&self.table);
        match table.entries.get_mut(&key) {
            Some(entry) => {
                entry.stdout = stdout;
                entry.stderr = stderr;
                entry.io_done = true;
                self.maybe_finish(&mut table, key);
            }
            None => {
                let bytes: usize = [stdout, stderr]
                    .iter()
                    .flatten()
                    .map(|c| c.data.capacity())
                    .sum();
                self.held.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    /// Once both threads are done, the entry counts as finished: record it, then
    /// drop the oldest finished entries past the bounds.
    fn maybe_finish(&self, table: &mut Table, key: i64) {
        let Some(entry) = table.entries.get_mut(&key) else {
            return;
        };
        if entry.ended.is_none() || !entry.io_done || entry.finished_seq.is_some() {
            return;
        }
        let seq = table.next_seq;
        table.next_seq += 1;
        entry.finished_seq = Some(seq);
        let bytes = entry.bytes();
        table.finished.insert(seq, key);
        table.finished_bytes += bytes;
        while table.finished.len() > self.limits.max_finished
            || (table.finished_bytes > self.limits.max_finished_bytes && table.finished.len() > 1)
        {
            let Some((_, oldest)) = table.finished.pop_first() else {
                break;
            };
            if let Some(mut old) = table.entries.remove(&oldest) {
                old.finished_seq = None;
                let b = old.bytes();
                table.finished_bytes -= b;
                self.held.fetch_sub(b, Ordering::Relaxed);
            }
        }
    }
}
