//! Resynchronisation at the agent level: any interleaving of valid requests and
//! garbage, cut into chunks anywhere, gives each valid request the reply it gets when
//! the requests are sent alone, provided each one is preceded by 0xFF and a
//! guest-sync-delimited with a unique id. Garbage can leave the framer inside a
//! string, deep in nesting, or dropping bytes after a stray one; the 0xFF must end
//! all of that, so that the reply right after the sync's is the request's.
//!
//! The requests are safe ones over the fakes: ping, sync, info, OS info, time,
//! host name, freeze status, and guest-file-open/write/read/seek/close on fake files
//! (their state carries from request to request, so the replies depend on the order).

use bytes::BytesMut;
use proptest::prelude::*;
use qga_agent::{Dispatcher, DispatcherConfig, StateDir};
use qga_framing::Decoder;
use qga_ops::fake::FakeOps;
use serde_json::json;

#[derive(Debug, Clone)]
enum Req {
    Ping,
    Sync(i64),
    Info,
    OsInfo,
    Time,
    HostName,
    FreezeStatus,
    Open(&'static str, &'static str),
    Write(i64, Vec<u8>),
    Read(i64, i64),
    Seek(i64, i64),
    Close(i64),
}

impl Req {
    /// The request's JSON text, with id `id`.
    fn encode(&self, id: usize) -> Vec<u8> {
        let (execute, arguments) = match self {
            Req::Ping => ("guest-ping", None),
            Req::Sync(n) => ("guest-sync", Some(json!({"id": n}))),
            Req::Info => ("guest-info", None),
            Req::OsInfo => ("guest-get-osinfo", None),
            Req::Time => ("guest-get-time", None),
            Req::HostName => ("guest-get-host-name", None),
            Req::FreezeStatus => ("guest-fsfreeze-status", None),
            Req::Open(path, mode) => ("guest-file-open", Some(json!({"path": path, "mode": mode}))),
            Req::Write(h, data) => {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(data);
                (
                    "guest-file-write",
                    Some(json!({"handle": h, "buf-b64": b64})),
                )
            }
            Req::Read(h, count) => (
                "guest-file-read",
                Some(json!({"handle": h, "count": count})),
            ),
            Req::Seek(h, offset) => (
                "guest-file-seek",
                Some(json!({"handle": h, "offset": offset, "whence": "set"})),
            ),
            Req::Close(h) => ("guest-file-close", Some(json!({"handle": h}))),
        };
        let mut v = json!({"execute": execute, "id": format!("req-{id}")});
        if let Some(a) = arguments {
            v["arguments"] = a;
        }
        v.to_string().into_bytes()
    }
}

fn req() -> impl Strategy<Value = Req> {
    // Handles from 1000 up: the first few opens get them; others are unknown.
    let handle = 1000i64..1006;
    prop_oneof![
        Just(Req::Ping),
        any::<i64>().prop_map(Req::Sync),
        Just(Req::Info),
        Just(Req::OsInfo),
        Just(Req::Time),
        Just(Req::HostName),
        Just(Req::FreezeStatus),
        (
            prop::sample::select(vec!["/a", "/b", "/missing"]),
            prop::sample::select(vec!["r", "w", "a", "r+", "w+", "a+", "x"]),
        )
            .prop_map(|(p, m)| Req::Open(p, m)),
        (handle.clone(), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(h, d)| Req::Write(h, d)),
        (handle.clone(), 0i64..64).prop_map(|(h, c)| Req::Read(h, c)),
        (handle.clone(), 0i64..32).prop_map(|(h, o)| Req::Seek(h, o)),
        handle.prop_map(Req::Close),
    ]
}

/// Bytes that leave the framer in some state: partial messages, open strings,
/// escapes, nesting, stray control and high bytes, sentinels, complete harmless
/// messages, and arbitrary bytes.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            &b"{"[..],
            b"[",
            b"}",
            b"]",
            b"\"",
            b"\\",
            b"\"\\u12",
            b"{\"execute\":\"guest-ping\"",
            b"{\"execute\":\"guest-ping\"}",
            b"{\"execute\":",
            b"\"id\":",
            b"[[[[[[[[[[[[[[[[",
            b"1e5",
            b"tru",
            b"-",
            b" \n\t",
            b"\x00",
            b"\x1f",
            b"\x80",
            b"\xc3",
            b"\xfe",
            b"\xff",
        ])
        .prop_map(<[u8]>::to_vec),
        prop::collection::vec(any::<u8>(), 0..24),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|v| v.concat())
}

fn fakes() -> FakeOps {
    let fakes = FakeOps::new();
    fakes.files.insert("/a", b"0123456789abcdefghij".to_vec());
    fakes.files.insert("/b", Vec::new());
    fakes
}

