//! The same requests through `qga-client` (tokio, typed, with sync and ids), to show
//! what the client library adds on top of the raw socket numbers.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use qga_benches::stats::percentile_sorted;

use qga_benches::reply::ReplyReader;

use crate::agent::{self, Agent, Conn, Cpus, Pin, Program, Started};
use crate::scenarios::{self, size_label, Inputs, Samples, Scenario, Sizes};
use crate::{Results, Side};

fn io_err(e: qga_client::ClientError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Runs `body` on a current-thread runtime on this (pinned) thread.
fn block_on<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `n` sequential pings through `Client::ping` (after the client's own sync and a
/// warm-up); returns `{key}.rate` and `{key}.p50`.
pub fn ping(sock: &Path, n: usize, key: &str) -> io::Result<Samples> {
    block_on(async {
        let mut client = qga_client::connect_unix(sock).await.map_err(io_err)?;
        for _ in 0..(n / 10).min(200) {
            client.ping().await.map_err(io_err)?;
        }
        let mut lat = Vec::with_capacity(n);
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let t = Instant::now();
            client.ping().await.map_err(io_err)?;
            let dt = t.elapsed();
            lat.push(dt.as_nanos() as u64);
            total += dt;
        }
        lat.sort_unstable();
        let p50 = percentile_sorted(&lat, 50.0).unwrap_or(0) as f64 / 1000.0;
        Ok(vec![
            (format!("{key}.rate"), n as f64 / total.as_secs_f64()),
            (format!("{key}.p50"), p50),
        ])
    })
}

/// Reads the source file with `Client::file_read` (count `chunk`, at most
/// `max_client_read` bytes), comparing the decoded bytes; returns `{key}.mbs`.
pub fn read(sock: &Path, inputs: &Inputs, chunk: usize, key: &str) -> io::Result<Samples> {
    block_on(async {
        let mut client = qga_client::connect_unix(sock).await.map_err(io_err)?;
        let path = inputs.data_path.to_string_lossy();
        let handle = client.file_open(&path, Some("r")).await.map_err(io_err)?;
        let limit = inputs
            .data
            .len()
            .min(chunk.saturating_mul(inputs.sizes.max_read_requests))
            .min(inputs.sizes.max_client_read);
        let count = i64::try_from(chunk).map_err(io::Error::other)?;
        let mut offset = 0usize;
        let t = Instant::now();
        while offset < limit {
            let r = client
                .file_read(handle, Some(count))
                .await
                .map_err(io_err)?;
            let got = r.buf_b64.0.len();
            let end = offset + got;
            if got == 0 || end > inputs.data.len() || r.buf_b64.0 != inputs.data[offset..end] {
                return Err(io::Error::other(format!(
                    "payload mismatch at offset {offset}"
                )));
            }
            offset = end;
            if r.eof {
                break;
            }
        }
        let dt = t.elapsed();
        client.file_close(handle).await.map_err(io_err)?;
        if offset != limit {
            return Err(io::Error::other(format!("read {offset} bytes of {limit}")));
        }
        Ok(vec![(
            format!("{key}.mbs"),
            offset as f64 / dt.as_secs_f64() / 1e6,
        )])
    })
}

/// Chunk size of the whole-file copies: the raw-socket `read.1M` and `write.1M` rows
/// use the same, so the copy's rate is compared with theirs from the same run.
pub const COPY_CHUNK: usize = 1 << 20;

/// CPU time of the calling thread so far, in ns (the scheduler's run time).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of the calling thread so far, in clock ticks
/// (`/proc/thread-self/stat`, fields 14 and 15).
fn thread_user_sys() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let mut f = rest
        .split_whitespace()
        .skip(11)
        .map(|x| x.parse().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

/// The system (kernel) share of the CPU time between two [`thread_user_sys`].
fn sys_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let user = after.0.saturating_sub(before.0);
    let sys = after.1.saturating_sub(before.1);
    sys as f64 / (user + sys).max(1) as f64
}

/// Whole-file copies through qga-client, the way `qga get` and `qga put` do them,
/// with our agent only: four times the read source (1 GiB full, 128 MiB with
/// --quick), `runs` fresh agents per direction.
///
/// Each agent also serves the raw-socket scenario of the same chunk size on the same
/// file (its first quarter, the read source's size), just before or after the copy
/// (alternately), so the copy's share of the raw rate is measured under the same
/// load. Records, under `copy.get.{c}` and `copy.put.{c}`: `.mbs` (MB/s of payload,
/// open to close), `.client_ns` (the client thread's CPU ns per payload byte, the
/// verification's memcmp or the source's memcpy included), `.client_sys` (the
/// kernel's share of that, from the thread's tick counters: socket copies and
/// their allocations), `.raw_mbs` (the paired raw-socket run) and `.share` (copy /
/// paired raw) and `.agent_waits` (the agent's voluntary context switches per MiB
/// copied: how often it slept waiting for the client).
pub fn copies(
    program: &Program,
    base: &Path,
    cpus: Cpus,
    inputs: &Inputs,
    runs: usize,
    results: &mut Results,
    errors: &mut Vec<String>,
) {
    let data = scenarios::test_data(inputs.sizes.read_file * 4);
    let source = inputs.work_dir.join("copy-source.bin");
    if let Err(e) = std::fs::write(&source, &data) {
        errors.push(format!("writing the copy source: {e}"));
        return;
    }
    let raw_len = inputs.sizes.read_file.min(data.len()) / COPY_CHUNK * COPY_CHUNK;
    let expected = Some((
        COPY_CHUNK,
        scenarios::expected_chunks(&data[..raw_len], COPY_CHUNK),
    ));
    let raw = Inputs {
        data,
        data_path: source.clone(),
        work_dir: inputs.work_dir.clone(),
        expected,
        sizes: Sizes {
            max_read_requests: raw_len / COPY_CHUNK,
            write_total: raw_len,
            ..inputs.sizes.clone()
        },
    };
    let label = size_label(COPY_CHUNK);
    for run in 0..runs {
        for put in [false, true] {
            let key = format!("copy.{}.{label}", if put { "put" } else { "get" });
            eprintln!("  {key} run {run}, {} MiB", raw.data.len() >> 20);
            let scenario = if put {
                Scenario::Write(COPY_CHUNK)
            } else {
                Scenario::Read(COPY_CHUNK)
            };
            let raw_first = run % 2 == 0;
            let out = Agent::start(program, base, cpus, Pin::Split).and_then(|started| {
                let Started { agent, conn, .. } = started;
                let (pid, sock) = (agent.pid(), agent.sock());
                let mut raw_mbs = 0.0;
                if raw_first {
                    if put {
                        back_free_memory(raw.sizes.write_total);
                    }
                    raw_mbs = raw_rate(scenario, conn, &raw, pid)?;
                } else {
                    // One connection at a time: the raw one goes, qga-client connects.
                    drop(conn);
                }
                // How often the agent slept waiting for the client during the copy.
                let waits = || agent::proc_status_count(pid, "voluntary_ctxt_switches");
                let waits0 = waits();
                let copied = if put {
                    let target = inputs.work_dir.join("copy-target.bin");
                    back_free_memory(raw.data.len());
                    let r = copy_put(&sock, &raw.data, &target, COPY_CHUNK);
                    let _ = std::fs::remove_file(&target);
                    r
                } else {
                    copy_get(&sock, &raw.data, &source, COPY_CHUNK)
                }?;
                let mib = raw.data.len() as f64 / f64::from(1u32 << 20);
                let agent_waits = waits()
                    .zip(waits0)
                    .map(|(a, b)| a.saturating_sub(b) as f64 / mib);
                if !raw_first {
                    let stream = UnixStream::connect(&sock)?;
                    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
                    if put {
                        back_free_memory(raw.sizes.write_total);
                    }
                    raw_mbs = raw_rate(scenario, ReplyReader::new(stream), &raw, pid)?;
                }
                drop(agent);
                Ok((copied, raw_mbs, agent_waits))
            });
            agent::unpin_current_thread();
            match out {
                Ok(((mbs, ns, sys), raw_mbs, agent_waits)) => {
                    if let Some(w) = agent_waits {
                        crate::record(results, format!("{key}.agent_waits"), Side::Ours, w);
                    }
                    crate::record(results, format!("{key}.mbs"), Side::Ours, mbs);
                    crate::record(results, format!("{key}.client_ns"), Side::Ours, ns);
                    crate::record(results, format!("{key}.client_sys"), Side::Ours, sys);
                    crate::record(results, format!("{key}.raw_mbs"), Side::Ours, raw_mbs);
                    if raw_mbs > 0.0 {
                        crate::record(results, format!("{key}.share"), Side::Ours, mbs / raw_mbs);
                    }
                }
                Err(e) => {
                    eprintln!("  error: {key} run {run}: {e}");
                    errors.push(format!("{key} run {run}: {e}"));
                }
            }
        }
    }
    drop(raw);
    let _ = std::fs::remove_file(&source);
}

/// Touches, then frees, three times `bytes` of memory (plus 64 MiB), so that a
/// transfer about to write `bytes` into a file finds free pages its host backs.
///
/// A guest with free page reporting (virtio-balloon's `REPORTING` feature, on the
/// machines these numbers come from) hands free memory that stays unused for a
/// couple of seconds back to its host, and the first touch of such a page again
/// costs a host fault: touching 3 GiB took 6-8 s after 8 s idle and 2 s right after
/// the same touch. A 1 GiB `qga put` needs ~1 GiB of new pages (the file's, and the
/// socket buffers the client copies into); measured right after the last transfer
/// freed its file it ran at 380-1210 MiB/s, right after a 3 GiB touch at 955-1270
/// MiB/s (7 of 7). In this bench, touching the transfer's size once left one put in
/// three slow (250-600 MB/s, the client's CPU per byte 3-4x); three times its size,
/// six of six ran at 970-1300 MB/s. So the put and the raw write paired with it each
/// get one just before, and compare the client with the raw socket rather than with
/// the host's memory.
fn back_free_memory(bytes: usize) {
    const PAGE: usize = 4096;
    let len = 3 * bytes + (64 << 20);
    let mut v: Vec<u8> = Vec::with_capacity(len);
    for page in v.spare_capacity_mut().chunks_mut(PAGE) {
        // SAFETY: `page[0]` is a valid, exclusive byte of the allocation. Volatile,
        // so that the stores, and the allocation, are not optimised away.
        unsafe { std::ptr::write_volatile(&mut page[0], std::mem::MaybeUninit::new(1)) };
    }
    // Freed now (a block this size is mapped on its own): its pages go back to the
    // kernel's free lists, backed, for the transfer's allocations.
    drop(v);
}

/// The raw-socket scenario `scenario` on `conn` (closed afterwards): its MB/s.
fn raw_rate(scenario: Scenario, mut conn: Conn, raw: &Inputs, pid: u32) -> io::Result<f64> {
    let out = scenarios::run(scenario, &mut conn, raw, pid)?;
    out.iter()
        .find(|(k, _)| k.ends_with(".mbs"))
        .map(|(_, v)| *v)
        .ok_or_else(|| io::Error::other("the raw scenario gave no rate"))
}

/// Timed part of a copy: (MB/s, client CPU ns per byte, the kernel's share of it).
fn rate(bytes: usize, wall: Duration, cpu_ns: u64, sys: f64) -> (f64, f64, f64) {
    (
        bytes as f64 / wall.as_secs_f64() / 1e6,
        cpu_ns as f64 / bytes as f64,
        sys,
    )
}

/// A destination that compares what it is given with the expected bytes (a memcmp
/// per chunk, on the client thread) and keeps nothing.
struct Verify<'a> {
    expected: &'a [u8],
    at: usize,
}

