//! Differential tests: the same request scripts sent to the reference agent
//! (`/usr/sbin/qemu-ga`, Debian's qemu-guest-agent) and to ours, both on unix
//! sockets in temp dirs, and the parsed replies compared. Normalised only where the
//! difference is legitimate or a documented deviation (README "Where we do better"):
//! the version string, commands beyond ours in guest-info, interface counters, and
//! 7.2's error reply to the client's own 0xFF byte.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{reference_available, REFERENCE};
use serde::Deserialize;
use serde_json::Value;

/// An agent process on a unix socket in its own temp dir (also its cwd); killed by
/// pid when dropped.
struct Agent {
    child: Child,
    sock: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(program: &str, extra: &[&str], prepare: impl FnOnce(&Path)) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let sock = dir.path().join("sock");
        let child = Command::new(program)
            .args(["-m", "unix-listen", "-p"])
            .arg(&sock)
            .arg("-t")
            .arg(dir.path())
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The probe connection above was accepted and closed; that is harmless.
        Agent { child, sock, dir }
    }

    fn ours(extra: &[&str], prepare: impl FnOnce(&Path)) -> Agent {
        Agent::start(env!("CARGO_BIN_EXE_qga-agent"), extra, prepare)
    }

    fn reference(extra: &[&str], prepare: impl FnOnce(&Path)) -> Agent {
        Agent::start(REFERENCE, extra, prepare)
    }

    /// Sends `chunks` (one write each) on a fresh connection and collects reply
    /// lines until `expect` replies arrived or the agent stays quiet for a while.
    fn exchange(&self, chunks: &[&[u8]], expect: usize) -> Vec<(bool, Value)> {
        let mut s = UnixStream::connect(&self.sock).unwrap();
        for c in chunks {
            s.write_all(c).unwrap();
        }
        read_replies(&mut s, expect)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_replies(s: &mut UnixStream, expect: usize) -> Vec<(bool, Value)> {
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut data = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 65536];
    loop {
        let lines = data.iter().filter(|&&b| b == b'\n').count();
        if lines >= expect || Instant::now() > deadline {
            break;
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(_) if lines >= expect => break,
            Err(_) => {}
        }
    }
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let delimited = l[0] == 0xFF;
            let mut de = serde_json::Deserializer::from_slice(&l[usize::from(delimited)..]);
            de.disable_recursion_limit();
            let v = Value::deserialize(&mut de)
                .unwrap_or_else(|e| panic!("bad reply {:?}: {e}", String::from_utf8_lossy(l)));
            (delimited, v)
        })
        .collect()
}

/// Normalises what legitimately differs between the two agents.
fn normalise(replies: Vec<(bool, Value)>, ours: &[&str]) -> Vec<(bool, Value)> {
    replies
        .into_iter()
        .filter(|(_, v)| {
            // 7.2 answers the client's own 0xFF with a parse error (showing the
            // partial token it discarded); we flush silently.
            let desc = v["error"]["desc"].as_str().unwrap_or("");
            !(desc.starts_with("JSON parse error, stray '") && desc.ends_with("\u{FFFD}'"))
        })
        .map(|(d, mut v)| {
            if let Some(ret) = v.get_mut("return") {
                if let Some(info) = ret.get_mut("supported_commands") {
                    let list = info.as_array_mut().unwrap();
                    // Both sides list only what both have: 7.2's commands that we
                    // serve (the reference's list), not the newer ones we add.
                    list.retain(|c| {
                        let name = c["name"].as_str().unwrap();
                        ours.contains(&name) && !NEWER_THAN_72.contains(&name)
                    });
                    ret["version"] = Value::from("normalised");
                }
                if let Some(list) = ret.as_array_mut() {
                    for i in list {
                        if let Some(stats) = i.get_mut("statistics") {
                            for (_, n) in stats.as_object_mut().unwrap() {
                                *n = Value::from(0);
                            }
                        }
                    }
                }
            }
            (d, v)
        })
        .collect()
}

