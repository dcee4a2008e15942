//! End to end in a real VM: QEMU (TCG) boots a Debian kernel with an initramfs
//! holding busybox and the agent on a virtio-serial port; from the host, qga-client
//! drives every seed command and the modern ones. The same run is made with the
//! reference qemu-ga, and the replies to the read-only commands are compared.
//!
//! The modern read commands are asserted against what the guest is (tests/vm: its
//! os-release, host name, time zone, utmp login, two vCPUs, three ext4 disks at the
//! PCI addresses QMP reports: virtio-blk vda, virtio-scsi sda at target 1 LUN 3, and
//! the MBR partition nvme0n1p1 of an NVMe disk, whose SMART log both agents read).
//! The commands that change the guest are checked by
//! their effect: vCPU 1 off and on, guest-exec round trips, guest-set-time through
//! busybox's hwclock (the guest boots with its RTC 2 h off its clock), ssh keys of a
//! guest user, passwords through a chpasswd shim that logs its input. Both agents must
//! pass every check.
//!
//! Needs qemu-system-x86, busybox-static, cpio, e2fsprogs and the reference agent
//! (scripts/test.sh installs them) and a Debian kernel package, fetched once with
//! `apt-get download` into target/qga-vm-cache. Skips loudly when something is
//! missing, and fails instead with QGA_REQUIRE_REFERENCE=1 (as in CI).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qga_client::{connect_unix, Client, ClientError, Timeouts};
use qga_proto::{
    Base64, ErrorClass, FsfreezeStatus, GuestExec, GuestExecCaptureOutput,
    GuestExecCaptureOutputMode, GuestExecStatusResult, GuestLogicalProcessor, SeekOrigin,
};
use qga_tests::{
    chpasswd_called, Qemu, Verdicts, CHPASSWD_LOG, GUEST_RTC_SKEW, GUEST_USER, NOT_IN_72, QEMU,
};
use serde_json::{json, Value};

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

/// A running VM (its QEMU is killed by pid when dropped) and the directory of its
/// sockets.
struct Vm {
    qemu: Qemu,
    dir: PathBuf,
}

/// Size of each of the guest's disks.
const DISK_SIZE: u64 = 64 << 20;
/// Where the partition of the NVMe disk starts (sector 2048, as fdisk puts it).
const PART_START: u64 = 1 << 20;
/// The virtio-scsi disk's SCSI address: channel, target (`scsi-id`), LUN.
const SCSI_ADDR: (u64, u64, u64) = (0, 1, 3);
/// The NVMe controller's serial (`-device nvme,serial=`).
const NVME_SERIAL: &str = "qganvme01";
/// Mount points of the two extra disks (init.sh mounts them, from `qga_disks=`).
const SCSI_MNT: &str = "/mnt/scsi";
const NVME_MNT: &str = "/mnt/nvme";

/// A sparse raw disk image of [`DISK_SIZE`] bytes with an ext4 filesystem: on the
/// whole disk, or with `partitioned` on one primary partition (type 0x83) of an MBR
/// partition table, from [`PART_START`] to the end.
fn make_disk(path: &Path, partitioned: bool) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(DISK_SIZE))
        .unwrap();
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F"]);
    if partitioned {
        // mke2fs writes the filesystem at the offset; the size is in KiB.
        mkfs.arg("-E")
            .arg(format!("offset={PART_START}"))
            .arg(path)
            .arg(format!("{}k", (DISK_SIZE - PART_START) >> 10));
    } else {
        mkfs.arg(path);
    }
    let ok = mkfs.status().unwrap();
    assert!(ok.success(), "mkfs.ext4 {}", path.display());
    if partitioned {
        use std::io::{Seek, SeekFrom};
        let mut mbr = [0u8; 512];
        mbr[440..444].copy_from_slice(&0x5147_4131u32.to_le_bytes()); // disk id
        let entry = &mut mbr[446..462];
        entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS: use the LBA
        entry[4] = 0x83; // Linux
        entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
        entry[8..12].copy_from_slice(&((PART_START / 512) as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&(((DISK_SIZE - PART_START) / 512) as u32).to_le_bytes());
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.write_all(&mbr).unwrap();
    }
}

