//! The `qga` binary against a scripted agent on a unix socket.

use bytes::BytesMut;
use qga_framing::{Decoder, Frame};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The scripted agent's answer to `req`: the reply bytes, or `None` to say nothing.
fn answer(req: &Value) -> Option<Vec<u8>> {
    let name = req["execute"].as_str().unwrap_or_default();
    let reply = match name {
        "guest-sync-delimited" => {
            let mut v = b"\xff".to_vec();
            v.extend(
                json!({"return": req["arguments"]["id"]})
                    .to_string()
                    .bytes(),
            );
            v.push(b'\n');
            return Some(v);
        }
        "guest-ping" | "guest-file-flush" | "guest-file-close" => json!({"return": {}}),
        "guest-file-open" => json!({"return": 1000}),
        "guest-file-read" => json!({"return": {"count": 5, "buf-b64": "aGVsbG8=", "eof": true}}),
        "guest-file-write" => json!({"return": {"count": 5, "eof": false}}),
        "guest-set-time"
        | "guest-set-user-password"
        | "guest-ssh-add-authorized-keys"
        | "guest-ssh-remove-authorized-keys" => json!({"return": {}}),
        "guest-ssh-get-authorized-keys" => json!({"return": {"keys": [
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK alice@host", "ssh-rsa AAAAB3 bob@host"]}}),
        // Every CPU asked for is processed.
        "guest-set-vcpus" => {
            json!({"return": req["arguments"]["vcpus"].as_array().map_or(0, Vec::len)})
        }
        "guest-info" => json!({"return": {"version": "7.2.22", "supported_commands": [
            {"name": "guest-ping", "enabled": true, "success-response": true},
            {"name": "guest-shutdown", "enabled": false, "success-response": false},
        ]}}),
        other => match modern(other) {
            Some(ret) => json!({ "return": ret }),
            None => json!({"error": {"class": "CommandNotFound",
                            "desc": format!("The command {other} has not been found")}}),
        },
    };
    let mut reply = reply;
    reply["id"] = req["id"].clone();
    Some(format!("{reply}\n").into_bytes())
}

/// The scripted agent's return values for the read-side commands (shapes as qemu-ga
/// 7.2 sends them; load and routes as QEMU 10.0 does).
fn modern(name: &str) -> Option<Value> {
    Some(match name {
        "guest-get-osinfo" => json!({"id": "debian", "kernel-release": "6.1.0-30-amd64",
            "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.124-1", "machine": "x86_64",
            "name": "Debian GNU/Linux", "pretty-name": "Debian GNU/Linux 12 (bookworm)",
            "version": "12 (bookworm)", "version-id": "12",
            // A member this client does not know: --json must still show it.
            "x-future-member": 1}),
        "guest-get-time" => json!(1_796_106_334_095_443_000i64),
        "guest-get-host-name" => json!({"host-name": "vm42"}),
        "guest-get-timezone" => json!({"zone": "IST", "offset": 19800}),
        "guest-get-users" => json!([{"user": "root", "login-time": 1_796_100_000.25},
                                    {"user": "alice", "login-time": 951_782_400.0}]),
        "guest-get-fsinfo" => json!([{"name": "vda1", "mountpoint": "/", "type": "ext4",
            "used-bytes": 30_628_433_920u64, "total-bytes": 97_572_749_312u64,
            "disk": [{"bus": 0, "bus-type": "virtio", "dev": "/dev/vda",
                      "pci-controller": {"bus": 0, "domain": 0, "function": 0, "slot": 2},
                      "target": 0, "unit": 0}]},
            {"name": "tmpfs", "mountpoint": "/run", "type": "tmpfs", "disk": []}]),
        "guest-get-disks" => json!([{"name": "/dev/vda", "partition": false, "dependencies": [],
            "address": {"bus": 0, "bus-type": "virtio", "dev": "/dev/vda", "serial": "SN1",
                        "pci-controller": {"bus": 0, "domain": 0, "function": 0, "slot": 2},
                        "target": 0, "unit": 0}},
            {"name": "/dev/vda1", "partition": true, "dependencies": ["/dev/vda"]}]),
        "guest-get-vcpus" => json!([{"logical-id": 0, "online": true, "can-offline": false},
                                    {"logical-id": 1, "online": false, "can-offline": true}]),
        "guest-get-memory-blocks" => json!([{"phys-index": 7, "online": true, "can-offline": true},
                                            {"phys-index": 8, "online": true}]),
        "guest-get-memory-block-info" => json!({"size": 134_217_728}),
        "guest-get-cpustats" => json!([{"type": "linux", "cpu": 0, "user": 488_970, "nice": 0,
            "system": 87_700, "idle": 353_340, "iowait": 1940, "irq": 0, "softirq": 130,
            "steal": 2800, "guest": 0, "guestnice": 0},
            {"type": "linux", "cpu": 1, "user": 5, "nice": 1, "system": 2, "idle": 3}]),
        "guest-get-diskstats" => json!([{"name": "vda", "major": 254, "minor": 0, "stats": {
            "read-ios": 472, "read-sectors": 16880, "write-ios": 177, "write-sectors": 8632,
            "discard-ios": 36, "flush-ios": 121, "ios-pgr": 0, "total-ticks": 344}}]),
        "guest-get-load" => json!({"load1m": 0.5, "load5m": 0.25, "load15m": 0.125}),
        "guest-network-get-route" => json!([
            {"iface": "eth0", "destination": "0.0.0.0", "gateway": "192.0.2.1",
             "mask": "0.0.0.0", "metric": 100, "version": 4},
            {"iface": "eth0", "destination": "fd00::", "desprefixlen": "40",
             "nexthop": "::", "metric": 256, "version": 6}]),
        "guest-network-get-interfaces" => json!([{"name": "eth0",
            "hardware-address": "02:fc:00:00:00:01",
            "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "192.0.2.2", "prefix": 24},
                             {"ip-address-type": "ipv6", "ip-address": "fd00::2", "prefix": 64}],
            "statistics": {"rx-bytes": 10, "rx-packets": 1, "rx-errs": 0, "rx-dropped": 0,
                           "tx-bytes": 20, "tx-packets": 2, "tx-errs": 0, "tx-dropped": 0}}]),
        "guest-get-devices" => json!([{"driver-name": "viostor", "driver-version": "100.9",
            "driver-date": 1_600_000_000_000_000_000i64,
            "id": {"type": "pci", "vendor-id": 6900, "device-id": 4097}}]),
        _ => return None,
    })
}

/// Serves one connection on `listener` with [`answer`].
async fn serve(listener: tokio::net::UnixListener) {
    let Ok((mut io, _)) = listener.accept().await else {
        return;
    };
    let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
    loop {
        while let Some(f) = dec.decode(&mut buf) {
            if let Frame::Message(m) = f {
                let req: Value = serde_json::from_slice(&m).unwrap();
                if let Some(bytes) = answer(&req) {
                    if io.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            }
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What a run of `qga` left behind.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// stdout, byte for byte.
    raw_stdout: Vec<u8>,
    /// stderr, byte for byte.
    raw_stderr: Vec<u8>,
}

impl Run {
    fn of(out: std::process::Output) -> Self {
        Run {
            code: out.status.code(),
            raw_stdout: out.stdout.clone(),
            raw_stderr: out.stderr.clone(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Exit status 0 and nothing on stderr.
    fn assert_clean(&self) {
        assert_eq!(self.code, Some(0), "{}", self.stderr);
        assert!(self.stderr.is_empty(), "stderr: {}", self.stderr);
    }
}

/// Runs `qga --socket <scripted agent> <args>`.
async fn run_qga(args: &[&str]) -> Run {
    let mut all = vec!["--socket", "{sock}"];
    all.extend_from_slice(args);
    run_qga_with(&all, |_| {}).await
}

/// Runs `qga` with `args`, `{sock}` standing for a scripted agent's socket, after
/// `setup` has adjusted the command (its stdio, say).
async fn run_qga_with(
    args: &[&str],
    setup: impl FnOnce(&mut std::process::Command) + Send + 'static,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve(listener));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qga"));
    let sock = sock.to_str().unwrap();
    cmd.args(args.iter().map(|a| a.replace("{sock}", sock)));
    setup(&mut cmd);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    server.abort();
    drop(dir);
    Run::of(out)
}

/// Runs `qga` with no agent.
fn qga(args: &[&str]) -> Run {
    Run::of(
        std::process::Command::new(env!("CARGO_BIN_EXE_qga"))
            .args(args)
            .output()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reports_local_file_errors_with_their_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // Exit code 5, and a message that names the local file.
    async fn local_error(args: &[&str], what: &str, path: &str) {
        let r = run_qga(args).await;
        assert_eq!(r.code, Some(5), "{}", r.stderr);
        assert!(
            r.stderr.contains(what) && r.stderr.contains(path),
            "{}",
            r.stderr
        );
    }
    let missing = dir.path().join("missing.bin");
    let missing = missing.to_str().unwrap();
    local_error(
        &["put", missing, "/tmp/remote.bin"],
        "cannot read local file",
        missing,
    )
    .await;
    let unwritable = dir.path().join("no/such/dir/out.bin");
    let unwritable = unwritable.to_str().unwrap();
    local_error(
        &["get", "/etc/hostname", unwritable],
        "cannot write local file",
        unwritable,
    )
    .await;

    // The same transfers with usable local files succeed.
    let local = dir.path().join("local.bin");
    let local = local.to_str().unwrap();
    let r = run_qga(&["get", "/etc/hostname", local]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(std::fs::read(local).unwrap(), b"hello");
    let r = run_qga(&["put", local, "/tmp/remote.bin"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

#[test]
fn the_cli_reports_a_bad_command_line_as_a_usage_error() {
    for args in [
        &["--vsock", "nonsense", "ping"][..],
        &["--vsock", "x:1", "ping"],
        &["--hybrid-vsock", "/tmp/vm.sock:port", "ping"],
        &["ping"],
        &["--socket", "/nonexistent/qga.sock", "exec-raw", "{not json"],
        &["--socket", "/nonexistent/qga.sock", "exec-raw", "{}"],
    ] {
        let r = qga(args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.starts_with("qga: ") || r.stderr.contains("Usage"),
            "{}",
            r.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_options_are_accepted_after_the_subcommand() {
    let json_first = run_qga_with(&["--json", "--socket", "{sock}", "info"], |_| {}).await;
    json_first.assert_clean();
    for args in [
        &["--socket", "{sock}", "info", "--json"][..],
        &["info", "--json", "--socket", "{sock}"],
        &["info", "--socket", "{sock}", "--timeout", "5", "--json"],
    ] {
        let r = run_qga_with(args, |_| {}).await;
        r.assert_clean();
        assert_eq!(r.stdout, json_first.stdout, "{args:?}");
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["version"], "7.2.22");
        assert_eq!(v["supported_commands"][1]["success-response"], false);
    }
    // Without --json: the table.
    let r = run_qga_with(&["info", "--socket", "{sock}"], |_| {}).await;
    r.assert_clean();
    assert_eq!(
        r.stdout,
        "version 7.2.22\n\
         command         enabled  success-response\n\
         guest-ping      yes      yes\n\
         guest-shutdown  no       no\n"
    );
}

/// stdout is a pipe whose reading end is already closed: every write fails with
/// EPIPE.
fn closed_stdout(cmd: &mut std::process::Command) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    cmd.stdout(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_the_program_quietly() {
    for args in [
        &["--socket", "{sock}", "info"][..],
        &["--socket", "{sock}", "info", "--json"],
        &["--socket", "{sock}", "cat", "/etc/hostname"],
        &["--socket", "{sock}", "ping"],
        &["completions", "bash"],
        &["man"],
    ] {
        let r = run_qga_with(args, closed_stdout).await;
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
    }
    // Any other failure to write stdout is an error, and says so.
    let r = run_qga_with(&["--socket", "{sock}", "info"], |cmd| {
        cmd.stdout(std::fs::File::create("/dev/full").unwrap());
    })
    .await;
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert!(
        r.stderr.starts_with("qga: cannot write stdout: "),
        "{}",
        r.stderr
    );
}

#[test]
fn a_missing_socket_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let missing = missing.to_str().unwrap();
    let r = qga(&["--socket", missing, "ping"]);
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert_eq!(
        r.stderr,
        format!(
            "qga: cannot connect to unix socket {missing}: No such file or directory (os error 2)\n"
        )
    );
    assert!(r.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_names_the_command_the_guest_path_and_the_agent() {
    let r = run_qga(&["exec-raw", r#"{"execute":"guest-bogus"}"#]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.starts_with("qga: guest-bogus on unix socket /")
            && r.stderr
                .contains("The command guest-bogus has not been found"),
        "{}",
        r.stderr
    );
    // The scripted agent knows no fsfreeze: the error names the command.
    let r = run_qga(&["fsfreeze", "thaw"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("qga: guest-fsfreeze-thaw on unix socket /"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_file_call_names_the_guest_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    // An agent that refuses to open anything.
    let server = tokio::spawn(async move {
        let (mut io, _) = listener.accept().await.unwrap();
        let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
        loop {
            while let Some(f) = dec.decode(&mut buf) {
                if let Frame::Message(m) = f {
                    let req: Value = serde_json::from_slice(&m).unwrap();
                    let reply = if req["execute"] == "guest-file-open" {
                        let e = json!({"error": {"class": "GenericError", "desc": "denied"},
                                       "id": req["id"]});
                        format!("{e}\n").into_bytes()
                    } else {
                        answer(&req).unwrap()
                    };
                    io.write_all(&reply).await.unwrap();
                }
            }
            if io.read_buf(&mut buf).await.unwrap() == 0 {
                return;
            }
        }
    });
    let sock = sock.to_str().unwrap().to_owned();
    let s = sock.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_qga"))
            .args(["--socket", &s, "cat", "/etc/secret"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.await.unwrap();
    let r = Run::of(out);
    assert_eq!(r.code, Some(1));
    assert_eq!(
        r.stderr,
        format!("qga: reading guest file /etc/secret on unix socket {sock}: agent error: GenericError: denied\n")
    );
}

#[test]
fn two_targets_are_a_usage_error() {
    let r = qga(&["--socket", "/a.sock", "ping", "--vsock", "3:1"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("exactly one of"), "{}", r.stderr);
}

#[test]
fn bash_completions_know_the_subcommands() {
    let r = qga(&["completions", "bash"]);
    r.assert_clean();
    assert!(r.stdout.contains("complete -F _qga"), "{}", r.stdout);
    for sub in [
        "ping",
        "info",
        "exec-raw",
        "fsfreeze",
        "get",
        "put",
        "exec",
        "passwd",
        "ssh-keys",
        "completions",
        "man",
    ] {
        assert!(r.stdout.contains(sub), "{sub} missing");
    }
    assert!(r.stdout.contains("--mountpoint"), "nested options missing");
    assert!(
        r.stdout.contains("--capture") && r.stdout.contains("--reset"),
        "action verbs' options missing"
    );
    // Every shell clap_complete knows works.
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let r = qga(&["completions", shell]);
        r.assert_clean();
        assert!(r.stdout.contains("exec-raw"), "{shell}");
    }
    let r = qga(&["completions", "tcsh"]);
    assert_eq!(r.code, Some(2));
}

#[test]
fn the_man_page_renders() {
    let r = qga(&["man"]);
    r.assert_clean();
    // clap_mangen's page: a quoting preamble (.ie/.el), then the title macro.
    let first_macro = r
        .stdout
        .lines()
        .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
        .unwrap();
    assert!(first_macro.starts_with(".TH qga 1"), "{first_macro}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS", ".SH SUBCOMMANDS"] {
        assert!(r.stdout.contains(section), "{section} missing");
    }
    // Rendered by nroff (groff), when the machine has it.
    let Ok(mut nroff) = std::process::Command::new("nroff")
        .args(["-man", "-Tutf8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("nroff not found: the page was not rendered");
        return;
    };
    use std::io::Write;
    nroff
        .stdin
        .take()
        .unwrap()
        .write_all(r.stdout.as_bytes())
        .unwrap();
    let out = nroff.wait_with_output().unwrap();
    // Undo nroff's overstriking (bold is `c BS c`, underline `_ BS c`).
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("qga - Talk to a QEMU Guest Agent") && text.contains("qga-completions(1)"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "nroff warned: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `qga --socket <agent> <args>` under `script`, so that stderr is a terminal
/// (stdout goes to /dev/null); returns what the terminal showed.
async fn run_qga_on_a_terminal(args: &str) -> Run {
    let line = format!(
        "{} --socket {{sock}} {args} >/dev/null",
        env!("CARGO_BIN_EXE_qga")
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve(listener));
    let line = line.replace("{sock}", sock.to_str().unwrap());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    server.abort();
    Run::of(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_shows_only_when_stderr_is_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.bin");
    let local = local.to_str().unwrap();
    // Pipes: nothing at all, on stdout or stderr.
    let r = run_qga(&["get", "/etc/hostname", local]).await;
    r.assert_clean();
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let r = run_qga(&["put", local, "/tmp/remote.bin"]).await;
    r.assert_clean();
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    // A terminal: the bar, then what was copied.
    let r = run_qga_on_a_terminal(&format!("get /etc/hostname {local}")).await;
    assert_eq!(r.code, Some(0), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("5 B"), "no bar: {:?}", r.stdout);
    assert!(
        r.stdout.contains(&format!("5 bytes copied to {local}")),
        "{:?}",
        r.stdout
    );
    let r = run_qga_on_a_terminal(&format!("put {local} /tmp/remote.bin")).await;
    assert_eq!(r.code, Some(0), "{} {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("5 B/5 B"), "no bar: {:?}", r.stdout);
    assert!(
        r.stdout.contains("5 bytes copied to /tmp/remote.bin"),
        "{:?}",
        r.stdout
    );
}

/// Each read-side verb: the table, and with `--json` (after the verb) exactly the
/// agent's return value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_side_verbs_print_tables_and_raw_json() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "osinfo",
            "guest-get-osinfo",
            "pretty-name     Debian GNU/Linux 12 (bookworm)\n\
             name            Debian GNU/Linux\n\
             id              debian\n\
             version         12 (bookworm)\n\
             version-id      12\n\
             kernel-release  6.1.0-30-amd64\n\
             kernel-version  #1 SMP PREEMPT_DYNAMIC Debian 6.1.124-1\n\
             machine         x86_64\n",
        ),
        (
            "time",
            "guest-get-time",
            "2026-12-01T06:25:34.095443000Z\n",
        ),
        ("hostname", "guest-get-host-name", "vm42\n"),
        ("timezone", "guest-get-timezone", "IST +05:30\n"),
        (
            "users",
            "guest-get-users",
            "user   login-time (UTC)\n\
             root   2026-12-01T04:40:00\n\
             alice  2000-02-29T00:00:00\n",
        ),
        (
            "fsinfo",
            "guest-get-fsinfo",
            "mountpoint  type   name   used      total     disks\n\
             /           ext4   vda1   28.5 GiB  90.9 GiB  /dev/vda\n\
             /run        tmpfs  tmpfs  -         -         -\n",
        ),
        (
            "disks",
            "guest-get-disks",
            "name       partition  bus     depends-on  alias  serial\n\
             /dev/vda   no         virtio  -           -      SN1\n\
             /dev/vda1  yes        -       /dev/vda    -      -\n",
        ),
        (
            "vcpus",
            "guest-get-vcpus",
            "cpu  online  can-offline\n\
             0    yes     no\n\
             1    no      yes\n",
        ),
        (
            "memory-blocks",
            "guest-get-memory-blocks",
            "block  online  can-offline\n\
             7      yes     yes\n\
             8      yes     -\n",
        ),
        (
            "memory-block-info",
            "guest-get-memory-block-info",
            "block size 128.0 MiB (134217728 bytes)\n",
        ),
        (
            "cpustats",
            "guest-get-cpustats",
            "cpu  user    nice  system  idle    iowait  irq  softirq  steal  guest  guestnice\n\
             0    488970  0     87700   353340  1940    0    130      2800   0      0\n\
             1    5       1     2       3       -       -    -        -      -      -\n",
        ),
        (
            "diskstats",
            "guest-get-diskstats",
            "name  dev    read-ios  read-sectors  write-ios  write-sectors  discard-ios  flush-ios  in-flight  io-ms\n\
             vda   254:0  472       16880         177        8632           36           121        0          344\n",
        ),
        (
            "load",
            "guest-get-load",
            "1m    5m    15m\n\
             0.50  0.25  0.12\n",
        ),
        (
            "routes",
            "guest-network-get-route",
            "iface  destination      gateway    metric  ip\n\
             eth0   0.0.0.0/0.0.0.0  192.0.2.1  100     v4\n\
             eth0   fd00::/64        ::         256     v6\n",
        ),
        (
            "interfaces",
            "guest-network-get-interfaces",
            "name  mac                address       rx/tx bytes\n\
             eth0  02:fc:00:00:00:01  192.0.2.2/24  10/20\n\
             \x20                        fd00::2/64\n",
        ),
        (
            "devices",
            "guest-get-devices",
            "driver   version  date (UTC)           id\n\
             viostor  100.9    2020-09-13T12:26:40  pci 1af4:1001\n",
        ),
    ];
    for (verb, command, table) in cases {
        let r = run_qga(&[verb]).await;
        r.assert_clean();
        assert_eq!(r.stdout, *table, "qga {verb}");
        let r = run_qga(&[verb, "--json"]).await;
        r.assert_clean();
        let printed: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("qga {verb} --json: {e}: {}", r.stdout));
        assert_eq!(printed, modern(command).unwrap(), "qga {verb} --json");
    }
}

// ---------------------------------------------------------------------------
// The action verbs: what goes on the wire, what comes out, the exit status.

/// A scripted agent that records every request: `script` answers a request
/// (`Some(reply)`, `{"return": ...}` or `{"error": ...}`, the id is added), or
/// leaves it to [`answer`] (`None`).
async fn serve_recording(
    listener: tokio::net::UnixListener,
    mut script: impl FnMut(&Value) -> Option<Value> + Send,
) -> Vec<Value> {
    let mut seen = Vec::new();
    let Ok((mut io, _)) = listener.accept().await else {
        return seen;
    };
    let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
    loop {
        while let Some(f) = dec.decode(&mut buf) {
            if let Frame::Message(m) = f {
                let req: Value = serde_json::from_slice(&m).unwrap();
                let bytes = match script(&req) {
                    Some(mut reply) => {
                        reply["id"] = req["id"].clone();
                        Some(format!("{reply}\n").into_bytes())
                    }
                    None => answer(&req),
                };
                seen.push(req);
                if let Some(bytes) = bytes {
                    if io.write_all(&bytes).await.is_err() {
                        return seen;
                    }
                }
            }
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return seen,
            Ok(_) => {}
        }
    }
}

/// Runs `qga --socket <agent> <args>` with `stdin` on its stdin, against an agent
/// answering with `script` (else [`answer`]); returns the run and every request
/// the agent saw but the sync.
async fn run_scripted(
    args: &[&str],
    stdin: &[u8],
    script: impl FnMut(&Value) -> Option<Value> + Send + 'static,
) -> (Run, Vec<Value>) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve_recording(listener, script));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qga"));
    cmd.arg("--socket").arg(&sock).args(args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let stdin = stdin.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        // qga may not read it all (or at all): a closed pipe is fine.
        let _ = std::io::Write::write_all(&mut pipe, &stdin);
        drop(pipe);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    (Run::of(out), recorded(server, &sock).await)
}

/// What a recording agent saw, but the syncs, once `qga` has exited.
async fn recorded(
    server: tokio::task::JoinHandle<Vec<Value>>,
    sock: &std::path::Path,
) -> Vec<Value> {
    // qga is gone, so its connection is closed. If it never connected, the agent
    // still waits for a connection: this empty one ends it.
    if !server.is_finished() {
        drop(tokio::net::UnixStream::connect(sock).await);
    }
    server
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r["execute"] != "guest-sync-delimited")
        .collect()
}

/// The requests' command names.
fn executed(seen: &[Value]) -> Vec<&str> {
    seen.iter()
        .map(|r| r["execute"].as_str().unwrap())
        .collect()
}

/// An agent's guest-exec: pid 77, running for `polls` polls, then `end`.
fn exec_script(mut polls: usize, end: Value) -> impl FnMut(&Value) -> Option<Value> + Send {
    move |req| match req["execute"].as_str().unwrap() {
        "guest-exec" => Some(json!({"return": {"pid": 77}})),
        "guest-exec-status" => {
            assert_eq!(req["arguments"], json!({"pid": 77}));
            Some(if polls > 0 {
                polls -= 1;
                json!({"return": {"exited": false}})
            } else {
                json!({ "return": end })
            })
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_copies_the_programs_output_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.bin");
    std::fs::write(&input, b"line 1\n\xff\x00").unwrap();
    // stdout: "hello\n" and a byte that is no UTF-8; stderr: "oops\n".
    let end = json!({"exited": true, "exitcode": 3, "out-data": "aGVsbG8K/w==",
                     "err-data": "b29wcwo="});
    let (r, seen) = run_scripted(
        &[
            "exec",
            "--input",
            input.to_str().unwrap(),
            "--env",
            "A=1",
            "--env=B=x=y",
            "--",
            "/bin/prog",
            "a",
            "b c",
            "--json",
        ],
        b"",
        exec_script(2, end.clone()),
    )
    .await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert_eq!(r.raw_stdout, b"hello\n\xff");
    assert_eq!(r.raw_stderr, b"oops\n");
    assert_eq!(
        executed(&seen),
        [
            "guest-exec",
            "guest-exec-status",
            "guest-exec-status",
            "guest-exec-status"
        ]
    );
    // Everything after `--` is the program's, `--json` included.
    assert_eq!(
        seen[0]["arguments"],
        json!({"path": "/bin/prog", "arg": ["a", "b c", "--json"], "env": ["A=1", "B=x=y"],
               "input-data": "bGluZSAxCv8A", "capture-output": true})
    );

    // --json: the final guest-exec-status return as sent; still the program's status.
    let (r, _) = run_scripted(&["exec", "--json", "--", "prog"], b"", exec_script(0, end)).await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let printed: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(printed["out-data"], "aGVsbG8K/w==");
    assert_eq!(printed["exitcode"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reads_stdin_for_input_dash_and_sends_the_capture_mode() {
    let ok = json!({"exited": true, "exitcode": 0});
    let (r, seen) = run_scripted(
        &["exec", "--input", "-", "--capture", "merged", "--", "cat"],
        b"from a pipe\n",
        exec_script(0, ok.clone()),
    )
    .await;
    r.assert_clean();
    assert_eq!(
        seen[0]["arguments"],
        json!({"path": "cat", "input-data": "ZnJvbSBhIHBpcGUK", "capture-output": "merged"})
    );
    // No --input: nothing is read or sent; --capture none: no capture-output.
    let (r, seen) = run_scripted(
        &["exec", "--capture", "none", "--", "true"],
        b"not for the program",
        exec_script(0, ok),
    )
    .await;
    r.assert_clean();
    assert_eq!(seen[0]["arguments"], json!({"path": "true"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_a_signal_as_128_plus_n_and_truncation_on_stderr() {
    let end = json!({"exited": true, "signal": 9, "out-data": "YWI=", "out-truncated": true});
    let (r, _) = run_scripted(&["exec", "--", "yes"], b"", exec_script(1, end)).await;
    assert_eq!(r.code, Some(137), "{}", r.stderr);
    assert_eq!(r.stdout, "ab");
    assert_eq!(
        r.stderr,
        "qga: the agent truncated process 77's stdout (its capture limit)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_timeout_names_the_pid_to_keep_polling() {
    let (r, seen) = run_scripted(
        &["exec", "--timeout", "0.3", "--", "sleep", "100"],
        b"",
        exec_script(usize::MAX, Value::Null),
    )
    .await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr.starts_with("qga: guest process 77 still running after the timeout on unix socket /")
            && r.stderr.ends_with(
                "poll it with: qga exec-raw '{\"execute\":\"guest-exec-status\",\"arguments\":{\"pid\":77}}'\n"
            ),
        "{}",
        r.stderr
    );
    // It polled more than once, with backoff (at most 7 polls fit in 0.3 s).
    let polls = executed(&seen)
        .iter()
        .filter(|n| **n == "guest-exec-status")
        .count();
    assert!((2..=7).contains(&polls), "{polls} polls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_usage_errors_send_nothing() {
    for args in [
        &["exec", "prog"][..],
        &["exec", "--"],
        &["exec", "--env", "NOEQUALS", "--", "prog"],
        &["exec", "--env", "=v", "--", "prog"],
        &["exec", "--capture", "all", "--", "prog"],
        &["exec", "--input", "/nonexistent/file", "--", "prog"],
    ] {
        let (r, seen) = run_scripted(args, b"", |_| None).await;
        let want = if args.contains(&"/nonexistent/file") {
            5
        } else {
            2
        };
        assert_eq!(r.code, Some(want), "{args:?}: {}", r.stderr);
        assert!(seen.is_empty(), "{args:?}: {seen:?}");
    }
    // The agent refuses to start it: its error, status 1.
    let (r, _) = run_scripted(&["exec", "--", "nope"], b"", |req| {
        assert_ne!(req["execute"], "guest-exec-status");
        None
    })
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("qga: guest-exec nope on unix socket /"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_reads_the_first_line_of_stdin_and_never_prints_it() {
    let (r, seen) = run_scripted(&["passwd", "alice"], b"s3cret pw\nsecond line\n", |_| None).await;
    r.assert_clean();
    assert!(r.stdout.is_empty());
    assert_eq!(executed(&seen), ["guest-set-user-password"]);
    assert_eq!(
        seen[0]["arguments"],
        json!({"username": "alice", "password": "czNjcmV0IHB3", "crypted": false})
    );
    // A hash with a CRLF line end and no newline after it; --json prints `{}` only.
    let hash = "$6$salt$Xq1eHqG1";
    let (r, seen) = run_scripted(
        &["passwd", "bob", "--crypted", "--json"],
        format!("{hash}\r\n").as_bytes(),
        |_| None,
    )
    .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap(), json!({}));
    assert!(!r.stdout.contains("salt") && !r.stderr.contains("salt"));
    assert_eq!(
        seen[0]["arguments"],
        json!({"username": "bob", "password": "JDYkc2FsdCRYcTFlSHFHMQ==", "crypted": true})
    );
    let (r, seen) = run_scripted(&["passwd", "carol"], b"no-newline", |_| None).await;
    r.assert_clean();
    assert_eq!(seen[0]["arguments"]["password"], "bm8tbmV3bGluZQ==");
    // The agent's refusal names the user, never the password.
    let (r, _) = run_scripted(&["passwd", "nobody"], b"hunter2\n", |req| {
        (req["execute"] == "guest-set-user-password").then(|| {
            json!({"error": {"class": "GenericError", "desc": "child process has failed to set user password"}})
        })
    })
    .await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr
            .starts_with("qga: guest-set-user-password for nobody on unix socket /"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("hunter2") && !r.stdout.contains("hunter2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_never_takes_the_password_from_the_command_line() {
    // A password on the command line is refused before anything is read or sent.
    let (r, seen) = run_scripted(&["passwd", "alice", "s3cret"], b"other\n", |_| None).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(seen.is_empty(), "{seen:?}");
    // An empty line, or nothing at all, is no password.
    for stdin in [&b"\n"[..], b""] {
        let (r, seen) = run_scripted(&["passwd", "alice"], stdin, |_| None).await;
        assert_eq!(r.code, Some(2), "{}", r.stderr);
        assert_eq!(r.stderr, "qga: empty password\n");
        assert!(seen.is_empty(), "{seen:?}");
    }
}

/// `qga passwd` on a terminal (under `script`): each prompt is answered once it
/// shows. Returns what the terminal showed, qga's exit status, whether the
/// terminal echoes again afterwards (`stty` in the same session), and the requests.
async fn passwd_on_a_terminal(
    answers: [&'static str; 2],
) -> (String, Option<i32>, bool, Vec<Value>) {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve_recording(listener, |_| None));
    let line = format!(
        "{} --socket {} passwd alice; echo \"qga-status=$?\"; stty -a",
        env!("CARGO_BIN_EXE_qga"),
        sock.display()
    );
    let shown = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let mut shown = Vec::new();
        let mut byte = [0u8; 1];
        for (prompt, answer) in [
            "New password for alice: ",
            "Retype new password for alice: ",
        ]
        .iter()
        .zip(answers)
        {
            // Echo is off by the time the prompt shows.
            while !String::from_utf8_lossy(&shown).ends_with(prompt) {
                assert_eq!(output.read(&mut byte).unwrap(), 1, "{shown:?}");
                shown.push(byte[0]);
            }
            input.write_all(answer.as_bytes()).unwrap();
            input.write_all(b"\n").unwrap();
            input.flush().unwrap();
        }
        output.read_to_end(&mut shown).unwrap();
        assert!(child.wait().unwrap().success());
        drop(input);
        String::from_utf8_lossy(&shown).into_owned()
    })
    .await
    .unwrap();
    let seen = recorded(server, &sock).await;
    let code = shown
        .split("qga-status=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|c| c.parse().ok());
    // stty lists the flag as `echo`, or `-echo` when it is off.
    let echo = shown.split_whitespace().any(|w| w == "echo");
    (shown, code, echo, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_prompts_on_a_terminal_without_echo() {
    let (shown, code, echo, seen) = passwd_on_a_terminal(["Tr0ub4dor&3", "Tr0ub4dor&3"]).await;
    assert_eq!(code, Some(0), "{shown:?}");
    assert!(echo, "echo not restored: {shown:?}");
    assert!(!shown.contains("Tr0ub4dor"), "echoed: {shown:?}");
    assert_eq!(executed(&seen), ["guest-set-user-password"]);
    assert_eq!(
        seen[0]["arguments"],
        json!({"username": "alice", "password": "VHIwdWI0ZG9yJjM=", "crypted": false})
    );
    // Two different answers: refused, nothing sent.
    let (shown, code, echo, seen) = passwd_on_a_terminal(["one", "two"]).await;
    assert_eq!(code, Some(2), "{shown:?}");
    assert!(echo, "echo not restored: {shown:?}");
    assert!(
        !shown.contains("one") && !shown.contains("two"),
        "{shown:?}"
    );
    assert!(
        shown.contains("qga: the passwords do not match"),
        "{shown:?}"
    );
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keys_get_add_and_remove() {
    let (r, seen) = run_scripted(&["ssh-keys", "get", "alice"], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(
        r.stdout,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK alice@host\nssh-rsa AAAAB3 bob@host\n"
    );
    assert_eq!(seen[0]["arguments"], json!({"username": "alice"}));
    let (r, _) = run_scripted(&["ssh-keys", "get", "alice", "--json"], b"", |_| None).await;
    r.assert_clean();
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["keys"][1], "ssh-rsa AAAAB3 bob@host");

    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("keys.pub");
    std::fs::write(
        &keyfile,
        "# my keys\n\nssh-ed25519 AAAAC3 a@b\n   \nssh-rsa AAAAB3 c@d\r\n",
    )
    .unwrap();
    let keyfile = keyfile.to_str().unwrap();
    let (r, seen) = run_scripted(&["ssh-keys", "add", "alice", keyfile], b"", |_| None).await;
    r.assert_clean();
    assert!(r.stdout.is_empty());
    assert_eq!(
        seen[0],
        json!({"execute": "guest-ssh-add-authorized-keys", "id": seen[0]["id"],
               "arguments": {"username": "alice", "keys": ["ssh-ed25519 AAAAC3 a@b", "ssh-rsa AAAAB3 c@d"]}})
    );
    // From stdin (`-` or no file), with --reset.
    for args in [
        &["ssh-keys", "add", "bob", "-", "--reset"][..],
        &["ssh-keys", "add", "--reset", "bob"],
    ] {
        let (r, seen) = run_scripted(args, b"ssh-ed25519 K1 x\n", |_| None).await;
        r.assert_clean();
        assert_eq!(
            seen[0]["arguments"],
            json!({"username": "bob", "keys": ["ssh-ed25519 K1 x"], "reset": true}),
            "{args:?}"
        );
    }
    // --reset without keys removes them all.
    let (r, seen) = run_scripted(&["ssh-keys", "add", "bob", "--reset"], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(
        seen[0]["arguments"],
        json!({"username": "bob", "keys": [], "reset": true})
    );
    let (r, seen) = run_scripted(&["ssh-keys", "remove", "alice", keyfile], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(
        seen[0]["arguments"],
        json!({"username": "alice", "keys": ["ssh-ed25519 AAAAC3 a@b", "ssh-rsa AAAAB3 c@d"]})
    );
    // Nothing to add or remove, or a private key: refused, nothing sent.
    for (args, stdin, err) in [
        (
            &["ssh-keys", "add", "bob"][..],
            &b"# none\n"[..],
            "qga: no keys to add",
        ),
        (
            &["ssh-keys", "remove", "bob", "-"],
            b"\n",
            "qga: no keys to remove",
        ),
        (
            &["ssh-keys", "add", "bob"],
            b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz\n-----END OPENSSH PRIVATE KEY-----\n",
            "qga: stdin: this is a private key",
        ),
    ] {
        let (r, seen) = run_scripted(args, stdin, |_| None).await;
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.starts_with(err), "{args:?}: {}", r.stderr);
        assert!(seen.is_empty(), "{args:?}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_set_sends_the_time_or_none() {
    // No value: from the hardware clock, no time sent.
    let (r, seen) = run_scripted(&["time", "--set"], b"", |_| None).await;
    r.assert_clean();
    assert!(r.stdout.is_empty());
    assert_eq!(executed(&seen), ["guest-set-time"]);
    assert_eq!(seen[0]["arguments"], json!({}));
    let (r, seen) = run_scripted(&["time", "--set", "1796106334095443000"], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(
        seen[0]["arguments"],
        json!({"time": 1_796_106_334_095_443_000i64})
    );
    // `now`: this host's clock, read while qga ran.
    let ns = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    };
    let before = ns();
    let (r, seen) = run_scripted(&["time", "--json", "--set", "now"], b"", |_| None).await;
    let after = ns();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(serde_json::from_str::<Value>(&r.stdout).unwrap(), json!({}));
    let sent = seen[0]["arguments"]["time"].as_i64().unwrap();
    assert!((before..=after).contains(&sent), "{before} {sent} {after}");
    // Anything else is refused before connecting.
    let (r, seen) = run_scripted(&["time", "--set", "noon"], b"", |_| None).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r
        .stderr
        .contains("expected nanoseconds since the epoch, or `now`"));
    assert!(seen.is_empty());
    // Without --set it still reads the time.
    let (r, seen) = run_scripted(&["time"], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(r.stdout, "2026-12-01T06:25:34.095443000Z\n");
    assert_eq!(executed(&seen), ["guest-get-time"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vcpus_online_and_offline_print_the_processed_count() {
    let (r, seen) = run_scripted(&["vcpus", "--online", "1,2", "--offline", "3"], b"", |_| {
        None
    })
    .await;
    r.assert_clean();
    assert_eq!(r.stdout, "3 of 3 vcpus processed\n");
    assert_eq!(
        seen[0]["arguments"],
        json!({"vcpus": [{"logical-id": 1, "online": true}, {"logical-id": 2, "online": true},
                         {"logical-id": 3, "online": false}]})
    );
    let (r, _) = run_scripted(&["vcpus", "--offline", "1", "--json"], b"", |_| None).await;
    r.assert_clean();
    assert_eq!(r.stdout, "1\n");
    // The agent processed none, or stopped part way: non-zero, naming the CPU.
    for (n, cpu) in [(0, 5), (1, 6)] {
        let (r, _) = run_scripted(&["vcpus", "--offline", "5,6"], b"", move |req| {
            (req["execute"] == "guest-set-vcpus").then(|| json!({ "return": n }))
        })
        .await;
        assert_eq!(r.code, Some(1), "{}", r.stderr);
        assert_eq!(r.stdout, format!("{n} of 2 vcpus processed\n"));
        assert_eq!(
            r.stderr,
            format!("qga: guest-set-vcpus stopped at CPU {cpu} (nothing done from there on)\n")
        );
    }
    let (r, seen) =
        run_scripted(&["vcpus", "--online", "1", "--offline", "1"], b"", |_| None).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(seen.is_empty());
}