/// Commands current QEMU added after 7.2, which we serve too.
const NEWER_THAN_72: [&str; 2] = ["guest-get-load", "guest-network-get-route"];

fn our_commands() -> Vec<&'static str> {
    qga_agent::Registry::stock().names().collect()
}

/// Runs `script` against both agents (fresh ones, started with `extra` and
/// `prepare`) and asserts identical normalised replies; returns ours.
fn compare(
    extra: &[&str],
    prepare: impl Fn(&Path),
    script: &[&[u8]],
    expect: usize,
) -> Vec<(bool, Value)> {
    let reference = Agent::reference(extra, &prepare);
    let ours = Agent::ours(extra, &prepare);
    let names = our_commands();
    let theirs = normalise(reference.exchange(script, expect), &names);
    let mine = normalise(ours.exchange(script, expect), &names);
    assert_eq!(
        mine.len(),
        theirs.len(),
        "reply count\nours:   {mine:?}\nqemu-ga: {theirs:?}"
    );
    for (i, (m, t)) in mine.iter().zip(&theirs).enumerate() {
        assert_eq!(
            m,
            t,
            "reply {i} to script {:?}",
            String::from_utf8_lossy(&script.concat())
        );
    }
    mine
}

const GOLDEN: &[&str] = &[
    r#"{"execute":"guest-ping"}"#,
    r#"{"execute":"guest-ping","id":"abc"}"#,
    r#"{"execute":"guest-ping","id":[1,{"a":null}]}"#,
    r#"{"execute":"guest-sync","arguments":{"id":5},"id":"q"}"#,
    r#"{"execute":"guest-sync-delimited","arguments":{"id":7},"id":"q"}"#,
    r#"[1,2]"#,
    r#"{}"#,
    r#"{"id":5}"#,
    r#"{"execute":1}"#,
    r#"{"execute":"guest-ping","arguments":[]}"#,
    r#"{"execute":"guest-ping","foo":1}"#,
    r#"{"exec-oob":"guest-ping"}"#,
    r#"{"execute":"nope","id":5}"#,
    r#"{"execute":"guest-ping","arguments":{"a":1}}"#,
    r#"{"execute":"guest-sync"}"#,
    r#"{"execute":"guest-sync","arguments":{"id":"x"}}"#,
    r#"{"execute":"guest-ping","id":1,"id":2}"#,
    r#"{"execute":"guest-ping","id":0.1}"#,
    r#"{"execute":"guest-ping","id":"é😀"}"#,
    r#"{"execute":"guest-file-read","arguments":{"handle":999}}"#,
    r#"{"execute":"guest-shutdown","arguments":{"mode":"bogus"}}"#,
    r#"{"execute":"guest-info"}"#,
    r#"{"execute":"guest-fsfreeze-status"}"#,
    r#"{"execute":"guest-network-get-interfaces"}"#,
    r#"{"execute":"guest-suspend-hybrid","arguments":{"x":1}}"#,
    r#"{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[1]}}"#,
    "{\"execute\":\"guest-ping\"} junk {\"execute\":\"guest-ping\",\"id\":3}",
    r#"{"execute":"guest-ping","id":1.0}"#,
    r#"{"execute":"guest-ping","id":1e2}"#,
    r#"{"execute":"guest-ping","id":-0.0}"#,
    r#"{"execute":"guest-ping","id":1e20}"#,
    r#"{"execute":"guest-ping","id":1.5}"#,
    r#"{"execute":"guest-ping","id":12345678901234567890123}"#,
    r#"{"execute":"guest-ping","id":1e-7}"#,
    r#"{"execute":"guest-ping","id":[-0,-0.0,1.0,{"a":2e0}]}"#,
    r#"{"execute":"guest-ping","id":0.48407401419446915}"#,
];

