//! End to end in a real VM: QEMU (TCG) boots a Debian kernel with an initramfs
//! holding busybox and the agent on a virtio-serial port; from the host, qga-client
//! drives every seed command. The same run is made with the reference qemu-ga, and
//! the replies to the read-only commands are compared.
//!
//! Needs qemu-system-x86, busybox-static, cpio, e2fsprogs and the reference agent
//! (scripts/test.sh installs them) and a Debian kernel package, fetched once with
//! `apt-get download` into target/qga-vm-cache. Skips loudly when something is
//! missing, and fails instead with QGA_REQUIRE_REFERENCE=1 (as in CI).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qga_client::{connect_unix, Client, ClientError, Timeouts};
use qga_proto::{FsfreezeStatus, SeekOrigin};
use qga_tests::{NOT_IN_72, PENDING_FOR_OURS};
use serde_json::{json, Value};

const QEMU: &str = "qemu-system-x86_64";

fn can_run() -> bool {
    let missing: Vec<&str> = [QEMU, "busybox", "cpio", "mkfs.ext4", "apt-get", "depmod"]
        .into_iter()
        .filter(|p| !qga_tests::have(p))
        .chain((!Path::new(qga_tests::REFERENCE).exists()).then_some("qemu-ga"))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "VM end-to-end test cannot run, missing: {}",
        missing.join(", ")
    );
    if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
        panic!("{why} (QGA_REQUIRE_REFERENCE=1; scripts/test.sh installs them)");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    false
}

/// Kernel and initramfs, built once per test run.
fn build_guest(out: &Path) {
    qga_tests::build_guest(Path::new(env!("CARGO_BIN_EXE_qga-agent-e2e")), out);
}

/// A running VM; killed by pid (only this QEMU) when dropped, printing the tail of
/// its console if the test is failing.
struct Vm {
    child: Child,
    dir: PathBuf,
    console: PathBuf,
}

