//! examples/custom_agent.rs, run as a user would (`cargo run --example`), talked to
//! over its socket: its own command answers (and validates its arguments), the
//! removed command is unknown, the disabled one says so, guest-info lists what it
//! serves, a stock command works; SIGTERM to its pid stops it with status 0.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Kills the example if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ask(conn: &mut BufReader<UnixStream>, request: Value) -> Value {
    let mut bytes = serde_json::to_vec(&request).unwrap();
    bytes.push(b'\n');
    conn.get_mut().write_all(&bytes).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "no reply to {request}: {line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply {line:?}: {e}"))
}

fn error_desc(reply: &Value) -> &str {
    reply["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("error expected: {reply}"))
}

#[test]
fn custom_agent_example_serves_its_own_command_set() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let state = dir.path().join("state");
    let child = Command::new(env!("CARGO"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "run",
            "-q",
            "-p",
            "qga-agent",
            "--example",
            "custom_agent",
            "--",
        ])
        .arg(&sock)
        .arg(&state)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut agent = Running(child);
    let pid = agent.0.id();

    // `cargo run` may have to build the example first (it is usually built already
    // by `cargo test`).
    let deadline = Instant::now() + Duration::from_secs(600);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        if let Some(status) = agent.0.try_wait().unwrap() {
            panic!("custom_agent exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "custom_agent never listened");
        std::thread::sleep(Duration::from_millis(50));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = BufReader::new(stream);
    // cargo execs the example on unix, so this pid is the agent's own.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(
        exe.file_name().unwrap(),
        "custom_agent",
        "pid {pid} is {exe:?}"
    );

    let version = format!("{} (custom_agent example)", env!("CARGO_PKG_VERSION"));
    // Its own command, with and without its optional argument.
    assert_eq!(
        ask(
            &mut conn,
            json!({"execute": "x-example-greet", "arguments": {"name": "host"}, "id": 1})
        ),
        json!({"return": {"greeting": "hello, host", "agent-version": version}, "id": 1})
    );
    assert_eq!(
        ask(&mut conn, json!({"execute": "x-example-greet"}))["return"]["greeting"],
        "hello, world"
    );
    // Its argument checks and its own error.
    let reply = ask(
        &mut conn,
        json!({"execute": "x-example-greet", "arguments": {"name": 5}}),
    );
    assert_eq!(
        error_desc(&reply),
        "Invalid parameter type for 'name', expected: string"
    );
    let reply = ask(
        &mut conn,
        json!({"execute": "x-example-greet", "arguments": {"nmae": "x"}}),
    );
    assert_eq!(error_desc(&reply), "Parameter 'nmae' is unexpected");
    let reply = ask(
        &mut conn,
        json!({"execute": "x-example-greet", "arguments": {"name": ""}}),
    );
    assert_eq!(error_desc(&reply), "name must not be empty");

    // Removed: unknown. Sent with a mode of the wrong type, so that even if the
    // removal failed nothing would power this machine off (a stock agent refuses it
    // while parsing the arguments, after looking the command up: the error tells
    // which happened).
    let reply = ask(
        &mut conn,
        json!({"execute": "guest-shutdown", "arguments": {"mode": 0}, "id": "e"}),
    );
    assert_eq!(reply["error"]["class"], "CommandNotFound", "{reply}");
    assert_eq!(
        error_desc(&reply),
        "The command guest-shutdown has not been found"
    );
    assert_eq!(reply["id"], "e");
    let reply = ask(
        &mut conn,
        json!({"execute": "guest-file-open", "arguments": {"path": "/etc/hostname"}}),
    );
    assert_eq!(
        error_desc(&reply),
        "Command guest-file-open has been disabled"
    );

    // guest-info lists what it serves.
    let info = ask(&mut conn, json!({"execute": "guest-info"}));
    assert_eq!(info["return"]["version"], version);
    let commands = info["return"]["supported_commands"].as_array().unwrap();
    let enabled = |name: &str| {
        commands
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["enabled"].as_bool().unwrap())
    };
    assert_eq!(enabled("x-example-greet"), Some(true));
    assert_eq!(enabled("guest-file-open"), Some(false));
    for removed in [
        "guest-shutdown",
        "guest-suspend-disk",
        "guest-suspend-ram",
        "guest-suspend-hybrid",
    ] {
        assert_eq!(enabled(removed), None, "{removed}");
    }
    assert_eq!(enabled("guest-get-host-name"), Some(true));

    // Stock commands work, over the real machine.
    assert_eq!(
        ask(&mut conn, json!({"execute": "guest-ping", "id": 2})),
        json!({"return": {}, "id": 2})
    );
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        ask(&mut conn, json!({"execute": "guest-get-host-name"}))["return"]["host-name"],
        host.trim_end()
    );
    assert!(Path::new(&state).join("qga.state").is_file());

    // SIGTERM to its pid: a clean stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "custom_agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
}