#[test]
fn golden_transcript_one_connection_per_request() {
    if !reference_available() {
        return;
    }
    let reference = Agent::reference(&[], |_| {});
    let ours = Agent::ours(&[], |_| {});
    let names = our_commands();
    for req in GOLDEN {
        let expect = if req.contains("junk") { 3 } else { 1 };
        let theirs = normalise(reference.exchange(&[req.as_bytes()], expect), &names);
        let mine = normalise(ours.exchange(&[req.as_bytes()], expect), &names);
        assert_eq!(mine, theirs, "request {req}");
    }
}

#[test]
fn golden_transcript_pipelined_and_byte_by_byte() {
    if !reference_available() {
        return;
    }
    let all: Vec<u8> = GOLDEN.iter().flat_map(|r| r.bytes()).collect();
    let expect = GOLDEN.len() + 2;
    let replies = compare(&[], |_| {}, &[&all], expect);
    assert_eq!(replies.len(), expect);
    let bytes: Vec<&[u8]> = all.chunks(1).collect();
    compare(&[], |_| {}, &bytes, expect);
}

#[test]
fn file_session_on_temp_files() {
    if !reference_available() {
        return;
    }
    let hello = "SGVsbG8gV29ybGQhCgA="; // "Hello World!\n\0"
    let script = format!(
        concat!(
            r#"{{"execute":"guest-file-open","arguments":{{"path":"foo","mode":"w+"}}}}"#,
            r#"{{"execute":"guest-file-write","arguments":{{"handle":1000,"buf-b64":"{h}"}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":0,"whence":"set"}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000,"count":0}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":6,"whence":0}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000,"count":3}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":-2,"whence":"end"}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":0,"whence":5}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":0,"whence":"bogus"}}}}"#,
            r#"{{"execute":"guest-file-seek","arguments":{{"handle":1000,"offset":-100,"whence":"set"}}}}"#,
            r#"{{"execute":"guest-file-write","arguments":{{"handle":1000,"buf-b64":"aGVsbG8","count":2}}}}"#,
            r#"{{"execute":"guest-file-write","arguments":{{"handle":1000,"buf-b64":"aGVsbG8=","count":9}}}}"#,
            r#"{{"execute":"guest-file-write","arguments":{{"handle":1000,"buf-b64":"a-b"}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000,"count":-1}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1000,"count":50331649}}}}"#,
            r#"{{"execute":"guest-file-flush","arguments":{{"handle":1000}}}}"#,
            r#"{{"execute":"guest-file-close","arguments":{{"handle":1000}}}}"#,
            r#"{{"execute":"guest-file-close","arguments":{{"handle":1000}}}}"#,
            r#"{{"execute":"guest-file-open","arguments":{{"path":"foo","mode":"r"}}}}"#,
            r#"{{"execute":"guest-file-write","arguments":{{"handle":1001,"buf-b64":"aGVsbG8="}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1001,"count":100}}}}"#,
            r#"{{"execute":"guest-file-open","arguments":{{"path":"missing","mode":"r"}}}}"#,
            r#"{{"execute":"guest-file-open","arguments":{{"path":"foo","mode":"rw"}}}}"#,
            r#"{{"execute":"guest-file-open","arguments":{{"path":".","mode":"r"}}}}"#,
            r#"{{"execute":"guest-file-read","arguments":{{"handle":1002}}}}"#,
        ),
        h = hello
    );
    let replies = compare(&[], |_| {}, &[script.as_bytes()], 27);
    assert_eq!(replies[0].1["return"], 1000);
    assert_eq!(replies[4].1["return"]["buf-b64"], hello);
}

