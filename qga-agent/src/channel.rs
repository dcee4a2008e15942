//! Channels: the only code of the agent that owns file descriptors. It moves bytes
//! between the host and the dispatcher (framer -> dispatcher -> encoder) and knows
//! nothing of JSON.
//!
//! Non-blocking descriptors and `poll(2)`, no async runtime: the agent serves one
//! host connection at a time and runs commands synchronously, as qemu-ga does, so
//! threads or a runtime would only add size and start-up time. The agent only ever
//! blocks in `poll`, which also watches the pipe the SIGTERM/SIGINT handler writes
//! to, so a stop request ends any wait: for a request, for a client, or for room to
//! write a reply the peer does not read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use qga_framing::Decoder;

use crate::config::{Config, Method};
use crate::dispatcher::Dispatcher;
use crate::log::Log;
use crate::AgentError;

/// Set by SIGTERM/SIGINT.
static STOP: AtomicBool = AtomicBool::new(false);
/// Read and write ends of the pipe the signal handler writes a byte to (-1 until
/// [`install_signal_handlers`]). Every wait polls the read end next to its own
/// descriptor, so a stop reaches the loop whatever it waits for (a request, room to
/// write a reply, a client) and whichever thread the signal lands on.
static STOP_PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    let fd = STOP_PIPE[1].load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) on our non-blocking pipe and errno access are
        // async-signal-safe; errno is restored for the interrupted code. A full pipe
        // (EAGAIN) is fine: it is readable already.
        unsafe {
            let errno = *libc::__errno_location();
            let _ = libc::write(fd, [1u8].as_ptr().cast(), 1);
            *libc::__errno_location() = errno;
        }
    }
}

/// Installs the SIGTERM/SIGINT handler and its wake-up pipe, and ignores SIGPIPE (a
/// host that hangs up is a write error, not death). Calling it again is harmless.
pub fn install_signal_handlers() -> Result<(), AgentError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    if STOP_PIPE[0].load(Ordering::SeqCst) < 0 {
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| AgentError::Io(format!("failed to create signal pipe: {e}")))?;
        // Write end first: the handler only needs it, waits only the read end. The
        // pipe lives as long as the process.
        STOP_PIPE[1].store(w.into_raw_fd(), Ordering::SeqCst);
        STOP_PIPE[0].store(r.into_raw_fd(), Ordering::SeqCst);
    }
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
        // SAFETY: the handler only stores to an atomic and writes to a pipe, both
        // async-signal-safe; SIG_IGN needs no handler at all.
        unsafe { sigaction(sig, action) }
            .map_err(|e| AgentError::Io(format!("failed to install signal handler: {e}")))?;
    }
    Ok(())
}

/// How the loops learn of a stop request: a flag, and a descriptor that becomes
/// readable with it (the signal pipe), so waits end as soon as it is set.
#[derive(Clone, Copy)]
struct Stop<'a> {
    flag: &'a AtomicBool,
    fd: Option<BorrowedFd<'a>>,
}

impl Stop<'static> {
    /// SIGTERM/SIGINT, as installed by [`install_signal_handlers`].
    fn signals() -> Self {
        let fd = STOP_PIPE[0].load(Ordering::SeqCst);
        Stop {
            flag: &STOP,
            // SAFETY: once stored, the pipe's read end is never closed.
            fd: (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) }),
        }
    }
}

impl Stop<'_> {
    fn requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps for `d`, or less if a stop is requested.
    fn sleep(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.requested() && Instant::now() < deadline {
            match self.fd {
                Some(fd) => {
                    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
                    let _ = poll(&mut fds, timeout_until(Some(deadline)));
                }
                None => std::thread::sleep(d.min(Duration::from_millis(100))),
            }
        }
    }
}

