//! The whole agent minus its descriptors: arbitrary bytes, cut into chunks of
//! arbitrary sizes, go through the framer to the dispatcher over fake ops, as the
//! channel loop does (read a chunk, frame and dispatch until the framer needs more).
//!
//! Invariants:
//! - no panic;
//! - every reply is one JSON line (an optional 0xFF, an object with `return` or
//!   `error`, a newline) that serde_json parses;
//! - memory stays bounded: after each chunk the framer's buffer holds at most the
//!   message limit plus that chunk, and each frame's reply is at most a fixed size
//!   (the fake files are capped) plus six times the input so far (an error can quote
//!   input, a control byte as `\u00XX`);
//! - a 0xFF and `{"execute":"guest-sync-delimited","arguments":{"id":N}}` appended
//!   to any input is answered last, with 0xFF and `{"return":N}`.
//!
//! Every op is a fake that stays in memory; the files are wrapped so that no seek and
//! write can make a fake file grow past [`FILE_CAP`].
#![no_main]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qga_agent::{Dispatcher, DispatcherConfig, StateDir};
use qga_framing::{Decoder, Limits};
use qga_ops::fake::FakeOps;
use qga_ops::{Files, GuestFile, OpsError, SeekOutcome, Whence, WriteOutcome};

/// Largest a fake file may grow (by writes, and by seeking past its end).
const FILE_CAP: usize = 16 * 1024;
/// Largest reply that quotes no input: guest-info's command list, a read of a whole
/// capped file in base64, the fixed fake data.
const FIXED_REPLY: usize = 64 * 1024;
/// The small framer limits (the other half of the runs use qemu-ga's).
const SMALL: Limits = Limits {
    max_message: 4096,
    max_depth: 64,
};

/// The fake files, with writes refused past [`FILE_CAP`].
struct CappedFiles {
    inner: Arc<qga_ops::fake::FakeFiles>,
    /// Bytes written through every handle so far (an append lands at the end,
    /// which this bounds).
    written: Arc<AtomicUsize>,
}

struct CappedFile {
    inner: Box<dyn GuestFile>,
    pos: u64,
    written: Arc<AtomicUsize>,
}

fn too_big() -> OpsError {
    OpsError::os(
        "failed to write to file",
        std::io::Error::from_raw_os_error(27), // EFBIG
    )
}

impl Files for CappedFiles {
    fn open(&self, path: &Path, mode: &str) -> Result<Box<dyn GuestFile>, OpsError> {
        Ok(Box::new(CappedFile {
            inner: self.inner.open(path, mode)?,
            pos: 0,
            written: self.written.clone(),
        }))
    }
}

impl GuestFile for CappedFile {
    fn read(&mut self, count: usize, buf: &mut Vec<u8>) -> Result<bool, OpsError> {
        let before = buf.len();
        let eof = self.inner.read(count, buf)?;
        self.pos += (buf.len() - before) as u64;
        Ok(eof)
    }

    fn write(&mut self, data: &[u8]) -> Result<WriteOutcome, OpsError> {
        let total = self.written.load(Ordering::Relaxed) + data.len();
        if self.pos.saturating_add(data.len() as u64) > FILE_CAP as u64 || total > FILE_CAP {
            return Err(too_big());
        }
        let w = self.inner.write(data)?;
        self.written.store(total, Ordering::Relaxed);
        self.pos += w.count as u64;
        Ok(w)
    }

    fn seek(&mut self, offset: i64, whence: Whence) -> Result<SeekOutcome, OpsError> {
        let s = self.inner.seek(offset, whence)?;
        self.pos = s.position;
        Ok(s)
    }

    fn flush(&mut self) -> Result<(), OpsError> {
        self.inner.flush()
    }

    fn close(self: Box<Self>) -> Result<(), OpsError> {
        self.inner.close()
    }
}

