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
        "guest-info" => json!({"return": {"version": "7.2.22", "supported_commands": [
            {"name": "guest-ping", "enabled": true, "success-response": true},
            {"name": "guest-shutdown", "enabled": false, "success-response": false},
        ]}}),
        other => json!({"error": {"class": "CommandNotFound",
                        "desc": format!("The command {other} has not been found")}}),
    };
    let mut reply = reply;
    reply["id"] = req["id"].clone();
    Some(format!("{reply}\n").into_bytes())
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
}

impl Run {
    fn of(out: std::process::Output) -> Self {
        Run {
            code: out.status.code(),
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
        "completions",
        "man",
    ] {
        assert!(r.stdout.contains(sub), "{sub} missing");
    }
    assert!(r.stdout.contains("--mountpoint"), "nested options missing");
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
