//! The scenarios. Each run gets a freshly started agent, so `VmHWM` is per run.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use qga_benches::reply::{return_value, strip_sentinel, BadReply, FileRead};
use qga_benches::stats::percentile_sorted;

use crate::agent::{Conn, Pin, PING};
use crate::modern::{self, MODERN};

/// One scenario of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Sequential guest-ping round trips.
    Ping(Pin),
    /// Sequential guest-sync-delimited round trips.
    Sync(Pin),
    /// 10,000 guest-pings written at once, replies read as they come.
    Pipelined,
    /// Sequential guest-network-get-interfaces calls.
    NetIf,
    /// Reading the whole test file with this `count`, client and agent on two CPUs.
    Read(usize),
    /// The same with client and agent on one CPU (as the issue measured it): a small
    /// read's cost is then the agent's own work, not two cross-CPU wake-ups.
    ReadSame(usize),
    /// Writing the write size in chunks of this many bytes, client and agent on two CPUs.
    Write(usize),
    /// The same with client and agent on one CPU.
    WriteSame(usize),
    /// Start-up to first answer, and idle RSS.
    Startup,
    /// Sequential pings through `qga-client`.
    ClientPing(Pin),
    /// File reads through `qga-client` with this `count`.
    ClientRead(usize),
    /// Sequential calls of one read-only modern command (index into `modern::MODERN`).
    Modern(usize),
    /// `guest-exec` of `/bin/true`, then `guest-exec-status` until it exited.
    Exec,
    /// Large and numerous requests in turn on one agent, RSS one second after each.
    Memory,
}

/// Size of the pipelined batch.
pub const PIPELINED: usize = 10_000;

pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 {
        format!("{}M", n >> 20)
    } else {
        format!("{}K", n >> 10)
    }
}

impl Scenario {
    /// Short stable name, used as the key prefix of its metrics.
    pub fn key(self) -> String {
        match self {
            Scenario::Ping(p) => format!("ping.{}", pin_key(p)),
            Scenario::Sync(p) => format!("sync.{}", pin_key(p)),
            Scenario::Pipelined => "pipelined".into(),
            Scenario::NetIf => "netif".into(),
            Scenario::Read(c) => format!("read.{}", size_label(c)),
            Scenario::ReadSame(c) => format!("read.same.{}", size_label(c)),
            Scenario::Write(c) => format!("write.{}", size_label(c)),
            Scenario::WriteSame(c) => format!("write.same.{}", size_label(c)),
            Scenario::Startup => "startup".into(),
            Scenario::ClientPing(p) => format!("client.ping.{}", pin_key(p)),
            Scenario::ClientRead(c) => format!("client.read.{}", size_label(c)),
            Scenario::Modern(i) => format!("modern.{}", MODERN[i].key),
            Scenario::Exec => "exec".into(),
            Scenario::Memory => "memory".into(),
        }
    }

    /// Whether qemu-ga 7.2 lacks the command (measured for ours only).
    pub fn ours_only(self) -> bool {
        matches!(self, Scenario::Modern(i) if MODERN[i].ours_only)
    }

    /// Whether the agent's RSS is read again one second after the scenario.
    pub fn rss_after(self) -> bool {
        matches!(self, Scenario::Modern(_) | Scenario::Exec)
    }

    /// Human description (for progress lines and the peak-RSS table).
    pub fn describe(self) -> String {
        match self {
            Scenario::Ping(p) => format!("guest-ping round trips, {}", p.label()),
            Scenario::Sync(p) => format!("guest-sync-delimited round trips, {}", p.label()),
            Scenario::Pipelined => format!("{PIPELINED} pipelined guest-pings"),
            Scenario::NetIf => "guest-network-get-interfaces".into(),
            Scenario::Read(c) => format!("guest-file-read, count {}", size_label(c)),
            Scenario::ReadSame(c) => {
                format!("guest-file-read, count {}, same CPU", size_label(c))
            }
            Scenario::Write(c) => format!("guest-file-write, {} chunks", size_label(c)),
            Scenario::WriteSame(c) => {
                format!("guest-file-write, {} chunks, same CPU", size_label(c))
            }
            Scenario::Startup => "start-up and idle".into(),
            Scenario::ClientPing(p) => format!("guest-ping via qga-client, {}", p.label()),
            Scenario::ClientRead(c) => {
                format!("guest-file-read via qga-client, count {}", size_label(c))
            }
            Scenario::Modern(i) => MODERN[i].name.into(),
            Scenario::Exec => "guest-exec /bin/true + guest-exec-status until exited".into(),
            Scenario::Memory => "memory back to idle after large requests".into(),
        }
    }

