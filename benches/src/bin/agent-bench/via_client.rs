//! The same requests through `qga-client` (tokio, typed, with sync and ids), to show
//! what the client library adds on top of the raw socket numbers.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use qga_benches::stats::percentile_sorted;

use crate::scenarios::{Inputs, Samples};

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