fn timeout_until(deadline: Option<Instant>) -> PollTimeout {
    match deadline {
        None => PollTimeout::NONE,
        Some(d) => {
            // Rounded up, so a timer is not polled for again just before it is due.
            let left = d.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1000).min(60_000);
            PollTimeout::try_from(ms as i32).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Waits until `fd` is ready for `flags`, a stop is requested, or `deadline` passes.
/// Returns `fd`'s events (POLLHUP/POLLERR/POLLNVAL included): empty on timeout,
/// stop or EINTR, which the callers tell apart by looking at the clock and the stop.
fn wait_fd(
    fd: BorrowedFd<'_>,
    flags: PollFlags,
    deadline: Option<Instant>,
    stop: &Stop<'_>,
) -> io::Result<PollFlags> {
    if stop.requested() {
        return Ok(PollFlags::empty());
    }
    let mut fds = [PollFd::new(fd, flags), PollFd::new(fd, PollFlags::empty())];
    let n = match stop.fd {
        Some(s) => {
            fds[1] = PollFd::new(s, PollFlags::POLLIN);
            2
        }
        None => 1,
    };
    match poll(&mut fds[..n], timeout_until(deadline)) {
        Ok(_) => Ok(fds[0].revents().unwrap_or(PollFlags::empty())),
        Err(Errno::EINTR) => Ok(PollFlags::empty()),
        Err(e) => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// A connection as the serving loop sees it: a non-blocking descriptor in the
/// binary, a scripted peer in the tests.
trait Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// As [`wait_fd`].
    fn wait(
        &mut self,
        flags: PollFlags,
        deadline: Option<Instant>,
        stop: &Stop<'_>,
    ) -> io::Result<PollFlags>;
}

impl Conn for File {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }

    fn wait(
        &mut self,
        flags: PollFlags,
        deadline: Option<Instant>,
        stop: &Stop<'_>,
    ) -> io::Result<PollFlags> {
        wait_fd(self.as_fd(), flags, deadline, stop)
    }
}

/// Why serving a connection ended.
#[derive(Debug, PartialEq, Eq)]
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
/// How long a port without a host is left alone before it is polled again (it
/// reports a hang-up until a host connects), as qemu-ga does.
const NO_HOST_PAUSE: Duration = Duration::from_millis(100);

/// Thaws if the `--fsfreeze-timeout` deadline has passed.
fn auto_thaw_if_due(dispatcher: &mut Dispatcher, log: &Log) {
    if dispatcher
        .auto_thaw_deadline()
        .is_some_and(|d| Instant::now() >= d)
    {
        log.warning("fsfreeze timeout reached: thawing filesystems");
        if let Err(e) = dispatcher.auto_thaw() {
            log.error(&format!("auto-thaw failed: {}", e.desc));
        }
    }
}

/// Why a reply was not written completely.
#[derive(Debug)]
enum WriteEnd {
    /// A stop was requested while the peer was not reading.
    Stop,
    /// The peer is gone, or the descriptor failed.
    Gone(io::Error),
}

/// Writes all of `out`, waiting in poll (never spinning, never in write(2)) while
/// the peer's buffer is full; the auto-thaw timer keeps running meanwhile.
///
/// A hang-up without room to write ends it: a virtio-serial port without a host
/// reports POLLHUP and answers writes with EAGAIN until a host connects, so
/// retrying would spin.
fn write_all(
    conn: &mut impl Conn,
    out: &[u8],
    stop: &Stop<'_>,
    dispatcher: &mut Dispatcher,
    log: &Log,
) -> Result<(), WriteEnd> {
    let mut done = 0;
    while done < out.len() {
        if stop.requested() {
            return Err(WriteEnd::Stop);
        }
        match conn.write(&out[done..]) {
            Ok(0) => return Err(WriteEnd::Gone(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let ready = conn
                    .wait(PollFlags::POLLOUT, dispatcher.auto_thaw_deadline(), stop)
                    .map_err(WriteEnd::Gone)?;
                if ready.contains(PollFlags::POLLOUT) {
                    continue;
                }
                if ready.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
                    return Err(WriteEnd::Gone(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "peer hung up",
                    )));
                }
                auto_thaw_if_due(dispatcher, log);
            }
            Err(e) => return Err(WriteEnd::Gone(e)),
        }
    }
    Ok(())
}

/// Serves one connection (or one open port) until the peer leaves or a stop.
fn serve(
    conn: &mut impl Conn,
    kind: Kind,
    dispatcher: &mut Dispatcher,
    log: &Log,
    stop: &Stop<'_>,
) -> End {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if stop.requested() {
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
        let ready = match conn.wait(PollFlags::POLLIN, deadline, stop) {
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
            auto_thaw_if_due(dispatcher, log);
            continue;
        }
        // Readable, or hung up: read tells which (0 = no peer).
        let n = match conn.read(&mut chunk) {
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
                    // one connects). A new host gets a clean parser. Pause instead of
                    // spinning on the hang-up.
                    decoder.reset();
                    buf = BytesMut::new();
                    stop.sleep(NO_HOST_PAUSE);
                    continue;
                }
            }
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = decoder.decode(&mut buf) {
            dispatcher.handle_frame(frame, &mut out);
        }
        if !out.is_empty() {
            let written = write_all(conn, &out, stop, dispatcher, log);
            out.clear();
            match written {
                Ok(()) => {}
                Err(WriteEnd::Stop) => return End::Stop,
                Err(WriteEnd::Gone(e)) => {
                    // A host that left with replies unread: drop them. A stream is
                    // done; a port waits for the next host, with a clean parser.
                    log.debug(&format!("write failed, reply dropped: {e}"));
                    match kind {
                        Kind::Stream => return End::Closed,
                        Kind::Port => {
                            decoder.reset();
                            buf.clear();
                        }
                    }
                }
            }
        }
    }
}