    /// Where client and agent run.
    pub fn pin(self) -> Pin {
        match self {
            Scenario::Ping(p) | Scenario::Sync(p) | Scenario::ClientPing(p) => p,
            Scenario::NetIf
            | Scenario::Modern(_)
            | Scenario::Exec
            | Scenario::ReadSame(_)
            | Scenario::WriteSame(_) => Pin::Same,
            _ => Pin::Split,
        }
    }
}

pub fn pin_key(p: Pin) -> &'static str {
    match p {
        Pin::Same => "same",
        Pin::Split => "split",
    }
}

/// Sizes and counts of one bench run.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub round_trips: usize,
    pub netif_calls: usize,
    pub read_file: usize,
    pub write_total: usize,
    pub startups: usize,
    /// Pipelined batches per run (each one a sample), after a warm-up batch.
    pub pipelined_batches: usize,
    /// At most this many read requests per run: small counts read only a prefix of
    /// the file, so 4 KiB reads (round-trip bound) do not dominate the bench's time.
    pub max_read_requests: usize,
    /// At most this many bytes per run through qga-client (its decoding is slow
    /// enough to dominate the bench's time otherwise).
    pub max_client_read: usize,
    /// Calls per run of a modern command (exec: cycles), at most.
    pub modern_calls: usize,
    /// A modern-command run stops after this long (after at least 20 calls).
    pub modern_budget: Duration,
}

/// Shared, prepared inputs.
pub struct Inputs {
    /// The content of the read source file; its prefix is what writes write.
    pub data: Vec<u8>,
    /// The read source file (holds `data`).
    pub data_path: PathBuf,
    /// Where write targets go.
    pub work_dir: PathBuf,
    /// Expected base64 text of each read chunk for the chunk size being run.
    pub expected: Option<(usize, Vec<u8>)>,
    pub sizes: Sizes,
}