impl Vm {
    fn start(guest: &Path, dir: &Path, agent: &str) -> Vm {
        let disk = dir.join("data.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(64 << 20))
            .unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk)
            .status()
            .unwrap();
        assert!(ok.success());
        let console = dir.join("console.log");
        let arg = |p: &Path| p.to_str().unwrap().to_owned();
        let child = Command::new(QEMU)
            .args(["-machine", "pc,accel=tcg", "-m", "512", "-smp", "1"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-global", "PIIX4_PM.disable_s3=0"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.gz"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 qga={agent}"))
            .arg("-serial")
            .arg(format!("file:{}", arg(&console)))
            .args(["-device", "virtio-serial"])
            .arg("-chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga0",
                arg(&dir.join("qga.sock"))
            ))
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d0,format=raw,discard=unmap",
                arg(&disk)
            ))
            .args(["-device", "virtio-blk-pci,drive=d0"])
            .args(["-netdev", "user,id=n0,restrict=on"])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                arg(&dir.join("qmp.sock"))
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu");
        Vm {
            child,
            dir: dir.to_owned(),
            console,
        }
    }

    fn console_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for QEMU to exit by itself; returns its status code.
    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// One QMP command (after capabilities negotiation) on a fresh connection.
    fn qmp(&self, command: &str) -> Value {
        let s = UnixStream::connect(self.dir.join("qmp.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        for cmd in ["qmp_capabilities", command] {
            writeln!(w, "{}", json!({"execute": cmd})).unwrap();
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                let v: Value = serde_json::from_str(&line).unwrap();
                // Skip asynchronous events.
                if v.get("event").is_none() {
                    if cmd == command {
                        return v;
                    }
                    break;
                }
            }
        }
        unreachable!()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- guest console (last lines) ----\n{}\n----",
                self.console_tail()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and syncs, retrying while the guest boots.
async fn connect(vm: &mut Vm, within: Duration) -> Client<tokio::net::UnixStream> {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "agent did not answer a sync within {within:?}"
        );
        if let Ok(Some(status)) = vm.child.try_wait() {
            panic!("QEMU exited ({status}) before the agent answered");
        }
        if let Ok(c) = connect_unix(vm.dir.join("qga.sock")).await {
            let mut c = c.with_timeouts(Timeouts {
                quick: Duration::from_secs(3),
                ..Default::default()
            });
            if c.sync().await.is_ok() {
                return c.with_timeouts(Timeouts {
                    quick: Duration::from_secs(30),
                    file: Duration::from_secs(60),
                    slow: Duration::from_secs(120),
                    no_reply_grace: Duration::from_secs(2),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the read-only commands answered, normalised for comparison.
#[derive(Debug, PartialEq)]
struct ReadOnly {
    interfaces: Vec<(String, Option<String>, Vec<String>)>,
    status: FsfreezeStatus,
    commands: Vec<(String, bool)>,
}

async fn exercise(vm: &mut Vm, agent: &str) -> ReadOnly {
    let started = Instant::now();
    let mut c = connect(vm, Duration::from_secs(120)).await;
    eprintln!(
        "agent answered its first sync {:?} after QEMU started",
        started.elapsed()
    );
    c.ping().await.unwrap();
    let info = c.info().await.unwrap();
    let mut commands: Vec<(String, bool)> = info
        .supported_commands
        .iter()
        .filter(|x| qga_proto::command_spec(&x.name).is_some())
        .map(|x| (x.name.clone(), x.success_response))
        .collect();
    commands.sort();
    let ours = agent == "ours";
    let listed: Vec<&str> = commands.iter().map(|c| c.0.as_str()).collect();
    for spec in qga_proto::COMMANDS {
        let name = spec.name;
        if ours && PENDING_FOR_OURS.contains(&name) {
            eprintln!(
                "ours: {name} listed by guest-info: {}",
                listed.contains(&name)
            );
        } else {
            // 7.2 has all but the newer ones; ours has all.
            let want = ours || !NOT_IN_72.contains(&name);
            assert_eq!(
                listed.contains(&name),
                want,
                "{agent}: {name} in guest-info"
            );
        }
    }
    // Compared: the commands both agents have.
    commands.retain(|c| {
        !NOT_IN_72.contains(&c.0.as_str()) && !PENDING_FOR_OURS.contains(&c.0.as_str())
    });

    let ifs = c.network_interfaces().await.unwrap();
    let mut interfaces: Vec<(String, Option<String>, Vec<String>)> = ifs
        .iter()
        .map(|i| {
            // IPv6 link-local addresses appear a moment after the link comes up,
            // so whether one is listed depends on timing, not on the agent.
            let mut a: Vec<String> = i
                .ip_addresses
                .iter()
                .flatten()
                .filter(|a| !a.ip_address.starts_with("fe80:"))
                .map(|a| format!("{}/{}", a.ip_address, a.prefix))
                .collect();
            a.sort();
            (i.name.clone(), i.hardware_address.clone(), a)
        })
        .collect();
    interfaces.sort();
    let names: Vec<&str> = interfaces.iter().map(|i| i.0.as_str()).collect();
    assert!(
        names.contains(&"lo") && names.contains(&"eth0"),
        "{interfaces:?}"
    );
    let eth0 = interfaces.iter().find(|i| i.0 == "eth0").unwrap();
    assert!(eth0.2.contains(&"10.0.2.15/24".to_owned()), "{eth0:?}");

    // Files on the ext4 data disk.
    let h = c
        .file_open("/mnt/data/hello.txt", Some("w+"))
        .await
        .unwrap();
    assert_eq!(
        c.file_write(h, b"hello from the host".to_vec())
            .await
            .unwrap()
            .count,
        19
    );
    c.file_flush(h).await.unwrap();
    assert_eq!(
        c.file_seek(h, 11, SeekOrigin::Set).await.unwrap().position,
        11
    );
    let r = c.file_read(h, Some(64)).await.unwrap();
    assert_eq!((r.buf_b64.0.as_slice(), r.eof), (&b"the host"[..], true));
    c.file_close(h).await.unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    c.write_file("/mnt/data/big.bin", &big, 1 << 20, None)
        .await
        .unwrap();
    assert!(
        c.read_file("/mnt/data/big.bin", 1 << 20, None)
            .await
            .unwrap()
            == big
    );

    // Freeze: the data disk is the one freezable filesystem.
    let status = c.fsfreeze_status().await.unwrap();
    assert_eq!(status, FsfreezeStatus::Thawed);
    assert_eq!(c.fsfreeze_freeze(None).await.unwrap(), 1);
    assert_eq!(c.fsfreeze_status().await.unwrap(), FsfreezeStatus::Frozen);
    let err = c.file_open("/mnt/data/x", Some("w")).await.unwrap_err();
    assert!(err.is_command_not_found(), "{err}");
    assert!(err
        .agent_error()
        .unwrap()
        .desc
        .contains("has been disabled"));
    assert_eq!(c.fsfreeze_thaw().await.unwrap(), 1);
    assert_eq!(c.fsfreeze_status().await.unwrap(), FsfreezeStatus::Thawed);

    // Trim: the 3 MB file deleted first, so there is something to discard.
    c.execute_raw(
        "guest-file-open",
        Some(json!({"path": "/mnt/data/big.bin", "mode": "w"})),
    )
    .await
    .unwrap();
    let trim = c.fstrim(None).await.unwrap();
    let data = trim
        .paths
        .iter()
        .find(|p| p.path == "/mnt/data")
        .unwrap_or_else(|| panic!("no /mnt/data in {trim:?}"));
    assert_eq!(data.error, None, "{trim:?}");
    assert!(data.trimmed.unwrap() > 0, "{trim:?}");

    // Suspend to RAM, wake through QMP, and the agent answers again.
    c.suspend_ram().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = vm.qmp("query-status");
        if st["return"]["status"] == "suspended" {
            break;
        }
        assert!(Instant::now() < deadline, "guest did not suspend: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let woke = vm.qmp("system_wakeup");
    assert!(woke.get("error").is_none(), "{woke}");
    // Same connection: the client resyncs by itself after a call without reply.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = c.sync().await {
        assert!(Instant::now() < deadline, "no answer after wake-up: {e}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    c.ping().await.unwrap();

    // Last: shutdown. QEMU must exit by itself, with status 0.
    match c.shutdown(None).await {
        Ok(()) | Err(ClientError::Closed) => {}
        Err(e) => panic!("shutdown: {e}"),
    }
    assert_eq!(
        vm.wait_exit(Duration::from_secs(60)),
        Some(0),
        "QEMU did not power off"
    );
    ReadOnly {
        interfaces,
        status,
        commands,
    }
}

#[test]
fn guest_agent_in_a_real_vm_ours_and_the_reference() {
    if !can_run() {
        return;
    }
    let guest = tempfile::tempdir().unwrap();
    build_guest(guest.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for agent in ["ours", "ref"] {
        let dir = tempfile::tempdir().unwrap();
        let mut vm = Vm::start(guest.path(), dir.path(), agent);
        let started = Instant::now();
        results.push(rt.block_on(exercise(&mut vm, agent)));
        eprintln!("{agent}: whole VM run {:?}", started.elapsed());
    }
    assert_eq!(
        results[0], results[1],
        "read-only replies differ (ours, reference)"
    );
}