/// Feeds `stream` in chunks of the sizes in `cuts` (cycled), as the channel loop
/// does; returns every reply byte.
fn run(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let f = fakes();
    let mut d = Dispatcher::new(f.ops(), StateDir::in_memory(), DispatcherConfig::default())
        .expect("in-memory state");
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut rest = stream;
    for &n in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        while let Some(frame) = decoder.decode(&mut buf) {
            d.handle_frame(frame, &mut out);
        }
    }
    out.to_vec()
}

/// The reply lines in `out`, each with its newline (and 0xFF, if delimited).
fn lines(out: &[u8]) -> Vec<&[u8]> {
    out.split_inclusive(|&b| b == b'\n').collect()
}

/// The reply to each request when they are sent alone, one by one.
fn alone(reqs: &[Req]) -> Vec<Vec<u8>> {
    let mut stream = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        stream.extend_from_slice(&r.encode(i));
    }
    let out = run(&stream, &[usize::MAX]);
    let replies: Vec<Vec<u8>> = lines(&out).into_iter().map(<[u8]>::to_vec).collect();
    assert_eq!(replies.len(), reqs.len(), "one reply per request alone");
    replies
}

/// The sync id before request `i` (unique, and unlike any id a request uses).
fn sync_id(i: usize) -> i64 {
    7_000_000_000 + i as i64
}

fn sync_reply(i: usize) -> Vec<u8> {
    let mut v = vec![0xff];
    v.extend_from_slice(format!("{{\"return\":{}}}\n", sync_id(i)).as_bytes());
    v
}

/// Checks that in `garbage[i] 0xFF sync(i) request(i)` for each i, cut by `cuts`,
/// the line after each sync's reply is the request's reply alone. (Without
/// `sentinel`, the 0xFF is left out: only the checker's own test does that.)
fn check_with(
    items: &[(Vec<u8>, Req)],
    cuts: &[usize],
    sentinel: bool,
) -> Result<(), TestCaseError> {
    let reqs: Vec<Req> = items.iter().map(|(_, r)| r.clone()).collect();
    let expected = alone(&reqs);
    let mut stream = Vec::new();
    for (i, (junk, r)) in items.iter().enumerate() {
        stream.extend_from_slice(junk);
        if sentinel {
            stream.push(0xff);
        }
        stream.extend_from_slice(
            format!(
                "{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{}}}}}",
                sync_id(i)
            )
            .as_bytes(),
        );
        stream.extend_from_slice(&r.encode(i));
    }
    let out = run(&stream, cuts);
    let got = lines(&out);
    let mut from = 0;
    for (i, want) in expected.iter().enumerate() {
        let sync = sync_reply(i);
        let Some(at) = got[from..].iter().position(|l| *l == sync.as_slice()) else {
            return Err(TestCaseError::fail(format!(
                "no reply to sync {i} in {:?}",
                String::from_utf8_lossy(&out)
            )));
        };
        let at = from + at;
        prop_assert!(
            got.get(at + 1) == Some(&want.as_slice()),
            "request {i} ({:?}): got {:?}, alone {:?}",
            reqs[i],
            got.get(at + 1).map(|l| String::from_utf8_lossy(l)),
            String::from_utf8_lossy(want)
        );
        from = at + 2;
    }
    Ok(())
}

fn check(items: &[(Vec<u8>, Req)], cuts: &[usize]) -> Result<(), TestCaseError> {
    check_with(items, cuts, true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn garbage_before_each_resync_changes_no_reply(
        items in prop::collection::vec((garbage(), req()), 1..12),
        cuts in prop::collection::vec(1usize..40, 1..8),
    ) {
        check(&items, &cuts)?;
    }

    #[test]
    fn arbitrary_bytes_before_each_resync_change_no_reply(
        items in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..200), req()), 1..8),
        cuts in prop::collection::vec(1usize..300, 1..8),
    ) {
        check(&items, &cuts)?;
    }
}

/// The checker itself: garbage that is a request changing the state (a write
/// before a read) is caught, and so is garbage that swallows the sync when no 0xFF
/// comes first.
#[test]
fn the_check_catches_a_lost_resync() {
    // Sent alone, the read sees the written bytes.
    let items = vec![
        (Vec::new(), Req::Open("/b", "w+")),
        (Vec::new(), Req::Write(1000, b"xyz".to_vec())),
        (Vec::new(), Req::Seek(1000, 0)),
        (Vec::new(), Req::Read(1000, 10)),
    ];
    check(&items, &[7]).unwrap();
    // Garbage that is itself a complete request changing the file: the read differs.
    let mut items = items;
    items[3].0 =
        br#"{"execute":"guest-file-write","arguments":{"handle":1000,"buf-b64":"QUJD"}}"#.to_vec();
    assert!(check(&items, &[7]).is_err());
    // An open string swallows the sync unless the 0xFF ends it.
    let items = vec![(b"\"".to_vec(), Req::Ping), (b"".to_vec(), Req::Ping)];
    check(&items, &[3]).unwrap();
    assert!(check_with(&items, &[3], false).is_err());
}