/// Deterministic incompressible bytes (xorshift64*), so a misplaced chunk is detected.
pub fn test_data(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The base64 text of `data` cut in `chunk`-byte pieces, each encoded alone.
pub fn expected_chunks(data: &[u8], chunk: usize) -> Vec<u8> {
    let per = chunk.div_ceil(3) * 4;
    let mut out = vec![0u8; data.len().div_ceil(chunk) * per];
    let mut at = 0;
    for piece in data.chunks(chunk) {
        at += STANDARD.encode_slice(piece, &mut out[at..]).unwrap_or(0);
    }
    out.truncate(at);
    out
}

/// One metric sample from one run.
pub type Samples = Vec<(String, f64)>;

/// CPU time of the agent (all its threads) and of the calling client thread, from the
/// scheduler's per-thread run time (`/proc/.../schedstat`, nanoseconds).
pub struct CpuMeter {
    pid: u32,
    agent0: u64,
    client0: u64,
    t0: Instant,
}

fn schedstat_ns(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Run time of every live thread of `pid`, in ns.
pub fn agent_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .map(|t| schedstat_ns(&t.path().join("schedstat")))
        .sum()
}

impl CpuMeter {
    /// Starts measuring (call right before the timed part).
    pub fn start(pid: u32) -> Self {
        CpuMeter {
            pid,
            agent0: agent_cpu_ns(pid),
            client0: schedstat_ns(Path::new("/proc/thread-self/schedstat")),
            t0: Instant::now(),
        }
    }

    /// Samples `{key}.agent_cpu` (agent CPU ns per `per` units, scaled by `scale`) and
    /// `{key}.client_cpu` (the client thread's share of the wall time, percent).
    pub fn finish(&self, key: &str, per: f64, scale: f64) -> Samples {
        let wall = self.t0.elapsed().as_nanos() as f64;
        let agent = agent_cpu_ns(self.pid).saturating_sub(self.agent0) as f64;
        let client = schedstat_ns(Path::new("/proc/thread-self/schedstat"))
            .saturating_sub(self.client0) as f64;
        vec![
            (format!("{key}.agent_cpu"), agent / per * scale),
            (format!("{key}.client_cpu"), 100.0 * client / wall),
        ]
    }
}

pub fn bad(e: BadReply) -> io::Error {
    io::Error::other(e)
}

fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Runs the body of `scenario` on a connected, warmed agent; returns metrics.
pub fn run(scenario: Scenario, conn: &mut Conn, inputs: &Inputs, pid: u32) -> io::Result<Samples> {
    let key = scenario.key();
    let n = inputs.sizes.round_trips;
    // Round trips: agent CPU in us per request, warm-up included.
    let meter = CpuMeter::start(pid);
    let per_request = |calls: usize| meter.finish(&key, (calls + warmup(calls)) as f64, 1e-3);
    match scenario {
        Scenario::Ping(_) => {
            let (rate, p50, p99) =
                round_trips(conn, n, |_, buf| buf.extend_from_slice(PING), check_return)?;
            let mut out = per_request(n);
            out.extend([
                (format!("{key}.rate"), rate),
                (format!("{key}.p50"), p50),
                (format!("{key}.p99"), p99),
            ]);
            Ok(out)
        }
        Scenario::Sync(_) => {
            let (rate, p50, p99) = round_trips(
                conn,
                n,
                |i, buf| {
                    let _ = writeln!(
                        buf,
                        "{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{i}}}}}"
                    );
                },
                |i, reply| {
                    let (sentinel, body) = strip_sentinel(reply);
                    let value = return_value(body)?;
                    if !sentinel || value != i.to_string().as_bytes() {
                        return Err(BadReply(format!(
                            "sync {i}: sentinel {sentinel}, reply {}",
                            String::from_utf8_lossy(reply)
                        )));
                    }
                    Ok(())
                },
            )?;
            let mut out = per_request(n);
            out.extend([
                (format!("{key}.rate"), rate),
                (format!("{key}.p50"), p50),
                (format!("{key}.p99"), p99),
            ]);
            Ok(out)
        }
        Scenario::Pipelined => {
            pipelined(conn, 1_000)?;
            let meter = CpuMeter::start(pid);
            let mut rates = Vec::new();
            for _ in 0..inputs.sizes.pipelined_batches {
                rates.push((format!("{key}.rate"), pipelined(conn, PIPELINED)?));
            }
            let mut out = meter.finish(
                &key,
                (PIPELINED * inputs.sizes.pipelined_batches) as f64,
                1e-3,
            );
            out.extend(rates);
            Ok(out)
        }
        Scenario::NetIf => {
            let calls = inputs.sizes.netif_calls;
            let (rate, p50, _) = round_trips(
                conn,
                calls,
                |_, buf| buf.extend_from_slice(b"{\"execute\":\"guest-network-get-interfaces\"}\n"),
                |_, reply| match return_value(reply)?.first() {
                    Some(b'[') => Ok(()),
                    _ => Err(BadReply(format!(
                        "not a list: {}",
                        String::from_utf8_lossy(reply)
                    ))),
                },
            )?;
            let mut out = per_request(calls);
            out.extend([(format!("{key}.rate"), rate), (format!("{key}.p50"), p50)]);
            Ok(out)
        }
        Scenario::Read(chunk) | Scenario::ReadSame(chunk) => {
            let (mbs, mut out) = file_read(conn, inputs, chunk, &key, pid)?;
            out.push((format!("{key}.mbs"), mbs));
            Ok(out)
        }
        Scenario::Write(chunk) | Scenario::WriteSame(chunk) => {
            let (mbs, mut out) = file_write(conn, inputs, chunk, &key, pid)?;
            out.push((format!("{key}.mbs"), mbs));
            Ok(out)
        }
        Scenario::Modern(i) => modern::calls(&MODERN[i], conn, inputs, &key, pid),
        Scenario::Exec => modern::exec(conn, inputs, &key, pid),
        Scenario::Memory => crate::memory::run(conn, inputs, pid),
        // Run by the caller (they need their own connection).
        Scenario::Startup | Scenario::ClientPing(_) | Scenario::ClientRead(_) => Ok(Vec::new()),
    }
}

fn check_return(_: usize, reply: &[u8]) -> Result<(), BadReply> {
    return_value(reply).map(|_| ())
}

/// Warm-up round trips before `n` measured ones.
fn warmup(n: usize) -> usize {
    (n / 10).min(200)
}

/// `n` sequential round trips after a short warm-up; returns (per second, p50 us, p99 us).
fn round_trips(
    conn: &mut Conn,
    n: usize,
    mut request: impl FnMut(usize, &mut Vec<u8>),
    mut check: impl FnMut(usize, &[u8]) -> Result<(), BadReply>,
) -> io::Result<(f64, f64, f64)> {
    let mut buf = Vec::with_capacity(256);
    let warmup = warmup(n);
    let mut lat = Vec::with_capacity(n);
    let mut total = Duration::ZERO;
    for i in 0..warmup + n {
        buf.clear();
        request(i, &mut buf);
        let t = Instant::now();
        conn.get_mut().write_all(&buf)?;
        let reply = conn.next_reply()?;
        let dt = t.elapsed();
        check(i, reply).map_err(bad)?;
        if i >= warmup {
            lat.push(dt.as_nanos() as u64);
            total += dt;
        }
    }
    lat.sort_unstable();
    let p50 = percentile_sorted(&lat, 50.0).unwrap_or(0);
    let p99 = percentile_sorted(&lat, 99.0).unwrap_or(0);
    Ok((n as f64 / total.as_secs_f64(), micros(p50), micros(p99)))
}

/// Writes `n` pings from a second thread while this one reads the replies; returns
/// replies per second.
pub fn pipelined(conn: &mut Conn, n: usize) -> io::Result<f64> {
    let batch: Vec<u8> = PING.repeat(n);
    let mut writer = conn.get_mut().try_clone()?;
    let t = Instant::now();
    let handle = std::thread::spawn(move || writer.write_all(&batch));
    let mut checked = Ok(());
    for i in 0..n {
        match conn.next_reply() {
            Ok(reply) => {
                if let Err(e) = check_return(i, reply) {
                    checked = Err(bad(e));
                    break;
                }
            }
            Err(e) => {
                checked = Err(e);
                break;
            }
        }
    }
    let dt = t.elapsed();
    handle
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))??;
    checked?;
    Ok(n as f64 / dt.as_secs_f64())
}

