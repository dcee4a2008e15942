//! The channel loop of the built agent on unix sockets: descriptor flags, stopping
//! while a reply is stuck, peers that hang up with replies pending.
//!
//! Only real file commands on temp files are sent to the binary (it runs the Linux
//! ops); nothing here freezes, trims or powers anything. Freezing is exercised on a
//! [`FakeAgent`]: this test binary run again as a child process that serves the
//! channel loop over fake ops, so it can be signalled like the real agent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qga_agent::{channel, Config, Dispatcher, DispatcherConfig, Log, Method, StateDir};
use qga_ops::fake::FakeOps;

/// The agent binary on a unix socket in a temp dir (also its state dir); killed by
/// pid when dropped.
struct Agent {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
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
        let agent = Agent { child, sock, dir };
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

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0);
    }

    /// Waits up to `limit` for the agent to exit.
    fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects, opens an 8 MiB file and asks for all of it (an ~11 MiB reply),
    /// never reading the reply: the agent ends up waiting to write.
    fn stuck_reader(&self) -> UnixStream {
        let path = self.dir.path().join("big");
        std::fs::write(&path, vec![0x5a; 8 << 20]).unwrap();
        let mut s = self.connect();
        let open = format!(
            r#"{{"execute":"guest-file-open","arguments":{{"path":{}}}}}"#,
            serde_json::to_string(path.to_str().unwrap()).unwrap()
        );
        let handle = call(&mut s, &open)["return"].as_i64().unwrap();
        let read = format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":{}}}}}"#,
            8 << 20
        );
        s.write_all(read.as_bytes()).unwrap();
        // Let the agent read the file and fill the socket buffer.
        std::thread::sleep(Duration::from_millis(500));
        s
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

#[test]
fn sigterm_stops_an_agent_stuck_writing_to_a_client_that_never_reads() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut agent = Agent::start();
        let _client = agent.stuck_reader();
        agent.signal(sig);
        let status = agent.exit_within(Duration::from_secs(5));
        assert_eq!(
            status.map(|s| s.code()),
            Some(Some(0)),
            "signal {sig}: the agent must exit promptly with status 0"
        );
    }
}

#[test]
fn a_client_that_hangs_up_with_a_reply_pending_is_dropped_and_the_next_is_served() {
    let agent = Agent::start();
    // Shut down both ways but keep the socket open: the agent sees POLLHUP without
    // POLLOUT (the unread reply still fills our receive queue).
    let stuck = agent.stuck_reader();
    stuck.shutdown(std::net::Shutdown::Both).unwrap();
    let mut next = agent.connect();
    let r = call(&mut next, r#"{"execute":"guest-ping","id":1}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": 1}));
    drop(next);
    // And a client that closes with the reply pending.
    drop(agent.stuck_reader());
    drop(stuck);
    let mut next = agent.connect();
    let r = call(&mut next, r#"{"execute":"guest-ping","id":2}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": 2}));
}

const FAKE_AGENT_DIR: &str = "QGA_TEST_FAKE_AGENT_DIR";

/// Not a test on its own: the body of a [`FakeAgent`] child process (without
/// `QGA_TEST_FAKE_AGENT_DIR` it returns at once). Serves unix-listen on DIR/sock
/// over fake ops with state in DIR, like the binary's `run`, until SIGTERM/SIGINT;
/// then writes what the fakes saw to DIR/report.
#[test]
fn fake_agent_child() {
    let Some(dir) = std::env::var_os(FAKE_AGENT_DIR).map(PathBuf::from) else {
        return;
    };
    channel::install_signal_handlers().unwrap();
    let fakes = FakeOps::new();
    let mut dispatcher = Dispatcher::new(
        fakes.ops(),
        StateDir::new(&dir).unwrap(),
        DispatcherConfig::default(),
    )
    .unwrap();
    let config = Config {
        daemonize: false,
        method: Method::UnixListen,
        path: dir.join("sock").to_str().unwrap().to_owned(),
        logfile: None,
        pidfile: dir.join("pid"),
        fsfreeze_hook: None,
        statedir: dir.clone(),
        verbose: true,
        retry_path: false,
        block_rpcs: Vec::new(),
        allow_rpcs: Vec::new(),
        fsfreeze_timeout: None,
        busy_poll_us: qga_agent::DEFAULT_BUSY_POLL_US,
    };
    let result = channel::run(&config, &mut dispatcher, &Log::new(None, true));
    let report = serde_json::json!({
        "ok": result.is_ok(),
        "fake_frozen": fakes.freeze.frozen(),
        "agent_frozen": dispatcher.is_frozen(),
        "marker": dir.join("qga.state.isfrozen").exists(),
    });
    std::fs::write(dir.join("report"), report.to_string()).unwrap();
}

/// This test binary run again as `fake_agent_child`: an agent over fake ops.
struct FakeAgent(Agent);

impl FakeAgent {
    fn start() -> FakeAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "fake_agent_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FAKE_AGENT_DIR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let agent = Agent { child, sock, dir };
        wait_for_socket(&agent.sock);
        FakeAgent(agent)
    }

    /// Stops the child with SIGTERM and returns its report.
    fn stop(mut self) -> serde_json::Value {
        self.0.signal(libc::SIGTERM);
        let status = self.0.exit_within(Duration::from_secs(5));
        let log = std::fs::read_to_string(self.0.dir.path().join("log")).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "fake agent did not stop cleanly ({status:?}); its log:\n{log}"
        );
        let report = std::fs::read(self.0.dir.path().join("report")).unwrap();
        serde_json::from_slice(&report).unwrap()
    }

    fn marker_exists(&self) -> bool {
        self.0.dir.path().join("qga.state.isfrozen").exists()
    }
}

