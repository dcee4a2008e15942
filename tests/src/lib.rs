//! Cross-crate end-to-end test support: agents to talk to.
//!
//! [`OurAgent`] runs `qga-agent`'s library in this process on a unix socket in a
//! temp dir; [`ReferenceAgent`] runs `/usr/sbin/qemu-ga` (Debian's
//! `qemu-guest-agent`) the same way and kills it by pid when dropped.
//!
//! For the tests that boot a real guest, [`build_guest`] makes its kernel and
//! initramfs (tests/vm) and [`have`] tells whether a program is on the `PATH`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;

/// Path of the reference agent.
pub const REFERENCE: &str = "/usr/sbin/qemu-ga";

/// Whether the reference agent can be used; panics when it is missing and
/// `QGA_REQUIRE_REFERENCE=1`, otherwise says why the caller will skip.
pub fn reference_available() -> bool {
    if Path::new(REFERENCE).exists() {
        return true;
    }
    if std::env::var_os("QGA_REQUIRE_REFERENCE").is_some_and(|v| v == "1") {
        panic!("{REFERENCE} is missing and QGA_REQUIRE_REFERENCE=1");
    }
    eprintln!("SKIPPED: {REFERENCE} not installed (Debian package qemu-guest-agent)");
    false
}

fn wait_for_socket(sock: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "agent did not create {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Our agent, served by a thread of this process (the thread lives until the test
/// process exits; its socket and state are in a temp dir).
pub struct OurAgent {
    /// The agent's socket.
    pub sock: PathBuf,
    /// Its temp dir (state and files).
    pub dir: tempfile::TempDir,
}

impl OurAgent {
    /// Starts the agent with extra command-line arguments.
    pub fn start(extra: &[&str]) -> OurAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let mut args = vec![
            "qga-agent".to_owned(),
            "-m".into(),
            "unix-listen".into(),
            "-p".into(),
            sock.to_str().unwrap().into(),
            "-t".into(),
            dir.path().to_str().unwrap().into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let cli = qga_agent::Cli::try_parse_from(args).unwrap();
        let config = qga_agent::Config::from_cli(&cli, Some("/nonexistent".into())).unwrap();
        let state = qga_agent::StateDir::new(dir.path()).unwrap();
        std::thread::spawn(move || {
            let mut d = qga_agent::Dispatcher::new(
                qga_ops::Ops::linux(Default::default()),
                state,
                qga_agent::DispatcherConfig {
                    blocked: config.blocked(),
                    allowed: config.allowed(),
                    ..Default::default()
                },
            )
            .unwrap();
            let log = qga_agent::Log::new(None, false);
            qga_agent::channel::run(&config, &mut d, &log).unwrap();
        });
        wait_for_socket(&sock);
        OurAgent { sock, dir }
    }
}

/// The reference agent on a unix socket in a temp dir (also its cwd).
pub struct ReferenceAgent {
    child: Child,
    /// The agent's socket.
    pub sock: PathBuf,
    /// Its temp dir.
    pub dir: tempfile::TempDir,
}

impl ReferenceAgent {
    /// Starts `/usr/sbin/qemu-ga -m unix-listen -p SOCK -t DIR`.
    pub fn start() -> ReferenceAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sock");
        let child = Command::new(REFERENCE)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .expect("start qemu-ga");
        wait_for_socket(&sock);
        ReferenceAgent { child, sock, dir }
    }
}

impl Drop for ReferenceAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `program` is found on the `PATH` (or is an existing path).
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the end-to-end test guest into `out` (`vmlinuz` and `initrd.gz`) with
/// tests/vm/build-initramfs.sh: a Debian kernel, fetched once with `apt-get download`
/// into target/qga-vm-cache, and an initramfs holding busybox, `agent` (our agent's
/// binary) and the reference agent. Panics if the build fails.
pub fn build_guest(agent: &Path, out: &Path) {
    build_guest_with(agent, &[], out);
}