impl Vm {
    /// Boots the guest with three ext4 disks: virtio-blk `vda` (on `/mnt/data`),
    /// virtio-scsi `sda` at [`SCSI_ADDR`] (whole disk, on [`SCSI_MNT`]) and NVMe
    /// `nvme0n1` (partition `nvme0n1p1`, on [`NVME_MNT`]).
    fn start(guest: &Path, dir: &Path, agent: &str) -> Vm {
        let disk = dir.join("data.img");
        make_disk(&disk, false);
        let scsi = dir.join("scsi.img");
        make_disk(&scsi, false);
        let nvme = dir.join("nvme.img");
        make_disk(&nvme, true);
        let (channel, scsi_id, lun) = SCSI_ADDR;
        let console = dir.join("console.log");
        let arg = |p: &Path| p.to_str().unwrap().to_owned();
        let mut cmd = Qemu::command(
            guest,
            &format!(
                "qga={agent} qga_rtc_skew={GUEST_RTC_SKEW} \
                 qga_disks=sda:{SCSI_MNT},nvme0n1p1:{NVME_MNT}"
            ),
            &console,
        );
        cmd.args(["-m", "512", "-smp", "2"])
            .args(["-global", "PIIX4_PM.disable_s3=0"])
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
            .args(["-device", "virtio-blk-pci,drive=d0,id=vblk"])
            .args(["-device", "virtio-scsi-pci,id=scsi0"])
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d1,format=raw,discard=unmap",
                arg(&scsi)
            ))
            .arg("-device")
            .arg(format!(
                "scsi-hd,drive=d1,bus=scsi0.0,channel={channel},scsi-id={scsi_id},lun={lun}"
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=none,id=d2,format=raw,discard=unmap",
                arg(&nvme)
            ))
            .arg("-device")
            .arg(format!("nvme,drive=d2,serial={NVME_SERIAL},id=nvme0"))
            .args(["-netdev", "user,id=n0,restrict=on"])
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                arg(&dir.join("qmp.sock"))
            ));
        Vm {
            qemu: Qemu::spawn(&mut cmd, &console),
            dir: dir.to_owned(),
        }
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

/// Connects and syncs, retrying while the guest boots.
async fn connect(vm: &mut Vm, within: Duration) -> Client<tokio::net::UnixStream> {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "agent did not answer a sync within {within:?}"
        );
        if let Some(status) = vm.qemu.exited() {
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
    modern: Modern,
}

/// The modern read commands' replies, normalised: what moves (counters, used
/// bytes, the clock) is dropped, what is structural is kept.
#[derive(Debug, PartialEq)]
struct Modern {
    osinfo: Value,
    host_name: String,
    timezone: Value,
    users: Value,
    vcpus: Value,
    memory_blocks: Value,
    memory_block_info: Value,
    /// guest-get-fsinfo without used-bytes and total-bytes-privileged, by mountpoint.
    fsinfo: Vec<Value>,
    /// guest-get-disks, by name.
    disks: Vec<Value>,
    /// Each CPU's number and the members present.
    cpustats: Vec<(i64, Vec<String>)>,
    /// Each device's name, major, minor and the stats members present.
    diskstats: Vec<(String, u64, u64, Vec<String>)>,
    /// guest-get-devices' error (class, desc).
    devices: (String, String),
}

/// The member names of a JSON object, sorted.
fn members(v: &Value) -> Vec<String> {
    let mut m: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    m.sort();
    m
}

/// A command's raw `return`; panics with the agent's error.
async fn get(c: &mut Client<tokio::net::UnixStream>, agent: &str, name: &str) -> Value {
    let v = c
        .execute_raw(name, None)
        .await
        .unwrap_or_else(|e| panic!("{agent}: {name}: {e}"));
    eprintln!("{agent}: {name}: {v}");
    v
}

