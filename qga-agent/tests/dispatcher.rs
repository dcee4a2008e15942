//! The dispatcher over fake ops: every command, its error paths, frozen mode,
//! blocked commands, and handle persistence across a restart.

use bytes::BytesMut;
use qga_agent::{Dispatcher, DispatcherConfig, StateDir};
use qga_framing::{Frame, FrameError};
use qga_ops::fake::{FakeOps, PowerCall};
use qga_ops::{OpsError, ShutdownMode, SuspendMode};
use serde_json::{json, Value};

struct Agent {
    fakes: FakeOps,
    d: Dispatcher,
}

impl Agent {
    fn new() -> Self {
        Self::with(StateDir::in_memory(), DispatcherConfig::default())
    }

    fn with(state: StateDir, config: DispatcherConfig) -> Self {
        let fakes = FakeOps::new();
        let d = Dispatcher::new(fakes.ops(), state, config).unwrap();
        Agent { fakes, d }
    }

    /// Raw reply bytes for one request.
    fn raw(&mut self, req: &str) -> Vec<u8> {
        let mut out = BytesMut::new();
        self.d.handle_message(req.as_bytes(), &mut out);
        out.to_vec()
    }

    /// The parsed reply, or None when the command sent nothing.
    fn call(&mut self, req: Value) -> Option<Value> {
        let raw = self.raw(&req.to_string());
        if raw.is_empty() {
            return None;
        }
        assert_eq!(raw.last(), Some(&b'\n'));
        assert_eq!(raw.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let start = usize::from(raw[0] == 0xFF);
        Some(serde_json::from_slice(&raw[start..]).unwrap())
    }

    fn ok(&mut self, execute: &str, arguments: Value) -> Value {
        let reply = self
            .call(json!({"execute": execute, "arguments": arguments}))
            .unwrap();
        assert!(reply.get("error").is_none(), "{execute}: {reply}");
        reply["return"].clone()
    }

    fn err(&mut self, execute: &str, arguments: Value) -> (String, String) {
        let reply = self
            .call(json!({"execute": execute, "arguments": arguments}))
            .unwrap();
        let e = &reply["error"];
        assert!(!e.is_null(), "{execute} succeeded: {reply}");
        (
            e["class"].as_str().unwrap().to_owned(),
            e["desc"].as_str().unwrap().to_owned(),
        )
    }
}

fn b64(data: &[u8]) -> String {
    let mut v = Vec::new();
    qga_proto::Base64::encode_into(data, &mut v);
    String::from_utf8(v).unwrap()
}

#[test]
fn sync_ping_and_ids() {
    let mut a = Agent::new();
    assert_eq!(a.raw(r#"{"execute":"guest-ping"}"#), b"{\"return\":{}}\n");
    assert_eq!(
        a.raw(r#"{"execute":"guest-ping","id":[1,{"a":null}]}"#),
        b"{\"return\":{},\"id\":[1,{\"a\":null}]}\n"
    );
    assert_eq!(
        a.raw(r#"{"execute":"guest-sync-delimited","arguments":{"id":7},"id":"q"}"#),
        b"\xff{\"return\":7,\"id\":\"q\"}\n"
    );
    // Invalid arguments: the command never runs, so no sentinel.
    assert_eq!(
        a.raw(r#"{"execute":"guest-sync-delimited","arguments":{"id":"x"}}"#)[0],
        b'{'
    );
    assert_eq!(a.ok("guest-sync", json!({"id": -5})), json!(-5));
}

#[test]
fn envelope_and_lookup_errors_echo_the_id() {
    let mut a = Agent::new();
    let r = a.call(json!({"execute": "nope", "id": 5})).unwrap();
    assert_eq!(
        r,
        json!({"id": 5, "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}})
    );
    let r = a.call(json!({"id": 5})).unwrap();
    assert_eq!(r["error"]["desc"], "QMP input lacks member 'execute'");
    assert_eq!(r["id"], 5);
    let r = a.call(json!([1, 2])).unwrap();
    assert_eq!(r["error"]["desc"], "QMP input must be a JSON object");
    assert!(r.get("id").is_none());
}

#[test]
fn info_lists_every_command_with_enabled_and_success_response() {
    let mut a = Agent::with(
        StateDir::in_memory(),
        DispatcherConfig {
            blocked: ["guest-ping".to_owned()].into(),
            ..Default::default()
        },
    );
    let info = a.ok("guest-info", json!({}));
    let version = info["version"].as_str().unwrap();
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "plain semver: {version}"
    );
    let cmds = info["supported_commands"].as_array().unwrap();
    // Every registered command, in reverse registration order, as qemu-ga.
    let listed: Vec<&str> = cmds.iter().map(|c| c["name"].as_str().unwrap()).collect();
    let mut registered: Vec<&str> = qga_agent::Registry::stock().names().collect();
    registered.reverse();
    assert_eq!(listed, registered);
    assert_eq!(cmds.last().unwrap()["name"], "guest-sync-delimited");
    for c in cmds {
        let name = c["name"].as_str().unwrap();
        // guest-get-devices is Windows-only: registered disabled, as 7.2 on Linux.
        assert_eq!(
            c["enabled"],
            name != "guest-ping" && name != "guest-get-devices",
            "{name}"
        );
        let no_reply = name == "guest-shutdown" || name.starts_with("guest-suspend-");
        assert_eq!(c["success-response"], !no_reply, "{name}");
    }
    assert_eq!(
        a.err("guest-ping", json!({})),
        (
            "CommandNotFound".into(),
            "Command guest-ping has been disabled".into()
        )
    );
}

#[test]
fn allow_list_disables_everything_else() {
    let mut a = Agent::with(
        StateDir::in_memory(),
        DispatcherConfig {
            allowed: Some(["guest-ping".to_owned(), "guest-info".to_owned()].into()),
            ..Default::default()
        },
    );
    a.ok("guest-ping", json!({}));
    assert_eq!(
        a.err("guest-sync", json!({"id": 1})).1,
        "Command guest-sync has been disabled: the command is not allowed"
    );
    // A disabled command never reaches the ops, not even with valid arguments.
    assert_eq!(
        a.err("guest-set-time", json!({"time": 1})).0,
        "CommandNotFound"
    );
    assert!(a.fakes.clock.calls.lock().unwrap().is_empty());
}

#[test]
fn blocking_wins_over_allowing() {
    let mut a = Agent::with(
        StateDir::in_memory(),
        DispatcherConfig {
            allowed: Some(
                ["guest-info", "guest-ping", "guest-exec"]
                    .map(str::to_owned)
                    .into(),
            ),
            blocked: ["guest-exec".to_owned()].into(),
            ..Default::default()
        },
    );
    a.ok("guest-ping", json!({}));
    assert_eq!(
        a.err("guest-exec", json!({"path": "/bin/true"})),
        (
            "CommandNotFound".into(),
            "Command guest-exec has been disabled".into()
        )
    );
    let info = a.ok("guest-info", json!({}));
    let listed = |name: &str| {
        info["supported_commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["enabled"]
            .clone()
    };
    assert_eq!(listed("guest-exec"), false);
    assert_eq!(listed("guest-ping"), true);
    assert_eq!(listed("guest-file-open"), false);
    assert!(a.fakes.processes.spawned().is_empty());
}

#[test]
fn file_session_like_test_qga() {
    let mut a = Agent::new();
    let hello = b"Hello World!\n\0";
    let h = a.ok("guest-file-open", json!({"path": "/foo", "mode": "w+"}));
    assert_eq!(h, 1000);
    assert_eq!(
        a.ok(
            "guest-file-write",
            json!({"handle": 1000, "buf-b64": b64(hello)})
        ),
        json!({"count": 14, "eof": false})
    );
    assert_eq!(
        a.ok("guest-file-read", json!({"handle": 1000})),
        json!({"count": 0, "buf-b64": "", "eof": true})
    );
    assert_eq!(
        a.ok(
            "guest-file-seek",
            json!({"handle": 1000, "offset": 6, "whence": "set"})
        ),
        json!({"position": 6, "eof": false})
    );
    assert_eq!(
        a.ok("guest-file-read", json!({"handle": 1000, "count": 100})),
        json!({"count": 8, "buf-b64": b64(&hello[6..]), "eof": true})
    );
    assert_eq!(
        a.ok(
            "guest-file-seek",
            json!({"handle": 1000, "offset": -2, "whence": 2})
        ),
        json!({"position": 12, "eof": false})
    );
    a.ok("guest-file-flush", json!({"handle": 1000}));
    // count limits.
    assert_eq!(
        a.ok(
            "guest-file-write",
            json!({"handle": 1000, "buf-b64": "aGVsbG8=", "count": 2})
        ),
        json!({"count": 2, "eof": false})
    );
    for bad in [-1i64, 6] {
        assert_eq!(
            a.err(
                "guest-file-write",
                json!({"handle": 1000, "buf-b64": "aGVsbG8=", "count": bad})
            )
            .1,
            format!("value '{bad}' is invalid for argument count")
        );
    }
    assert_eq!(
        a.err(
            "guest-file-read",
            json!({"handle": 1000, "count": 50331649})
        )
        .1,
        "value '50331649' is invalid for argument count"
    );
    a.ok(
        "guest-file-read",
        json!({"handle": 1000, "count": 50331648}),
    );
    assert_eq!(
        a.err(
            "guest-file-seek",
            json!({"handle": 1000, "offset": 0, "whence": 3})
        )
        .1,
        "invalid whence code 3"
    );
    a.ok("guest-file-close", json!({"handle": 1000}));
    assert_eq!(a.fakes.files.contents("/foo").unwrap(), b"Hello World!he");

    // Unknown handles, for every file command; the handle is checked before the
    // payload.
    for (cmd, args) in [
        ("guest-file-read", json!({"handle": 1000})),
        ("guest-file-write", json!({"handle": 1000, "buf-b64": "!!"})),
        (
            "guest-file-seek",
            json!({"handle": 1000, "offset": 0, "whence": 9}),
        ),
        ("guest-file-flush", json!({"handle": 1000})),
        ("guest-file-close", json!({"handle": 1000})),
    ] {
        assert_eq!(
            a.err(cmd, args),
            (
                "GenericError".into(),
                "handle '1000' has not been found".into()
            ),
            "{cmd}"
        );
    }
    // Handles are never reused.
    assert_eq!(a.ok("guest-file-open", json!({"path": "/foo"})), 1001);
    assert_eq!(
        a.err("guest-file-open", json!({"path": "/missing"})).1,
        "failed to open file '/missing' (mode: 'r'): No such file or directory"
    );
    assert_eq!(
        a.err("guest-file-open", json!({"path": "/foo", "mode": "rw"}))
            .1,
        "invalid file open mode 'rw'"
    );
    assert_eq!(
        a.err(
            "guest-file-write",
            json!({"handle": 1001, "buf-b64": "a b"})
        )
        .1,
        "Base64 data contains invalid characters"
    );
    a.fakes.files.fail_io.set(OpsError::failed("disk on fire"));
    assert_eq!(
        a.err("guest-file-flush", json!({"handle": 1001})).1,
        "disk on fire"
    );
}

#[test]
fn handles_persist_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::with(StateDir::new(dir.path()).unwrap(), Default::default());
    a.fakes.files.insert("/f", b"x".to_vec());
    assert_eq!(a.ok("guest-file-open", json!({"path": "/f"})), 1000);
    assert_eq!(a.ok("guest-file-open", json!({"path": "/f"})), 1001);
    // The counter is on disk before the reply.
    assert!(std::fs::read_to_string(dir.path().join("qga.state"))
        .unwrap()
        .contains("fd_counter=1002"));
    let mut b = Agent::with(StateDir::new(dir.path()).unwrap(), Default::default());
    b.fakes.files.insert("/f", b"x".to_vec());
    assert_eq!(
        b.err("guest-file-read", json!({"handle": 1000})).1,
        "handle '1000' has not been found"
    );
    assert_eq!(b.ok("guest-file-open", json!({"path": "/f"})), 1002);
}

#[test]
fn frozen_mode_allows_only_the_allow_list_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Agent::with(StateDir::new(dir.path()).unwrap(), Default::default());
    assert_eq!(a.ok("guest-fsfreeze-status", json!({})), "thawed");
    assert_eq!(a.ok("guest-fsfreeze-freeze", json!({})), 2);
    assert_eq!(a.ok("guest-fsfreeze-status", json!({})), "frozen");
    assert!(dir.path().join("qga.state.isfrozen").exists());
    for (cmd, args) in [
        ("guest-file-open", json!({"path": "/x", "mode": "w"})),
        ("guest-fsfreeze-freeze", json!({})),
        ("guest-fstrim", json!({})),
        ("guest-shutdown", json!({})),
        ("guest-network-get-interfaces", json!({})),
    ] {
        assert_eq!(
            a.err(cmd, args),
            (
                "CommandNotFound".into(),
                format!("Command {cmd} has been disabled: the agent is in frozen state")
            )
        );
    }
    for (cmd, args) in [
        ("guest-ping", json!({})),
        ("guest-sync", json!({"id": 1})),
        ("guest-sync-delimited", json!({"id": 1})),
        ("guest-info", json!({})),
    ] {
        a.ok(cmd, args);
    }
    let info = a.ok("guest-info", json!({}));
    let enabled = |n: &str| {
        info["supported_commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap()["enabled"]
            .clone()
    };
    assert_eq!(enabled("guest-file-open"), false);
    assert_eq!(enabled("guest-fsfreeze-thaw"), true);
    assert!(a.d.is_frozen());

    // A new agent finds the marker and starts frozen; its thaw clears it.
    drop(a);
    let mut b = Agent::with(StateDir::new(dir.path()).unwrap(), Default::default());
    assert_eq!(b.ok("guest-fsfreeze-status", json!({})), "frozen");
    assert_eq!(
        b.err("guest-file-open", json!({"path": "/x"})).0,
        "CommandNotFound"
    );
    b.ok("guest-fsfreeze-thaw", json!({}));
    assert_eq!(b.ok("guest-fsfreeze-status", json!({})), "thawed");
    assert!(!dir.path().join("qga.state.isfrozen").exists());
    b.ok("guest-file-open", json!({"path": "/x", "mode": "w"}));
}

#[test]
fn freeze_list_failures_and_hook_failures() {
    let mut a = Agent::new();
    // Nothing listed matches: nothing frozen, status stays thawed.
    assert_eq!(
        a.ok("guest-fsfreeze-freeze-list", json!({"mountpoints": []})),
        0
    );
    assert_eq!(a.ok("guest-fsfreeze-status", json!({})), "thawed");
    assert_eq!(
        a.ok(
            "guest-fsfreeze-freeze-list",
            json!({"mountpoints": ["/data", "/nope"]})
        ),
        1
    );
    assert_eq!(a.fakes.freeze.frozen(), ["/data"]);
    assert_eq!(a.ok("guest-fsfreeze-thaw", json!({})), 1);
    // A failed freeze leaves the agent thawed.
    a.fakes.freeze.fail_next.set(OpsError::failed(
        "failed to freeze /data: Device or resource busy",
    ));
    assert_eq!(
        a.err("guest-fsfreeze-freeze", json!({})).1,
        "failed to freeze /data: Device or resource busy"
    );
    assert_eq!(a.ok("guest-fsfreeze-status", json!({})), "thawed");
    // A thaw whose hook fails still leaves frozen mode.
    a.ok("guest-fsfreeze-freeze", json!({}));
    a.fakes.freeze.fail_next.set(OpsError::Hook(
        "fsfreeze hook has failed with status 3".into(),
    ));
    assert_eq!(
        a.err("guest-fsfreeze-thaw", json!({})).1,
        "fsfreeze hook has failed with status 3"
    );
    assert_eq!(a.ok("guest-fsfreeze-status", json!({})), "thawed");
}

#[test]
fn auto_thaw_deadline_only_when_configured_and_frozen() {
    let mut a = Agent::with(
        StateDir::in_memory(),
        DispatcherConfig {
            auto_thaw: Some(std::time::Duration::from_secs(30)),
            ..Default::default()
        },
    );
    assert!(a.d.auto_thaw_deadline().is_none());
    a.ok("guest-fsfreeze-freeze", json!({}));
    assert!(a.d.auto_thaw_deadline().is_some());
    assert_eq!(a.d.auto_thaw().unwrap(), 2);
    assert!(!a.d.is_frozen());
    assert!(a.fakes.freeze.frozen().is_empty());
    let mut b = Agent::new();
    b.ok("guest-fsfreeze-freeze", json!({}));
    assert!(b.d.auto_thaw_deadline().is_none());
}

#[test]
fn a_failed_auto_thaw_is_retried_later_not_at_once() {
    // With the deadline still in the past after a failure, the channel loop would
    // poll with a zero timeout and retry the thaw in a busy loop.
    let mut a = Agent::with(
        StateDir::in_memory(),
        DispatcherConfig {
            auto_thaw: Some(std::time::Duration::ZERO),
            ..Default::default()
        },
    );
    a.ok("guest-fsfreeze-freeze", json!({}));
    let now = std::time::Instant::now();
    assert!(a.d.auto_thaw_deadline().unwrap() <= now);
    a.fakes
        .freeze
        .fail_next
        .set(OpsError::failed("FITHAW: EIO"));
    assert!(a.d.auto_thaw().is_err());
    assert!(a.d.is_frozen());
    let retry = a.d.auto_thaw_deadline().unwrap();
    assert!(
        retry >= now + std::time::Duration::from_millis(900),
        "retried {:?} after the failure",
        retry.saturating_duration_since(now)
    );
    assert_eq!(a.d.auto_thaw().unwrap(), 0);
    assert!(a.d.auto_thaw_deadline().is_none());
    // A new freeze starts a new timer, not the old retry.
    a.ok("guest-fsfreeze-freeze", json!({}));
    assert!(a.d.auto_thaw_deadline().unwrap() <= std::time::Instant::now());
}

#[test]
fn power_commands_reply_only_on_error() {
    let mut a = Agent::new();
    assert_eq!(a.call(json!({"execute": "guest-shutdown"})), None);
    assert_eq!(
        a.call(json!({"execute": "guest-shutdown", "arguments": {"mode": "reboot"}})),
        None
    );
    assert_eq!(a.call(json!({"execute": "guest-suspend-ram"})), None);
    assert_eq!(a.call(json!({"execute": "guest-suspend-disk"})), None);
    assert_eq!(a.call(json!({"execute": "guest-suspend-hybrid"})), None);
    assert_eq!(
        a.fakes.power.calls(),
        [
            PowerCall::Shutdown(ShutdownMode::Powerdown),
            PowerCall::Shutdown(ShutdownMode::Reboot),
            PowerCall::Suspend(SuspendMode::Ram),
            PowerCall::Suspend(SuspendMode::Disk),
            PowerCall::Suspend(SuspendMode::Hybrid),
        ]
    );
    assert_eq!(
        a.err("guest-shutdown", json!({"mode": "bogus"})).1,
        "mode is invalid (valid values are: halt|powerdown|reboot"
    );
    a.fakes.power.fail_next.set(OpsError::failed(
        "the requested suspend mode is not supported by the guest",
    ));
    assert_eq!(
        a.err("guest-suspend-ram", json!({})).1,
        "the requested suspend mode is not supported by the guest"
    );
}

#[test]
fn fstrim_and_network() {
    let mut a = Agent::new();
    assert_eq!(
        a.ok("guest-fstrim", json!({"minimum": 4096})),
        json!({"paths": [
            {"path": "/data", "trimmed": 2097152, "minimum": 4096},
            {"path": "/", "trimmed": 1048576, "minimum": 4096}
        ]})
    );
    let ifs = a.ok("guest-network-get-interfaces", json!({}));
    assert_eq!(ifs[0]["name"], "lo");
    assert_eq!(ifs[0]["hardware-address"], "00:00:00:00:00:00");
    assert_eq!(
        ifs[0]["ip-addresses"],
        json!([
            {"ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8},
            {"ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128}
        ])
    );
    assert!(ifs[0]["statistics"]["rx-bytes"].is_u64());
    a.fakes
        .network
        .fail_next
        .set(OpsError::failed("getifaddrs failed: boom"));
    assert_eq!(
        a.err("guest-network-get-interfaces", json!({})).1,
        "getifaddrs failed: boom"
    );
}

#[test]
fn frames_resync_silently_and_limits_get_the_reference_text() {
    let mut a = Agent::new();
    let mut out = BytesMut::new();
    a.d.handle_frame(Frame::Resync, &mut out);
    assert!(out.is_empty(), "a 0xFF gets no reply");
    a.d.handle_frame(
        Frame::Oversized(FrameError::TooDeep { limit: 1024 }),
        &mut out,
    );
    assert_eq!(
        &out[..],
        b"{\"error\":{\"class\":\"GenericError\",\"desc\":\"JSON nesting depth limit exceeded\"}}\n"
    );
}

#[test]
fn thousands_of_handles_stay_addressable() {
    let mut a = Agent::new();
    a.fakes.files.insert("/f", b"abc".to_vec());
    for i in 0..3000 {
        assert_eq!(a.ok("guest-file-open", json!({"path": "/f"})), 1000 + i);
    }
    assert_eq!(a.d.open_handles(), 3000);
    for i in 0..3000 {
        a.ok("guest-file-close", json!({"handle": 1000 + i}));
    }
    assert_eq!(a.d.open_handles(), 0);
}

/// Each read-side command maps the ops' values to the wire's members (names,
/// optional members left out, unions tagged), and an ops failure becomes a
/// GenericError with the ops' text.
#[test]
fn read_side_commands_map_the_ops_values() {
    let mut a = Agent::new();
    assert_eq!(
        a.ok("guest-get-time", json!({})),
        1_700_000_000_123_456_000i64
    );
    assert_eq!(
        a.ok("guest-get-host-name", json!({})),
        json!({"host-name": "fake-guest"})
    );
    assert_eq!(
        a.ok("guest-get-timezone", json!({})),
        json!({"zone": "UTC", "offset": 0})
    );
    let os = a.ok("guest-get-osinfo", json!({}));
    assert_eq!(os["pretty-name"], "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(os["kernel-release"], "6.1.0-18-amd64");
    assert!(
        os.get("variant").is_none(),
        "absent members are left out: {os}"
    );
    assert_eq!(
        a.ok("guest-get-users", json!({})),
        json!([{"user": "root", "login-time": 1_700_000_000.5}])
    );
    assert_eq!(
        a.ok("guest-get-load", json!({})),
        json!({"load1m": 0.5, "load5m": 0.25, "load15m": 0.125})
    );
    let cpus = a.ok("guest-get-cpustats", json!({}));
    assert_eq!(cpus.as_array().unwrap().len(), 2);
    assert_eq!(cpus[1]["type"], "linux");
    assert_eq!(
        (cpus[1]["cpu"].as_i64(), cpus[1]["softirq"].as_u64()),
        (Some(1), Some(20))
    );
    let disks = a.ok("guest-get-diskstats", json!({}));
    assert_eq!(disks[0]["name"], "vda");
    assert_eq!(disks[0]["stats"]["weight-ticks"], 100);
    assert_eq!(disks[0]["stats"].as_object().unwrap().len(), 17);

    let vcpus = a.ok("guest-get-vcpus", json!({}));
    assert_eq!(
        vcpus,
        json!([
            {"logical-id": 0, "online": true, "can-offline": false},
            {"logical-id": 1, "online": true, "can-offline": true}
        ])
    );
    assert_eq!(
        a.ok("guest-get-memory-block-info", json!({})),
        json!({"size": 128u64 << 20})
    );
    assert_eq!(
        a.ok("guest-get-memory-blocks", json!({}))[1]["phys-index"],
        1
    );

    let fs = a.ok("guest-get-fsinfo", json!({}));
    assert_eq!(fs[0]["mountpoint"], "/");
    assert_eq!(fs[0]["disk"][0]["bus-type"], "virtio");
    assert_eq!(
        fs[0]["disk"][0]["pci-controller"],
        json!({"domain": 0, "bus": 0, "slot": 2, "function": 0})
    );
    assert!(fs[0]["disk"][0].get("serial").is_none());
    let disks = a.ok("guest-get-disks", json!({}));
    assert_eq!(disks[0]["name"], "/dev/vda");
    assert_eq!(disks[0]["dependencies"], json!([]));

    a.fakes
        .sysinfo
        .fail_next
        .set(OpsError::failed("cannot get hostname: boom"));
    assert_eq!(
        a.err("guest-get-host-name", json!({})),
        ("GenericError".into(), "cannot get hostname: boom".into())
    );
    assert_eq!(
        a.err("guest-get-devices", json!({})),
        (
            "CommandNotFound".into(),
            "Command guest-get-devices has been disabled".into()
        )
    );
}

#[test]
fn set_vcpus_and_memory_blocks_change_the_fake_and_report_as_7_2() {
    let mut a = Agent::new();
    let n = a.ok(
        "guest-set-vcpus",
        json!({"vcpus": [{"logical-id": 1, "online": false}]}),
    );
    assert_eq!(n, 1);
    assert_eq!(a.ok("guest-get-vcpus", json!({}))[1]["online"], false);
    let r = a.ok(
        "guest-set-memory-blocks",
        json!({"mem-blks": [{"phys-index": 1, "online": false}, {"phys-index": 77, "online": true}]}),
    );
    assert_eq!(r[0], json!({"phys-index": 1, "response": "success"}));
    assert_eq!(r[1]["response"], "not-found");
    assert_eq!(
        a.ok("guest-get-memory-blocks", json!({}))[1]["online"],
        false
    );
}

/// A nested argument error names its path, and the frozen mode disables the new
/// commands like the old ones.
#[test]
fn new_commands_follow_the_shared_rules() {
    let mut a = Agent::new();
    assert_eq!(
        a.err("guest-set-vcpus", json!({"vcpus": [{"online": true}]}))
            .1,
        "Parameter 'vcpus[0].logical-id' is missing"
    );
    a.ok("guest-fsfreeze-freeze", json!({}));
    for cmd in [
        "guest-get-osinfo",
        "guest-get-fsinfo",
        "guest-network-get-route",
    ] {
        assert_eq!(
            a.err(cmd, json!({})),
            (
                "CommandNotFound".into(),
                format!("Command {cmd} has been disabled: the agent is in frozen state")
            )
        );
    }
    a.ok("guest-fsfreeze-thaw", json!({}));
    a.ok("guest-get-osinfo", json!({}));
}

#[test]
fn set_time_passes_the_time_or_none_to_the_clock() {
    let mut a = Agent::new();
    assert_eq!(
        a.ok(
            "guest-set-time",
            json!({"time": 1_700_000_000_000_000_000i64})
        ),
        json!({})
    );
    assert_eq!(a.ok("guest-set-time", json!({})), json!({}));
    assert_eq!(
        *a.fakes.clock.calls.lock().unwrap(),
        [Some(1_700_000_000_000_000_000), None]
    );
    a.fakes
        .clock
        .fail_next
        .set(OpsError::failed("Invalid time"));
    assert_eq!(
        a.err("guest-set-time", json!({"time": 1})).1,
        "Invalid time"
    );
}

#[test]
fn the_file_data_buffer_is_freed_on_release_and_comes_back() {
    let mut a = Agent::new();
    let h = a.ok("guest-file-open", json!({"path": "/big", "mode": "w+"}));
    // A 1 MiB payload is decoded whole into the kept buffer.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    let w = a.ok(
        "guest-file-write",
        json!({"handle": h, "buf-b64": b64(&data)}),
    );
    assert_eq!(w["count"], 1 << 20);
    assert!(a.d.buffered_bytes() >= 1 << 20, "{}", a.d.buffered_bytes());
    a.d.release_buffers();
    assert_eq!(a.d.buffered_bytes(), 0);
    // Transfers go on as before: the buffer is allocated again.
    let w = a.ok(
        "guest-file-write",
        json!({"handle": h, "buf-b64": b64(&data[..5000])}),
    );
    assert_eq!(w["count"], 5000);
    a.ok(
        "guest-file-seek",
        json!({"handle": h, "offset": 0, "whence": "set"}),
    );
    let r = a.ok("guest-file-read", json!({"handle": h, "count": 3 << 20}));
    assert_eq!(r["count"], (1 << 20) + 5000);
    let mut expected = data.clone();
    expected.extend_from_slice(&data[..5000]);
    assert_eq!(r["buf-b64"], b64(&expected));
}
