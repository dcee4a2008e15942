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

/// Runs `qga --socket <scripted agent> <args>`.
async fn run_qga(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("qga.sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(serve(listener));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_qga"));
    cmd.arg("--socket").arg(&sock).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    server.abort();
    drop(dir);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
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
    assert_eq!(r.stdout, "5 bytes\n");
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
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_qga"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("qga: ") || stderr.contains("Usage"),
            "{stderr}"
        );
    }
}
