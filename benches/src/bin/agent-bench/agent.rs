//! Starting and stopping the agents under test, CPU pinning, and /proc readings.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use qga_benches::reply::{return_value, ReplyReader};

/// A connection to an agent: replies are read through the scanner, requests written
/// with `conn.get_mut().write_all(..)`.
pub type Conn = ReplyReader<UnixStream>;

/// How long a single reply may take before the bench gives up on a run.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The request every agent is started and checked with.
pub const PING: &[u8] = b"{\"execute\":\"guest-ping\"}\n";

/// Where client and agent run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    /// Both on one CPU: round trips cost no cross-CPU wake-up.
    Same,
    /// Agent and client on different CPUs.
    Split,
}

impl Pin {
    pub fn label(self) -> &'static str {
        match self {
            Pin::Same => "same CPU",
            Pin::Split => "split CPUs",
        }
    }
}

/// The CPUs used for pinning: the agent's, and the client's when split.
#[derive(Debug, Clone, Copy)]
pub struct Cpus {
    pub agent: usize,
    pub client: usize,
}

impl Cpus {
    fn for_pin(self, pin: Pin) -> (usize, usize) {
        match pin {
            Pin::Same => (self.agent, self.agent),
            Pin::Split => (self.agent, self.client),
        }
    }
}

fn original_affinity() -> &'static CpuSet {
    static ORIGINAL: OnceLock<CpuSet> = OnceLock::new();
    ORIGINAL.get_or_init(|| sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new()))
}

/// Records the bench's starting CPU mask, so later pinning can be undone. Call first.
pub fn remember_affinity() -> usize {
    let set = original_affinity();
    (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .count()
}

/// Pins the calling thread to `cpu` (threads and processes it starts inherit this).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Undoes [`pin_current_thread`].
pub fn unpin_current_thread() {
    let _ = sched_setaffinity(Pid::from_raw(0), original_affinity());
}

/// What to start.
#[derive(Debug, Clone)]
pub enum Program {
    /// A qemu-ga compatible agent binary (`-m unix-listen -p SOCK -t DIR`).
    Agent(PathBuf),
    /// This bench binary as a trivial echo server (the socket floor).
    Echo(PathBuf),
    /// This bench binary as the stub (`stub.rs`), file reads replayed in pieces of
    /// the given count.
    Stub(PathBuf, usize),
}

/// A started agent. Dropping it stops exactly this process (by pid) and removes its
/// temporary directory.
pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
}

/// An agent that answered its first request.
pub struct Started {
    pub agent: Agent,
    pub conn: Conn,
    /// From just before spawning to the first reply received.
    pub startup: Duration,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's socket.
    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("qga.sock")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read(self.dir.path().join("agent.log")).unwrap_or_default();
        let tail = &log[log.len().saturating_sub(600)..];
        String::from_utf8_lossy(tail).trim().to_string()
    }

    /// Starts `program` pinned per `pin`, connects, sends one `guest-ping` and waits for
    /// its answer. The calling thread is left pinned to the client's CPU.
    pub fn start(program: &Program, base: &Path, cpus: Cpus, pin: Pin) -> io::Result<Started> {
        let dir = tempfile::Builder::new().prefix("agent-").tempdir_in(base)?;
        let sock = dir.path().join("qga.sock");
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let mut cmd = match program {
            Program::Agent(path) => {
                let mut c = Command::new(path);
                c.arg("-m")
                    .arg("unix-listen")
                    .arg("-p")
                    .arg(&sock)
                    .arg("-t")
                    .arg(dir.path());
                c
            }
            Program::Echo(path) => {
                let mut c = Command::new(path);
                c.arg("--echo-server").arg(&sock);
                c
            }
            Program::Stub(path, chunk) => {
                let mut c = Command::new(path);
                c.arg("--stub-server").arg(&sock).arg(chunk.to_string());
                c
            }
        };
        // No system config file may change what is measured.
        cmd.env("QGA_CONF", dir.path().join("none.conf"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let (agent_cpu, client_cpu) = cpus.for_pin(pin);
        // The child inherits the spawning thread's CPU mask from the very first
        // instruction, so it is never scheduled elsewhere (also true for its threads).
        pin_current_thread(agent_cpu)?;
        let t0 = Instant::now();
        let spawned = cmd.spawn();
        pin_current_thread(client_cpu)?;
        let mut agent = Agent {
            child: spawned?,
            dir,
        };
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if let Some(status) = agent.child.try_wait()? {
                        return Err(io::Error::other(format!(
                            "{program:?} exited before listening ({status}): {}",
                            agent.log_tail()
                        )));
                    }
                    if t0.elapsed() > Duration::from_secs(10) {
                        return Err(io::Error::other(format!(
                            "{program:?} did not listen within 10 s"
                        )));
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut conn = ReplyReader::new(stream);
        conn.get_mut().write_all(PING)?;
        let reply = conn
            .next_reply()
            .map_err(|e| io::Error::other(format!("{e}; log: {}", agent.log_tail())))?;
        if let Program::Agent(_) | Program::Stub(..) = program {
            return_value(reply).map_err(io::Error::other)?;
        }
        let startup = t0.elapsed();
        Ok(Started {
            agent,
            conn,
            startup,
        })
    }

    /// A `/proc/PID/status` value in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, key: &str) -> Option<u64> {
        proc_status_kib(self.pid(), key)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only this child, by its pid: SIGTERM for a clean exit, SIGKILL if it hangs.
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A value from `/proc/PID/status` in KiB.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, key)
}

/// A plain number from `/proc/PID/status` (`voluntary_ctxt_switches`).
pub fn proc_status_count(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, key)?.parse().ok()
}

fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status_field(status, key)?
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// The value of `key:` in a `/proc/PID/status` text, trimmed.
fn status_field<'s>(status: &'s str, key: &str) -> Option<&'s str> {
    status
        .lines()
        .find_map(|line| Some(line.strip_prefix(key)?.strip_prefix(':')?.trim()))
}

/// The socket floor: echoes every byte back, one connection at a time. Runs until
/// killed (the bench stops it by pid).
pub fn echo_server(path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (mut s, _) = listener.accept()?;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_in_kib() {
        let s = "Name:\tqemu-ga\nVmHWM:\t   64512 kB\nVmRSS:\t    4200 kB\n";
        assert_eq!(parse_status_kib(s, "VmHWM"), Some(64512));
        assert_eq!(parse_status_kib(s, "VmRSS"), Some(4200));
        assert_eq!(parse_status_kib(s, "VmSwap"), None);
    }
}
