//! Harness shared by the agent's integration tests: the dispatcher over fake ops,
//! and an agent process (ours or the reference) on a unix socket with one
//! connection kept open.
// Each test file uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use qga_agent::{Dispatcher, DispatcherConfig, StateDir};
use qga_ops::fake::FakeOps;
use serde_json::{json, Value};

/// The reference agent, Debian's qemu-guest-agent.
pub const REFERENCE: &str = "/usr/sbin/qemu-ga";

/// Whether the reference agent is installed. With `QGA_REQUIRE_REFERENCE=1` (as in
/// CI) a missing one is a failure; otherwise the test says it skipped, and why.
pub fn reference_available() -> bool {
    if Path::new(REFERENCE).exists() {
        return true;
    }
    if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
        panic!("{REFERENCE} is missing and QGA_REQUIRE_REFERENCE=1 (install qemu-guest-agent)");
    }
    eprintln!(
        "SKIPPED differential test: {REFERENCE} not installed (Debian package qemu-guest-agent)"
    );
    false
}

/// Our dispatcher over the in-memory fakes.
pub struct Fake {
    pub fakes: FakeOps,
    pub d: Dispatcher,
}

impl Fake {
    pub fn new() -> Fake {
        let fakes = FakeOps::new();
        let d = Dispatcher::new(
            fakes.ops(),
            StateDir::in_memory(),
            DispatcherConfig::default(),
        )
        .unwrap();
        Fake { fakes, d }
    }

    /// The parsed reply to one request.
    pub fn call(&mut self, execute: &str, arguments: Value) -> Value {
        let mut out = BytesMut::new();
        let req = json!({"execute": execute, "arguments": arguments}).to_string();
        self.d.handle_message(req.as_bytes(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    /// The return value of a request that must succeed.
    pub fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        let r = self.call(execute, arguments);
        assert!(r.get("error").is_none(), "{execute}: {r}");
        r["return"].clone()
    }

    /// The description of a GenericError reply.
    pub fn err(&mut self, execute: &str, arguments: Value) -> String {
        let r = self.call(execute, arguments);
        assert_eq!(r["error"]["class"], "GenericError", "{r}");
        r["error"]["desc"].as_str().unwrap().to_owned()
    }
}

/// An agent process on a unix socket in its own temp dir (also its cwd), with one
/// connection kept open (the reference serves one client at a time); killed by pid
/// when dropped.
pub struct Session {
    child: Child,
    conn: BufReader<UnixStream>,
    _dir: tempfile::TempDir,
}

impl Session {
    pub fn start(program: &str) -> Session {
        Session::start_wrapped(&[], program)
    }

    /// `start` of `program` run by a wrapper that execs it (its first element is the
    /// program run, e.g. `unshare --mount`), so the child's pid is the agent's.
    pub fn start_wrapped(wrapper: &[&str], program: &str) -> Session {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let mut command = match wrapper {
            [] => Command::new(program),
            [first, rest @ ..] => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
        };
        let child = command
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match UnixStream::connect(&sock) {
                Ok(c) => break c,
                Err(_) => {
                    assert!(Instant::now() < deadline, "{program} did not listen");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Session {
            child,
            conn: BufReader::new(conn),
            _dir: dir,
        }
    }

    /// Our agent (the test's build of it).
    pub fn ours() -> Session {
        Session::start(env!("CARGO_BIN_EXE_qga-agent"))
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one request and reads one reply line.
    pub fn send(&mut self, req: &Value) -> Value {
        self.conn
            .get_mut()
            .write_all(req.to_string().as_bytes())
            .unwrap();
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
    }

    /// `send` of `{"execute": execute, "arguments": arguments}`.
    pub fn call(&mut self, execute: &str, arguments: Value) -> Value {
        self.send(&json!({"execute": execute, "arguments": arguments}))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