/// [`build_guest`] with more programs in the guest's /usr/bin (each under its own
/// file name, with its shared libraries).
pub fn build_guest_with(agent: &Path, extras: &[&Path], out: &Path) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cache = manifest.join("../target/qga-vm-cache");
    let status = Command::new("bash")
        .arg(manifest.join("vm/build-initramfs.sh"))
        .arg(&cache)
        .arg(agent)
        .arg(out)
        .args(extras)
        .status()
        .expect("run bash");
    assert!(status.success(), "building the guest failed");
}

/// Commands of current QEMU that qemu-ga 7.2 does not have; our agent answers them.
pub const NOT_IN_72: &[&str] = &["guest-get-load", "guest-network-get-route"];

/// The outcomes of one agent's checks: every failure is printed at once and all of
/// them reported together by [`Verdicts::finish`].
pub struct Verdicts {
    agent: String,
    failures: Vec<String>,
}

impl Verdicts {
    /// Verdicts for `agent` (`ours` or `ref`).
    pub fn new(agent: &str) -> Verdicts {
        Verdicts {
            agent: agent.to_owned(),
            failures: Vec::new(),
        }
    }

    /// Records the outcome of the check `name`; `_needs` names the commands it
    /// exercises, for the reader.
    pub fn record(&mut self, name: &str, _needs: &[&str], outcome: Result<(), String>) {
        let agent = &self.agent;
        match outcome {
            Ok(()) => eprintln!("{agent}: {name}: ok"),
            Err(e) => {
                eprintln!("{agent}: {name}: FAILED: {e}");
                self.failures.push(format!("{name}: {e}"));
            }
        }
    }

    /// Panics listing the failed checks, if any.
    pub fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{}: {} check(s) failed:\n{}",
            self.agent,
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// The test guest's user with a home dir (tests/vm/init.sh), for the ssh key and
/// password commands.
pub const GUEST_USER: &str = "qgauser";

/// How far (seconds) the guest sets its RTC off its system clock at boot when the
/// kernel command line says `qga_rtc_skew=` this (tests/vm/init.sh): guest-set-time
/// without a time (`hwclock -s`) then visibly moves the clock.
pub const GUEST_RTC_SKEW: i64 = -7200;

/// Where the guest's `chpasswd` shim (tests/vm/init.sh) records each call: a line
/// `chpasswd ARGS`, then what it read on stdin, then an empty line.
pub const CHPASSWD_LOG: &str = "/tmp/chpasswd.log";

/// Whether the chpasswd shim's log shows a call `chpasswd ARGS` fed `line`.
pub fn chpasswd_called(log: &str, args: &str, line: &str) -> bool {
    let head = format!("chpasswd {args}");
    let lines: Vec<&str> = log.lines().collect();
    lines
        .windows(2)
        .any(|w| w[0].trim_end() == head.trim_end() && w[1] == line)
}

/// The QEMU binary the guest tests boot.
pub const QEMU: &str = "qemu-system-x86_64";

/// A QEMU process booting the test guest (see [`build_guest`]) under TCG, with its
/// serial console in a file. Killed by pid (only this QEMU) when dropped, printing
/// the tail of its console if the test is failing.
pub struct Qemu {
    child: Child,
    console: PathBuf,
}

impl Qemu {
    /// A QEMU command line with what every guest test shares: PC machine under TCG,
    /// no display, monitor or reboot, the guest's kernel and initramfs from `guest`
    /// with `append` on the kernel command line (after the console settings), and
    /// the serial console written to `console`. The caller adds memory, CPUs and
    /// devices, then [`spawn`](Qemu::spawn)s it.
    pub fn command(guest: &Path, append: &str, console: &Path) -> Command {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-machine", "pc,accel=tcg"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(guest.join("vmlinuz"))
            .arg("-initrd")
            .arg(guest.join("initrd.gz"))
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 {append}"))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `cmd` (from [`command`](Qemu::command) with the same `console`).
    pub fn spawn(cmd: &mut Command, console: &Path) -> Qemu {
        Qemu {
            child: cmd.spawn().expect("start qemu"),
            console: console.to_owned(),
        }
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// The console's last 40 lines.
    pub fn console_tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// QEMU's exit status if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for QEMU to exit by itself; returns its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Qemu {
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
