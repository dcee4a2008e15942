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
