//! End to end through a real libvirt: a libvirtd that this test starts itself (no
//! systemd needed) runs a TCG guest holding a guest agent on the virtio-serial port
//! `org.qemu.guest_agent.0`, and `virsh` commands (guestinfo, domtime, domfsinfo,
//! guestvcpus, domhostname, domifaddr) go through libvirt to the agent. The guest is
//! the one tests/tests/vm.rs boots (tests/vm), which also knows who it is: its
//! os-release, hostname, time zone and utmp login are asserted here.
//!
//! Then [`ACTIONS`] change the guest through virsh and check the effect: guestvcpus
//! takes CPU 1 (of 2) offline and back, domtime --sync reads the RTC the guest booted
//! 2 h off its clock, domtime --time/--now set it, set-user-password (plain and
//! --encrypted) reaches the guest's logging chpasswd shim (read back with guest-file-*
//! through `virsh qemu-agent-command`), set-user-sshkeys adds, removes and resets the
//! keys get-user-sshkeys lists.
//!
//! Both agents must pass every check (the reference passing proves the harness).
//!
//! libvirtd runs as root in a private mount namespace (`unshare --mount`) where the
//! test's temp dir is bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
//! /var/log/libvirt and /var/cache/libvirt: its config (qemu.conf: QEMU as root,
//! `stdio_handler = "file"`, no security driver, no namespaces) and all its state stay
//! in the temp dir, nothing in /etc is edited, and two tests can each run their own.
//! virsh reaches it with `qemu:///system?socket=TEMP/run/libvirt-sock`.
//!
//! Needs root, the Debian packages libvirt-daemon, libvirt-daemon-driver-qemu,
//! libvirt-clients, tzdata and those of the VM test, and the system user
//! libvirt-qemu (scripts/test.sh installs and creates them). Skips loudly when
//! something is missing; fails instead with QGA_REQUIRE_REFERENCE=1 (as in CI), and
//! when not root with QGA_REQUIRE_ROOT_TESTS=1.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qga_proto::Base64;
use qga_tests::{chpasswd_called, Verdicts, CHPASSWD_LOG, GUEST_RTC_SKEW, GUEST_USER};
use serde_json::json;

const LIBVIRTD: &str = "/usr/sbin/libvirtd";
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// What the guest is (tests/vm/build-initramfs.sh and init.sh lay these down).
const HOSTNAME: &str = "qga-guest";
const MAC: &str = "52:54:00:12:34:56";
const IP: &str = "10.0.2.15";

/// A virsh command (its arguments; `--domain NAME` is appended) and what its output
/// must show. Every check also requires exit status 0.
struct Check {
    name: &'static str,
    args: &'static [&'static str],
    expect: fn(&str) -> Result<(), String>,
}