/// Checks the replies in `out` and returns them (0xFF included).
fn check_replies(out: &[u8]) -> Vec<&[u8]> {
    let mut replies = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or_else(|| panic!("reply without its newline: {:?}", bstr(rest)));
        let (line, tail) = rest.split_at(end + 1);
        let json = line.strip_prefix(b"\xff").unwrap_or(line);
        let json = &json[..json.len() - 1];
        let v: serde_json::Value = serde_json::from_slice(json)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {:?}", bstr(line)));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("reply is no object: {v}"));
        assert!(
            obj.contains_key("return") != obj.contains_key("error"),
            "reply without exactly one of return/error: {v}"
        );
        assert!(
            obj.keys()
                .all(|k| matches!(k.as_str(), "return" | "error" | "id")),
            "reply with a foreign member: {v}"
        );
        replies.push(line);
        rest = tail;
    }
    replies
}

fn bstr(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned()
}

/// A small xorshift, for the chunk sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Feeds `input` in chunks, as the channel loop does; returns every reply.
fn feed(
    dispatcher: &mut Dispatcher,
    decoder: &mut Decoder,
    buf: &mut BytesMut,
    fed: &mut usize,
    input: &[u8],
    rng: &mut Rng,
    max_chunk: usize,
) -> Vec<u8> {
    let limit = decoder.limits().max_message;
    let mut all = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let n = (rng.next() as usize % max_chunk + 1).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        *fed += n;
        buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        while let Some(frame) = decoder.decode(buf) {
            let before = out.len();
            dispatcher.handle_frame(frame, &mut out);
            let reply = out.len() - before;
            assert!(
                reply <= FIXED_REPLY + 6 * *fed,
                "a reply of {reply} bytes after {fed} bytes of input"
            );
        }
        assert!(
            buf.len() <= limit + n,
            "{} bytes buffered with a limit of {limit} and a chunk of {n}",
            buf.len()
        );
        check_replies(&out);
        all.extend_from_slice(&out);
    }
    all
}

fuzz_target!(|data: &[u8]| {
    let Some((&[flags, seed, n0, n1, n2, n3, n4, n5, n6, n7], input)) = data.split_first_chunk()
    else {
        return;
    };
    let sync_id = i64::from_le_bytes([n0, n1, n2, n3, n4, n5, n6, n7]);
    let limits = if flags & 1 == 1 {
        SMALL
    } else {
        Limits::default()
    };
    let max_chunk = [1, 7, 64, 4096][usize::from(flags >> 1 & 3)];

    let fakes = FakeOps::new();
    fakes.files.insert("/f", b"hello, world\n".to_vec());
    fakes.files.insert("/empty", Vec::new());
    let mut ops = fakes.ops();
    ops.files = Arc::new(CappedFiles {
        inner: fakes.files.clone(),
        written: Arc::default(),
    });
    let mut dispatcher = Dispatcher::new(ops, StateDir::in_memory(), DispatcherConfig::default())
        .expect("in-memory state");
    let mut decoder = Decoder::with_limits(limits);
    let mut buf = BytesMut::new();
    let mut rng = Rng(u64::from(seed) << 32 | 0x9e37_79b9 | input.len() as u64);
    let mut fed = 0;

    feed(
        &mut dispatcher,
        &mut decoder,
        &mut buf,
        &mut fed,
        input,
        &mut rng,
        max_chunk,
    );
    let mut sync = vec![0xff];
    sync.extend_from_slice(
        format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{sync_id}}}}}")
            .as_bytes(),
    );
    let out = feed(
        &mut dispatcher,
        &mut decoder,
        &mut buf,
        &mut fed,
        &sync,
        &mut rng,
        max_chunk,
    );
    let replies = check_replies(&out);
    let last = replies
        .last()
        .unwrap_or_else(|| panic!("no reply to guest-sync-delimited {sync_id}"));
    let mut want = vec![0xff];
    want.extend_from_slice(format!("{{\"return\":{sync_id}}}\n").as_bytes());
    assert_eq!(*last, want, "last reply: {:?}", bstr(last));
    // Nothing is left half-read after the sync.
    assert!(!decoder.is_mid_message());
});
