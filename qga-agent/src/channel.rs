//! Channels: the only code of the agent that owns file descriptors. It moves bytes
//! between the host and the dispatcher (framer -> dispatcher -> encoder) and knows
//! nothing of JSON.
//!
//! Plain blocking I/O with `poll(2)`, no async runtime: the agent serves one host
//! connection at a time and runs commands synchronously, as qemu-ga does, so threads
//! or a runtime would only add size and start-up time.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use qga_framing::Decoder;

use crate::config::{Config, Method};
use crate::dispatcher::Dispatcher;
use crate::log::Log;
use crate::AgentError;

/// Set by SIGTERM/SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the SIGTERM/SIGINT handler (without SA_RESTART, so a blocked poll
/// returns) and ignores SIGPIPE (a host that hangs up is a write error, not death).
pub fn install_signal_handlers() -> Result<(), AgentError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let stop = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for (sig, action) in [
        (Signal::SIGTERM, &stop),
        (Signal::SIGINT, &stop),
        (Signal::SIGPIPE, &ignore),
    ] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // SIG_IGN needs no handler at all.
        unsafe { sigaction(sig, action) }
            .map_err(|e| AgentError::Io(format!("failed to install signal handler: {e}")))?;
    }
    Ok(())
}

/// Whether a stop was requested and may be honoured: while filesystems are frozen
/// the agent ignores SIGTERM/SIGINT, as qemu-ga does, so it stays to thaw them.
fn should_stop(dispatcher: &Dispatcher, log: &Log) -> bool {
    if !STOP.load(Ordering::SeqCst) {
        return false;
    }
    if dispatcher.is_frozen() {
        STOP.store(false, Ordering::SeqCst);
        log.warning("ignoring stop request while filesystems are frozen");
        return false;
    }
    true
}

/// Why serving a connection ended.
enum End {
    /// The peer went away (or, for a port, we should reopen it).
    Closed,
    /// A stop was requested.
    Stop,
}

/// Is the fd a listening-style stream (peer gone = done) or a port that stays open
/// while hosts come and go?
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Port,
}