pub fn open(conn: &mut Conn, path: &Path, mode: &str) -> io::Result<u64> {
    let req = format!(
        "{{\"execute\":\"guest-file-open\",\"arguments\":{{\"path\":\"{}\",\"mode\":\"{mode}\"}}}}\n",
        path.display()
    );
    conn.get_mut().write_all(req.as_bytes())?;
    let reply = conn.next_reply()?;
    let handle = return_value(reply).map_err(bad)?;
    std::str::from_utf8(handle)
        .ok()
        .and_then(|h| h.parse().ok())
        .ok_or_else(|| io::Error::other("guest-file-open returned no integer handle"))
}

pub fn close(conn: &mut Conn, handle: u64) -> io::Result<()> {
    let req =
        format!("{{\"execute\":\"guest-file-close\",\"arguments\":{{\"handle\":{handle}}}}}\n");
    conn.get_mut().write_all(req.as_bytes())?;
    return_value(conn.next_reply()?).map_err(bad)?;
    Ok(())
}

/// Reads the source file with `count = chunk` (all of it, or the first
/// `max_read_requests` chunks), verifying every byte; returns MB/s of payload (10^6
/// bytes per second), from the first request to the last reply.
fn file_read(
    conn: &mut Conn,
    inputs: &Inputs,
    chunk: usize,
    key: &str,
    pid: u32,
) -> io::Result<(f64, Samples)> {
    let expected = match &inputs.expected {
        Some((c, e)) if *c == chunk => e,
        _ => return Err(io::Error::other("expected base64 not prepared")),
    };
    let per = chunk.div_ceil(3) * 4;
    let handle = open(conn, &inputs.data_path, "r")?;
    let req = format!("{{\"execute\":\"guest-file-read\",\"arguments\":{{\"handle\":{handle},\"count\":{chunk}}}}}\n");
    let limit = inputs
        .data
        .len()
        .min(chunk.saturating_mul(inputs.sizes.max_read_requests));
    let mut offset = 0usize;
    let meter = CpuMeter::start(pid);
    let t = Instant::now();
    while offset < limit || limit == inputs.data.len() {
        conn.get_mut().write_all(req.as_bytes())?;
        let reply = conn.next_reply()?;
        let r = FileRead::parse(reply).map_err(bad)?;
        let count = usize::try_from(r.count).unwrap_or(usize::MAX);
        if count > 0 {
            let end = offset
                .checked_add(count)
                .filter(|&e| e <= inputs.data.len());
            let Some(end) = end else {
                return Err(io::Error::other(format!(
                    "read past the file's end at {offset}"
                )));
            };
            let idx = offset / chunk;
            let canonical = count == chunk
                && offset.is_multiple_of(chunk)
                && r.b64 == &expected[idx * per..(idx + 1) * per];
            if !canonical {
                // Short read or other base64 spelling: decode and compare the bytes.
                let decoded = STANDARD
                    .decode(r.b64)
                    .map_err(|e| io::Error::other(format!("bad base64 at offset {offset}: {e}")))?;
                if decoded.len() != count || decoded != inputs.data[offset..end] {
                    return Err(io::Error::other(format!(
                        "payload mismatch at offset {offset}"
                    )));
                }
            }
            offset = end;
        }
        if r.eof || count == 0 {
            break;
        }
    }
    let dt = t.elapsed();
    // Agent CPU in ns per payload byte (= ms per MB).
    let cpu = meter.finish(key, offset as f64, 1.0);
    if offset != limit {
        return Err(io::Error::other(format!("read {offset} bytes of {limit}")));
    }
    close(conn, handle)?;
    Ok((offset as f64 / dt.as_secs_f64() / 1e6, cpu))
}

