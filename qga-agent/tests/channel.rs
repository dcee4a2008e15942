//! The channel loop of the built agent on unix sockets: descriptor flags, stopping
//! while a reply is stuck, peers that hang up with replies pending.
//!
//! Only real file commands on temp files are sent to the binary (it runs the Linux
//! ops); nothing here freezes, trims or powers anything.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary on a unix socket in a temp dir (also its state dir); killed by
/// pid when dropped.
struct Agent {
    child: Child,
    sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let child = Command::new(env!("CARGO_BIN_EXE_qga-agent"))
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path())
            .env_remove("QGA_CONF")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let agent = Agent {
            child,
            sock,
            _dir: dir,
        };
        wait_for_socket(&agent.sock);
        agent
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on `sock` (the probe connection is harmless).
fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(sock).is_err() {
        assert!(Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one request and reads one reply line.
fn call(s: &mut UnixStream, req: &str) -> serde_json::Value {
    s.write_all(req.as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut r = BufReader::new(&*s);
    r.read_until(b'\n', &mut line).unwrap();
    assert!(line.ends_with(b"\n"), "no reply to {req}");
    serde_json::from_slice(&line).unwrap()
}

/// Flags of the agent's descriptor `fd`, from /proc/PID/fdinfo.
fn fd_flags(pid: u32, fd: u32) -> libc::c_int {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap()
        .trim();
    libc::c_int::from_str_radix(flags, 8).unwrap()
}

/// The agent's socket descriptors, in fd order.
fn socket_fds(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .to_str()?
                .starts_with("socket:")
                .then(|| e.file_name().to_str()?.parse().ok())?
        })
        .collect();
    fds.sort_unstable();
    fds
}

#[test]
fn accepted_connections_are_nonblocking_and_close_on_exec() {
    let agent = Agent::start();
    let mut s = agent.connect();
    // The reply proves the connection was accepted and is being served.
    let r = call(&mut s, r#"{"execute":"guest-ping"}"#);
    assert_eq!(r, serde_json::json!({"return": {}}));
    let fds = socket_fds(agent.pid());
    assert_eq!(fds.len(), 2, "listener and one connection: {fds:?}");
    // The connection was accepted after the listener, so it has the higher number.
    let conn = fd_flags(agent.pid(), fds[1]);
    assert_ne!(conn & libc::O_NONBLOCK, 0, "connection flags {conn:o}");
    assert_ne!(conn & libc::O_CLOEXEC, 0, "connection flags {conn:o}");
    let listener = fd_flags(agent.pid(), fds[0]);
    assert_ne!(listener & libc::O_CLOEXEC, 0, "listener flags {listener:o}");
}