const CHECKS: &[Check] = &[
    Check {
        name: "guest-ping",
        args: &["qemu-agent-command", "--cmd", r#"{"execute":"guest-ping"}"#],
        expect: |out| equal(out.trim(), r#"{"return":{}}"#),
    },
    Check {
        name: "domifaddr --source agent",
        args: &["domifaddr", "--source", "agent"],
        expect: |out| {
            row(out, &["eth0", MAC, "ipv4", &format!("{IP}/24")])?;
            row(out, &["lo", "00:00:00:00:00:00", "ipv4", "127.0.0.1/8"])
        },
    },
    Check {
        name: "guestinfo --interface",
        args: &["guestinfo", "--interface"],
        expect: |out| {
            let v = fields(out);
            let i = index_where(&v, "if", "name", "eth0")?;
            field(&v, &format!("if.{i}.hwaddr"), MAC)?;
            let a = index_where(&v, &format!("if.{i}.addr"), "addr", IP)?;
            field(&v, &format!("if.{i}.addr.{a}.type"), "ipv4")?;
            field(&v, &format!("if.{i}.addr.{a}.prefix"), "24")
        },
    },
    Check {
        name: "guestinfo --user",
        args: &["guestinfo", "--user"],
        expect: |out| {
            let v = fields(out);
            field(&v, "user.count", "1")?;
            field(&v, "user.0.name", "qgauser")?;
            // utmp says 1700000000 s + 500000 us; libvirt reports milliseconds.
            field(&v, "user.0.login-time", "1700000000500")
        },
    },
    Check {
        name: "guestinfo --os",
        args: &["guestinfo", "--os"],
        expect: |out| {
            let v = fields(out);
            field(&v, "os.id", "qgatest")?;
            field(&v, "os.name", "qga-rs Test Guest")?;
            field(&v, "os.pretty-name", "qga-rs Test Guest 1.0")?;
            field(&v, "os.version", "1.0 (busybox)")?;
            field(&v, "os.version-id", "1.0")?;
            field(&v, "os.machine", "x86_64")?;
            field(&v, "os.kernel-release", &guest_kernel_release())
        },
    },
    Check {
        name: "guestinfo --timezone",
        args: &["guestinfo", "--timezone"],
        expect: |out| {
            let v = fields(out);
            field(&v, "timezone.name", "JST")?;
            field(&v, "timezone.offset", "32400")
        },
    },
    Check {
        name: "guestinfo --hostname",
        args: &["guestinfo", "--hostname"],
        expect: |out| field(&fields(out), "hostname", HOSTNAME),
    },
    Check {
        name: "guestinfo --filesystem",
        args: &["guestinfo", "--filesystem"],
        expect: |out| {
            let v = fields(out);
            let i = index_where(&v, "fs", "mountpoint", "/mnt/data")?;
            field(&v, &format!("fs.{i}.fstype"), "ext4")?;
            field(&v, &format!("fs.{i}.disk.0.alias"), "vda")?;
            // A 64 MiB image: ext4 keeps some for itself.
            let total: u64 = get(&v, &format!("fs.{i}.total-bytes"))?
                .parse()
                .map_err(|e| format!("total-bytes: {e}"))?;
            if (32 << 20..=64 << 20).contains(&total) {
                Ok(())
            } else {
                Err(format!("fs.{i}.total-bytes {total} is not about 64 MiB"))
            }
        },
    },
    Check {
        name: "guestinfo --disk",
        args: &["guestinfo", "--disk"],
        expect: |out| {
            let v = fields(out);
            let i = index_where(&v, "disk", "name", "/dev/vda")?;
            field(&v, &format!("disk.{i}.partition"), "no")?;
            field(&v, &format!("disk.{i}.alias"), "vda")
        },
    },
    Check {
        name: "guestinfo (every type)",
        args: &["guestinfo"],
        expect: |out| {
            let v = fields(out);
            for key in [
                "user.count",
                "os.id",
                "timezone.offset",
                "hostname",
                "fs.count",
                "disk.count",
                "if.count",
            ] {
                get(&v, key)?;
            }
            field(&v, "hostname", HOSTNAME)
        },
    },
    Check {
        name: "domtime",
        args: &["domtime"],
        expect: |out| {
            let t = domtime_seconds(out)?;
            let diff = t - now();
            if diff.abs() <= 60 {
                Ok(())
            } else {
                Err(format!("guest time {t} is {diff} s off the host's"))
            }
        },
    },
    Check {
        name: "domfsinfo",
        args: &["domfsinfo"],
        // Mountpoint, Name (guest device), Type, Target (the domain's disk).
        expect: |out| row(out, &["/mnt/data", "vda", "ext4", "vda"]),
    },
    Check {
        name: "guestvcpus",
        args: &["guestvcpus"],
        expect: |out| {
            let v = fields(out);
            field(&v, "vcpus", "0-1")?;
            field(&v, "online", "0-1")?;
            field(&v, "offlinable", "1")
        },
    },
    Check {
        name: "domhostname --source agent",
        args: &["domhostname", "--source", "agent"],
        expect: |out| equal(out.trim(), HOSTNAME),
    },
];

/// A virsh command that changes the guest, checked by its effect (read back through
/// libvirt or the agent). `needs`: the agent commands it exercises. Run in this order, after every [`CHECKS`] entry.
struct Action {
    name: &'static str,
    needs: &'static [&'static str],
    run: fn(&Domain<'_>, &Path) -> Result<(), String>,
}

const ACTIONS: &[Action] = &[
    Action {
        name: "guestvcpus --cpulist 1 --disable, then --enable",
        needs: &["guest-get-vcpus", "guest-set-vcpus"],
        run: |dom, _| {
            for (flag, online) in [("--disable", "0"), ("--enable", "0-1")] {
                dom.ok(&["guestvcpus", "--cpulist", "1", flag])?;
                let v = fields(&dom.ok(&["guestvcpus"])?);
                field(&v, "vcpus", "0-1")?;
                field(&v, "online", online).map_err(|e| format!("after {flag}: {e}"))?;
            }
            Ok(())
        },
    },
    Action {
        name: "domtime --sync (from the RTC the guest booted 2 h off)",
        needs: &["guest-set-time", "guest-get-time"],
        run: |dom, _| {
            dom.ok(&["domtime", "--sync"])?;
            dom.time_near(now() + GUEST_RTC_SKEW, "after --sync")
        },
    },
    Action {
        name: "domtime --time N (an hour ahead), then --now",
        needs: &["guest-set-time", "guest-get-time"],
        run: |dom, _| {
            let ahead = (now() + 3600).to_string();
            dom.ok(&["domtime", "--time", &ahead])?;
            dom.time_near(now() + 3600, "after --time")?;
            dom.ok(&["domtime", "--now"])?;
            dom.time_near(now(), "after --now")
        },
    },
    Action {
        name: "set-user-password",
        needs: &["guest-set-user-password"],
        run: |dom, _| {
            dom.ok(&[
                "set-user-password",
                "--user",
                GUEST_USER,
                "--password",
                "s3cret pass",
            ])?;
            let log = dom.guest_file(CHPASSWD_LOG)?;
            let line = format!("{GUEST_USER}:s3cret pass");
            if chpasswd_called(&log, "", &line) {
                Ok(())
            } else {
                Err(format!("no `chpasswd` fed {line:?} in {log:?}"))
            }
        },
    },
    Action {
        name: "set-user-password --encrypted",
        needs: &["guest-set-user-password"],
        run: |dom, _| {
            let hash = "$6$qgasalt$J9a8dTxK4Hj3rEBI0jT2sMvFq1pQ3mGQ9vJc5Ykq1cU";
            dom.ok(&[
                "set-user-password",
                "--user",
                GUEST_USER,
                "--password",
                hash,
                "--encrypted",
            ])?;
            let log = dom.guest_file(CHPASSWD_LOG)?;
            let line = format!("{GUEST_USER}:{hash}");
            if chpasswd_called(&log, "-e", &line) {
                Ok(())
            } else {
                Err(format!("no `chpasswd -e` fed {line:?} in {log:?}"))
            }
        },
    },
    Action {
        name: "set-user-sshkeys --file, get-user-sshkeys, --remove, --reset",
        needs: &[
            "guest-ssh-get-authorized-keys",
            "guest-ssh-add-authorized-keys",
            "guest-ssh-remove-authorized-keys",
        ],
        run: |dom, dir| {
            let key = |n: u32| {
                format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIQGAvirshkey{n} virsh-{n}@host")
            };
            let file = |name: &str, keys: &[u32]| -> Result<String, String> {
                let path = dir.join(name);
                let text: String = keys.iter().map(|&n| key(n) + "\n").collect();
                std::fs::write(&path, text).map_err(|e| e.to_string())?;
                Ok(path.to_str().unwrap().to_owned())
            };
            // virsh 9.0 prints the keys with no separator between them (they carry no
            // newline of their own), so the output must be exactly the wanted keys
            // glued together, in any order.
            let listed = |want: &[u32]| -> Result<(), String> {
                let out = dom.ok(&["get-user-sshkeys", "--user", GUEST_USER])?;
                let mut rest = out.replace('\n', "");
                let mut all = true;
                for &n in want {
                    all &= rest.contains(&key(n));
                    rest = rest.replacen(&key(n), "", 1);
                }
                if all && rest.trim().is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "get-user-sshkeys printed {out:?}, want keys {want:?}"
                    ))
                }
            };
            let both = file("keys12", &[1, 2])?;
            dom.ok(&["set-user-sshkeys", "--user", GUEST_USER, "--file", &both])?;
            listed(&[1, 2])?;
            let one = file("keys1", &[1])?;
            dom.ok(&[
                "set-user-sshkeys",
                "--user",
                GUEST_USER,
                "--file",
                &one,
                "--remove",
            ])?;
            listed(&[2])?;
            let three = file("keys3", &[3])?;
            dom.ok(&[
                "set-user-sshkeys",
                "--user",
                GUEST_USER,
                "--file",
                &three,
                "--reset",
            ])?;
            listed(&[3])
        },
    },
];

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn equal(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("got {got:?}, want {want:?}"))
    }
}