/// Writes the first `write_total` bytes of the data in `chunk`-byte requests, then
/// closes (which flushes); verifies the file; returns MB/s from first write to close.
fn file_write(
    conn: &mut Conn,
    inputs: &Inputs,
    chunk: usize,
    key: &str,
    pid: u32,
) -> io::Result<(f64, Samples)> {
    let total = inputs.sizes.write_total.min(inputs.data.len());
    let target = tempfile::Builder::new()
        .prefix("write-target-")
        .tempfile_in(&inputs.work_dir)?
        .into_temp_path();
    let handle = open(conn, &target, "w")?;
    // All requests are built before the clock starts.
    let mut requests = Vec::with_capacity(total / 3 * 4 + total / chunk * 100);
    let mut bounds = Vec::new();
    for piece in inputs.data[..total].chunks(chunk) {
        let start = requests.len();
        append_write_request(&mut requests, handle, piece);
        bounds.push((start, requests.len(), piece.len()));
    }
    let meter = CpuMeter::start(pid);
    let t = Instant::now();
    for &(start, end, len) in &bounds {
        conn.get_mut().write_all(&requests[start..end])?;
        let reply = conn.next_reply()?;
        let ret = return_value(reply).map_err(bad)?;
        if qga_benches::reply::member_u64(ret, b"count") != Some(len as u64) {
            return Err(io::Error::other(format!(
                "short write: {}",
                String::from_utf8_lossy(&reply[..reply.len().min(200)])
            )));
        }
    }
    close(conn, handle)?;
    let dt = t.elapsed();
    let cpu = meter.finish(key, total as f64, 1.0);
    let written = std::fs::read(&target)?;
    if written != inputs.data[..total] {
        return Err(io::Error::other(format!(
            "written file differs ({} bytes, expected {total})",
            written.len()
        )));
    }
    Ok((total as f64 / dt.as_secs_f64() / 1e6, cpu))
}

/// Appends a guest-file-write of `data` to `handle`, base64 encoded, to `out`. (A
/// failed encoding, which the exact sizing rules out, would send an empty payload,
/// which the reply's count then shows.)
pub fn append_write_request(out: &mut Vec<u8>, handle: u64, data: &[u8]) {
    let _ = write!(
        out,
        "{{\"execute\":\"guest-file-write\",\"arguments\":{{\"handle\":{handle},\"buf-b64\":\""
    );
    let at = out.len();
    out.resize(at + data.len().div_ceil(3) * 4, 0);
    let n = STANDARD.encode_slice(data, &mut out[at..]).unwrap_or(0);
    out.truncate(at + n);
    out.extend_from_slice(b"\"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_chunks_decode_to_the_data() {
        let data = test_data(10_000);
        let e = expected_chunks(&data, 4096);
        let per = 4096usize.div_ceil(3) * 4;
        assert_eq!(STANDARD.decode(&e[..per]).unwrap(), data[..4096]);
        assert_eq!(STANDARD.decode(&e[2 * per..]).unwrap(), data[8192..]);
        assert_ne!(data[..8], data[8..16]);
    }
}
