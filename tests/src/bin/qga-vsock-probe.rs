//! Runs inside the vsock test guest (tests/tests/vsock.rs): qga-client's plain
//! AF_VSOCK transport, [`qga_client::connect_vsock`], from the guest to an agent on the
//! host (the host kernel here has no vhost-vsock, so the host cannot be the vsock
//! client; vhost-device-vsock hands a guest's connection to host port P to the unix
//! socket `<uds-path>_P`).
//!
//! Usage: `qga-vsock-probe CID:PORT [CID:PORT_NOBODY_LISTENS_ON]`. Prints one line per
//! address on stdout (the guest's console):
//! `vsock-probe: CID:PORT ok version=V commands=N` after sync, ping and guest-info,
//! `vsock-probe: CID:PORT error: E` otherwise. A refused connection is retried for a
//! few seconds (the guest's vsock device may still be probing) unless it is the
//! second address, which must fail.

use std::process::ExitCode;
use std::time::Duration;

fn parse(addr: &str) -> Option<(u32, u32)> {
    let (cid, port) = addr.split_once(':')?;
    Some((cid.parse().ok()?, port.parse().ok()?))
}

async fn probe(cid: u32, port: u32) -> Result<String, String> {
    let mut c = qga_client::connect_vsock(cid, port)
        .await
        .map_err(|e| e.to_string())?;
    c.sync().await.map_err(|e| format!("sync: {e}"))?;
    c.ping().await.map_err(|e| format!("ping: {e}"))?;
    let info = c.info().await.map_err(|e| format!("guest-info: {e}"))?;
    Ok(format!(
        "version={} commands={}",
        info.version,
        info.supported_commands.len()
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addrs) = args
        .iter()
        .map(|a| parse(a).map(|p| (a, p)))
        .collect::<Option<Vec<_>>>()
        .filter(|a| !a.is_empty() && a.len() <= 2)
    else {
        eprintln!("usage: qga-vsock-probe CID:PORT [CID:PORT]");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("vsock-probe: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    for (i, (text, (cid, port))) in addrs.into_iter().enumerate() {
        let tries = if i == 0 { 20 } else { 1 };
        let mut result = Err(String::new());
        for _ in 0..tries {
            result = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), probe(cid, port))
                    .await
                    .unwrap_or_else(|_| Err("no answer in 30 s".into()))
            });
            if result.is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        match result {
            Ok(what) => println!("vsock-probe: {text} ok {what}"),
            Err(e) => println!("vsock-probe: {text} error: {e}"),
        }
    }
    ExitCode::SUCCESS
}