/// The seconds of `virsh domtime`'s `Time: SECONDS`.
fn domtime_seconds(out: &str) -> Result<i64, String> {
    out.trim()
        .strip_prefix("Time: ")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("no `Time: SECONDS` in {out:?}"))
}

/// A table row (whitespace-separated cells) equal to `cells`.
fn row(out: &str, cells: &[&str]) -> Result<(), String> {
    if out
        .lines()
        .any(|l| l.split_whitespace().eq(cells.iter().copied()))
    {
        Ok(())
    } else {
        Err(format!("no row {cells:?}"))
    }
}

/// `key : value` lines (virsh guestinfo, guestvcpus) as a map.
fn fields(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn get<'a>(v: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, String> {
    v.get(key)
        .map(String::as_str)
        .ok_or_else(|| format!("no {key}"))
}

fn field(v: &BTreeMap<String, String>, key: &str, want: &str) -> Result<(), String> {
    equal(get(v, key)?, want).map_err(|e| format!("{key}: {e}"))
}

/// The N of the `PREFIX.N.KEY` whose value is `want`.
fn index_where(
    v: &BTreeMap<String, String>,
    prefix: &str,
    key: &str,
    want: &str,
) -> Result<usize, String> {
    let count: usize = get(v, &format!("{prefix}.count"))?
        .parse()
        .map_err(|e| format!("{prefix}.count: {e}"))?;
    (0..count)
        .find(|i| v.get(&format!("{prefix}.{i}.{key}")).map(String::as_str) == Some(want))
        .ok_or_else(|| format!("no {prefix}.N.{key} = {want}"))
}

