//! Command line and configuration file.

use std::process::Command;

use clap::CommandFactory;
use qga_agent::{Cli, Config, Method};

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qga-agent"))
        .args(args)
        .env_remove("QGA_CONF")
        .output()
        .unwrap()
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn version_and_block_help() {
    let out = agent(&["-V"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("QEMU Guest Agent "), "{text}");
    let out = agent(&["-b", "help"]);
    assert!(out.status.success());
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    // Every command qga-proto types, in its order (qemu-ga 7.2's, then the newer).
    let ours: Vec<&str> = qga_proto::COMMANDS.iter().map(|c| c.name).collect();
    assert_eq!(names, ours);
}

#[test]
fn dump_conf_round_trips_through_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = agent(&[
        "-m",
        "unix-listen",
        "-p",
        "/run/x.sock",
        "-t",
        "/var/lib/qga",
        "-v",
        "-b",
        "guest-ping,guest-file-open",
        "-b",
        "guest-fstrim",
        "-F/etc/hook",
        "-l",
        "/var/log/qga.log",
        "-D",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dumped = String::from_utf8(out.stdout).unwrap();
    assert!(dumped.starts_with("[general]\n"), "{dumped}");
    assert!(dumped.contains("method=unix-listen\n"));
    assert!(dumped.contains("block-rpcs=guest-ping,guest-file-open,guest-fstrim\n"));
    assert!(dumped.contains("fsfreeze-hook=/etc/hook\n"));
    let conf = dir.path().join("qga.conf");
    std::fs::write(&conf, &dumped).unwrap();
    // Read back with -c, and with QGA_CONF.
    let again = agent(&["-c", conf.to_str().unwrap(), "-D"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap(), dumped);
    let env = Command::new(env!("CARGO_BIN_EXE_qga-agent"))
        .arg("-D")
        .env("QGA_CONF", &conf)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(env.stdout).unwrap(), dumped);
}

#[test]
fn command_line_wins_over_file_and_lists_concatenate() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("qga.conf");
    std::fs::write(
        &conf,
        "[general]\ndaemon=false\nmethod=isa-serial\nverbose=true\nblacklist=guest-ping\nstatedir=/s\n",
    )
    .unwrap();
    let cli = Cli::try_parse_from_args(&[
        "x",
        "-c",
        conf.to_str().unwrap(),
        "-m",
        "unix-listen",
        "-p",
        "/p",
        "-b",
        "guest-info",
    ]);
    let c = Config::from_cli(&cli, None).unwrap();
    assert_eq!(c.method, Method::UnixListen);
    assert_eq!(c.path, "/p");
    assert!(c.verbose);
    assert_eq!(c.statedir.to_str(), Some("/s"));
    assert_eq!(c.block_rpcs, ["guest-ping", "guest-info"]);
    let cli = Cli::try_parse_from_args(&["x", "-c", conf.to_str().unwrap()]);
    let c = Config::from_cli(&cli, None).unwrap();
    assert_eq!(c.path, "/dev/ttyS0");
}

#[test]
fn busy_poll_defaults_to_200_us_and_is_set_by_file_or_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("qga.conf");
    std::fs::write(&conf, "[general]\nbusy-poll=50\n").unwrap();
    let c = Config::from_cli(&Cli::try_parse_from_args(&["x"]), None).unwrap();
    assert_eq!(c.busy_poll_us, qga_agent::DEFAULT_BUSY_POLL_US);
    assert_eq!(qga_agent::DEFAULT_BUSY_POLL_US, 200);
    let from_file = Cli::try_parse_from_args(&["x", "-c", conf.to_str().unwrap()]);
    assert_eq!(Config::from_cli(&from_file, None).unwrap().busy_poll_us, 50);
    let both = Cli::try_parse_from_args(&["x", "-c", conf.to_str().unwrap(), "--busy-poll", "0"]);
    assert_eq!(Config::from_cli(&both, None).unwrap().busy_poll_us, 0);
    // -D shows it, and a change round-trips.
    let out = agent(&["-D"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\nbusy-poll=200\n"));
    let out = agent(&["-c", conf.to_str().unwrap(), "-D"]);
    let dumped = String::from_utf8(out.stdout).unwrap();
    assert!(dumped.contains("busy-poll=50\n"), "{dumped}");
    std::fs::write(&conf, "[general]\nbusy-poll=soon\n").unwrap();
    let out = agent(&["-c", conf.to_str().unwrap(), "-D"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid busy-poll 'soon'"));
}

trait ParseArgs {
    fn try_parse_from_args(args: &[&str]) -> Cli;
}

impl ParseArgs for Cli {
    fn try_parse_from_args(args: &[&str]) -> Cli {
        <Cli as clap::Parser>::try_parse_from(args).unwrap()
    }
}

#[test]
fn configuration_errors_use_the_reference_texts_and_exit_1() {
    let out = agent(&["-m", "carrier-pigeon", "-D"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unsupported channel method/type: carrier-pigeon"));
    let out = agent(&["-m", "unix-listen"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must specify a path for this channel"));
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.conf");
    std::fs::write(&conf, "[general]\nverbose=maybe\n").unwrap();
    let out = agent(&["-c", conf.to_str().unwrap(), "-D"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be interpreted as a boolean"));
    let out = agent(&["-c", "/nonexistent/qga.conf", "-D"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn default_paths_follow_the_method() {
    let cli = Cli::try_parse_from_args(&["x", "-c", "/nonexistent-but-default"]);
    // An explicit -c that is missing is an error; the default file may be missing.
    assert!(Config::from_cli(&cli, None).is_err());
    let cli = Cli::try_parse_from_args(&["x"]);
    let c = Config::from_cli(&cli, Some("/nonexistent/conf".into())).unwrap();
    assert_eq!(c.method, Method::VirtioSerial);
    assert_eq!(c.path, "/dev/virtio-ports/org.qemu.guest_agent.0");
}

#[test]
fn sigterm_stops_the_agent_with_status_0_and_a_second_daemon_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qga-agent"))
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir.path())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    nix_kill(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));

    // Daemonized: the pid file is locked before the fork, so a second instance
    // fails with status 1 instead of pretending to start.
    let pidfile = dir.path().join("qga.pid");
    let sock2 = dir.path().join("sock2");
    let first = agent(&[
        "-d",
        "-f",
        pidfile.to_str().unwrap(),
        "-m",
        "unix-listen",
        "-p",
        sock2.to_str().unwrap(),
        "-t",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(first.status.code(), Some(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let pid = loop {
        if let Ok(t) = std::fs::read_to_string(&pidfile) {
            if let Ok(pid) = t.trim().parse::<u32>() {
                break pid;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no pid written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let second = agent(&[
        "-d",
        "-f",
        pidfile.to_str().unwrap(),
        "-m",
        "unix-listen",
        "-p",
        dir.path().join("sock3").to_str().unwrap(),
        "-t",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("Cannot lock pid file"));
    // Stop the daemon we started, by its pid, and wait for the pid file to go.
    nix_kill(pid, libc::SIGTERM);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pidfile.exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn nix_kill(pid: u32, sig: libc::c_int) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Even with `-v` (everything logged), request contents never reach the log: not a
/// password, not its base64, not a key (qemu-ga 7.2 logs the base64 password).
#[test]
fn verbose_logging_never_shows_secrets() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let log = dir.path().join("agent.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_qga-agent"))
        .args(["-v", "-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir.path())
        .arg("-l")
        .arg(&log)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stream = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "agent did not listen");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    // "s3cret-Passw0rd": refused before anything runs (':' in the user name), so the
    // test changes nothing on this machine, but the request went through every
    // layer that could log it.
    let requests = [
        r#"{"execute":"guest-set-user-password","arguments":{"username":"no:body","password":"czNjcmV0LVBhc3N3MHJk","crypted":false}}"#,
        r#"{"execute":"guest-ssh-add-authorized-keys","arguments":{"username":"no:body","keys":["ssh-ed25519 AAAAs3cretKey"]}}"#,
        r#"{"execute":"guest-ping"}"#,
    ];
    let mut w = &stream;
    for r in requests {
        w.write_all(r.as_bytes()).unwrap();
    }
    let mut reader = BufReader::new(&stream);
    for _ in requests {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty());
    }
    drop(reader);
    drop(stream);
    nix_kill(child.id(), libc::SIGTERM);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("client connected"),
        "verbose log is on: {text}"
    );
    for secret in ["s3cret", "czNjcmV0", "AAAAs3cretKey"] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
}
