//! The agent's `vsock-listen` channel and qga-client's hybrid vsock transport, end to
//! end in a real VM, for our agent and for the reference qemu-ga.
//!
//! This host has no `/dev/vhost-vsock`, so the guest's vsock device is served in user
//! space by rust-vmm's `vhost-device-vsock` (a vhost-user backend; QEMU shares the
//! guest's memory with it through a memfd). Its host side is a hybrid vsock unix
//! socket (the Firecracker / Cloud Hypervisor protocol: `CONNECT <port>\n`, `OK <n>\n`,
//! then the stream), which is what [`qga_client::connect_hybrid_vsock`] speaks. The
//! guest's init starts the agent with `-m vsock-listen -p 3:PORT` (kernel command line
//! `qga_method=vsock`, see tests/vm/init.sh).
//!
//! For each agent: sync, ping, guest-info and a few read-only commands (compared
//! between the agents), a 16 MiB file written into the guest's tmpfs and read back
//! byte for byte, 50 reconnects (connect, sync, ping, close), and guest-shutdown, after
//! which QEMU must exit by itself.
//!
//! Needs qemu-system-x86, busybox-static, cpio, the reference agent and
//! `vhost-device-vsock` (scripts/test.sh installs them all) and a Debian kernel
//! package, fetched once with `apt-get download` into target/qga-vm-cache. Skips
//! loudly when something is missing, and fails instead with QGA_REQUIRE_REFERENCE=1
//! (as in CI).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qga_client::{connect_hybrid_vsock, Client, ClientError, Timeouts};
use qga_tests::{Qemu, QEMU};
use tokio::net::UnixStream;

const BACKEND: &str = "vhost-device-vsock";
/// The guest's context id (vhost-device-vsock tells the guest through the device).
const GUEST_CID: u32 = 3;
/// The port the guest's agent listens on.
const PORT: u32 = 4321;
/// Host ports the guest's qga-vsock-probe connects to: an agent listens on the first
/// (vhost-device-vsock hands it to `<uds-path>_PORT`), nothing on the second.
const PROBE_PORT: u32 = 5000;
const PROBE_PORT_CLOSED: u32 = 5001;
/// Guest RAM, MiB: the initramfs unpacks into it, and the 16 MiB file lives in it.
const RAM_MIB: u32 = 512;