/// A write after a read hit the end of the file reports `eof: false`: qemu-ga clears
/// its stdio EOF flag after every call. (Reading data appended after the end differs
/// on purpose: see qga-ops's README.)
#[test]
fn a_write_after_reading_to_the_end_is_not_at_eof() {
    if !reference_available() {
        return;
    }
    let script = concat!(
        r#"{"execute":"guest-file-open","arguments":{"path":"foo","mode":"w+"}}"#,
        r#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"aGVsbG8="}}"#,
        r#"{"execute":"guest-file-seek","arguments":{"handle":1000,"offset":0,"whence":"set"}}"#,
        r#"{"execute":"guest-file-read","arguments":{"handle":1000,"count":100}}"#,
        r#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"IQ=="}}"#,
        r#"{"execute":"guest-file-seek","arguments":{"handle":1000,"offset":0,"whence":"set"}}"#,
        r#"{"execute":"guest-file-read","arguments":{"handle":1000,"count":3}}"#,
        r#"{"execute":"guest-file-read","arguments":{"handle":1000,"count":100}}"#,
        r#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"IQ=="}}"#,
    );
    let replies = compare(&[], |_| {}, &[script.as_bytes()], 9);
    let eof: Vec<&Value> = replies.iter().map(|(_, r)| &r["return"]["eof"]).collect();
    assert_eq!(eof[3..], [true, false, false, false, true, false]);
}

/// JSON that serde_json accepts or words differently from qemu-ga: duplicate keys
/// at any depth, escapes that are no valid character, deep nesting, keywords.
#[test]
fn strict_json_errors_match() {
    if !reference_available() {
        return;
    }
    let deep = format!(
        r#"{{"execute":"guest-ping","id":{}{}}}"#,
        "[".repeat(1000),
        "]".repeat(1000)
    );
    let script: Vec<&[u8]> = vec![
        br#"{"execute":"guest-ping","id":{"a":1,"a":2}}"#,
        br#"{"execute":"guest-ping","arguments":{"x":{"a":1,"\u0061":2}}}"#,
        br#"{"execute":"guest-ping","id":"\uFFFF"}"#,
        br#"{"execute":"guest-ping","id":"\uFDD0"}"#,
        br#"{"execute":"guest-ping","id":"\uD800"}"#,
        br#"{"execute":"guest-ping","id":"\uD800\u0041"}"#,
        br#"{"execute":"guest-ping","id":"\uDBFF\uDFFF"}"#,
        br#"{"execute":"guest-ping","id":"\u12"}"#,
        br#"{"execute":"guest-ping","id":"\u12G4"}"#,
        br#"{"execute":"guest-ping","id":"\ud83d\ude00"}"#,
        br#"{"execute":"guest-ping","id":nul}"#,
        br#"{"execute":"guest-ping","id":{"a":1,"a":"\uFFFF"}}"#,
        br#"{"execute":"guest-ping","id":junk}"#,
        br#"{"execute":"guest-ping","id":[truex]}"#,
        br#"{"execute":"guest-ping",junk:1}"#,
        br#"{"execute":"guest-ping","id":[true x]}"#,
        br#"{"execute":"guest-ping","id":5.}"#,
        br#"{"execute":"guest-ping","id":1E+}"#,
        br#"{"execute":"guest-ping","id":-}"#,
        br#"{"execute":"guest-ping","id":1,"id":2,"x":1e}"#,
        deep.as_bytes(),
    ];
    let n = script.len();
    let replies = compare(&[], |_| {}, &script, n);
    assert_eq!(
        replies[0].1["error"]["desc"],
        "JSON parse error, duplicate key"
    );
    assert!(
        replies[n - 1].1.get("return").is_some(),
        "{:?}",
        replies[n - 1]
    );
}

#[test]
fn blocked_commands() {
    if !reference_available() {
        return;
    }
    let script = concat!(
        r#"{"execute":"guest-ping"}"#,
        r#"{"execute":"guest-file-open","arguments":{"path":"foo","mode":"w"}}"#,
        r#"{"execute":"guest-sync","arguments":{"id":3}}"#,
        r#"{"execute":"guest-info"}"#,
    );
    let replies = compare(
        &["-b", "guest-ping,guest-file-open", "-b", "guest-fstrim"],
        |_| {},
        &[script.as_bytes()],
        4,
    );
    assert_eq!(replies[0].1["error"]["class"], "CommandNotFound");
}