impl tokio::io::AsyncWrite for Verify<'_> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let at = self.at;
        let end = at + buf.len();
        if self.expected.get(at..end) != Some(buf) {
            return std::task::Poll::Ready(Err(io::Error::other(format!(
                "copied bytes differ from the source at {at}..{end}"
            ))));
        }
        self.at = end;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `qga get`: the guest file `source` (holding `data`) copied out with
/// `Client::copy_from_guest`, every byte compared as it arrives.
fn copy_get(sock: &Path, data: &[u8], source: &Path, chunk: usize) -> io::Result<(f64, f64, f64)> {
    block_on(async {
        let mut client = qga_client::connect_unix(sock).await.map_err(io_err)?;
        client.sync().await.map_err(io_err)?;
        let path = source.to_string_lossy();
        let mut sink = Verify {
            expected: data,
            at: 0,
        };
        let (cpu0, ticks0) = (thread_cpu_ns(), thread_user_sys());
        let t = Instant::now();
        let n = client
            .copy_from_guest(&path, &mut sink, chunk, None)
            .await
            .map_err(io_err)?;
        let dt = t.elapsed();
        let cpu = thread_cpu_ns() - cpu0;
        let sys = sys_share(ticks0, thread_user_sys());
        if n as usize != data.len() || sink.at != data.len() {
            return Err(io::Error::other(format!(
                "copied {n} bytes ({} verified) of {}",
                sink.at,
                data.len()
            )));
        }
        Ok(rate(data.len(), dt, cpu, sys))
    })
}