fn can_run() -> bool {
    let missing: Vec<&str> = [QEMU, BACKEND, "busybox", "cpio", "apt-get", "depmod"]
        .into_iter()
        .filter(|p| !qga_tests::have(p))
        .chain((!Path::new(qga_tests::REFERENCE).exists()).then_some("qemu-ga"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "vsock VM end-to-end test cannot run, missing: {}",
        missing.join(", ")
    );
    if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
        panic!("{why} (QGA_REQUIRE_REFERENCE=1; scripts/test.sh installs them)");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    false
}

/// Waits for `path` to exist, or panics naming `what` (and `log`'s text, if any).
fn wait_for_path(path: &Path, what: &str, log: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before creating {}: {}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not create {}: {}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The vhost-user vsock backend: a child of this process, killed by pid when dropped.
struct Backend {
    child: Child,
    log: PathBuf,
    /// vhost-user socket QEMU connects to.
    vhost_user: PathBuf,
    /// Hybrid vsock socket the host connects to.
    uds: PathBuf,
}

impl Backend {
    fn start(dir: &Path) -> Backend {
        let vhost_user = dir.join("vhost-user.sock");
        let uds = dir.join("vsock.sock");
        let log = dir.join("backend.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(BACKEND)
            .args(["--guest-cid", &GUEST_CID.to_string()])
            .arg("--socket")
            .arg(&vhost_user)
            .arg("--uds-path")
            .arg(&uds)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start vhost-device-vsock");
        wait_for_path(&vhost_user, BACKEND, &log, &mut child);
        Backend {
            child,
            log,
            vhost_user,
            uds,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "---- {BACKEND} log (last lines) ----\n{}\n----",
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent on the host in unix-listen mode at `<uds-path>_PROBE_PORT`, where
/// vhost-device-vsock sends the guest's connections to host port PROBE_PORT: the
/// server side of the guest's qga-vsock-probe. A child, killed by pid when dropped.
struct HostAgent {
    child: Child,
    sock: PathBuf,
}

impl HostAgent {
    fn start(agent: &str, backend: &Backend, dir: &Path) -> HostAgent {
        let program = match agent {
            "ref" => Path::new(qga_tests::REFERENCE),
            _ => Path::new(env!("CARGO_BIN_EXE_qga-agent-e2e")),
        };
        let mut sock = backend.uds.clone().into_os_string();
        sock.push(format!("_{PROBE_PORT}"));
        let sock = PathBuf::from(sock);
        let state = dir.join("host-agent");
        std::fs::create_dir(&state).unwrap();
        let log = dir.join("host-agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(program)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(&state)
            .current_dir(&state)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the host agent");
        wait_for_path(&sock, "the host agent", &log, &mut child);
        HostAgent { child, sock }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the guest with a vhost-user vsock device served by `backend`.
fn start_vm(guest: &Path, dir: &Path, backend: &Backend, agent: &str) -> Qemu {
    let console = dir.join("console.log");
    let mut cmd = Qemu::command(
        guest,
        &format!(
            "qga={agent} qga_method=vsock qga_vsock={GUEST_CID}:{PORT} \
             qga_probe=2:{PROBE_PORT},2:{PROBE_PORT_CLOSED}"
        ),
        &console,
    );
    cmd.args(["-smp", "1", "-m", &format!("{RAM_MIB}M")])
        // vhost-user needs the guest's memory shared with the backend.
        .arg("-object")
        .arg(format!(
            "memory-backend-memfd,id=mem,size={RAM_MIB}M,share=on"
        ))
        .args(["-numa", "node,memdev=mem"])
        .args(["-nic", "none"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vv,path={}",
            backend.vhost_user.display()
        ))
        .args(["-device", "vhost-user-vsock-pci,chardev=vv"]);
    Qemu::spawn(&mut cmd, &console)
}

/// Timeouts for a guest under TCG.
fn slow_timeouts() -> Timeouts {
    Timeouts {
        quick: Duration::from_secs(30),
        file: Duration::from_secs(60),
        slow: Duration::from_secs(120),
        no_reply_grace: Duration::from_secs(2),
    }
}

/// Connects through the hybrid socket and syncs, retrying while the guest boots.
async fn connect_booting(
    vm: &mut Qemu,
    uds: &Path,
    within: Duration,
) -> Result<Client<UnixStream>, String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("never tried");
    while Instant::now() < deadline {
        if let Some(status) = vm.exited() {
            return Err(format!("QEMU exited ({status}) before the agent answered"));
        }
        // Until the guest's driver is up the backend leaves CONNECT unanswered, and
        // the client would wait its full 10 s for the answer: retry sooner.
        let attempt = tokio::time::timeout(Duration::from_secs(2), connect_hybrid_vsock(uds, PORT));
        match attempt.await.unwrap_or(Err(ClientError::Timeout)) {
            Ok(c) => {
                let mut c = c.with_timeouts(Timeouts {
                    quick: Duration::from_secs(3),
                    ..Default::default()
                });
                match c.sync().await {
                    Ok(()) => return Ok(c.with_timeouts(slow_timeouts())),
                    Err(e) => last = format!("sync: {e}"),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("no sync within {within:?}; last error: {last}"))
}

/// The guest's qga-vsock-probe (qga-client's AF_VSOCK transport): it reached the host
/// agent (sync, ping, guest-info with the version the host agent tells us directly),
/// and connecting to a port nobody listens on failed with an error naming the address.
async fn check_probe(vm: &Qemu, host: &HostAgent, agent: &str) {
    let mut direct = qga_client::connect_unix(&host.sock).await.unwrap();
    let version = direct.info().await.unwrap().version;
    let ok = format!("vsock-probe: 2:{PROBE_PORT} ");
    let closed = format!("vsock-probe: 2:{PROBE_PORT_CLOSED} ");
    let deadline = Instant::now() + Duration::from_secs(60);
    let console = loop {
        let text = vm.console();
        if text.contains(&ok) && text.contains(&closed) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{agent}: the guest's qga-vsock-probe did not report"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let line = |prefix: &str| -> String {
        let start = console.find(prefix).unwrap() + prefix.len();
        console[start..]
            .lines()
            .next()
            .unwrap()
            .trim_end()
            .to_owned()
    };
    let (reached, refused) = (line(&ok), line(&closed));
    eprintln!("{agent}: guest AF_VSOCK client: {reached}; closed port: {refused}");
    assert!(
        reached.starts_with(&format!("ok version={version} commands=")),
        "{agent}: the guest's AF_VSOCK client did not reach the host agent ({version}): {reached}"
    );
    assert!(
        refused.starts_with(&format!(
            "error: cannot connect to vsock 2:{PROBE_PORT_CLOSED}: "
        )),
        "{agent}: a closed host port should fail naming the address: {refused}"
    );
}

/// What the read-only commands answered, normalised for comparison.
#[derive(Debug, Clone, PartialEq)]
struct ReadOnly {
    /// guest-info's seed commands: (name, enabled, success-response).
    commands: Vec<(String, bool, bool)>,
    host_name: String,
    os_id: Option<String>,
    os_pretty_name: Option<String>,
    timezone: (Option<String>, i64),
}

/// Deterministic, incompressible-looking bytes (xorshift), so a shifted or
/// repeated chunk cannot compare equal.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

async fn exercise(vm: &mut Qemu, uds: &Path, host: &HostAgent, agent: &str) -> ReadOnly {
    let t = Instant::now();
    let mut c = connect_booting(vm, uds, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{agent}: {e}"));
    eprintln!(
        "{agent}: first sync over hybrid vsock {:?} after QEMU started",
        t.elapsed()
    );

    // Read-only commands.
    c.ping().await.unwrap();
    let info = c.info().await.unwrap();
    assert!(!info.version.is_empty(), "{agent}: empty version");
    let mut commands: Vec<(String, bool, bool)> = info
        .supported_commands
        .iter()
        .filter(|x| qga_proto::command_spec(&x.name).is_some())
        .map(|x| (x.name.clone(), x.enabled, x.success_response))
        .collect();
    commands.sort();
    // Every name listed is a seed command, and (at the end) the two agents list them
    // with the same flags. Ours may not serve every command of 7.2 yet: say which.
    let unlisted: Vec<&str> = qga_proto::COMMANDS
        .iter()
        .map(|spec| spec.name)
        .filter(|name| !commands.iter().any(|(n, _, _)| n == name))
        .collect();
    if !unlisted.is_empty() {
        eprintln!("{agent}: guest-info does not list {unlisted:?}");
    }
    for name in [
        "guest-sync",
        "guest-ping",
        "guest-file-write",
        "guest-shutdown",
    ] {
        assert!(
            commands.iter().any(|(n, enabled, _)| n == name && *enabled),
            "{agent}: {name} not enabled in guest-info"
        );
    }
    let host_name = c.get_host_name().await.unwrap();
    assert_eq!(host_name, "qga-guest", "{agent}");
    let os = c.get_osinfo().await.unwrap();
    let tz = c.get_timezone().await.unwrap();
    let read_only = ReadOnly {
        commands,
        host_name,
        os_id: os.id.clone(),
        os_pretty_name: os.pretty_name.clone(),
        timezone: (tz.zone.clone(), tz.offset),
    };
    assert_eq!(read_only.os_id.as_deref(), Some("qgatest"), "{agent}");

    // 16 MiB into the guest's tmpfs and back, byte for byte.
    let data = payload(16 << 20);
    let t = Instant::now();
    c.write_file("/tmp/vsock-roundtrip.bin", &data, 4 << 20, None)
        .await
        .unwrap_or_else(|e| panic!("{agent}: writing 16 MiB: {e}"));
    let wrote = t.elapsed();
    let t = Instant::now();
    let back = c
        .read_file("/tmp/vsock-roundtrip.bin", 4 << 20, None)
        .await
        .unwrap_or_else(|e| panic!("{agent}: reading 16 MiB back: {e}"));
    let read = t.elapsed();
    assert_eq!(
        back.len(),
        data.len(),
        "{agent}: read back a different size"
    );
    if let Some(i) = back.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("{agent}: 16 MiB round trip differs first at byte {i}");
    }
    eprintln!("{agent}: 16 MiB written in {wrote:?}, read back in {read:?}");
    drop(c);

    // 50 reconnects, each a fresh hybrid handshake and a fresh guest connection.
    let t = Instant::now();
    for i in 0..50 {
        let mut c = connect_hybrid_vsock(uds, PORT)
            .await
            .unwrap_or_else(|e| panic!("{agent}: reconnect {i}: {e}"))
            .with_timeouts(slow_timeouts());
        c.sync()
            .await
            .unwrap_or_else(|e| panic!("{agent}: reconnect {i}: sync: {e}"));
        c.ping()
            .await
            .unwrap_or_else(|e| panic!("{agent}: reconnect {i}: ping: {e}"));
    }
    eprintln!("{agent}: 50 reconnects in {:?}", t.elapsed());

    check_probe(vm, host, agent).await;

    // Last: shutdown. QEMU must exit by itself, with status 0.
    let mut c = connect_hybrid_vsock(uds, PORT)
        .await
        .unwrap()
        .with_timeouts(slow_timeouts());
    match c.shutdown(None).await {
        Ok(()) | Err(ClientError::Closed) => {}
        Err(e) => panic!("{agent}: shutdown: {e}"),
    }
    let t = Instant::now();
    assert_eq!(
        vm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{agent}: QEMU did not power off"
    );
    eprintln!(
        "{agent}: QEMU exited {:?} after guest-shutdown",
        t.elapsed()
    );
    read_only
}

#[test]
fn vsock_listen_over_hybrid_vsock_ours_and_the_reference() {
    if !can_run() {
        return;
    }
    let guest = tempfile::tempdir().unwrap();
    let t = Instant::now();
    qga_tests::build_guest_with(
        Path::new(env!("CARGO_BIN_EXE_qga-agent-e2e")),
        &[Path::new(env!("CARGO_BIN_EXE_qga-vsock-probe"))],
        guest.path(),
    );
    eprintln!("guest built in {:?}", t.elapsed());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for agent in ["ours", "ref"] {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::start(dir.path());
        let host = HostAgent::start(agent, &backend, dir.path());
        let mut vm = start_vm(guest.path(), dir.path(), &backend, agent);
        let t = Instant::now();
        results.push(rt.block_on(exercise(&mut vm, &backend.uds, &host, agent)));
        eprintln!("{agent}: whole VM run {:?}", t.elapsed());
        drop(vm);
        drop(backend);
    }
    // The commands both list carry the same flags (qemu-ga 7.2 lacks the newer
    // guest-get-load and guest-network-get-route; ours may not serve every 7.2
    // command yet).
    let both = |a: &ReadOnly, b: &ReadOnly| -> ReadOnly {
        let mut a = a.clone();
        a.commands
            .retain(|(n, _, _)| b.commands.iter().any(|(m, _, _)| m == n));
        a
    };
    let (ours, reference) = (
        both(&results[0], &results[1]),
        both(&results[1], &results[0]),
    );
    assert!(
        ours.commands.len() >= 30,
        "the agents have only {} commands in common: {:?}",
        ours.commands.len(),
        ours.commands
    );
    assert_eq!(
        ours, reference,
        "read-only replies differ (ours, reference)"
    );
}

/// The hybrid transport against a socket with no VM behind it: a clear error naming
/// the socket and port, never a hang (needs nothing but a unix socket).
#[test]
fn hybrid_vsock_to_a_missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("no-such.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(connect_hybrid_vsock(&sock, PORT))
        .expect_err("connecting to a missing socket succeeded");
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("hybrid vsock {} port {PORT}", sock.display())),
        "{text}"
    );
}