#[test]
fn starting_frozen_then_thawing() {
    if !reference_available() {
        return;
    }
    // Both agents find a frozen marker. Nothing on this machine is frozen: thaw
    // only issues FITHAW, which fails harmlessly on filesystems that are not frozen.
    let script = concat!(
        r#"{"execute":"guest-fsfreeze-status"}"#,
        r#"{"execute":"guest-file-open","arguments":{"path":"foo","mode":"w"}}"#,
        r#"{"execute":"guest-fsfreeze-freeze"}"#,
        r#"{"execute":"guest-ping"}"#,
        r#"{"execute":"guest-sync-delimited","arguments":{"id":9}}"#,
        r#"{"execute":"guest-fsfreeze-thaw"}"#,
        r#"{"execute":"guest-fsfreeze-status"}"#,
    );
    let replies = compare(
        &[],
        |dir| std::fs::write(dir.join("qga.state.isfrozen"), b"").unwrap(),
        &[script.as_bytes()],
        7,
    );
    assert_eq!(replies[0].1["return"], "frozen");
    assert!(replies[4].0, "sync-delimited reply is delimited");
    assert_eq!(replies[6].1["return"], "thawed");
}

#[test]
fn sentinel_flushes_partial_input() {
    if !reference_available() {
        return;
    }
    // A half request, then the flush byte, then a request: both answer only the
    // request. 7.2 also answers the 0xFF with an error line, normalised away; it is
    // waited for, or its line alone could end the read before the real reply.
    let script: &[&[u8]] = &[
        br#"{"execute":"guest-pi"#,
        b"\xff",
        br#"{"execute":"guest-sync-delimited","arguments":{"id":1234}}"#,
    ];
    let names = our_commands();
    let theirs = normalise(Agent::reference(&[], |_| {}).exchange(script, 2), &names);
    let mine = normalise(Agent::ours(&[], |_| {}).exchange(script, 1), &names);
    let want = vec![(true, serde_json::json!({"return": 1234}))];
    assert_eq!(theirs, want);
    assert_eq!(mine, want);
}