fn listen_loop(
    listener: OwnedFd,
    dispatcher: &mut Dispatcher,
    log: &Log,
    stop: &Stop<'_>,
) -> Result<(), AgentError> {
    loop {
        if stop.requested() {
            return Ok(());
        }
        let deadline = dispatcher.auto_thaw_deadline();
        let ready = wait_fd(listener.as_fd(), PollFlags::POLLIN, deadline, stop)
            .map_err(|e| AgentError::Io(format!("poll failed: {e}")))?;
        if ready.is_empty() {
            auto_thaw_if_due(dispatcher, log);
            continue;
        }
        // Non-blocking: a client that stops reading must leave the agent waiting in
        // poll (where a stop request reaches it), never inside write(2).
        let fd = match nix::sys::socket::accept4(
            listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_NONBLOCK | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(fd) => fd,
            // Gone before we got to it, or a signal: wait for the next one.
            Err(Errno::EINTR | Errno::EAGAIN | Errno::ECONNABORTED | Errno::EPROTO) => continue,
            // Out of descriptors (open file handles count against RLIMIT_NOFILE) or
            // memory: the client stays queued. Retrying at once would spin on the
            // still-readable listener, giving up would drop every handle; so retry
            // every second.
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                log.error(&format!("accept failed: {e}; retrying in 1 s"));
                stop.sleep(Duration::from_secs(1));
                continue;
            }
            Err(e) => return Err(AgentError::Io(format!("accept failed: {e}"))),
        };
        let mut conn = File::from(owned(fd));
        log.debug("client connected");
        if let End::Stop = serve(&mut conn, Kind::Stream, dispatcher, log, stop) {
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
            // A client that leaves between poll and accept must not block accept.
            l.set_nonblocking(true).map_err(|e| err(&e))?;
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
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
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
///
/// Filesystems still frozen when it returns are thawed first, as qemu-ga's cleanup
/// does: a stop request is honoured while frozen (qemu-ga 7.2 ignores it), so an
/// agent stopped mid-backup does not leave the guest's filesystems frozen behind it.
pub fn run(config: &Config, dispatcher: &mut Dispatcher, log: &Log) -> Result<(), AgentError> {
    let stop = Stop::signals();
    let result = run_channel(config, dispatcher, log, &stop);
    if dispatcher.is_frozen() {
        log.warning("agent stopping with filesystems frozen: thawing them");
        if let Err(e) = dispatcher.auto_thaw() {
            log.error(&format!("thaw failed: {}", e.desc));
        }
    }
    result
}

fn run_channel(
    config: &Config,
    dispatcher: &mut Dispatcher,
    log: &Log,
    stop: &Stop<'_>,
) -> Result<(), AgentError> {
    loop {
        let result = open_channel(config).and_then(|channel| match channel {
            Channel::Listener(fd) => listen_loop(fd, dispatcher, log, stop),
            Channel::Port(mut file) => match serve(&mut file, Kind::Port, dispatcher, log, stop) {
                End::Stop => Ok(()),
                End::Closed => Err(AgentError::Channel("channel closed".into())),
            },
        });
        match result {
            Ok(()) => return Ok(()),
            Err(e) if config.retry_path && !stop.requested() => {
                log.warning(&format!("{e}; agent stopped unexpectedly, restarting..."));
                stop.sleep(Duration::from_secs(5));
                if stop.requested() {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    impl<'a> Stop<'a> {
        /// A stop that only a test sets, with no pipe to poll.
        fn flag_only(flag: &'a AtomicBool) -> Self {
            Stop { flag, fd: None }
        }
    }

    use qga_ops::fake::FakeOps;

    use super::*;
    use crate::{DispatcherConfig, StateDir};

    /// A scripted peer. While `hung_up` it behaves like a virtio-serial port without
    /// a host: reads return 0, writes EAGAIN, poll reports POLLHUP and never POLLOUT.
    struct Script<'a> {
        input: VecDeque<&'static [u8]>,
        hung_up: bool,
        /// Hang up when the first reply is about to be written.
        hang_up_on_write: bool,
        written: Vec<u8>,
        writes: usize,
        waits: usize,
        /// Requested once the script is played out (a port never ends by itself).
        stop: &'a AtomicBool,
    }

    impl<'a> Script<'a> {
        fn new(stop: &'a AtomicBool, input: &[&'static [u8]]) -> Self {
            Script {
                input: input.iter().copied().collect(),
                hung_up: false,
                hang_up_on_write: false,
                written: Vec::new(),
                writes: 0,
                waits: 0,
                stop,
            }
        }
    }

    impl Conn for Script<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if let Some(chunk) = self.input.pop_front() {
                buf[..chunk.len()].copy_from_slice(chunk);
                return Ok(chunk.len());
            }
            if self.hung_up {
                // The hang-up has been seen: the script is over.
                self.stop.store(true, Ordering::SeqCst);
                return Ok(0);
            }
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.hung_up |= self.hang_up_on_write;
            if self.hung_up {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn wait(
            &mut self,
            flags: PollFlags,
            _: Option<Instant>,
            stop: &Stop<'_>,
        ) -> io::Result<PollFlags> {
            self.waits += 1;
            // A loop that keeps polling a dead peer would never end: stop it, and
            // let the counters tell.
            if self.waits > 1000 || stop.requested() {
                self.stop.store(true, Ordering::SeqCst);
                return Ok(PollFlags::empty());
            }
            if self.hung_up {
                return Ok(PollFlags::POLLHUP);
            }
            if flags.contains(PollFlags::POLLIN) && self.input.is_empty() {
                self.stop.store(true, Ordering::SeqCst);
                return Ok(PollFlags::empty());
            }
            Ok(flags)
        }
    }

    fn dispatcher(fakes: &FakeOps) -> Dispatcher {
        Dispatcher::new(
            fakes.ops(),
            StateDir::in_memory(),
            DispatcherConfig::default(),
        )
        .unwrap()
    }

    fn log() -> Log {
        Log::new(None, false)
    }

    #[test]
    fn a_reply_to_a_port_whose_host_left_is_dropped_without_spinning() {
        let flag = AtomicBool::new(false);
        let stop = Stop::flag_only(&flag);
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let mut port = Script::new(&flag, &[b"{\"execute\":\"guest-ping\"}"]);
        port.hang_up_on_write = true;
        let end = serve(&mut port, Kind::Port, &mut d, &log(), &stop);
        assert_eq!(end, End::Stop);
        // One write got EAGAIN, one poll said POLLHUP without POLLOUT: the reply
        // was dropped there, and the loop went back to waiting for a host.
        assert_eq!(port.writes, 1, "the write was retried");
        assert!(port.waits <= 3, "{} polls", port.waits);
        assert!(port.written.is_empty());
    }

    #[test]
    fn a_stop_request_ends_a_reply_the_peer_does_not_read() {
        let flag = AtomicBool::new(false);
        let stop = Stop::flag_only(&flag);
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        /// Never has room, never hangs up; a stop arrives while waiting.
        struct Full<'a>(&'a AtomicBool, usize);
        impl Conn for Full<'_> {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                unreachable!()
            }
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                self.1 += 1;
                Err(io::ErrorKind::WouldBlock.into())
            }
            fn wait(
                &mut self,
                _: PollFlags,
                _: Option<Instant>,
                _: &Stop<'_>,
            ) -> io::Result<PollFlags> {
                self.0.store(true, Ordering::SeqCst);
                Ok(PollFlags::empty())
            }
        }
        let mut conn = Full(&flag, 0);
        let r = write_all(&mut conn, b"{\"return\":{}}\n", &stop, &mut d, &log());
        assert!(matches!(r, Err(WriteEnd::Stop)), "{r:?}");
        assert_eq!(conn.1, 1);
    }
}
