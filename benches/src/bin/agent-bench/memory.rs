//! Memory back to idle: one agent takes every kind of large or numerous request in
//! turn, and its RSS is read one second after each, against its idle RSS. The first
//! step, a 32 MiB write in one request, also gives the peak RSS a large request costs.

use std::io::{self, Write};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use qga_benches::reply::{member_u64, return_value, FileRead};

use crate::agent::{proc_status_kib, Conn, PING};
use crate::scenarios::{self, bad, close, open, Inputs, Samples};

/// Bytes written by the one large write (the request is 4/3 of it plus the envelope).
pub const WRITE_BYTES: usize = 32 << 20;
/// Count of each of the three large reads.
pub const READ_COUNT: usize = 16 << 20;
/// Size and number of the chunked writes (our agent decodes payloads of up to
/// 1 MiB whole into a buffer it keeps until the connection is quiet).
pub const CHUNK_BYTES: usize = 1 << 20;
/// How many chunked writes (20 MiB in all).
pub const CHUNKS: usize = 20;
/// Length of the junk string in the large malformed request.
pub const GARBAGE_BYTES: usize = 48 << 20;
/// How long after a step's last reply its RSS is read.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The steps, in the order they run on the one agent: (key, description).
pub const STEPS: &[(&str, &str)] = &[
    ("write", "one 32 MiB guest-file-write"),
    ("chunks", "twenty 1 MiB guest-file-writes"),
    ("read", "three 16 MiB guest-file-reads"),
    (
        "garbage",
        "a 48 MiB request with an unexpected argument (an error reply)",
    ),
    ("pipelined", "10,000 pipelined guest-pings"),
];

/// `VmRSS` or `VmHWM` of `pid` in MiB.
fn mib(pid: u32, key: &str) -> io::Result<f64> {
    proc_status_kib(pid, key)
        .map(|k| k as f64 / 1024.0)
        .ok_or_else(|| io::Error::other(format!("no {key} for pid {pid}")))
}

/// Runs every step on a fresh, connected agent. Samples: `memory.idle` (MiB),
/// `memory.write_peak` (`VmHWM` after the write, as a multiple of the request's size),
/// and `memory.after.STEP` (`VmRSS` one second after the step, as a multiple of idle).
pub fn run(conn: &mut Conn, inputs: &Inputs, pid: u32) -> io::Result<Samples> {
    if inputs.data.len() < WRITE_BYTES.max(CHUNK_BYTES * CHUNKS) {
        return Err(io::Error::other(
            "the read source is smaller than the write",
        ));
    }
    let idle = mib(pid, "VmRSS")?;
    let mut out = vec![("memory.idle".to_string(), idle)];
    let settle = |out: &mut Samples, step: &str| -> io::Result<()> {
        std::thread::sleep(SETTLE);
        out.push((format!("memory.after.{step}"), mib(pid, "VmRSS")? / idle));
        Ok(())
    };

    // One large write: the request is built before the agent sees a byte of it.
    let target = tempfile::Builder::new()
        .prefix("memory-write-")
        .tempfile_in(&inputs.work_dir)?
        .into_temp_path();
    let handle = open(conn, &target, "w")?;
    let request = write_request(handle, &inputs.data[..WRITE_BYTES]);
    conn.get_mut().write_all(&request)?;
    let reply = conn.next_reply()?;
    if member_u64(return_value(reply).map_err(bad)?, b"count") != Some(WRITE_BYTES as u64) {
        return Err(io::Error::other("the large write was short"));
    }
    close(conn, handle)?;
    let request_mib = request.len() as f64 / f64::from(1u32 << 20);
    drop(request);
    out.push((
        "memory.write_peak".to_string(),
        mib(pid, "VmHWM")? / request_mib,
    ));
    if std::fs::read(&target)? != inputs.data[..WRITE_BYTES] {
        return Err(io::Error::other("the large write's file differs"));
    }
    settle(&mut out, "write")?;

    // Twenty 1 MiB writes in turn, as a file copy sends them.
    let handle = open(conn, &target, "w")?;
    for piece in inputs.data[..CHUNK_BYTES * CHUNKS].chunks(CHUNK_BYTES) {
        conn.get_mut().write_all(&write_request(handle, piece))?;
        let reply = conn.next_reply()?;
        if member_u64(return_value(reply).map_err(bad)?, b"count") != Some(piece.len() as u64) {
            return Err(io::Error::other("a 1 MiB write was short"));
        }
    }
    close(conn, handle)?;
    if std::fs::read(&target)? != inputs.data[..CHUNK_BYTES * CHUNKS] {
        return Err(io::Error::other("the chunked writes' file differs"));
    }
    settle(&mut out, "chunks")?;

    // Three large reads, each from the start of the source.
    for _ in 0..3 {
        let handle = open(conn, &inputs.data_path, "r")?;
        let req = format!(
            "{{\"execute\":\"guest-file-read\",\"arguments\":{{\"handle\":{handle},\"count\":{READ_COUNT}}}}}\n"
        );
        conn.get_mut().write_all(req.as_bytes())?;
        let r = FileRead::parse(conn.next_reply()?).map_err(bad)?;
        let want = READ_COUNT.min(inputs.data.len());
        let decoded = STANDARD.decode(r.b64).map_err(io::Error::other)?;
        if r.count != want as u64 || decoded != inputs.data[..want] {
            return Err(io::Error::other("a large read returned the wrong bytes"));
        }
        close(conn, handle)?;
    }
    settle(&mut out, "read")?;

    // One large malformed request: both agents parse it whole, then refuse it.
    let mut junk = Vec::with_capacity(GARBAGE_BYTES + 128);
    junk.extend_from_slice(b"{\"execute\":\"guest-ping\",\"arguments\":{\"junk\":\"");
    junk.resize(junk.len() + GARBAGE_BYTES, b'a');
    junk.extend_from_slice(b"\"}}\n");
    conn.get_mut().write_all(&junk)?;
    drop(junk);
    let reply = conn.next_reply()?;
    if !reply.starts_with(b"{\"error\"") {
        return Err(io::Error::other(format!(
            "the large malformed request got no error: {}",
            String::from_utf8_lossy(&reply[..reply.len().min(200)])
        )));
    }
    conn.get_mut().write_all(PING)?;
    return_value(conn.next_reply()?).map_err(bad)?;
    settle(&mut out, "garbage")?;

    scenarios::pipelined(conn, scenarios::PIPELINED)?;
    settle(&mut out, "pipelined")?;
    Ok(out)
}

/// A guest-file-write of `data` to `handle`, base64 encoded.
fn write_request(handle: u64, data: &[u8]) -> Vec<u8> {
    let mut request = Vec::with_capacity(data.len() / 3 * 4 + 128);
    scenarios::append_write_request(&mut request, handle, data);
    request
}