#[test]
fn ours_gives_each_connection_a_clean_parser_and_survives_unread_replies() {
    // Documented deviations from 7.2, so only our agent is checked.
    let ours = Agent::ours(&[], |_| {});
    {
        let mut s = UnixStream::connect(&ours.sock).unwrap();
        // A half request, then hang up.
        s.write_all(br#"{"execute":"guest-sync","arguments":{"id":"#)
            .unwrap();
    }
    {
        // Many requests whose replies are never read, then hang up.
        let mut s = UnixStream::connect(&ours.sock).unwrap();
        let many = r#"{"execute":"guest-info"}"#.repeat(2000);
        s.write_all(many.as_bytes()).unwrap();
    }
    let replies = ours.exchange(&[br#"{"execute":"guest-ping","id":1}"#], 1);
    assert_eq!(
        replies,
        vec![(false, serde_json::json!({"return": {}, "id": 1}))]
    );
    let _ = &ours.dir;
}

// ---------------------------------------------------------------------------
// The modern read-side commands: both agents read the same machine at nearly the
// same moment, so their replies must agree member for member: values exactly,
// except clocks and counters, which must agree within a bound.

/// Compares two replies member by member: the same members at every depth, the
/// same JSON types, equal values except where `slack` gives a tolerance for the
/// member's path (its last key), for numbers that move between two reads.
fn assert_agree(ours: &Value, theirs: &Value, path: &str, slack: &dyn Fn(&str) -> Option<f64>) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            let mut ka: Vec<&String> = a.keys().collect();
            let mut kb: Vec<&String> = b.keys().collect();
            ka.sort();
            kb.sort();
            assert_eq!(ka, kb, "members of {path}");
            for k in ka {
                assert_agree(&a[k], &b[k], &format!("{path}.{k}"), slack);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(
                a.len(),
                b.len(),
                "length of {path}: ours {a:?}\nqemu-ga {b:?}"
            );
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_agree(x, y, &format!("{path}[{i}]"), slack);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            let key = path.rsplit('.').next().unwrap_or(path);
            match slack(key) {
                Some(tol) => {
                    let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
                    assert!(
                        (x - y).abs() <= tol,
                        "{path}: ours {x}, qemu-ga {y}, bound {tol}"
                    );
                }
                None => assert_eq!(a, b, "{path}"),
            }
            assert_eq!(a.is_f64(), b.is_f64(), "number type of {path}");
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

/// Sends each request on its own connection to both agents and returns the pairs.
fn both(requests: &[&str]) -> Vec<(Value, Value)> {
    let reference = Agent::reference(&[], |_| {});
    let ours = Agent::ours(&[], |_| {});
    requests
        .iter()
        .map(|req| {
            let t = reference.exchange(&[req.as_bytes()], 1);
            let m = ours.exchange(&[req.as_bytes()], 1);
            assert_eq!(
                (m.len(), t.len()),
                (1, 1),
                "{req}: ours {m:?}, qemu-ga {t:?}"
            );
            (m[0].1.clone(), t[0].1.clone())
        })
        .collect()
}

#[test]
fn modern_read_commands_agree_with_the_reference() {
    if !reference_available() {
        return;
    }
    let exact = |_: &str| None;
    for (cmd, slack) in [
        (
            "guest-get-host-name",
            &exact as &dyn Fn(&str) -> Option<f64>,
        ),
        ("guest-get-timezone", &exact),
        ("guest-get-osinfo", &exact),
        ("guest-get-users", &exact),
        ("guest-get-vcpus", &exact),
        ("guest-get-memory-blocks", &exact),
        ("guest-get-memory-block-info", &exact),
        ("guest-get-disks", &exact),
        // Bytes used move with other processes' writes between the two reads.
        ("guest-get-fsinfo", &|k: &str| {
            (k == "used-bytes").then_some(64e6)
        }),
        // Counters move between the two reads: CPU times by a few seconds' worth
        // of ms, disk counters by what the machine does meanwhile.
        ("guest-get-cpustats", &|k: &str| {
            (k != "cpu").then_some(5_000.0)
        }),
        ("guest-get-diskstats", &|k: &str| {
            (!matches!(k, "major" | "minor")).then_some(100_000.0)
        }),
    ] {
        let req = format!(r#"{{"execute":"{cmd}","id":"{cmd}"}}"#);
        let (mut m, t) = both(&[&req]).remove(0);
        if cmd == "guest-get-fsinfo" {
            // Current QEMU's member (9.1), which 7.2 lacks: the whole size, root's
            // reserve included.
            for fs in m["return"].as_array_mut().unwrap() {
                let all = fs.as_object_mut().unwrap().remove("total-bytes-privileged");
                let all = all
                    .and_then(|v| v.as_u64())
                    .expect("total-bytes-privileged");
                assert!(all >= fs["total-bytes"].as_u64().unwrap(), "{fs}");
            }
        }
        assert!(t.get("return").is_some(), "qemu-ga failed {cmd}: {t}");
        assert_agree(&m, &t, cmd, slack);
    }
    // The clock: both in ns, microsecond resolution, read within seconds.
    let (m, t) = both(&[r#"{"execute":"guest-get-time"}"#]).remove(0);
    let (m, t) = (m["return"].as_i64().unwrap(), t["return"].as_i64().unwrap());
    assert_eq!(m % 1000, 0, "microsecond resolution: {m}");
    assert!((m - t).abs() < 10_000_000_000, "ours {m}, qemu-ga {t}");
}

#[test]
fn modern_commands_argument_and_platform_errors_match() {
    if !reference_available() {
        return;
    }
    // Invalid arguments only: none of these runs a command that changes anything.
    let mut script: Vec<String> = [
        "guest-get-time",
        "guest-get-host-name",
        "guest-get-timezone",
        "guest-get-osinfo",
        "guest-get-users",
        "guest-get-vcpus",
        "guest-get-memory-blocks",
        "guest-get-memory-block-info",
        "guest-get-fsinfo",
        "guest-get-disks",
        "guest-get-cpustats",
        "guest-get-diskstats",
    ]
    .iter()
    .map(|c| format!(r#"{{"execute":"{c}","arguments":{{"x":1}},"id":1}}"#))
    .collect();
    script.extend(
        [
            r#"{"execute":"guest-get-devices","id":2}"#,
            r#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0}]}}"#,
            r#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[5]}}"#,
            r#"{"execute":"guest-set-vcpus","arguments":{"vcpus":{}}}"#,
            r#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[{"logical-id":0,"online":true,"x":1}]}}"#,
            r#"{"execute":"guest-set-vcpus"}"#,
            r#"{"execute":"guest-set-vcpus","arguments":{"vcpus":[]}}"#,
            r#"{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":"x","online":true}]}}"#,
            r#"{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[{"phys-index":1,"online":true,"can-offline":null}]}}"#,
            r#"{"execute":"guest-set-memory-blocks","arguments":{"mem-blks":[]}}"#,
            // Only times both agents refuse before touching a clock (year >= 2070,
            // or far before 1970), and type errors. Never a valid time: the reference
            // would set this machine's clock.
            r#"{"execute":"guest-set-time","arguments":{"time":"soon"}}"#,
            r#"{"execute":"guest-set-time","arguments":{"time":1.5}}"#,
            r#"{"execute":"guest-set-time","arguments":{"time":4102444800000000000}}"#,
            r#"{"execute":"guest-set-time","arguments":{"time":-9223372036854775808}}"#,
        ]
        .map(str::to_owned),
    );
    let requests: Vec<&str> = script.iter().map(String::as_str).collect();
    for (req, (m, t)) in requests.iter().zip(both(&requests)) {
        assert_eq!(m, t, "{req}");
        assert!(t.get("error").is_some() || req.contains("[]"), "{req}: {t}");
    }
}

/// Stray bytes are answered at once, as qemu-ga's lexer does, and the stream
/// recovers: a raw newline inside a string, bytes that start no token, control
/// characters, then a good request (the hardening issue's three wire cases).
#[test]
fn stray_bytes_are_answered_at_once_and_the_stream_recovers() {
    if !reference_available() {
        return;
    }
    let sync = br#"{"execute":"guest-sync","arguments":{"id":1}}"#;
    for (garbage, expect) in [
        // The partial token up to the newline, then the leftover `"}` (the quote is
        // skipped by recovery, the brace is a message of its own), then the sync.
        (&b"{\"execute\":\"guest-ping\n\"}"[..], 3),
        (b"\x80", 2),
        (b"\x01\x02\x03 %%% }}}} {\"execute\":\"guest-ping\"}", 9),
        (b"[\"tab\there\"]", 3),
        (b"\xc3\xa9", 2),
    ] {
        // The garbage alone must be answered without waiting for another byte.
        let reference = Agent::reference(&[], |_| {});
        let ours = Agent::ours(&[], |_| {});
        let first = if garbage.ends_with(b"}") {
            expect - 1
        } else {
            1
        };
        // Fresh agents for this part: qemu-ga's lexer state outlives a connection.
        for agent in [Agent::reference(&[], |_| {}), Agent::ours(&[], |_| {})] {
            let mut s = UnixStream::connect(&agent.sock).unwrap();
            s.write_all(garbage).unwrap();
            let early = read_replies(&mut s, first);
            assert!(
                !early.is_empty(),
                "no answer to {garbage:?} before more bytes came"
            );
        }
        // Not normalised: here a `stray '\uFFFD'` answers a garbage byte, not the
        // client's own 0xFF, and both must send it.
        let theirs = reference.exchange(&[garbage, b"\n", sync], expect);
        let mine = ours.exchange(&[garbage, b"\n", sync], expect);
        assert_eq!(mine, theirs, "{:?}", String::from_utf8_lossy(garbage));
        assert_eq!(mine.len(), expect, "{mine:?}");
        assert_eq!(mine.last().unwrap().1["return"], 1, "{mine:?}");
    }
}