/// The guest's kernel release, from the unpacked package in the cache.
fn guest_kernel_release() -> String {
    let modules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qga-vm-cache/kernel/lib/modules");
    let mut names: Vec<String> = std::fs::read_dir(&modules)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{}: {names:?}", modules.display());
    names.pop().unwrap()
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Turns an error into the text of a failed check.
trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// `Err(format!(...))` out of the check unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

type Agent = Client<tokio::net::UnixStream>;

/// guest-exec, then guest-exec-status until it says the process exited.
async fn exec(c: &mut Agent, cmd: GuestExec) -> Result<GuestExecStatusResult, String> {
    let what = format!(
        "guest-exec {} {:?}",
        cmd.path,
        cmd.arg.as_deref().unwrap_or(&[])
    );
    let pid = c.exec(&cmd).await.ctx(&what)?.pid;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = c.exec_status(pid).await.ctx("guest-exec-status")?;
        if st.exited {
            return Ok(st);
        }
        ensure!(Instant::now() < deadline, "{what}: not exited after 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A guest-exec request running `sh -c SCRIPT`, output captured separately.
fn sh(script: &str) -> GuestExec {
    GuestExec {
        path: "sh".into(),
        arg: Some(vec!["-c".into(), script.into()]),
        capture_output: Some(GuestExecCaptureOutput::Flag(true)),
        ..Default::default()
    }
}

/// Captured output as text (`None` when the agent sent none).
fn text(b64: &Option<String>) -> Result<Option<String>, String> {
    b64.as_deref()
        .map(|t| {
            let bytes = Base64::decode(t).map_err(|e| format!("bad base64 {t:?}: {e}"))?;
            String::from_utf8(bytes).map_err(|e| e.to_string())
        })
        .transpose()
}

/// Exit code, signal, stdout and stderr of a finished process.
type Outcome = (Option<i64>, Option<i64>, Option<String>, Option<String>);

/// Exit code, signal and output of a finished process.
fn outcome(st: &GuestExecStatusResult) -> Result<Outcome, String> {
    Ok((
        st.exitcode,
        st.signal,
        text(&st.out_data)?,
        text(&st.err_data)?,
    ))
}

fn some(s: &str) -> Option<String> {
    Some(s.to_owned())
}

/// The guest clock's distance from `want` (ns), in seconds.
async fn clock_off(c: &mut Agent, want: i64) -> Result<i64, String> {
    let t = c.get_time().await.ctx("guest-get-time")?;
    Ok((t - want) / 1_000_000_000)
}

const HOUR_NS: i64 = 3600 * 1_000_000_000;

/// The guest's chpasswd shim log (init.sh).
async fn chpasswd_log(c: &mut Agent) -> Result<String, String> {
    let log = c
        .read_file(CHPASSWD_LOG, 1 << 16, None)
        .await
        .ctx("guest-file-read of the chpasswd log")?;
    Ok(String::from_utf8_lossy(&log).into_owned())
}

/// Part 2 of the modern commands: the ones that change the guest, each checked by
/// its effect, for both agents.
async fn act_modern(c: &mut Agent, agent: &str) {
    let ours = agent == "ours";
    let mut v = Verdicts::new(agent);

    // CPU 1 offline and back.
    let r = async {
        let cpu1 =
            |vcpus: &[GuestLogicalProcessor]| vcpus.iter().find(|p| p.logical_id == 1).copied();
        for online in [false, true] {
            let n = c
                .set_vcpus(vec![GuestLogicalProcessor {
                    logical_id: 1,
                    online,
                    can_offline: None,
                }])
                .await
                .ctx("guest-set-vcpus")?;
            ensure!(n == 1, "guest-set-vcpus processed {n}, want 1");
            let vcpus = c.get_vcpus().await.ctx("guest-get-vcpus")?;
            let got = cpu1(&vcpus);
            ensure!(
                got.is_some_and(|p| p.online == online)
                    && vcpus.iter().any(|p| p.logical_id == 0 && p.online),
                "after setting CPU 1 online={online}: {vcpus:?}"
            );
        }
        Ok(())
    }
    .await;
    v.record(
        "guest-set-vcpus: CPU 1 off, then on",
        &["guest-set-vcpus", "guest-get-vcpus"],
        r,
    );

    // guest-exec round trips.
    const EXEC: &[&str] = &["guest-exec", "guest-exec-status"];
    let r = async {
        let st = exec(
            c,
            GuestExec {
                path: "echo".into(),
                arg: Some(vec!["hello".into(), "from the host".into()]),
                capture_output: Some(GuestExecCaptureOutput::Flag(true)),
                ..Default::default()
            },
        )
        .await?;
        let got = outcome(&st)?;
        ensure!(
            got == (Some(0), None, some("hello from the host\n"), None),
            "echo: {st:?}"
        );
        Ok(())
    }
    .await;
    v.record("guest-exec: echo with arguments", EXEC, r);
    let r = async {
        let input = "line one\nline two\n";
        let mut b64 = Vec::new();
        Base64::encode_into(input.as_bytes(), &mut b64);
        let st = exec(
            c,
            GuestExec {
                path: "cat".into(),
                input_data: Some(String::from_utf8(b64).unwrap()),
                capture_output: Some(GuestExecCaptureOutput::Flag(true)),
                ..Default::default()
            },
        )
        .await?;
        ensure!(
            outcome(&st)? == (Some(0), None, some(input), None),
            "cat: {st:?}"
        );
        Ok(())
    }
    .await;
    v.record("guest-exec: cat with input-data", EXEC, r);
    let r = async {
        let st = exec(c, sh("exit 3")).await?;
        ensure!(
            outcome(&st)? == (Some(3), None, None, None),
            "exit 3: {st:?}"
        );
        let st = exec(c, sh("echo to-out; echo to-err >&2")).await?;
        ensure!(
            outcome(&st)? == (Some(0), None, some("to-out\n"), some("to-err\n")),
            "separated: {st:?}"
        );
        let st = exec(c, sh("kill -TERM $$")).await?;
        ensure!(
            outcome(&st)? == (None, Some(15), None, None),
            "killed: {st:?}"
        );
        // env replaces the whole environment: HOME (from the kernel) is gone.
        let st = exec(
            c,
            GuestExec {
                path: "/bin/sh".into(),
                env: Some(vec!["FOO=bar".into()]),
                ..sh("echo \"$FOO:$HOME\"")
            },
        )
        .await?;
        ensure!(
            outcome(&st)? == (Some(0), None, some("bar:\n"), None),
            "env: {st:?}"
        );
        Ok(())
    }
    .await;
    v.record("guest-exec: exit code, stderr, signal, env", EXEC, r);
    let r = async {
        let err = c
            .exec(&GuestExec {
                path: "/nonexistent/program".into(),
                ..Default::default()
            })
            .await
            .err()
            .ok_or("guest-exec of a missing program succeeded")?;
        let e = err.agent_error().ok_or_else(|| err.to_string())?;
        ensure!(
            e.class == ErrorClass::GenericError && e.desc.contains("/nonexistent/program"),
            "guest-exec of a missing program: {err}"
        );
        Ok(())
    }
    .await;
    v.record("guest-exec: a missing program", EXEC, r);
    // capture-output "merged" is QEMU 8.0: 7.2 only takes a boolean.
    let merged = GuestExec {
        capture_output: Some(GuestExecCaptureOutput::Mode(
            GuestExecCaptureOutputMode::Merged,
        )),
        ..sh("echo one; echo two >&2; echo three")
    };
    let r = async {
        if ours {
            let st = exec(c, merged).await?;
            ensure!(
                outcome(&st)? == (Some(0), None, some("one\ntwo\nthree\n"), None),
                "merged: {st:?}"
            );
        } else {
            let err = c
                .exec(&merged)
                .await
                .err()
                .ok_or("7.2 took capture-output \"merged\"")?;
            ensure!(err.to_string().contains("capture-output"), "{err}");
        }
        Ok(())
    }
    .await;
    v.record(
        "guest-exec: capture-output merged (ours; 7.2 refuses it)",
        EXEC,
        r,
    );

    // The clock, through hwclock: the guest booted with its RTC 2 h behind.
    let r = async {
        c.set_time(None).await.ctx("guest-set-time from the RTC")?;
        let off = clock_off(c, now_ns() + GUEST_RTC_SKEW * 1_000_000_000).await?;
        ensure!(
            off.abs() <= 10,
            "after hwclock -s the guest is {off} s off its RTC (booted {GUEST_RTC_SKEW} s off)"
        );
        c.set_time(Some(now_ns() + HOUR_NS))
            .await
            .ctx("guest-set-time +1 h")?;
        let off = clock_off(c, now_ns() + HOUR_NS).await?;
        ensure!(
            off.abs() <= 10,
            "set 1 h ahead, the guest is {off} s off that"
        );
        c.set_time(None).await.ctx("guest-set-time from the RTC")?;
        let off = clock_off(c, now_ns() + HOUR_NS).await?;
        ensure!(
            off.abs() <= 10,
            "hwclock -w did not keep +1 h in the RTC: {off} s off"
        );
        c.set_time(Some(now_ns()))
            .await
            .ctx("guest-set-time back")?;
        let off = clock_off(c, now_ns()).await?;
        ensure!(
            off.abs() <= 10,
            "set back, the guest is {off} s off the host"
        );
        // Out of range (7.2: years 1970-2069): refused, clock untouched.
        let err = c
            .set_time(Some(4_102_444_800 * 1_000_000_000))
            .await
            .err()
            .ok_or("year 2100 accepted")?;
        ensure!(err.agent_error().is_some(), "{err}");
        let off = clock_off(c, now_ns()).await?;
        ensure!(
            off.abs() <= 10,
            "after a refused time, the guest is {off} s off the host"
        );
        Ok(())
    }
    .await;
    v.record(
        "guest-set-time: from the RTC, +1 h, from the RTC again, back",
        &["guest-set-time", "guest-get-time"],
        r,
    );

    // ssh keys of the guest user.
    const SSH: &[&str] = &[
        "guest-ssh-get-authorized-keys",
        "guest-ssh-add-authorized-keys",
        "guest-ssh-remove-authorized-keys",
    ];
    let key =
        |n: u32| format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIQGAtestkey{n} qga-test-{n}@host");
    let r = async {
        // No file yet: 7.2 says it cannot read it (an error, not an empty list).
        let initial = c.ssh_get_authorized_keys(GUEST_USER).await;
        eprintln!("{agent}: keys before any were added: {initial:?}");
        enum Op {
            Add(&'static [u32]),
            Remove(&'static [u32]),
            Reset(&'static [u32]),
        }
        // (step, what is sent, the keys then on file)
        let steps: [(&str, Op, &[u32]); 4] = [
            ("add 1, 2", Op::Add(&[1, 2]), &[1, 2]),
            ("add 2, 3", Op::Add(&[2, 3]), &[1, 2, 3]),
            ("remove 1 and an absent 9", Op::Remove(&[1, 9]), &[2, 3]),
            ("reset to 4", Op::Reset(&[4]), &[4]),
        ];
        let keys = |n: &[u32]| n.iter().copied().map(key).collect::<Vec<_>>();
        for (step, op, want) in steps {
            match op {
                Op::Add(n) => c.ssh_add_authorized_keys(GUEST_USER, keys(n), false).await,
                Op::Remove(n) => c.ssh_remove_authorized_keys(GUEST_USER, keys(n)).await,
                Op::Reset(n) => c.ssh_add_authorized_keys(GUEST_USER, keys(n), true).await,
            }
            .ctx(step)?;
            let want = keys(want);
            // The file keeps the keys in the order they were added...
            let file = c
                .read_file("/home/qgauser/.ssh/authorized_keys", 1 << 16, None)
                .await
                .ctx("read authorized_keys")?;
            let file = String::from_utf8_lossy(&file);
            ensure!(
                file.lines().eq(want.iter().map(String::as_str)),
                "{step}: authorized_keys is {file:?}, want {want:?}"
            );
            // ...and guest-ssh-get-authorized-keys lists them (7.2: last line first).
            let mut listed = c.ssh_get_authorized_keys(GUEST_USER).await.ctx("get")?;
            if !ours {
                let mut reversed = want.clone();
                reversed.reverse();
                ensure!(
                    listed == reversed,
                    "{step}: listed {listed:?}, want {reversed:?}"
                );
            }
            listed.sort();
            ensure!(listed == want, "{step}: listed {listed:?}, want {want:?}");
        }
        let err = c
            .ssh_get_authorized_keys("nosuchuser")
            .await
            .err()
            .ok_or("keys of an unknown user")?;
        ensure!(
            err.agent_error()
                .is_some_and(|e| e.desc.contains("nosuchuser")),
            "{err}"
        );
        Ok(())
    }
    .await;
    v.record(
        "guest-ssh-*-authorized-keys: add, add again, remove, reset",
        SSH,
        r,
    );
    let r = async {
        let st = exec(
            c,
            sh("stat -c '%u:%g %a' /home/qgauser/.ssh /home/qgauser/.ssh/authorized_keys"),
        )
        .await?;
        ensure!(
            outcome(&st)? == (Some(0), None, some("1000:1000 700\n1000:1000 600\n"), None),
            "owners and modes: {st:?}"
        );
        Ok(())
    }
    .await;
    v.record(
        "guest-ssh-add-authorized-keys: ~/.ssh 700, the file 600, owned by the user",
        &[SSH, EXEC].concat(),
        r,
    );

    // Passwords, through the chpasswd shim that logs its arguments and input.
    let r = async {
        c.set_user_password(GUEST_USER, b"s3cret pass", false)
            .await
            .ctx("guest-set-user-password")?;
        let hash = "$6$qgasalt$J9a8dTxK4Hj3rEBI0jT2sMvFq1pQ3mGQ9vJc5Ykq1cU";
        c.set_user_password(GUEST_USER, hash.as_bytes(), true)
            .await
            .ctx("guest-set-user-password crypted")?;
        let log = chpasswd_log(c).await?;
        ensure!(
            chpasswd_called(&log, "", &format!("{GUEST_USER}:s3cret pass")),
            "no `chpasswd` fed `{GUEST_USER}:s3cret pass`: {log:?}"
        );
        ensure!(
            chpasswd_called(&log, "-e", &format!("{GUEST_USER}:{hash}")),
            "no `chpasswd -e` fed `{GUEST_USER}:{hash}`: {log:?}"
        );
        // A newline would smuggle a second user in: refused before chpasswd runs.
        let err = c
            .set_user_password(GUEST_USER, b"a\nroot:b", false)
            .await
            .err()
            .ok_or("a password with a newline was taken")?;
        ensure!(err.agent_error().is_some(), "{err}");
        let after = chpasswd_log(c).await?;
        ensure!(
            after == log,
            "chpasswd ran for a refused password: {after:?}"
        );
        Ok(())
    }
    .await;
    v.record(
        "guest-set-user-password: plain and crypted reach chpasswd",
        &["guest-set-user-password"],
        r,
    );
    v.finish();
}

/// Part 1 of the modern commands: every read command, asserted against what the
/// guest is (tests/vm) and normalised for the comparison of the two agents.
async fn read_modern(vm: &Vm, c: &mut Client<tokio::net::UnixStream>, agent: &str) -> Modern {
    let ours = agent == "ours";
    let osinfo = get(c, agent, "guest-get-osinfo").await;
    for (k, want) in [
        ("id", "qgatest".to_owned()),
        ("name", "qga-rs Test Guest".into()),
        ("pretty-name", "qga-rs Test Guest 1.0".into()),
        ("version", "1.0 (busybox)".into()),
        ("version-id", "1.0".into()),
        ("machine", "x86_64".into()),
        ("kernel-release", guest_kernel_release()),
    ] {
        assert_eq!(osinfo[k], json!(want), "{agent}: guest-get-osinfo {k}");
    }
    let host_name = c.get_host_name().await.unwrap();
    assert_eq!(host_name, "qga-guest", "{agent}");
    let timezone = get(c, agent, "guest-get-timezone").await;
    assert_eq!(timezone, json!({"zone": "JST", "offset": 32400}), "{agent}");
    let users = get(c, agent, "guest-get-users").await;
    assert_eq!(
        users,
        json!([{"user": "qgauser", "login-time": 1700000000.5}]),
        "{agent}"
    );
    let vcpus = get(c, agent, "guest-get-vcpus").await;
    // In readdir order (compared as is between the agents).
    let mut sorted = vcpus.as_array().unwrap().clone();
    sorted.sort_by_key(|v| v["logical-id"].as_i64());
    assert_eq!(
        Value::Array(sorted),
        json!([
            {"logical-id": 0, "online": true, "can-offline": false},
            {"logical-id": 1, "online": true, "can-offline": true},
        ]),
        "{agent}: two vCPUs, the first one not hot-pluggable"
    );
    let memory_blocks = get(c, agent, "guest-get-memory-blocks").await;
    let blocks = memory_blocks.as_array().unwrap();
    assert!(!blocks.is_empty(), "{agent}: no memory blocks");
    assert!(
        blocks.iter().all(|b| b["online"] == json!(true)),
        "{agent}: {memory_blocks}"
    );
    let memory_block_info = get(c, agent, "guest-get-memory-block-info").await;
    let size = memory_block_info["size"].as_u64().unwrap();
    assert!(size.is_power_of_two() && size >= 1 << 20, "{agent}: {size}");

    // Filesystems: the data disk on vda, the SCSI disk sda, the NVMe partition
    // nvme0n1p1, each at its controller's PCI address as QMP reports it.
    let pci = vm.qmp("query-pci");
    let address = |id: &str| {
        let dev = pci["return"][0]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["qdev_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {pci}"));
        json!({
            "domain": 0,
            "bus": dev["bus"],
            "slot": dev["slot"],
            "function": dev["function"],
        })
    };
    let (vblk, scsi0, nvme0) = (address("vblk"), address("scsi0"), address("nvme0"));
    let mut fsinfo: Vec<Value> = get(c, agent, "guest-get-fsinfo")
        .await
        .as_array()
        .unwrap()
        .clone();
    for fs in &mut fsinfo {
        let o = fs.as_object_mut().unwrap();
        o.remove("used-bytes");
        if let Some(p) = o.remove("total-bytes-privileged") {
            assert!(ours, "7.2 has no total-bytes-privileged");
            let total = o["total-bytes"].as_u64().unwrap();
            assert!(p.as_u64().unwrap() >= total, "{agent}: {p} < {total}");
        }
    }
    fsinfo.sort_by_key(|f| f["mountpoint"].as_str().unwrap().to_owned());
    // (mount point, device name, bus type, controller, bus/target/unit). On
    // virtio-scsi behind PCI, qemu-ga (7.2, and later ones alike) reports the LUN
    // as unit and bus and target 0, whatever the channel and target (`scsi-id`)
    // are: its parser assumes `target*:0:0:<lun>`. Ours answers the same (wire
    // compatibility), so a client cannot tell target 1 from target 0 here.
    let (_channel, _scsi_id, lun) = SCSI_ADDR;
    let mounted = [
        ("/mnt/data", "vda", "virtio", &vblk, (0, 0, 0)),
        (SCSI_MNT, "sda", "scsi", &scsi0, (0, 0, lun)),
        (NVME_MNT, "nvme0n1p1", "nvme", &nvme0, (0, 0, 0)),
    ];
    for (mnt, name, bus_type, pci, (bus, target, unit)) in mounted {
        let fs = fsinfo
            .iter()
            .find(|f| f["mountpoint"] == mnt)
            .unwrap_or_else(|| panic!("{agent}: no {mnt} in {fsinfo:?}"));
        assert_eq!(
            (&fs["name"], &fs["type"]),
            (&json!(name), &json!("ext4")),
            "{agent}: {fs}"
        );
        let total = fs["total-bytes"].as_u64().unwrap();
        assert!(
            (DISK_SIZE / 2..=DISK_SIZE).contains(&total),
            "{agent}: {mnt}: {total}"
        );
        let disk = &fs["disk"];
        assert_eq!(disk.as_array().unwrap().len(), 1, "{agent}: {fs}");
        let d = &disk[0];
        // On a partition, the partition's node with its disk's address.
        assert_eq!(d["dev"], format!("/dev/{name}"), "{agent}: {fs}");
        assert_eq!(d["bus-type"], bus_type, "{agent}: {fs}");
        assert_eq!(&d["pci-controller"], pci, "{agent}: {fs}");
        assert_eq!(
            (&d["bus"], &d["target"], &d["unit"]),
            (&json!(bus), &json!(target), &json!(unit)),
            "{agent}: {mnt}: bus/target/unit in {fs}"
        );
        // No udev in the guest: neither agent knows a serial.
        assert_eq!(d.get("serial"), None, "{agent}: {fs}");
    }

    let mut disks: Vec<Value> = get(c, agent, "guest-get-disks")
        .await
        .as_array()
        .unwrap()
        .clone();
    disks.sort_by_key(|d| d["name"].as_str().unwrap().to_owned());
    let disk = |name: &str| {
        disks
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{agent}: no {name} in {disks:?}"))
            .clone()
    };
    for (name, bus_type, pci) in [
        ("/dev/vda", "virtio", &vblk),
        ("/dev/sda", "scsi", &scsi0),
        ("/dev/nvme0n1", "nvme", &nvme0),
    ] {
        let d = disk(name);
        assert_eq!(d["partition"], false, "{agent}: {d}");
        assert_eq!(d["dependencies"], json!([]), "{agent}: {d}");
        assert_eq!(d["address"]["bus-type"], bus_type, "{agent}: {d}");
        assert_eq!(&d["address"]["pci-controller"], pci, "{agent}: {d}");
        assert_eq!(d["address"]["dev"], name, "{agent}: {d}");
        assert_eq!(d.get("smart").is_some(), bus_type == "nvme", "{agent}: {d}");
    }
    let sda = disk("/dev/sda");
    assert_eq!(
        (
            &sda["address"]["bus"],
            &sda["address"]["target"],
            &sda["address"]["unit"]
        ),
        (&json!(0), &json!(0), &json!(lun)),
        "{agent}: {sda}"
    );
    let part = disk("/dev/nvme0n1p1");
    assert_eq!(part["partition"], true, "{agent}: {part}");
    assert_eq!(
        part["dependencies"],
        json!(["/dev/nvme0n1"]),
        "{agent}: {part}"
    );
    assert_eq!(part.get("address"), None, "{agent}: {part}");
    // The NVMe SMART log: what QEMU's controller says of itself (a fixed temperature,
    // full spare, no warnings) is compared as is; the I/O counters move with what the
    // guest happened to read and write before the query, so they are checked here
    // and left out of the comparison.
    for d in &mut disks {
        let Some(smart) = d.get_mut("smart").and_then(Value::as_object_mut) else {
            continue;
        };
        assert_eq!(smart["type"], "nvme", "{agent}: {smart:?}");
        for counter in [
            "data-units-read",
            "data-units-written",
            "host-read-commands",
            "host-write-commands",
        ] {
            let lo = smart.remove(&format!("{counter}-lo"));
            let hi = smart.remove(&format!("{counter}-hi"));
            assert!(
                lo.as_ref().and_then(Value::as_u64).is_some() && hi == Some(json!(0)),
                "{agent}: smart {counter}: lo {lo:?}, hi {hi:?}"
            );
            if counter.contains("read") {
                // Mounting the partition read from it.
                assert!(lo.unwrap().as_u64().unwrap() > 0, "{agent}: {counter}");
            }
        }
    }

    let stats = get(c, agent, "guest-get-cpustats").await;
    let cpustats: Vec<(i64, Vec<String>)> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["cpu"].as_i64().unwrap(), members(s)))
        .collect();
    assert_eq!(
        cpustats.iter().map(|s| s.0).collect::<Vec<_>>(),
        [0, 1],
        "{agent}"
    );
    let stats = get(c, agent, "guest-get-diskstats").await;
    let mut diskstats: Vec<(String, u64, u64, Vec<String>)> = stats
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["major"].as_u64().unwrap(),
                s["minor"].as_u64().unwrap(),
                members(&s["stats"]),
            )
        })
        .collect();
    diskstats.sort();
    assert!(
        diskstats.iter().any(|d| d.0 == "vda" && d.2 == 0),
        "{agent}: no vda in {diskstats:?}"
    );

    let err = c.get_devices().await.unwrap_err();
    let e = err
        .agent_error()
        .unwrap_or_else(|| panic!("{agent}: {err}"));
    assert!(err.is_command_not_found(), "{agent}: {err}");
    assert_eq!(
        e.desc, "Command guest-get-devices has been disabled",
        "{agent}"
    );
    let devices = (e.class.to_string(), e.desc.clone());

    let t = c.get_time().await.unwrap();
    let off = (t - now_ns()) / 1_000_000_000;
    assert!(
        off.abs() <= 60,
        "{agent}: guest clock {off} s off the host's"
    );

    // Newer than 7.2: ours answers, the reference does not know them.
    if ours {
        let load = c.get_load().await.unwrap();
        eprintln!("{agent}: guest-get-load: {load:?}");
        for l in [load.load1m, load.load5m, load.load15m] {
            assert!(l.is_finite() && l >= 0.0, "{load:?}");
        }
        let routes = get(c, agent, "guest-network-get-route").await;
        assert!(
            routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["iface"] == "eth0"
                    && r["destination"] == "10.0.2.0"
                    && r["mask"] == "255.255.255.0"
                    && r["version"] == 4),
            "no 10.0.2.0/24 on eth0: {routes}"
        );
    } else {
        for name in NOT_IN_72 {
            let err = c.execute_raw(name, None).await.unwrap_err();
            assert!(err.is_command_not_found(), "{agent}: {name}: {err}");
        }
    }
    Modern {
        osinfo,
        host_name,
        timezone,
        users,
        vcpus,
        memory_blocks,
        memory_block_info,
        fsinfo,
        disks,
        cpustats,
        diskstats,
        devices,
    }
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
        // 7.2 has all but the newer ones; ours has all.
        let want = ours || !NOT_IN_72.contains(&name);
        assert_eq!(
            listed.contains(&name),
            want,
            "{agent}: {name} in guest-info"
        );
    }
    // Compared: the commands both agents have.
    commands.retain(|c| !NOT_IN_72.contains(&c.0.as_str()));

    let ifs = c.network_interfaces().await.unwrap();
    let mut interfaces: Vec<(String, Option<String>, Vec<String>)> = ifs
        .iter()
        .map(|i| {
            // IPv6 link-local addresses appear a moment after the link comes up,
            // and the SLAAC one in slirp's fec0::/64 once its router advertisement
            // has come and duplicate address detection is over, so whether one is
            // listed depends on timing, not on the agent.
            let mut a: Vec<String> = i
                .ip_addresses
                .iter()
                .flatten()
                .filter(|a| {
                    !a.ip_address.starts_with("fe80:") && !a.ip_address.starts_with("fec0:")
                })
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

    let modern = read_modern(vm, &mut c, agent).await;
    act_modern(&mut c, agent).await;

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

    // Freeze: the three ext4 disks are the freezable filesystems.
    let status = c.fsfreeze_status().await.unwrap();
    assert_eq!(status, FsfreezeStatus::Thawed);
    assert_eq!(c.fsfreeze_freeze(None).await.unwrap(), 3);
    assert_eq!(c.fsfreeze_status().await.unwrap(), FsfreezeStatus::Frozen);
    let err = c.file_open("/mnt/data/x", Some("w")).await.unwrap_err();
    assert!(err.is_command_not_found(), "{err}");
    assert!(err
        .agent_error()
        .unwrap()
        .desc
        .contains("has been disabled"));
    assert_eq!(c.fsfreeze_thaw().await.unwrap(), 3);
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
        vm.qemu.wait_exit(Duration::from_secs(60)),
        Some(0),
        "QEMU did not power off"
    );
    ReadOnly {
        interfaces,
        status,
        commands,
        modern,
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

/// Regenerates qga-ops' fixture of this guest's storage
/// (qga-ops/tests/fixtures/storage/scsi-nvme-vm): boots the guest with the reference
/// agent, runs qga-ops' capture.sh in it (under busybox sh), pulls the tree out as a
/// tar with guest-file-read and records what qemu-ga answers to guest-get-fsinfo and
/// guest-get-disks as `reference.json`. By hand:
/// `QGA_CAPTURE_OUT=DIR cargo test -p qga-tests --test vm -- --ignored capture`.
#[test]
#[ignore = "regenerates a qga-ops fixture; run by hand"]
fn capture_storage_fixture() {
    let out = PathBuf::from(std::env::var_os("QGA_CAPTURE_OUT").expect("QGA_CAPTURE_OUT=DIR"));
    assert!(!out.exists(), "{} exists", out.display());
    if !can_run() {
        return;
    }
    let guest = tempfile::tempdir().unwrap();
    build_guest(guest.path());
    let dir = tempfile::tempdir().unwrap();
    let mut vm = Vm::start(guest.path(), dir.path(), "ref");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tar, reference) = rt.block_on(async {
        let mut c = connect(&mut vm, Duration::from_secs(120)).await;
        let st = exec(
            &mut c,
            sh("sh /usr/share/qga/storage-capture.sh /tmp/cap && tar -C /tmp -cf /tmp/cap.tar cap"),
        )
        .await
        .unwrap();
        let got = outcome(&st).unwrap();
        assert_eq!(got.0, Some(0), "capture.sh: {got:?}");
        let tar = c.read_file("/tmp/cap.tar", 1 << 20, None).await.unwrap();
        let mut reference = serde_json::Map::new();
        for cmd in ["guest-get-fsinfo", "guest-get-disks"] {
            let v = get(&mut c, "ref", cmd).await;
            reference.insert(cmd.into(), json!({ "return": v }));
        }
        (tar, Value::Object(reference))
    });
    let unpack = tempfile::tempdir().unwrap();
    let mut child = Command::new("tar")
        .arg("-xf")
        .arg("-")
        .arg("-C")
        .arg(unpack.path())
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(child.wait().unwrap().success(), "tar -x");
    std::fs::rename(unpack.path().join("cap"), &out).unwrap();
    let text = serde_json::to_string_pretty(&reference).unwrap() + "\n";
    std::fs::write(out.join("reference.json"), text).unwrap();
    eprintln!("captured into {}", out.display());
}