#[test]
fn sigterm_while_frozen_thaws_then_exits() {
    let agent = FakeAgent::start();
    let mut s = agent.0.connect();
    let r = call(&mut s, r#"{"execute":"guest-fsfreeze-freeze"}"#);
    assert_eq!(r, serde_json::json!({"return": 2}));
    assert!(agent.marker_exists());
    // The client stays connected: only the signal ends the agent, which thaws.
    assert_eq!(
        agent.stop(),
        serde_json::json!({"ok": true, "fake_frozen": [], "agent_frozen": false, "marker": false})
    );
    drop(s);
}
#[test]
fn running_out_of_descriptors_at_accept_does_not_stop_the_agent() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qga-agent"));
    cmd.args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir.path())
        .env_remove("QGA_CONF")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap());
    // Room for stdio, the listener, the signal pipe and the loop's epoll instance,
    // none for a connection.
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 7,
                rlim_max: 7,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let mut agent = Agent {
        child,
        sock: sock.clone(),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "agent did not bind");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Queued by the kernel; the agent cannot accept it.
    let _client = UnixStream::connect(&sock).unwrap();
    let status = agent.exit_within(Duration::from_millis(1500));
    let log = std::fs::read_to_string(agent.dir.path().join("log")).unwrap();
    assert_eq!(status, None, "the agent gave up; its log:\n{log}");
    assert!(log.contains("Too many open files"), "{log}");
    agent.signal(libc::SIGTERM);
    let status = agent.exit_within(Duration::from_secs(5));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
}

