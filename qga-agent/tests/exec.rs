//! guest-exec and guest-exec-status: the dispatcher over FakeProcesses (argument
//! mapping, reply shapes, errors, frozen mode), then our agent against
//! `/usr/sbin/qemu-ga` on real programs, replies compared after polling to exit.

mod common;

use std::time::{Duration, Instant};

use common::{reference_available, Fake, Session, REFERENCE};
use qga_ops::fake::FakeRun;
use qga_ops::{CaptureMode, Captured, ExecRequest, ExecStatus, OpsError, Termination};
use serde_json::{json, Value};

fn b64(data: &[u8]) -> String {
    let mut v = Vec::new();
    qga_proto::Base64::encode_into(data, &mut v);
    String::from_utf8(v).unwrap()
}

#[test]
fn exec_maps_every_argument() {
    let mut a = Fake::new();
    let pid = a.ok(
        "guest-exec",
        json!({"path": "/bin/x", "arg": ["-n", "a b"], "env": ["A=1", "B"],
               "input-data": b64(b"in\0put"), "capture-output": true}),
    )["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(pid, 4000);
    let second = a.ok("guest-exec", json!({"path": "echo"}));
    assert_eq!(second, json!({"pid": 4001}));
    let mut expected = vec![
        ExecRequest {
            path: "/bin/x".into(),
            args: vec!["-n".into(), "a b".into()],
            env: Some(vec!["A=1".into(), "B".into()]),
            input: Some(b"in\0put".to_vec()),
            capture: CaptureMode::Separated,
        },
        ExecRequest {
            path: "echo".into(),
            ..Default::default()
        },
    ];
    for (value, mode) in [
        (json!(false), CaptureMode::None),
        (json!("none"), CaptureMode::None),
        (json!("stdout"), CaptureMode::Stdout),
        (json!("stderr"), CaptureMode::Stderr),
        (json!("separated"), CaptureMode::Separated),
        (json!("merged"), CaptureMode::Merged),
    ] {
        a.ok("guest-exec", json!({"path": "p", "capture-output": value}));
        expected.push(ExecRequest {
            path: "p".into(),
            capture: mode,
            ..Default::default()
        });
    }
    // Empty input is a pipe closed at once, not /dev/null.
    a.ok("guest-exec", json!({"path": "p", "input-data": ""}));
    expected.push(ExecRequest {
        path: "p".into(),
        input: Some(vec![]),
        ..Default::default()
    });
    assert_eq!(a.fakes.processes.spawned(), expected);
}

#[test]
fn exec_argument_errors_spawn_nothing() {
    let mut a = Fake::new();
    for (args, desc) in [
        (json!({}), "Parameter 'path' is missing"),
        (
            json!({"path": "/bin/cat", "input-data": "!!!"}),
            "Base64 data contains invalid characters",
        ),
        (
            json!({"path": "/bin/cat", "capture-output": 1}),
            "Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput",
        ),
        (
            json!({"path": "/bin/cat", "capture-output": "bogus"}),
            "Parameter 'capture-output' does not accept value 'bogus'",
        ),
        (
            json!({"path": "/bin/echo", "arg": "x"}),
            "Invalid parameter type for 'arg', expected: array",
        ),
        (
            json!({"path": "/bin/echo", "env": [1]}),
            "Invalid parameter type for 'env[0]', expected: string",
        ),
    ] {
        assert_eq!(a.err("guest-exec", args), desc);
    }
    assert_eq!(a.fakes.processes.spawned(), vec![]);
    let missing = "Guest agent command failed, error was 'Failed to execute child process “/bin/x” (No such file or directory)'";
    a.fakes.processes.fail_spawn.set(OpsError::failed(missing));
    assert_eq!(a.err("guest-exec", json!({"path": "/bin/x"})), missing);
    assert_eq!(a.fakes.processes.running(), Vec::<i64>::new());
}

#[test]
fn status_replies_have_7_2s_shape() {
    let mut a = Fake::new();
    let status = |a: &mut Fake, pid: i64| a.ok("guest-exec-status", json!({"pid": pid}));
    // Running twice, then exits with output on both streams.
    a.fakes.processes.script(FakeRun {
        running_polls: 2,
        result: ExecStatus {
            ended: Some(Termination::Exited(0)),
            stdout: Some(Captured {
                data: b"\" test_str \"".to_vec(),
                truncated: false,
            }),
            stderr: Some(Captured {
                data: vec![b'e'; 5],
                truncated: true,
            }),
        },
    });
    let pid = a.ok(
        "guest-exec",
        json!({"path": "echo", "capture-output": true}),
    )["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(status(&mut a, pid), json!({"exited": false}));
    assert_eq!(status(&mut a, pid), json!({"exited": false}));
    assert_eq!(
        status(&mut a, pid),
        json!({"exited": true, "exitcode": 0, "out-data": "IiB0ZXN0X3N0ciAi",
               "out-truncated": false, "err-data": "ZWVlZWU=", "err-truncated": true})
    );
    assert_eq!(
        a.err("guest-exec-status", json!({"pid": pid})),
        "Invalid parameter 'pid'"
    );
    // Captured but empty: neither data nor flag.
    a.fakes.processes.script(FakeRun::exits(3, b""));
    let pid = a.ok("guest-exec", json!({"path": "sh"}))["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(status(&mut a, pid), json!({"exited": true, "exitcode": 3}));
    // A signal: no exit code.
    a.fakes.processes.script(FakeRun {
        running_polls: 0,
        result: ExecStatus {
            ended: Some(Termination::Signaled(9)),
            ..Default::default()
        },
    });
    let pid = a.ok("guest-exec", json!({"path": "sh"}))["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(status(&mut a, pid), json!({"exited": true, "signal": 9}));
    // Reaped by someone else: ended, nothing known.
    a.fakes.processes.script(FakeRun {
        running_polls: 0,
        result: ExecStatus {
            ended: Some(Termination::Unknown),
            ..Default::default()
        },
    });
    let pid = a.ok("guest-exec", json!({"path": "sh"}))["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(status(&mut a, pid), json!({"exited": true}));
    for (args, desc) in [
        (json!({"pid": 0}), "Invalid parameter 'pid'"),
        (json!({"pid": 99999999}), "Invalid parameter 'pid'"),
        (json!({}), "Parameter 'pid' is missing"),
        (
            json!({"pid": "x"}),
            "Invalid parameter type for 'pid', expected: integer",
        ),
    ] {
        assert_eq!(a.err("guest-exec-status", args), desc);
    }
}

#[test]
fn exec_is_disabled_while_frozen_and_listed_by_guest_info() {
    let mut a = Fake::new();
    let info = a.ok("guest-info", json!({}));
    let names: Vec<&str> = info["supported_commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    // guest-info lists in reverse registration order.
    let at = |n: &str| names.iter().position(|&x| x == n).unwrap();
    assert_eq!(at("guest-exec") + 1, at("guest-exec-status"));
    assert_eq!(
        at("guest-exec-status") + 1,
        at("guest-get-memory-block-info")
    );
    a.ok("guest-fsfreeze-freeze", json!({}));
    for (cmd, args) in [
        ("guest-exec", json!({"path": "/bin/true"})),
        ("guest-exec-status", json!({"pid": 1})),
    ] {
        let r = a.call(cmd, args);
        assert_eq!(
            r["error"]["desc"],
            format!("Command {cmd} has been disabled: the agent is in frozen state")
        );
    }
    assert_eq!(a.fakes.processes.spawned(), vec![]);
}

// ---------------------------------------------------------------------------
// Differential, against qemu-ga 7.2 on real programs.

/// guest-exec on `agent`, then guest-exec-status until it reports exited, then once
/// more (the entry must be gone): the replies with the pid blanked out.
fn run(agent: &mut Session, arguments: &Value) -> Vec<Value> {
    let mut started = agent.call("guest-exec", arguments.clone());
    let Some(pid) = started["return"]["pid"].as_i64() else {
        return vec![started];
    };
    assert!(pid > 0);
    started["return"]["pid"] = json!("PID");
    let deadline = Instant::now() + Duration::from_secs(10);
    let last = loop {
        let s = agent.call("guest-exec-status", json!({"pid": pid}));
        if s["return"]["exited"] != json!(false) {
            break s;
        }
        assert!(Instant::now() < deadline, "{arguments} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    };
    let again = agent.call("guest-exec-status", json!({"pid": pid}));
    vec![started, last, again]
}

#[test]
fn exec_agrees_with_the_reference() {
    if !reference_available() {
        return;
    }
    let mut ours = Session::ours();
    let mut theirs = Session::start(REFERENCE);
    let cases = [
        json!({"path": "/bin/echo", "arg": ["-n", "\" test_str \""], "capture-output": true}),
        json!({"path": "echo", "arg": ["x"], "capture-output": true}),
        json!({"path": "/bin/echo", "arg": ["not captured"]}),
        json!({"path": "/bin/true", "capture-output": true}),
        json!({"path": "/bin/cat", "input-data": b64(b"hello\nworld"), "capture-output": true}),
        json!({"path": "/bin/cat", "input-data": "", "capture-output": true}),
        json!({"path": "/bin/cat", "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "exit 3"]}),
        json!({"path": "/bin/sh", "arg": ["-c", "echo o; echo e >&2; kill -9 $$"], "capture-output": true}),
        json!({"path": "/bin/sh", "arg": ["-c", "echo e >&2"], "capture-output": true}),
        json!({"path": "/usr/bin/env", "env": ["A=1", "B=2"], "capture-output": true}),
        json!({"path": "env", "env": ["ONLY=1"], "capture-output": true}),
        json!({"path": "/bin/x"}),
        json!({"path": "no-such-program-qga"}),
        json!({"path": "/tmp"}),
        json!({"path": ""}),
        json!({"path": "/bin/cat", "input-data": "!!!"}),
        json!({"path": "/bin/cat", "input-data": "aGVsbG8"}),
        json!({}),
        json!({"path": "/bin/echo", "arg": "x"}),
        json!({"path": "/bin/echo", "arg": [1]}),
        json!({"path": "/bin/echo", "env": [1]}),
        json!({"path": "/bin/echo", "extra": 1}),
    ];
    for case in &cases {
        assert_eq!(
            run(&mut ours, case),
            run(&mut theirs, case),
            "guest-exec {case}"
        );
    }
    for args in [
        json!({"pid": 0}),
        json!({"pid": -1}),
        json!({"pid": 99999999}),
        json!({}),
        json!({"pid": "x"}),
    ] {
        assert_eq!(
            ours.call("guest-exec-status", args.clone()),
            theirs.call("guest-exec-status", args.clone()),
            "guest-exec-status {args}"
        );
    }
    // Where we follow current QEMU instead of 7.2 (README): capture-output takes
    // a mode name, and a bad value is judged as the alternate type it became.
    for (value, theirs_desc, ours_desc) in [
        (
            json!(1),
            "Invalid parameter type for 'capture-output', expected: boolean",
            "Invalid parameter type for 'capture-output', expected: GuestExecCaptureOutput",
        ),
        (
            json!("bogus"),
            "Invalid parameter type for 'capture-output', expected: boolean",
            "Parameter 'capture-output' does not accept value 'bogus'",
        ),
    ] {
        let case = json!({"path": "/bin/true", "capture-output": value});
        assert_eq!(run(&mut theirs, &case)[0]["error"]["desc"], theirs_desc);
        assert_eq!(run(&mut ours, &case)[0]["error"]["desc"], ours_desc);
    }
    let merged = run(
        &mut ours,
        &json!({"path": "/bin/sh", "arg": ["-c", "echo a; echo b >&2; echo c"],
                                   "capture-output": "merged"}),
    );
    assert_eq!(
        merged[1]["return"],
        json!({"exited": true, "exitcode": 0, "out-data": b64(b"a\nb\nc\n"), "out-truncated": false})
    );
}

#[test]
fn the_agent_keeps_serving_while_a_child_runs() {
    let mut ours = Session::ours();
    let r = ours.call(
        "guest-exec",
        json!({"path": "/bin/sleep", "arg": ["1000"], "capture-output": true}),
    );
    let pid = r["return"]["pid"].as_i64().unwrap();
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(
            ours.call("guest-exec-status", json!({"pid": pid})),
            json!({"return": {"exited": false}})
        );
        assert_eq!(ours.call("guest-ping", json!({})), json!({"return": {}}));
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    // SAFETY: signalling the child our agent started for us.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = ours.call("guest-exec-status", json!({"pid": pid}));
        if s["return"]["exited"] == json!(true) {
            assert_eq!(s, json!({"return": {"exited": true, "signal": 9}}));
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
}
