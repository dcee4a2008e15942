//! Connecting to an agent: unix socket, AF_VSOCK, and the Cloud Hypervisor /
//! Firecracker hybrid vsock (a unix socket with a `CONNECT <port>` handshake).

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{Client, ClientError};

/// How long [`connect_hybrid_vsock`] waits for the VMM's answer to `CONNECT`.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Send buffer asked for on unix sockets: 4 MiB. On a unix stream socket the
/// sender's send buffer bounds what is on its way to the peer, and the kernel's
/// default (`net.core.wmem_default`, usually 208 KiB) holds a seventh of a 1 MiB
/// chunk's guest-file-write: the agent would take each request in pieces, each
/// waiting for this side to be woken and write more. With two writes in flight
/// ([`Client::copy_to_guest`]) both whole requests fit, so the agent finds the next
/// one complete when it is done with the current one. The buffer is a limit, not
/// an allocation: small requests cost the same as before. The kernel caps the
/// request at `net.core.wmem_max` (Linux's default is also 208 KiB; this is then
/// a no-op and copies into the guest simply wake this side more often) and doubles
/// what it grants for its bookkeeping.
const UNIX_SNDBUF: usize = 4 << 20;

/// Asks for [`UNIX_SNDBUF`]; a refusal is harmless (the default stays).
fn widen_send_buffer(s: &UnixStream) {
    let _ = nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::SndBuf, &UNIX_SNDBUF);
}

/// Connects to a unix socket: QEMU's `-chardev socket` for the guest agent port on
/// the host, or an agent in `unix-listen` mode. A failure is a
/// [`ClientError::Connect`] naming the path. The socket's send buffer is widened
/// for bulk writes (up to 4 MiB asked, as far as `net.core.wmem_max` allows).
pub async fn connect_unix(path: impl AsRef<Path>) -> Result<Client<UnixStream>, ClientError> {
    let path = path.as_ref();
    let s = UnixStream::connect(path)
        .await
        .map_err(ClientError::connect(format!(
            "unix socket {}",
            path.display()
        )))?;
    widen_send_buffer(&s);
    Ok(Client::new(s))
}

/// Connects to an agent listening on AF_VSOCK `cid:port`. A failure is a
/// [`ClientError::Connect`] naming the address.
pub async fn connect_vsock(
    cid: u32,
    port: u32,
) -> Result<Client<tokio_vsock::VsockStream>, ClientError> {
    let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(cid, port))
        .await
        .map_err(ClientError::connect(format!("vsock {cid}:{port}")))?;
    Ok(Client::new(s))
}

/// Connects through a hybrid vsock unix socket (Cloud Hypervisor, Firecracker):
/// writes `CONNECT <port>\n` and expects `OK <n>\n` (within 10 s) before speaking
/// QGA. A failure, including a refused or unanswered `CONNECT`, is a
/// [`ClientError::Connect`] naming the socket and the port.
pub async fn connect_hybrid_vsock(
    path: impl AsRef<Path>,
    port: u32,
) -> Result<Client<UnixStream>, ClientError> {
    let path = path.as_ref();
    let target = format!("hybrid vsock {} port {port}", path.display());
    let s = UnixStream::connect(path)
        .await
        .map_err(ClientError::connect(target.clone()))?;
    widen_send_buffer(&s);
    let s = match hybrid_handshake(s, port, HANDSHAKE_TIMEOUT).await {
        Ok(s) => s,
        Err(ClientError::Io(e)) => return Err(ClientError::connect(target)(e)),
        Err(ClientError::Timeout) => {
            return Err(ClientError::connect(target)(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer to CONNECT {port} in {} s",
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            )))
        }
        Err(e) => return Err(e),
    };
    Ok(Client::new(s))
}

/// The hybrid vsock handshake over any stream; returns the stream ready for QGA.
/// The VMM's answer is read one byte at a time, so no QGA byte after it is consumed.
pub async fn hybrid_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    port: u32,
    timeout: Duration,
) -> Result<S, ClientError> {
    let run = async {
        s.write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(ClientError::Io)?;
        let mut line = Vec::new();
        {
            // A BufReader over `&mut s` with capacity 1 never reads past the newline.
            let mut r = BufReader::with_capacity(1, &mut s);
            r.read_until(b'\n', &mut line)
                .await
                .map_err(ClientError::Io)?;
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.starts_with("OK ") {
            Ok(())
        } else if text.is_empty() {
            Err(ClientError::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("hybrid vsock CONNECT {port} refused: connection closed"),
            )))
        } else {
            Err(ClientError::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("hybrid vsock CONNECT {port} refused: {text:?}"),
            )))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Timeout),
    }
}
