//! The client against a hostile agent: a scripted peer on the other end of an
//! in-memory duplex stream sends fuzzer-chosen bytes (raw garbage, 0xFF storms,
//! replies with wrong or missing ids, stale syncs, endless lines, replies past the
//! client's limit) and may stop reading, pause, close, or keep misbehaving forever,
//! while the client makes fuzzer-chosen calls with fuzzer-chosen timeouts. Time is
//! tokio's paused clock, so a 10 s timeout costs nothing.
//!
//! Invariants:
//! - no panic; every call ends with `Ok` or a typed error (never `Connect`: the
//!   client is already connected);
//! - every call ends within its timeout (its class's, or `quick` for `sync`), the
//!   resync it may do first included;
//! - a reply that carries another id is never handed out (its `return` is a marker
//!   the well-formed replies never use);
//! - memory stays bounded: the heap never grows by more than [`memory_bound`] over
//!   what it held when the run started, however much the peer sends. (Floods go just
//!   past the client's reply limit, not past this bound: pushing hundreds of MiB
//!   through the instrumented framer takes seconds per input. That the limit exists
//!   is qga-client's own test; this catches memory held across replies and calls.)
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use libfuzzer_sys::arbitrary::{Result as AResult, Unstructured};
use libfuzzer_sys::fuzz_target;
use qga_client::{Client, ClientError, Timeouts};
use qga_framing::{Decoder, Frame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::time::Instant;

/// qga-client's reply limit (`MAX_REPLY` in its client.rs): a reply past it fails
/// the call, and its bytes are dropped as they arrive.
const MAX_REPLY: usize = 65 << 20;
/// The most the heap may grow during a run: the client's input buffer holding one
/// reply up to the limit plus a read (its capacity can double as it grows), one
/// reply parsed (an error without id is a value as large as its reply), 8 MiB for the
/// runtime, the peer and the duplex buffer; and with a well-formed large reply in the
/// script, its typed result too (base64 decodes smaller).
fn memory_bound(big_reply: bool) -> usize {
    2 * (MAX_REPLY + (64 << 10)) + MAX_REPLY + (8 << 20) + if big_reply { MAX_REPLY } else { 0 }
}
/// What every reply with another id returns: a call that hands it out is a bug.
const STALE: &str = "stale-reply-not-yours";
/// [`STALE`] as JSON.
const STALE_JSON: &str = "\"stale-reply-not-yours\"";
/// Tokio's timers have a 1 ms resolution.
const SLACK: Duration = Duration::from_millis(2);

// --- Heap accounting -------------------------------------------------------------

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call goes to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// --- The script ------------------------------------------------------------------

/// Sizes of the long writes: small, a read chunk, large, and past the client's limit.
const SIZES: [usize; 4] = [4 << 10, 64 << 10, 1 << 20, MAX_REPLY + (1 << 20)];
/// What a flood repeats: inside or outside a string, a number, blanks, nesting,
/// sentinels.
const FILLERS: [u8; 6] = [b'a', b'1', b' ', b'[', 0xff, b'\n'];

#[derive(Debug)]
enum IdKind {
    /// The id of the last request the peer read.
    Ours,
    /// An id no request had.
    Wrong,
    /// No id.
    Missing,
}

#[derive(Debug)]
enum Op {
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// A run of 0xFF.
    Sentinels(usize),
    /// The answer to the last sync: `proper` with its 0xFF, else without it or
    /// with the previous sync's id.
    SyncReply { sentinel: bool, previous: bool },
    /// A reply to the last request (one of a few well-formed bodies, or an error).
    Reply { id: IdKind, body: usize },
    /// Replies with ids no request had.
    WrongIds(usize),
    /// `prefix`, then `filler` repeated to `len` bytes, then `suffix`.
    Flood {
        prefix: Vec<u8>,
        filler: u8,
        len: usize,
        suffix: Vec<u8>,
    },
    /// A well-formed guest-file-read reply with our id and `len` bytes of base64.
    BigReply(usize),
    /// The peer waits.
    Sleep(Duration),
    /// The peer waits (at most 1 s) for the client's next request.
    WaitRequest,
    /// The peer reads nothing for a while (the client's writes fill the pipe).
    PauseReading(Duration),
    /// The peer closes its side; the script ends.
    Close,
}

/// What the peer does once the script is played.
#[derive(Debug)]
enum Then {
    /// Nothing: the connection stays open and silent.
    Silent,
    /// Closes its side.
    Close,
    /// A wrong-id reply every `ms`, forever.
    WrongIdsForever(u64),
    /// A 0xFF every `ms`, forever.
    SentinelsForever(u64),
    /// 4 KiB of `filler` every `ms`, forever: a line that never ends (slowly: the
    /// flood op is the one that reaches the client's limit).
    EndlessLine(u64, u8),
}

#[derive(Debug, Clone, Copy)]
enum Call {
    Ping,
    Info,
    Sync,
    OsInfo,
    FileRead,
    FileWrite,
    Raw,
    Shutdown,
    Freeze,
}

const CALLS: [Call; 9] = [
    Call::Ping,
    Call::Info,
    Call::Sync,
    Call::OsInfo,
    Call::FileRead,
    Call::FileWrite,
    Call::Raw,
    Call::Shutdown,
    Call::Freeze,
];

/// Well-formed `return` values for the replies with our id.
const BODIES: [&str; 5] = [
    "{}",
    "1700000000000000000",
    "\"thawed\"",
    "{\"count\":3,\"buf-b64\":\"YWJj\",\"eof\":true}",
    "{\"name\":\"Debian\",\"id\":\"debian\"}",
];

#[derive(Debug)]
struct Script {
    pipe: usize,
    timeouts: Timeouts,
    calls: Vec<Call>,
    ops: Vec<Op>,
    then: Then,
}

fn ms(u: &mut Unstructured<'_>, max: u64) -> AResult<Duration> {
    Ok(Duration::from_millis(u.int_in_range(0..=max)?))
}

fn parse(u: &mut Unstructured<'_>) -> AResult<Script> {
    let pipe = [64, 4096, 1 << 20][u.choose_index(3)?];
    let timeouts = Timeouts {
        quick: ms(u, 2_000)? + Duration::from_millis(1),
        file: ms(u, 4_000)? + Duration::from_millis(1),
        slow: ms(u, 8_000)? + Duration::from_millis(1),
        no_reply_grace: ms(u, 1_000)?,
    };
    let calls = (0..u.int_in_range(1..=6)?)
        .map(|_| Ok(CALLS[u.choose_index(CALLS.len())?]))
        .collect::<AResult<_>>()?;
    let then = match u.choose_index(5)? {
        0 => Then::Silent,
        1 => Then::Close,
        2 => Then::WrongIdsForever(u.int_in_range(1..=100)?),
        3 => Then::SentinelsForever(u.int_in_range(1..=100)?),
        _ => Then::EndlessLine(u.int_in_range(10..=100)?, FILLERS[u.choose_index(3)?]),
    };
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 64 {
        let op = match u.choose_index(11)? {
            0 => {
                let n = u.int_in_range(0..=256)?;
                Op::Raw(u.bytes(n.min(u.len()))?.to_vec())
            }
            1 => Op::Sentinels(u.int_in_range(1..=1000)?),
            2 => Op::SyncReply {
                sentinel: u.arbitrary()?,
                previous: u.arbitrary()?,
            },
            3 => Op::Reply {
                id: match u.choose_index(3)? {
                    0 => IdKind::Ours,
                    1 => IdKind::Wrong,
                    _ => IdKind::Missing,
                },
                body: u.choose_index(BODIES.len() + 1)?,
            },
            4 => Op::WrongIds(u.int_in_range(1..=1000)?),
            5 => {
                let n = u.int_in_range(0..=32)?;
                let prefix = u.bytes(n.min(u.len()))?.to_vec();
                let filler = FILLERS[u.choose_index(FILLERS.len())?];
                // Through a small pipe a long write is many task switches: slow to
                // fuzz, and no different.
                let len = SIZES[u.choose_index(SIZES.len())?].min(pipe << 10);
                let n = u.int_in_range(0..=32)?;
                let suffix = u.bytes(n.min(u.len()))?.to_vec();
                Op::Flood {
                    prefix,
                    filler,
                    len,
                    suffix,
                }
            }
            6 => Op::BigReply(SIZES[u.choose_index(SIZES.len())?].min(pipe << 10)),
            7 => Op::Sleep(ms(u, 3_000)?),
            8 => Op::WaitRequest,
            9 => Op::PauseReading(ms(u, 3_000)?),
            _ => Op::Close,
        };
        ops.push(op);
    }
    Ok(Script {
        pipe,
        timeouts,
        calls,
        ops,
        then,
    })
}

// --- The peer --------------------------------------------------------------------

/// What the peer has read from the client.
#[derive(Debug, Default)]
struct Seen {
    /// The ids of the last two syncs, newest first.
    syncs: [Option<Value>; 2],
    /// The id of the last other request.
    request: Option<Value>,
    requests: usize,
    /// No reads before this.
    paused_until: Option<Instant>,
}

fn seen(s: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Drains and decodes what the client sends, recording the ids.
async fn reader(mut r: ReadHalf<DuplexStream>, state: Arc<Mutex<Seen>>) {
    let (mut dec, mut buf) = (Decoder::new(), BytesMut::new());
    let mut tmp = vec![0u8; 4096];
    loop {
        let pause = seen(&state).paused_until.take();
        if let Some(t) = pause {
            tokio::time::sleep_until(t).await;
        }
        let n = match r.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        while let Some(f) = dec.decode(&mut buf) {
            let Frame::Message(m) = f else { continue };
            let v: Value = serde_json::from_slice(&m).expect("the client sends JSON");
            let mut s = seen(&state);
            s.requests += 1;
            match v["execute"].as_str() {
                Some("guest-sync-delimited" | "guest-sync") => {
                    s.syncs[1] = s.syncs[0].take();
                    s.syncs[0] = Some(v["arguments"]["id"].clone());
                }
                _ => s.request = v.get("id").cloned(),
            }
        }
    }
}

fn wrong_id_reply(n: usize) -> String {
    format!("{{\"return\":\"{STALE}\",\"id\":\"not-an-id-{n}\"}}\n")
}

/// Writes `filler` `len` times, in 64 KiB pieces.
async fn flood(w: &mut WriteHalf<DuplexStream>, filler: u8, len: usize) -> std::io::Result<()> {
    let piece = vec![filler; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(piece.len());
        w.write_all(&piece[..n]).await?;
        left -= n;
    }
    Ok(())
}

async fn play(
    w: &mut WriteHalf<DuplexStream>,
    state: &Mutex<Seen>,
    op: &Op,
    waited: &mut usize,
) -> std::io::Result<()> {
    match op {
        Op::Raw(b) => w.write_all(b).await,
        Op::Sentinels(n) => w.write_all(&vec![0xff; *n]).await,
        Op::SyncReply { sentinel, previous } => {
            let id = seen(state).syncs[usize::from(*previous)].clone();
            let id = id.unwrap_or(Value::from(1));
            let mut v = Vec::new();
            if *sentinel {
                v.push(0xff);
            }
            v.extend_from_slice(format!("{{\"return\":{id}}}\n").as_bytes());
            w.write_all(&v).await
        }
        Op::Reply { id, body } => {
            let body = BODIES.get(*body);
            let (ret, id) = match id {
                IdKind::Ours => (body, seen(state).request.clone()),
                IdKind::Wrong => (Some(&STALE_JSON), Some(Value::from(-1))),
                IdKind::Missing => (body, None),
            };
            let mut text = match ret {
                Some(r) => format!("{{\"return\":{r}"),
                None => "{\"error\":{\"class\":\"GenericError\",\"desc\":\"no\"}".to_owned(),
            };
            if let Some(id) = id {
                text.push_str(&format!(",\"id\":{id}"));
            }
            text.push_str("}\n");
            w.write_all(text.as_bytes()).await
        }
        Op::WrongIds(n) => {
            let text: String = (0..*n).map(wrong_id_reply).collect();
            w.write_all(text.as_bytes()).await
        }
        Op::Flood {
            prefix,
            filler,
            len,
            suffix,
        } => {
            w.write_all(prefix).await?;
            flood(w, *filler, *len).await?;
            w.write_all(suffix).await
        }
        Op::BigReply(len) => {
            let id = seen(state).request.clone().unwrap_or(Value::from(1));
            let len = len / 4 * 4;
            w.write_all(
                format!("{{\"return\":{{\"count\":{},\"buf-b64\":\"", len / 4 * 3).as_bytes(),
            )
            .await?;
            flood(w, b'A', len).await?;
            w.write_all(format!("\",\"eof\":true}},\"id\":{id}}}\n").as_bytes())
                .await
        }
        Op::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Op::WaitRequest => {
            *waited += 1;
            for _ in 0..1000 {
                if seen(state).requests >= *waited {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        }
        Op::PauseReading(d) => {
            seen(state).paused_until = Some(Instant::now() + *d);
            Ok(())
        }
        Op::Close => w.shutdown().await,
    }
}

async fn peer(mut w: WriteHalf<DuplexStream>, state: Arc<Mutex<Seen>>, ops: Vec<Op>, then: Then) {
    let mut waited = 0;
    for op in &ops {
        if play(&mut w, &state, op, &mut waited).await.is_err() {
            return;
        }
        if matches!(op, Op::Close) {
            return;
        }
    }
    let result: std::io::Result<()> = async {
        match then {
            Then::Silent => std::future::pending().await,
            Then::Close => w.shutdown().await,
            Then::WrongIdsForever(every) => {
                for n in 0.. {
                    w.write_all(wrong_id_reply(n).as_bytes()).await?;
                    tokio::time::sleep(Duration::from_millis(every)).await;
                }
                Ok(())
            }
            Then::SentinelsForever(every) => loop {
                w.write_all(&[0xff]).await?;
                tokio::time::sleep(Duration::from_millis(every)).await;
            },
            Then::EndlessLine(every, filler) => loop {
                flood(&mut w, filler, 4 << 10).await?;
                tokio::time::sleep(Duration::from_millis(every)).await;
            },
        }
    }
    .await;
    let _ = result;
}

// --- The client ------------------------------------------------------------------

/// Makes `call`; returns its result, a JSON value where the call returns one.
async fn make(client: &mut Client<DuplexStream>, call: Call) -> Result<Option<Value>, ClientError> {
    Ok(match call {
        Call::Ping => client.ping().await.map(|_| None)?,
        Call::Info => client.info().await.map(|_| None)?,
        Call::Sync => client.sync().await.map(|_| None)?,
        Call::OsInfo => client.get_osinfo().await.map(|_| None)?,
        Call::FileRead => client.file_read(1000, Some(3)).await.map(|_| None)?,
        Call::FileWrite => client
            .file_write(1000, b"abc".to_vec())
            .await
            .map(|_| None)?,
        Call::Raw => Some(client.execute_raw("guest-get-time", None).await?),
        Call::Shutdown => client.shutdown(None).await.map(|_| None)?,
        Call::Freeze => client.fsfreeze_freeze(None).await.map(|_| None)?,
    })
}

/// The timeout `call` must end within.
fn limit(call: Call, t: &Timeouts) -> Duration {
    match call {
        Call::Sync => t.quick,
        Call::FileRead => t.for_command("guest-file-read"),
        Call::FileWrite => t.for_command("guest-file-write"),
        Call::Freeze => t.for_command("guest-fsfreeze-freeze"),
        Call::Ping | Call::Info | Call::OsInfo | Call::Raw | Call::Shutdown => t.quick,
    }
}

/// `QGA_FUZZ_DEBUG=1`: print each script and what each call got (to check seeds).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("QGA_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let Ok(script) = parse(&mut Unstructured::new(data)) else {
        return;
    };
    let debug = debug();
    if debug {
        eprintln!("{script:#?}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let bound = memory_bound(script.ops.iter().any(|op| matches!(op, Op::BigReply(_))));
    rt.block_on(async {
        let (ours, theirs) = tokio::io::duplex(script.pipe);
        let (r, w) = tokio::io::split(theirs);
        let state = Arc::new(Mutex::new(Seen::default()));
        let reading = tokio::spawn(reader(r, state.clone()));
        let writing = tokio::spawn(peer(w, state, script.ops, script.then));
        let mut client = Client::new(ours).with_timeouts(script.timeouts);
        for &call in &script.calls {
            let start = Instant::now();
            let result = make(&mut client, call).await;
            let took = start.elapsed();
            let limit = limit(call, &script.timeouts);
            if debug {
                eprintln!("{call:?} after {took:?}: {result:?}");
            }
            assert!(
                took <= limit + SLACK,
                "{call:?} took {took:?}, its timeout is {limit:?}: {result:?}"
            );
            match result {
                Ok(Some(v)) => assert_ne!(v, STALE, "{call:?} was handed a reply to another id"),
                Ok(None) => {}
                Err(ClientError::Connect { .. }) => panic!("{call:?}: a connect error"),
                Err(_) => {}
            }
            let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
            assert!(
                grown <= bound,
                "{call:?}: the heap grew by {grown} bytes (bound {bound})"
            );
        }
        reading.abort();
        writing.abort();
    });
    drop(rt);
});