/// `qga put`: `data` copied with `Client::copy_to_guest` into the guest file `target`,
/// which is compared afterwards.
fn copy_put(sock: &Path, data: &[u8], target: &Path, chunk: usize) -> io::Result<(f64, f64, f64)> {
    let (mbs, ns, sys) = block_on(async {
        let mut client = qga_client::connect_unix(sock).await.map_err(io_err)?;
        client.sync().await.map_err(io_err)?;
        let path = target.to_string_lossy();
        let (cpu0, ticks0) = (thread_cpu_ns(), thread_user_sys());
        let t = Instant::now();
        let mut src = data;
        let n = client
            .copy_to_guest(&mut src, &path, chunk, Some(data.len() as u64), None)
            .await
            .map_err(io_err)?;
        let dt = t.elapsed();
        if n as usize != data.len() {
            return Err(io::Error::other(format!(
                "copied {n} bytes of {}",
                data.len()
            )));
        }
        let cpu = thread_cpu_ns() - cpu0;
        Ok(rate(
            data.len(),
            dt,
            cpu,
            sys_share(ticks0, thread_user_sys()),
        ))
    })?;
    let written = std::fs::read(target)?;
    if written != data {
        return Err(io::Error::other(format!(
            "the guest file differs ({} bytes, expected {})",
            written.len(),
            data.len()
        )));
    }
    Ok((mbs, ns, sys))
}