#[test]
fn a_client_that_hangs_up_mid_request_does_not_affect_the_others() {
    let agent = Agent::start();
    let mut other = agent.connect();
    let r = call(&mut other, r#"{"execute":"guest-ping","id":"before"}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": "before"}));
    // Half a request, then gone: its bytes must not reach anyone else's parser.
    let mut quitter = agent.connect();
    quitter
        .write_all(br#"{"execute":"guest-ping","id":"half"#)
        .unwrap();
    drop(quitter);
    let r = call(&mut other, r#"{"execute":"guest-ping","id":"after"}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": "after"}));
    drop(other);
    let mut next = agent.connect();
    let r = call(&mut next, r#"{"execute":"guest-ping","id":"next"}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": "next"}));
}

/// A `kB` field (`VmHWM`, `VmRSS`) of /proc/PID/status, in bytes.
fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// User plus system CPU time of PID so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

const MIB: u64 = 1024 * 1024;

/// The bound the README documents for one connection, over the agent's baseline:
/// input (framer limit + one read chunk) + unsent reply budget + one maximal reply
/// held whole (guest-exec-status with both streams at their 16 MiB cap: 43 MiB of
/// base64) + a command's working memory, rounded up.
const ONE_CONNECTION_BOUND: u64 = (64 + 1) + 1 + 43 + 4;

#[test]
fn a_client_that_does_not_read_its_replies_costs_bounded_memory_and_no_cpu() {
    const READS: usize = 200;
    const SIZE: usize = 16 << 20;
    let agent = Agent::start();
    let path = agent.dir.path().join("big");
    // Not one repeated byte: a corrupted or misplaced chunk must show.
    let data: Vec<u8> = (0..SIZE as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let mut s = agent.connect();
    let open = format!(
        r#"{{"execute":"guest-file-open","arguments":{{"path":{}}}}}"#,
        serde_json::to_string(path.to_str().unwrap()).unwrap()
    );
    let handle = call(&mut s, &open)["return"].as_i64().unwrap();
    let baseline = proc_status_bytes(agent.pid(), "VmHWM");
    // Each read starts from the top again, so each reply carries all 16 MiB.
    let mut batch = String::new();
    for i in 0..READS {
        batch.push_str(&format!(
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":{handle},"offset":0,"whence":"set"}},"id":"s{i}"}}"#
        ));
        batch.push_str(&format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":{SIZE}}},"id":{i}}}"#
        ));
    }
    s.write_all(batch.as_bytes()).unwrap();
    // Not reading: the agent fills the socket, then must wait, holding at most
    // its budget, and sleep in poll meanwhile.
    std::thread::sleep(Duration::from_secs(1));
    let cpu_before = cpu_ticks(agent.pid());
    std::thread::sleep(Duration::from_secs(2));
    let cpu_spent = cpu_ticks(agent.pid()) - cpu_before;
    let hwm = proc_status_bytes(agent.pid(), "VmHWM");
    let rss = proc_status_bytes(agent.pid(), "VmRSS");
    eprintln!(
        "baseline {} KiB, VmHWM {} KiB, VmRSS {} KiB, CPU {cpu_spent} ticks while not read",
        baseline / 1024,
        hwm / 1024,
        rss / 1024
    );
    assert!(
        hwm < baseline + ONE_CONNECTION_BOUND * MIB,
        "peak RSS {} MiB over a baseline of {} MiB",
        hwm / MIB,
        baseline / MIB
    );
    // The same formula for this case (requests of a few KiB, 16 MiB reads): the
    // budget and, as the reads are streamed, one piece of a reply's text (256 KiB)
    // and one piece of file data (192 KiB), with 8 MiB for the allocator. A 16 MiB
    // read's whole reply (21.3 MiB) held at once would not fit.
    assert!(
        hwm < baseline + MIB + MIB / 2 + 8 * MIB,
        "peak RSS {} MiB over a baseline of {} MiB: more than a piece of a reply held",
        hwm / MIB,
        baseline / MIB
    );
    // 2 s of waiting: a loop that spins would use ~200 ticks.
    assert!(
        cpu_spent <= 20,
        "{cpu_spent} ticks of CPU while the client did not read"
    );

    // Now read everything: every reply, whole and in order.
    let expected_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&data)
    };
    let mut r = BufReader::with_capacity(1 << 20, &s);
    let mut line = Vec::new();
    for i in 0..READS {
        line.clear();
        r.read_until(b'\n', &mut line).unwrap();
        let seek: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            seek,
            serde_json::json!({"return": {"position": 0, "eof": false}, "id": format!("s{i}")})
        );
        line.clear();
        r.read_until(b'\n', &mut line).unwrap();
        // The file has no more after 16 MiB, but the read that got all of them did
        // not hit its end (qemu-ga sets eof only on a short read).
        let expected = format!(
            r#"{{"return":{{"buf-b64":"{expected_b64}","count":{SIZE},"eof":false}},"id":{i}}}"#
        );
        // Compared as bytes: parsing 200 replies of 21 MiB would take minutes.
        assert!(
            line.strip_suffix(b"\n") == Some(expected.as_bytes()),
            "reply {i} differs: {:?}...{:?}",
            String::from_utf8_lossy(&line[..line.len().min(60)]),
            String::from_utf8_lossy(&line[line.len().saturating_sub(60)..])
        );
    }
    // Quiet for over a second: the connection's buffers are released.
    std::thread::sleep(Duration::from_millis(1500));
    let idle = proc_status_bytes(agent.pid(), "VmRSS");
    eprintln!("VmRSS {} KiB once idle", idle / 1024);
    assert!(
        idle < baseline + 6 * MIB,
        "idle RSS {} KiB after the replies were read, baseline {} KiB",
        idle / 1024,
        baseline / 1024
    );
}

#[test]
fn after_a_burst_of_requests_the_agent_sleeps_instead_of_polling() {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    // The agent on one CPU and this test on another, so that the agent's CPU goes
    // idle between requests (on one CPU it would hand it to the client instead),
    // and nothing of ours wakes up there to make a polling agent give way.
    let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| allowed.is_set(c).unwrap_or(false))
        .collect();
    if cpus.len() < 2 {
        eprintln!("skipped: needs two CPUs to run on, has {}", cpus.len());
        return;
    }
    let only = |cpu: usize| {
        let mut set = CpuSet::new();
        set.set(cpu).unwrap();
        set
    };
    sched_setaffinity(Pid::from_raw(0), &only(cpus[1])).unwrap();
    let agent = Agent::start();
    sched_setaffinity(Pid::from_raw(agent.pid() as i32), &only(cpus[0])).unwrap();
    let mut s = agent.connect();
    // Requests 50 us apart (waited out on this CPU): each sleep of the agent
    // between them is one that polling shortens, so it polls.
    for i in 0..4000 {
        let r = call(&mut s, &format!(r#"{{"execute":"guest-ping","id":{i}}}"#));
        assert_eq!(r, serde_json::json!({"return": {}, "id": i}));
        let t = Instant::now();
        while t.elapsed() < Duration::from_micros(50) {
            std::hint::spin_loop();
        }
    }
    // The burst is over: polling must stop within its window, and the connection
    // stays open.
    std::thread::sleep(Duration::from_millis(200));
    let cpu_before = cpu_ticks(agent.pid());
    std::thread::sleep(Duration::from_secs(2));
    let cpu_spent = cpu_ticks(agent.pid()) - cpu_before;
    // A loop that kept polling would use ~200 ticks.
    assert!(cpu_spent <= 10, "{cpu_spent} ticks of CPU while idle");
    let r = call(&mut s, r#"{"execute":"guest-ping","id":"last"}"#);
    assert_eq!(r, serde_json::json!({"return": {}, "id": "last"}));
}

#[test]
fn a_slow_client_does_not_hold_the_others_off() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let agent = Agent::start();
    // A request that takes 10 s at one byte every 50 ms, unless told to hurry.
    let slow_req = format!(
        r#"{{"execute":"guest-ping","id":"{}"}}"#,
        "s".repeat(200 - 32)
    );
    assert_eq!(slow_req.len(), 200);
    let hurry = Arc::new(AtomicBool::new(false));
    let mut slow = agent.connect();
    let trickler = {
        let mut slow = slow.try_clone().unwrap();
        let hurry = Arc::clone(&hurry);
        let req = slow_req.clone();
        std::thread::spawn(move || {
            let bytes = req.as_bytes();
            let mut i = 0;
            while i < bytes.len() && !hurry.load(Ordering::SeqCst) {
                slow.write_all(&bytes[i..i + 1]).unwrap();
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            slow.write_all(&bytes[i..]).unwrap();
            i
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    // Meanwhile another client's 100 round trips, and a third that leaves midway.
    let start = Instant::now();
    let mut fast = agent.connect();
    for i in 0..100 {
        let r = call(
            &mut fast,
            &format!(r#"{{"execute":"guest-ping","id":{i}}}"#),
        );
        assert_eq!(r, serde_json::json!({"return": {}, "id": i}));
        if i == 50 {
            let mut quitter = agent.connect();
            quitter.write_all(br#"{"execute":"guest-ping","#).unwrap();
        }
    }
    let took = start.elapsed();
    hurry.store(true, Ordering::SeqCst);
    let trickled = trickler.join().unwrap();
    assert!(
        trickled < slow_req.len(),
        "the slow client was done before the others were answered ({took:?})"
    );
    assert!(
        took < Duration::from_secs(3),
        "100 pings took {took:?} next to a slow client"
    );
    // The slow client is answered too, once its request is whole.
    let mut line = Vec::new();
    BufReader::new(&mut slow)
        .read_until(b'\n', &mut line)
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(r["id"].as_str().map(str::len), Some(200 - 32));
    assert_eq!(r["return"], serde_json::json!({}));
}

#[test]
fn clients_past_the_connection_bound_wait_until_one_closes() {
    let agent = Agent::start();
    let mut served: Vec<UnixStream> = (0..channel::MAX_CONNECTIONS)
        .map(|_| agent.connect())
        .collect();
    for (i, s) in served.iter_mut().enumerate() {
        let r = call(s, &format!(r#"{{"execute":"guest-ping","id":{i}}}"#));
        assert_eq!(r["id"], i);
    }
    // One more: the kernel queues it (connect succeeds), the agent leaves it there.
    let mut waiting = agent.connect();
    waiting
        .write_all(br#"{"execute":"guest-ping","id":"waiting"}"#)
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut r = BufReader::new(waiting.try_clone().unwrap());
    let mut line = Vec::new();
    let err = r.read_until(b'\n', &mut line).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    assert!(line.is_empty(), "answered past the bound");
    // The served ones still are.
    let r0 = call(&mut served[3], r#"{"execute":"guest-ping","id":"still"}"#);
    assert_eq!(r0["id"], "still");
    // One closes: the waiting client is accepted and answered.
    drop(served.remove(0));
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    r.read_until(b'\n', &mut line).unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(reply, serde_json::json!({"return": {}, "id": "waiting"}));
}