/// The release of the kernel the guest boots, from the unpacked package in the cache.
fn guest_kernel_release() -> String {
    let modules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qga-vm-cache/kernel/lib/modules");
    let mut names: Vec<String> = std::fs::read_dir(&modules)
        .unwrap_or_else(|e| panic!("{}: {e}", modules.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{}: {names:?}", modules.display());
    names.pop().unwrap()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn env_is_1(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

fn can_run() -> bool {
    if !is_root() {
        let why = "libvirt end-to-end test needs root (qemu:///system)";
        assert!(!env_is_1("QGA_REQUIRE_ROOT_TESTS"), "{why}");
        eprintln!("\n*** SKIPPED: {why} ***\n");
        return false;
    }
    let user = Command::new("getent")
        .args(["passwd", "libvirt-qemu"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let qemu_driver = Command::new("sh")
        .args([
            "-c",
            "ls /usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing: Vec<&str> = [
        LIBVIRTD,
        "virsh",
        "unshare",
        "timeout",
        QEMU,
        "busybox",
        "cpio",
        "mkfs.ext4",
        "apt-get",
        "depmod",
    ]
    .into_iter()
    .filter(|p| !qga_tests::have(p))
    .chain((!Path::new(qga_tests::REFERENCE).exists()).then_some("qemu-ga"))
    .chain(
        (!Path::new("/usr/share/zoneinfo/Asia/Tokyo").exists())
            .then_some("/usr/share/zoneinfo/Asia/Tokyo (tzdata)"),
    )
    .chain((!qemu_driver).then_some("libvirt's QEMU driver (libvirt-daemon-driver-qemu)"))
    .chain((!user).then_some("the user libvirt-qemu"))
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "libvirt end-to-end test cannot run, missing: {}",
        missing.join(", ")
    );
    if env_is_1("QGA_REQUIRE_REFERENCE") {
        panic!("{why} (QGA_REQUIRE_REFERENCE=1; scripts/test.sh installs and creates them)");
    }
    eprintln!("\n*** SKIPPED: {why} ***\n");
    false
}

/// The guest's kernel and initramfs, built once for both tests (in the cache dir,
/// which is per checkout, so nothing is left in /tmp).
fn guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let out =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qga-vm-cache/libvirt-guest");
        qga_tests::build_guest(Path::new(env!("CARGO_BIN_EXE_qga-agent-e2e")), &out);
        out
    })
}

/// The last `n` lines of a file, for failure reports, without the errors libvirtd
/// logs for each guest-ping tried while the guest boots.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("guest agent is not connected"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one virsh run gave.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// A libvirtd of our own, in a private mount namespace over a temp dir; stopped by
/// pid (SIGTERM, then SIGKILL) when dropped, printing its log if the test is failing.
struct Libvirtd {
    child: Child,
    dir: tempfile::TempDir,
    uri: String,
}

/// Dirs libvirtd uses (inside the namespace) and the temp subdir bound over each.
const BINDS: &[(&str, &str)] = &[
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/log/libvirt", "log"),
    ("/var/cache/libvirt", "cache"),
];

impl Libvirtd {
    fn start() -> Libvirtd {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path();
        for (_, sub) in BINDS {
            std::fs::create_dir(t.join(sub)).unwrap();
        }
        // Local unix socket only, root only, no authentication.
        std::fs::write(
            t.join("etc/libvirtd.conf"),
            "unix_sock_group = \"root\"\nunix_sock_rw_perms = \"0700\"\n\
             auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n",
        )
        .unwrap();
        // QEMU as root on images in temp dirs; its stdout/stderr to a plain file (no
        // virtlogd); no security driver, namespace or cgroup work a container may
        // not allow.
        std::fs::write(
            t.join("etc/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\nnamespaces = []\ncgroup_controllers = []\n\
             stdio_handler = \"file\"\n",
        )
        .unwrap();
        // The mount points are the dirs the libvirt packages would create anyway.
        let mut script = String::from("set -e\n");
        for (target, sub) in BINDS {
            script += &format!("mkdir -p {target}\nmount --bind \"$1/{sub}\" {target}\n");
        }
        script += "exec \"$2\" -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid\n";
        let log = std::fs::File::create(t.join("libvirtd.log")).unwrap();
        let started = Instant::now();
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(&script)
            .arg("sh")
            .arg(t)
            .arg(LIBVIRTD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start unshare/libvirtd");
        let uri = format!(
            "qemu:///system?socket={}",
            t.join("run/libvirt-sock").display()
        );
        let mut d = Libvirtd { child, dir, uri };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "libvirtd exited ({status}) before answering:\n{}",
                    tail(&d.dir.path().join("libvirtd.log"), 30)
                );
            }
            if d.dir.path().join("run/libvirt-sock").exists() {
                let r = d.virsh(&["version"]);
                if r.ok {
                    eprintln!(
                        "libvirtd answered after {:?}: {}",
                        started.elapsed(),
                        r.stdout
                            .lines()
                            .find(|l| l.contains("hypervisor"))
                            .unwrap_or_default()
                    );
                    return d;
                }
            }
            assert!(
                Instant::now() < deadline,
                "libvirtd did not answer within 60 s:\n{}",
                tail(&d.dir.path().join("libvirtd.log"), 30)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `virsh -c URI ARGS`, killed after 120 s.
    fn virsh(&self, args: &[&str]) -> Run {
        let out = Command::new("timeout")
            .args(["120", "virsh", "-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run virsh");
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- libvirtd log (last lines) ----\n{}\n----",
                tail(&self.dir.path().join("libvirtd.log"), 30)
            );
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A transient domain; destroyed when dropped (or, if libvirt cannot, its QEMU killed
/// by the pid libvirt recorded), printing the guest console if the test is failing.
struct Domain<'a> {
    lv: &'a Libvirtd,
    name: String,
    console: PathBuf,
}

impl<'a> Domain<'a> {
    /// `virsh create` of a TCG guest running `agent` (ours | ref), with its files in
    /// `dir`.
    fn create(lv: &'a Libvirtd, dir: &Path, agent: &str) -> Domain<'a> {
        let guest = guest();
        let disk = dir.join("data.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(64 << 20))
            .unwrap();
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&disk)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfs.ext4 failed");
        let name = format!("qga-{agent}");
        let console = dir.join("console.log");
        let xml = format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 qga={agent} qga_rtc_skew={GUEST_RTC_SKEW}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU}</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' discard='unmap'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='{MAC}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>
",
            kernel = guest.join("vmlinuz").display(),
            initrd = guest.join("initrd.gz").display(),
            disk = disk.display(),
            console = console.display(),
        );
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).unwrap();
        let r = lv.virsh(&["create", file.to_str().unwrap()]);
        assert!(r.ok, "virsh create failed: {}", r.stderr);
        let dom = Domain { lv, name, console };
        // No agent call may block for ever.
        let r = dom.virsh(&["guest-agent-timeout", "--timeout", "30"]);
        assert!(r.ok, "virsh guest-agent-timeout failed: {}", r.stderr);
        dom
    }

    /// `virsh ARGS --domain NAME`.
    fn virsh(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend(["--domain", &self.name]);
        self.lv.virsh(&all)
    }

    /// `virsh ARGS --domain NAME`, its stdout if it exited with 0.
    fn ok(&self, args: &[&str]) -> Result<String, String> {
        let r = self.virsh(args);
        if r.ok {
            Ok(r.stdout)
        } else {
            Err(format!("virsh {}: {}", args.join(" "), r.stderr.trim()))
        }
    }

    /// Checks that `virsh domtime` reads within 10 s of `want` (seconds).
    fn time_near(&self, want: i64, when: &str) -> Result<(), String> {
        let out = self.ok(&["domtime"])?;
        let t = domtime_seconds(&out)?;
        if (t - want).abs() <= 10 {
            Ok(())
        } else {
            Err(format!(
                "{when}: domtime says {t}, {} s off {want}",
                t - want
            ))
        }
    }

    /// One agent command through `virsh qemu-agent-command`; its `return`.
    fn agent(&self, cmd: serde_json::Value) -> Result<serde_json::Value, String> {
        let out = self.ok(&["qemu-agent-command", "--cmd", &cmd.to_string()])?;
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).map_err(|e| format!("{e}: {out:?}"))?;
        v.get("return")
            .cloned()
            .ok_or_else(|| format!("no return in {v}"))
    }

    /// A guest file's text (up to 64 KiB), read with guest-file-* through libvirt.
    fn guest_file(&self, path: &str) -> Result<String, String> {
        let h = self.agent(json!({"execute": "guest-file-open", "arguments": {"path": path}}))?;
        let r = self.agent(
            json!({"execute": "guest-file-read", "arguments": {"handle": h, "count": 65536}}),
        );
        self.agent(json!({"execute": "guest-file-close", "arguments": {"handle": h}}))?;
        let r = r?;
        let b64 = r["buf-b64"]
            .as_str()
            .ok_or_else(|| format!("no buf-b64 in {r}"))?;
        let bytes = Base64::decode(b64).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Waits until the agent answers a guest-ping through libvirt.
    fn wait_for_agent(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let r = self.virsh(&[
                "qemu-agent-command",
                "--timeout",
                "5",
                "--cmd",
                r#"{"execute":"guest-ping"}"#,
            ]);
            if r.ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not answer guest-ping through libvirt within {within:?}: {}",
                r.stderr.trim()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Domain<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- guest console (last lines) ----\n{}\n----",
                tail(&self.console, 40)
            );
        }
        if self.lv.virsh(&["destroy", &self.name]).ok {
            return;
        }
        let pidfile = self
            .lv
            .dir
            .path()
            .join(format!("run/qemu/{}.pid", self.name));
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            eprintln!("virsh destroy failed: killing QEMU {}", pid.trim());
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

/// Runs every check for `agent` (ours | ref); all must pass.
fn run(agent: &str) {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    guest();
    let lv = Libvirtd::start();
    let dir = tempfile::tempdir().unwrap();
    let booted = Instant::now();
    let dom = Domain::create(&lv, dir.path(), agent);
    dom.wait_for_agent(Duration::from_secs(150));
    eprintln!(
        "{agent}: agent answered guest-ping through libvirt {:?} after virsh create",
        booted.elapsed()
    );
    let mut verdicts = Verdicts::new(agent);
    for check in CHECKS {
        let r = dom.virsh(check.args);
        let verdict = if r.ok {
            (check.expect)(&r.stdout)
        } else {
            Err(format!("exit status not 0: {}", r.stderr.trim()))
        };
        let verdict = verdict.map_err(|e| {
            format!(
                "{e}\n---- stdout ----\n{}\n---- stderr ----\n{}",
                r.stdout, r.stderr
            )
        });
        verdicts.record(check.name, &[], verdict);
    }
    for action in ACTIONS {
        let t = Instant::now();
        let verdict = (action.run)(&dom, dir.path());
        eprintln!("{agent}: {} took {:?}", action.name, t.elapsed());
        verdicts.record(action.name, action.needs, verdict);
    }
    eprintln!("{agent}: whole libvirt run {:?}", started.elapsed());
    verdicts.finish();
}

#[test]
fn virsh_through_libvirt_to_the_reference_agent() {
    run("ref");
}

#[test]
fn virsh_through_libvirt_to_our_agent() {
    run("ours");
}