/// Target of the copies: at least this share of the raw-socket rate of the same chunk.
const COPY_RATE_TARGET: f64 = 0.8;
/// Target of the copies: at most this much client CPU per payload byte, ns.
const COPY_CPU_TARGET: f64 = 2.0;

/// The table of the whole-file copies (ours only), against the raw-socket runs of
/// the same chunk size: paired with each copy (same agent, same file, same load),
/// and the raw-socket row of this bench run.
pub fn print_copies(results: &Results) {
    let label = size_label(COPY_CHUNK);
    let rows = [
        ("get", "read", "`qga get`: Client::copy_from_guest"),
        ("put", "write", "`qga put`: Client::copy_to_guest"),
    ];
    if !rows
        .iter()
        .any(|(d, _, _)| results.contains_key(&format!("copy.{d}.{label}.mbs")))
    {
        return;
    }
    println!();
    println!(
        "Whole-file copies via qga-client, our agent (the library calls of `qga get`/`qga put`; {label} chunks, split CPUs). \
         paired raw = the raw-socket scenario of the same chunk size on the same agent and file right before or after each copy; \
         % of paired raw = median of the per-run ratios (what met? judges); raw row = the raw-socket row above. \
         Targets: >= {:.0} % of raw, <= {COPY_CPU_TARGET} client CPU ns/byte:",
        COPY_RATE_TARGET * 100.0
    );
    println!();
    println!("| copy | MB/s | paired raw MB/s | % of paired raw | raw row MB/s | % of raw row | client CPU ns/byte | agent sleeps per MiB | met? |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|:---:|");
    for (dir, raw, what) in rows {
        let get = |m: &str| crate::summary(results, &format!("copy.{dir}.{label}.{m}"), Side::Ours);
        let mbs = get("mbs");
        let paired = get("raw_mbs");
        let share = get("share");
        let ns = get("client_ns");
        let waits = get("agent_waits");
        let row = crate::summary(results, &format!("{raw}.{label}.mbs"), Side::Ours);
        let row_share = mbs.zip(row).filter(|(_, r)| *r > 0.0).map(|(m, r)| m / r);
        let met = match (share, ns) {
            (Some(s), Some(n)) => crate::yes(s >= COPY_RATE_TARGET && n <= COPY_CPU_TARGET),
            _ => "?".into(),
        };
        let pct = |x: Option<f64>| crate::fmt(x.map(|s| s * 100.0), 0);
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} | {} | {met} |",
            crate::fmt(mbs, 0),
            crate::fmt(paired, 0),
            pct(share),
            crate::fmt(row, 0),
            pct(row_share),
            crate::fmt(ns, 2),
            crate::fmt(waits, 1),
        );
    }
}