const READ_CHUNK: usize = 256 * 1024;
/// Buffers above this are released once idle, so memory returns to idle after a
/// large request or reply.
const IDLE_CAPACITY: usize = 1024 * 1024;
/// How long the line must be quiet before large buffers are released.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Waits until `fd` is ready for `flags`, a signal arrives, or `deadline` passes.
/// Returns the ready events (empty on timeout or signal).
fn wait(fd: &impl AsFd, flags: PollFlags, deadline: Option<Instant>) -> io::Result<PollFlags> {
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.saturating_duration_since(Instant::now()).as_millis();
            PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::MAX)
        }
    };
    let mut fds = [PollFd::new(fd.as_fd(), flags)];
    match poll(&mut fds, timeout) {
        Ok(0) => Ok(PollFlags::empty()),
        Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
        Err(nix::errno::Errno::EINTR) => Ok(PollFlags::empty()),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Writes all of `out`, waiting (not spinning) while the peer's buffer is full.
fn write_all(file: &mut File, out: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        match file.write(&out[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait(file, PollFlags::POLLOUT, None)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves one connection (or one open port) until the peer leaves or a stop.
fn serve(file: &mut File, kind: Kind, dispatcher: &mut Dispatcher, log: &Log) -> End {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if should_stop(dispatcher, log) {
            return End::Stop;
        }
        // Large buffers are kept while requests keep coming (no page faults per
        // reply) and released after a second of quiet.
        let big = buf.capacity() > IDLE_CAPACITY || out.capacity() > IDLE_CAPACITY;
        let shrink_at = big.then(|| Instant::now() + IDLE_AFTER);
        let thaw_at = dispatcher.auto_thaw_deadline();
        let deadline = match (shrink_at, thaw_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ready = match wait(file, PollFlags::POLLIN, deadline) {
            Ok(r) => r,
            Err(e) => {
                log.error(&format!("poll failed: {e}"));
                return End::Closed;
            }
        };
        if ready.is_empty() {
            if big && shrink_at.is_some_and(|d| Instant::now() >= d) {
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
                out = BytesMut::new();
            }
            if thaw_at.is_some_and(|d| Instant::now() >= d) {
                log.warning("fsfreeze timeout reached: thawing filesystems");
                if let Err(e) = dispatcher.auto_thaw() {
                    log.error(&format!("auto-thaw failed: {}", e.desc));
                }
            }
            continue;
        }
        let n = match file.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => {
                log.debug(&format!("read failed: {e}"));
                0
            }
        };
        if n == 0 {
            match kind {
                Kind::Stream => return End::Closed,
                Kind::Port => {
                    // No host on the other end of the port (it reports HUP/EOF until
                    // one connects). A new host gets a clean parser. Sleep instead of
                    // spinning on the hang-up.
                    decoder.reset();
                    buf = BytesMut::new();
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            }
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = decoder.decode(&mut buf) {
            dispatcher.handle_frame(frame, &mut out);
        }
        if !out.is_empty() {
            if let Err(e) = write_all(file, &out) {
                // A host that left with replies unread: drop them, keep serving.
                log.debug(&format!("write failed: {e}"));
                if kind == Kind::Stream {
                    return End::Closed;
                }
            }
            out.clear();
        }
    }
}

fn listen_loop(
    listener: OwnedFd,
    dispatcher: &mut Dispatcher,
    log: &Log,
) -> Result<(), AgentError> {
    loop {
        if should_stop(dispatcher, log) {
            return Ok(());
        }
        let deadline = dispatcher.auto_thaw_deadline();
        let ready = wait(&listener, PollFlags::POLLIN, deadline)
            .map_err(|e| AgentError::Io(format!("poll failed: {e}")))?;
        if ready.is_empty() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                log.warning("fsfreeze timeout reached: thawing filesystems");
                let _ = dispatcher.auto_thaw();
            }
            continue;
        }
        // Non-blocking: a client that stops reading must leave the agent waiting in
        // poll (where a stop request reaches it), never inside write(2).
        let fd = match nix::sys::socket::accept4(
            listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(AgentError::Io(format!("accept failed: {e}"))),
        };
        // SAFETY-free: accept4 returned a fresh descriptor that nothing else owns.
        let mut conn = File::from(owned(fd));
        log.debug("client connected");
        if let End::Stop = serve(&mut conn, Kind::Stream, dispatcher, log) {
            return Ok(());
        }
        log.debug("client disconnected");
    }
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was just returned by accept4 and is owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn open_channel(config: &Config) -> Result<Channel, AgentError> {
    let err = |e: &dyn std::fmt::Display| {
        AgentError::Channel(format!("error opening channel '{}': {e}", config.path))
    };
    match config.method {
        Method::UnixListen => {
            // A stale socket from an earlier run would make bind fail.
            let _ = std::fs::remove_file(&config.path);
            let l = UnixListener::bind(&config.path).map_err(|e| err(&e))?;
            Ok(Channel::Listener(OwnedFd::from(l)))
        }
        Method::VsockListen => {
            use nix::sys::socket::{
                bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
            };
            let (cid, port) = config
                .path
                .split_once(':')
                .and_then(|(c, p)| Some((c.parse::<u32>().ok()?, p.parse::<u32>().ok()?)))
                .ok_or_else(|| err(&"expected <cid>:<port>"))?;
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| err(&e))?;
            bind(fd.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(|e| err(&e))?;
            listen(&fd, Backlog::new(1).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            Ok(Channel::Listener(fd))
        }
        Method::VirtioSerial | Method::IsaSerial => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&config.path)
                .map_err(|e| err(&e))?;
            if config.method == Method::IsaSerial {
                make_raw(&file).map_err(|e| err(&e))?;
            }
            Ok(Channel::Port(file))
        }
    }
}

/// Raw mode for a serial line, 38400 baud, as qemu-ga sets it.
fn make_raw(file: &File) -> nix::Result<()> {
    use nix::sys::termios::{self, BaudRate, SetArg, SpecialCharacterIndices};
    let mut t = termios::tcgetattr(file)?;
    termios::cfmakeraw(&mut t);
    termios::cfsetspeed(&mut t, BaudRate::B38400)?;
    t.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
    t.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
    termios::tcsetattr(file, SetArg::TCSANOW, &t)?;
    termios::tcflush(file, termios::FlushArg::TCIFLUSH)
}

enum Channel {
    Listener(OwnedFd),
    Port(File),
}

/// Opens the configured channel and serves it until SIGTERM/SIGINT. With
/// `retry_path`, a channel that cannot be opened or fails is retried every 5 s.
pub fn run(config: &Config, dispatcher: &mut Dispatcher, log: &Log) -> Result<(), AgentError> {
    loop {
        let result = open_channel(config).and_then(|channel| match channel {
            Channel::Listener(fd) => listen_loop(fd, dispatcher, log),
            Channel::Port(mut file) => match serve(&mut file, Kind::Port, dispatcher, log) {
                End::Stop => Ok(()),
                End::Closed => Err(AgentError::Channel("channel closed".into())),
            },
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if config.retry_path && !STOP.load(Ordering::SeqCst) => {
                log.warning(&format!("{e}; agent stopped unexpectedly, restarting..."));
                for _ in 0..50 {
                    if STOP.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Err(e) => return Err(e),
        }
    }
}
