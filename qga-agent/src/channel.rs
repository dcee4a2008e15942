//! Channels: the only code of the agent that owns file descriptors. It moves bytes
//! between the host and the dispatcher (framer -> dispatcher -> encoder) and knows
//! nothing of JSON.
//!
//! One event loop, hand-written over `epoll(7)` with non-blocking descriptors, owns
//! every descriptor and timer: the pipe the SIGTERM/SIGINT handler writes to, the
//! listener, up to [`MAX_CONNECTIONS`] host connections (one on a port), the
//! auto-thaw deadline, a hostless port's pause, accept retries and idle buffer
//! release. Commands run synchronously, one at a time, through the one dispatcher,
//! so threads or a runtime would only add size and start-up time. The agent only
//! ever blocks in `epoll_wait`, so a stop request ends any wait, and a client that is slow
//! to send or does not read holds nobody else. A large guest-file-read's reply is
//! streamed: the dispatcher produces it a piece at a time as the connection takes
//! what went before (`Dispatcher::handle_frame_streamed`).
//!
//! Memory is bounded whatever the hosts do: each connection holds at most one
//! partial request (the framer's 64 MiB limit) plus one [`READ_CHUNK`] of input, and
//! at most [`REPLY_BUDGET`] plus one reply of output: past the budget it is neither
//! read nor dispatched until the host reads. The README gives the formula.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use qga_framing::Decoder;

use crate::commands::files::ReadTail;
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

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A connection's byte stream: a non-blocking descriptor in the binary, a scripted
/// peer in the tests. Both answer `WouldBlock` instead of waiting.
trait Conn {
    /// Reads at most `max` bytes onto the end of `buf`.
    fn read_append(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize>;
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Conn for File {
    /// Straight into the buffer's spare room: no staging chunk, no second copy
    /// (that copy was 4% of the agent's time on large writes).
    fn read_append(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        buf.reserve(max);
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        // SAFETY: the kernel writes at most `len` bytes into the spare capacity,
        // which is valid for writes of that length; only the bytes it reports
        // written are then taken into the buffer.
        let n = unsafe { libc::read(self.as_raw_fd(), spare.as_mut_ptr().cast(), len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the first `n` spare bytes were just written by read(2).
        unsafe { buf.set_len(buf.len() + n) };
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }
}

/// Is the fd a listening-style stream (peer gone = done) or a port that stays open
/// while hosts come and go?
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Stream,
    Port,
}

/// How much is read from one connection per wake-up: the same for every
/// connection, so a fast client cannot starve a slow one.
pub const READ_CHUNK: usize = 256 * 1024;
/// Unsent reply bytes a connection may hold before its further requests wait:
/// while over it, the connection is neither decoded nor read (the kernel's socket
/// buffer then holds the host back). One more reply can take it past the budget,
/// so a connection's output is at most the budget plus its largest reply. Large
/// enough that pipelined small replies go out in few writes.
pub const REPLY_BUDGET: usize = 1024 * 1024;
/// The send buffer asked for on accepted connections (the kernel doubles it, so
/// up to 1 MiB of replies can wait in the kernel per connection, capped by
/// `net.core.wmem_max`; many guests cap it at 208 KiB).
const SEND_BUFFER: usize = 512 * 1024;
/// Host connections served at once on unix-listen and vsock-listen; more clients
/// wait in the listen backlog and are accepted as connections close.
pub const MAX_CONNECTIONS: usize = 8;
/// Buffers above this are released once idle, so memory returns to idle after a
/// large request or reply.
const IDLE_CAPACITY: usize = 1024 * 1024;
/// How long a connection must be quiet before its large buffers are released:
/// well under a second, so memory is back to idle a second after any request, yet
/// long enough that a host streaming a file keeps its buffers between requests.
const IDLE_AFTER: Duration = Duration::from_millis(250);
/// How long a port without a host is left alone before it is polled again (it
/// reports a hang-up until a host connects), as qemu-ga does.
const NO_HOST_PAUSE: Duration = Duration::from_millis(100);
/// How long a listener is left alone after running out of descriptors at accept.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// After a connection released its large buffers: the dispatcher's file-data
/// buffer goes too (a write's payload up to 1 MiB is decoded whole into it), and
/// the allocator hands what it holds free back to the kernel.
fn release_memory(dispatcher: &mut Dispatcher) {
    dispatcher.release_buffers();
    return_free_memory();
}

/// Hands memory the allocator holds free back to the kernel. glibc's malloc keeps
/// freed blocks below its (adaptive, up to 32 MiB) mmap threshold in its heap, so a
/// few large requests would otherwise leave the agent tens of MiB above idle for
/// good. Called only when a connection's large buffers are released, so it costs
/// nothing on the request path. Other C libraries return large blocks on free.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

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

/// Whether a connection is still worth polling after it was served.
#[derive(Debug, PartialEq, Eq)]
enum Status {
    Open,
    /// The peer is gone (streams only: a port waits for the next host).
    Closed,
}

/// One host connection (or the open port): its framer and its buffers. The loop
/// polls it for what [`interest`](Connection::interest) says and hands what poll
/// reported to [`serve`](Connection::serve); it never blocks and never waits.
struct Connection<C> {
    io: C,
    kind: Kind,
    decoder: Decoder,
    /// Received bytes not yet framed: at most one partial message (the framer's
    /// 64 MiB limit) plus one read chunk, as bytes are read only once the framer
    /// has taken every complete message out.
    input: BytesMut,
    /// Encoded replies; `out[sent..]` is not written yet.
    out: BytesMut,
    sent: usize,
    /// The last write found no room: the next POLLOUT resumes; a hang-up without
    /// it means the replies will never be read.
    blocked: bool,
    /// The host stopped sending (a stream's EOF): its requests are answered, then
    /// the connection closes.
    eof: bool,
    /// A port without a host is not polled until then.
    paused_until: Option<Instant>,
    /// When bytes last moved, for releasing large buffers once idle.
    last_active: Instant,
    /// A streamed reply still being produced (see `dispatch`).
    tail: Option<ReadTail>,
    /// The most `input` and `out` held since they were last released: what they
    /// keep allocated (`capacity()` cannot tell: a framed message split off the
    /// input leaves the allocation shared, and it is reused once the message goes).
    peak: usize,
    /// The loop's name for it in its epoll set (0: not named yet).
    token: u64,
    /// What the loop's epoll set holds it for.
    registered: PollFlags,
}

impl<C: Conn> Connection<C> {
    fn new(io: C, kind: Kind) -> Self {
        Connection {
            io,
            kind,
            decoder: Decoder::new(),
            input: BytesMut::new(),
            out: BytesMut::new(),
            sent: 0,
            blocked: false,
            eof: false,
            paused_until: None,
            last_active: Instant::now(),
            tail: None,
            peak: 0,
            token: 0,
            registered: PollFlags::empty(),
        }
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Whether more requests may be framed and dispatched now.
    fn under_budget(&self) -> bool {
        self.unsent() < REPLY_BUDGET
    }

    /// Whether more request bytes may be read: not past end of input, and only once
    /// every complete request read so far is answered or under way (what bounds the
    /// input to one partial request and one read). While a streamed reply is being
    /// produced, requests after it wait in the input, so nothing more is read.
    fn may_read(&self) -> bool {
        !self.eof && self.under_budget() && self.tail.is_none()
    }

    /// What to poll for; empty while paused (the loop leaves it out then).
    fn interest(&self) -> PollFlags {
        let mut flags = PollFlags::empty();
        if self.paused_until.is_some() {
            return flags;
        }
        if self.may_read() {
            flags |= PollFlags::POLLIN;
        }
        if self.unsent() > 0 {
            flags |= PollFlags::POLLOUT;
        }
        flags
    }

    /// The next time [`on_timer`](Connection::on_timer) has something to do.
    fn next_timer(&self) -> Option<Instant> {
        earliest(
            self.paused_until,
            self.releasable().then(|| self.last_active + IDLE_AFTER),
        )
    }

    /// Large buffers that would shrink if released: only then is a timer armed,
    /// so a due timer always gets something done (no wake-ups in a loop).
    fn releasable(&self) -> bool {
        self.peak > IDLE_CAPACITY && self.input.len() + self.unsent() < IDLE_CAPACITY
    }

    /// Ends a port's pause, and releases large buffers after a quiet spell (kept
    /// while requests keep coming: no page faults per reply). Returns whether it
    /// released them: the caller then releases the dispatcher's and hands the
    /// memory back ([`release_memory`]).
    fn on_timer(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
        }
        if self.releasable() && now >= self.last_active + IDLE_AFTER {
            self.input = BytesMut::from(&self.input[..]);
            self.out = BytesMut::from(&self.out[self.sent..]);
            self.sent = 0;
            self.peak = self.input.len().max(self.out.len());
            return true;
        }
        false
    }

    /// Handles what poll reported: writes pending replies, frames and dispatches
    /// requests while under the budget, reads one chunk if the framer needs more,
    /// and writes the new replies at once.
    fn serve(&mut self, ready: PollFlags, dispatcher: &mut Dispatcher, log: &Log) -> Status {
        let hung_up =
            ready.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
        if self.unsent() > 0 {
            if ready.contains(PollFlags::POLLOUT) {
                if let Err(e) = self.flush() {
                    return self.gone(&e, log);
                }
            } else if hung_up && self.blocked {
                // A virtio-serial port without a host reports POLLHUP and answers
                // writes with EAGAIN: retrying would spin.
                return self.gone(
                    &io::Error::new(io::ErrorKind::BrokenPipe, "peer hung up"),
                    log,
                );
            }
        }
        // Requests held back by the budget, now that replies have left.
        if let Err(e) = self.pump(dispatcher) {
            return self.gone(&e, log);
        }
        if self.may_read() && (ready.contains(PollFlags::POLLIN) || hung_up) {
            // Readable, or hung up: read tells which (0 = no peer).
            match self.io.read_append(&mut self.input, READ_CHUNK) {
                Ok(0) => {
                    if let Some(status) = self.end_of_input(log) {
                        return status;
                    }
                }
                Ok(_) => {
                    self.last_active = Instant::now();
                    self.peak = self.peak.max(self.input.len());
                    if let Err(e) = self.pump(dispatcher) {
                        return self.gone(&e, log);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => {
                    log.debug(&format!("read failed: {e}"));
                    if let Some(status) = self.end_of_input(log) {
                        return status;
                    }
                }
            }
        }
        if self.eof && self.unsent() == 0 && self.tail.is_none() {
            // Every complete request is answered: the framer held no more.
            return Status::Closed;
        }
        Status::Open
    }

    /// Dispatches and writes until the peer has no room (`blocked`) or the framer
    /// needs more bytes and every reply is out. Stopping as soon as a write drains
    /// the output would leave requests buffered with nothing to wake the loop for
    /// them: a peer that reads as fast as we write empties the output every time.
    fn pump(&mut self, dispatcher: &mut Dispatcher) -> io::Result<()> {
        loop {
            self.dispatch(dispatcher);
            if self.unsent() == 0 || self.blocked {
                return Ok(());
            }
            self.flush()?;
        }
    }

    /// Frames and dispatches buffered requests until the framer needs more bytes or
    /// the unsent replies reach the budget.
    ///
    /// A large guest-file-read's reply is streamed: its next piece is produced only
    /// once everything before it has been written, so the output holds one piece's
    /// text (256 KiB) rather than the whole reply, still in the CPU's cache when the
    /// kernel copies it. Requests after it wait for its end.
    fn dispatch(&mut self, dispatcher: &mut Dispatcher) {
        let no_input = self.input.is_empty() && !self.decoder.is_mid_message();
        if !self.under_budget() || (no_input && self.tail.is_none()) {
            return;
        }
        // Written replies leave before new ones are appended, so the buffer holds
        // unsent bytes only (at most the budget here: a copy of that, at most).
        if self.sent > 0 {
            self.out.copy_within(self.sent.., 0);
            self.out.truncate(self.out.len() - self.sent);
            self.sent = 0;
        }
        loop {
            let unsent = self.unsent();
            if let Some(tail) = &mut self.tail {
                if unsent > 0 {
                    break;
                }
                if dispatcher.continue_reply(tail, &mut self.out) {
                    self.tail = None;
                }
                continue;
            }
            if !self.under_budget() {
                break;
            }
            match self.decoder.decode(&mut self.input) {
                Some(frame) => self.tail = dispatcher.handle_frame_streamed(frame, &mut self.out),
                None => break,
            }
        }
        self.peak = self.peak.max(self.out.len());
    }

    /// Writes unsent replies until done or the peer has no room (`blocked`).
    fn flush(&mut self) -> io::Result<()> {
        self.blocked = false;
        while self.sent < self.out.len() {
            match self.io.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    self.last_active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.blocked = true;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }

    /// The peer sent EOF (or reading failed). A stream answers what it got, then
    /// closes (`None` while replies are still going out); a port has no host.
    fn end_of_input(&mut self, log: &Log) -> Option<Status> {
        match self.kind {
            Kind::Stream => {
                self.eof = true;
                (self.unsent() == 0 && self.tail.is_none()).then_some(Status::Closed)
            }
            Kind::Port => {
                self.no_host(log);
                Some(Status::Open)
            }
        }
    }

    /// The peer will not read the replies: drop them. A stream is done; a port
    /// waits for its next host.
    fn gone(&mut self, e: &io::Error, log: &Log) -> Status {
        log.debug(&format!("write failed, reply dropped: {e}"));
        match self.kind {
            Kind::Stream => Status::Closed,
            Kind::Port => {
                self.no_host(log);
                Status::Open
            }
        }
    }

    /// A port's host left (it reports HUP/EOF until one connects): the next host
    /// gets a clean parser and no stale replies, and the port is left alone for a
    /// moment instead of spinning on the hang-up.
    fn no_host(&mut self, log: &Log) {
        if self.unsent() > 0 {
            log.debug("host left: unsent replies dropped");
        }
        self.decoder.reset();
        self.input = BytesMut::new();
        self.out = BytesMut::new();
        // The rest of a streamed reply was the old host's too.
        self.tail = None;
        self.sent = 0;
        self.blocked = false;
        self.peak = 0;
        self.paused_until = Some(Instant::now() + NO_HOST_PAUSE);
    }
}

/// A listening socket and, after running out of descriptors, when to try again.
struct Listener {
    fd: OwnedFd,
    retry_at: Option<Instant>,
    /// What the loop's epoll set holds it for.
    registered: PollFlags,
}

impl Listener {
    /// Accepts waiting clients while there is room for them. `Err` only for an
    /// error that retrying cannot fix.
    fn accept(&mut self, conns: &mut Vec<Connection<File>>, log: &Log) -> Result<(), AgentError> {
        use nix::sys::socket::{accept4, SockFlag};
        while conns.len() < MAX_CONNECTIONS {
            // Non-blocking: a client that stops reading must leave the agent waiting
            // in poll (where a stop request and the other clients reach it), never
            // inside write(2).
            match accept4(
                self.fd.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(fd) => {
                    log.debug("client connected");
                    let fd = owned(fd);
                    // Large replies go out in fewer, larger writes, each waking the
                    // host once: a 16 MiB read's reply in ~1 MiB steps instead of
                    // the default ~200 KiB (the kernel doubles the value and caps it
                    // at net.core.wmem_max). Best effort: a refusal changes nothing.
                    let _ = nix::sys::socket::setsockopt(
                        &fd,
                        nix::sys::socket::sockopt::SndBuf,
                        &SEND_BUFFER,
                    );
                    conns.push(Connection::new(File::from(fd), Kind::Stream));
                }
                // None left, or gone before we got to it: poll again.
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => {}
                // Out of descriptors (open file handles count against RLIMIT_NOFILE)
                // or memory: the client stays queued. Retrying at once would spin on
                // the still-readable listener, giving up would drop every handle; so
                // retry every second, serving the other clients meanwhile.
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    log.error(&format!("accept failed: {e}; retrying in 1 s"));
                    self.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return Ok(());
                }
                Err(e) => return Err(AgentError::Io(format!("accept failed: {e}"))),
            }
        }
        Ok(())
    }
}

/// The loop's descriptors registered with one epoll instance. A descriptor's
/// registration changes only when what it waits for changes, so a round trip costs
/// one `epoll_wait` instead of a poll set rebuilt (and re-armed in the kernel) for
/// every descriptor on every turn. A descriptor that waits for nothing is left out,
/// not kept with an empty mask: epoll reports hang-ups even then, and a paused port
/// without a host would wake the loop in a spin.
struct Watch {
    epoll: Epoll,
}

/// Token of the stop pipe; the listener's is 1, connections' start at 2.
const STOP_TOKEN: u64 = 0;
const LISTENER_TOKEN: u64 = 1;

impl Watch {
    fn new() -> Result<Self, AgentError> {
        Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map(|epoll| Watch { epoll })
            .map_err(|e| AgentError::Channel(format!("epoll_create1 failed: {e}")))
    }

    /// Makes `fd` (registered for `*registered`) wait for `want` under `token`.
    fn set(
        &self,
        fd: BorrowedFd<'_>,
        token: u64,
        registered: &mut PollFlags,
        want: PollFlags,
    ) -> Result<(), AgentError> {
        if *registered == want {
            return Ok(());
        }
        let mut event = EpollEvent::new(epoll_flags(want), token);
        let result = if want.is_empty() {
            self.epoll.delete(fd)
        } else if registered.is_empty() {
            self.epoll.add(fd, event)
        } else {
            self.epoll.modify(fd, &mut event)
        };
        result.map_err(|e| AgentError::Channel(format!("epoll_ctl failed: {e}")))?;
        *registered = want;
        Ok(())
    }
}

fn epoll_flags(p: PollFlags) -> EpollFlags {
    let mut e = EpollFlags::empty();
    if p.contains(PollFlags::POLLIN) {
        e |= EpollFlags::EPOLLIN;
    }
    if p.contains(PollFlags::POLLOUT) {
        e |= EpollFlags::EPOLLOUT;
    }
    e
}

fn poll_flags(e: EpollFlags) -> PollFlags {
    let mut p = PollFlags::empty();
    for (from, to) in [
        (EpollFlags::EPOLLIN, PollFlags::POLLIN),
        (EpollFlags::EPOLLOUT, PollFlags::POLLOUT),
        (EpollFlags::EPOLLHUP, PollFlags::POLLHUP),
        (EpollFlags::EPOLLERR, PollFlags::POLLERR),
    ] {
        if e.contains(from) {
            p |= to;
        }
    }
    p
}

/// When the loop polls instead of sleeping, to spare a host the cost of waking an
/// idle CPU when its next request is already on the way.
///
/// Where waking a sleeping CPU is expensive (a virtual CPU that halted: on the
/// Firecracker guests the benches run on, a round trip between two CPUs took ~90 us
/// with the agent asleep between requests and ~27 us with it polling), the agent keeps
/// polling its descriptors for up to `max` after serving a request, the way Linux's
/// `haltpoll` and KVM's halt polling keep a CPU busy for a while before halting it.
/// It only polls when it pays, and gives way when another task needs the CPU:
///
/// * only a wait for the next request polls (every reply sent): a wait for a host
///   to read replies sleeps, since on one CPU the host is the task that needs it;
/// * polling starts only after a sleep that ended between [`SLEPT_CHEAPLY`] and `max`
///   after it began: a request soon enough that polling would have caught it, late
///   enough that sleeping cost a real wake-up. A host that sends one request a second
///   never sees the agent poll; one on the agent's own CPU, whose requests come
///   within microseconds of the agent going to sleep, hardly ever does;
/// * it stops, until the next such sleep, when a poll runs its whole window without
///   a request (the burst is over: at most `max` of CPU spent per burst), or when
///   yielding the CPU between polls let another task run ([`YIELD_SWITCHED`]): the
///   agent then shares its CPU, and sleeping hands it over at least as well.
///
/// `max` zero turns polling off (`--busy-poll 0`).
struct BusyPoll {
    max: Duration,
    /// How long the next wait polls before sleeping (zero or `max`).
    window: Duration,
}

/// A sleep shorter than this cost no real wake-up (or the peer shares the CPU).
const SLEPT_CHEAPLY: Duration = Duration::from_micros(20);
/// A `sched_yield` that took this long ran another task on this CPU: one that
/// returns at once took ~0.3 us on the benches' machine, a switch to a host that
/// answers a reply and back 2 us or more. (At 5 us, a host on the agent's own CPU
/// answered within the yield often enough to keep polling on, a handoff through
/// `sched_yield` that cost each round trip ~6 % against sleeping in `epoll_wait`.)
const YIELD_SWITCHED: Duration = Duration::from_nanos(1500);

impl BusyPoll {
    fn new(max: Duration) -> Self {
        BusyPoll {
            max,
            window: Duration::ZERO,
        }
    }

    /// Whether it may ever poll (`--busy-poll` not 0).
    fn enabled(&self) -> bool {
        !self.max.is_zero()
    }

    /// Polls `watch` without sleeping until something is ready (the number of
    /// events), the window ends or another task wants the CPU (0: sleep now).
    fn poll(&mut self, watch: &Watch, events: &mut [EpollEvent]) -> usize {
        if self.window.is_zero() {
            return 0;
        }
        let start = Instant::now();
        loop {
            if let Ok(n @ 1..) = watch.epoll.wait(events, PollTimeout::ZERO) {
                return n;
            }
            if start.elapsed() >= self.window {
                self.window = Duration::ZERO;
                return 0;
            }
            let before = Instant::now();
            let _ = nix::sched::sched_yield();
            if before.elapsed() >= YIELD_SWITCHED {
                self.window = Duration::ZERO;
                return watch.epoll.wait(events, PollTimeout::ZERO).unwrap_or(0);
            }
        }
    }

    /// A sleeping wait of `slept` ended, with `events` ready (0: timed out).
    fn slept(&mut self, slept: Duration, events: usize) {
        self.window = if events > 0 && slept >= SLEPT_CHEAPLY && slept <= self.max {
            self.max
        } else {
            Duration::ZERO
        };
    }
}

/// The one loop that owns every descriptor and timer: the stop pipe, the listener
/// (watched only while under [`MAX_CONNECTIONS`]), each connection (for input while
/// under its [`REPLY_BUDGET`], for room to write while it has unsent replies), the
/// auto-thaw deadline, ports' pauses, idle buffer release and accept retries. It
/// sleeps in `epoll_wait` whenever no peer can make progress, and returns on a stop.
///
/// Requests are dispatched one at a time through the one dispatcher, in the order
/// they are read; connections are served in the order they were accepted, one read
/// chunk each per wake-up.
fn event_loop(
    mut listener: Option<Listener>,
    mut conns: Vec<Connection<File>>,
    dispatcher: &mut Dispatcher,
    log: &Log,
    stop: &Stop<'_>,
    busy_poll: Duration,
) -> Result<(), AgentError> {
    let watch = Watch::new()?;
    if let Some(s) = stop.fd {
        let mut registered = PollFlags::empty();
        watch.set(s, STOP_TOKEN, &mut registered, PollFlags::POLLIN)?;
    }
    let mut next_token = LISTENER_TOKEN + 1;
    let mut events = [EpollEvent::empty(); MAX_CONNECTIONS + 2];
    // What epoll reported for each connection, in `conns` order.
    let mut ready: Vec<PollFlags> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut busy = BusyPoll::new(busy_poll);
    loop {
        if stop.requested() {
            return Ok(());
        }
        let now = Instant::now();
        auto_thaw_if_due(dispatcher, log);
        let mut deadline = dispatcher.auto_thaw_deadline();
        let mut released = false;
        for c in &mut conns {
            released |= c.on_timer(now);
            deadline = earliest(deadline, c.next_timer());
        }
        if released {
            release_memory(dispatcher);
        }
        if let Some(l) = &mut listener {
            if l.retry_at.is_some_and(|t| now >= t) {
                l.retry_at = None;
            }
            deadline = earliest(deadline, l.retry_at);
            let accepting = l.retry_at.is_none() && conns.len() < MAX_CONNECTIONS;
            let want = if accepting {
                PollFlags::POLLIN
            } else {
                PollFlags::empty()
            };
            watch.set(l.fd.as_fd(), LISTENER_TOKEN, &mut l.registered, want)?;
        }
        for c in &mut conns {
            if c.token == 0 {
                c.token = next_token;
                next_token += 1;
            }
            let want = c.interest();
            watch.set(c.io.as_fd(), c.token, &mut c.registered, want)?;
        }

        // Only a wait for the next request polls first: one for a host to make
        // room for replies sleeps (on one CPU, that host is who needs it).
        let for_requests = conns.iter().all(|c| c.unsent() == 0);
        let polled = if for_requests {
            busy.poll(&watch, &mut events)
        } else {
            0
        };
        let waited = if polled > 0 {
            Ok(polled)
        } else {
            // Timed only where it decides whether to poll next time.
            let began = (for_requests && busy.enabled()).then(Instant::now);
            let waited = watch.epoll.wait(&mut events, timeout_until(deadline));
            if let (Ok(n), Some(began)) = (waited, began) {
                busy.slept(began.elapsed(), n);
            }
            waited
        };
        let n = match waited {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(AgentError::Channel(format!("epoll_wait failed: {e}"))),
        };
        if stop.requested() {
            return Ok(());
        }
        let mut listener_ready = false;
        ready.clear();
        ready.resize(conns.len(), PollFlags::empty());
        for e in &events[..n] {
            match e.data() {
                STOP_TOKEN => {}
                LISTENER_TOKEN => listener_ready = true,
                token => {
                    if let Some(i) = conns.iter().position(|c| c.token == token) {
                        ready[i] |= poll_flags(e.events());
                    }
                }
            }
        }

        // Connections in accept order; closed ones leave without disturbing it.
        let mut i = 0;
        let mut k = 0;
        while i < conns.len() {
            let flags = ready[k];
            k += 1;
            if !flags.is_empty() && conns[i].serve(flags, dispatcher, log) == Status::Closed {
                let gone = conns.remove(i);
                let mut registered = gone.registered;
                // Closing the descriptor would drop it from the set too; this keeps
                // the set exact even if the descriptor were shared.
                let _ = watch.set(
                    gone.io.as_fd(),
                    gone.token,
                    &mut registered,
                    PollFlags::empty(),
                );
                log.debug("client disconnected");
                continue;
            }
            i += 1;
        }
        if listener_ready {
            if let Some(l) = &mut listener {
                l.accept(&mut conns, log)?;
            }
        }
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
            // Clients past MAX_CONNECTIONS wait here until one closes.
            listen(&fd, Backlog::new(128).map_err(|e| err(&e))?).map_err(|e| err(&e))?;
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
    let busy_poll = Duration::from_micros(config.busy_poll_us);
    loop {
        let result = open_channel(config).and_then(|channel| match channel {
            Channel::Listener(fd) => {
                let listener = Listener {
                    fd,
                    retry_at: None,
                    registered: PollFlags::empty(),
                };
                event_loop(Some(listener), Vec::new(), dispatcher, log, stop, busy_poll)
            }
            Channel::Port(file) => {
                let port = Connection::new(file, Kind::Port);
                event_loop(None, vec![port], dispatcher, log, stop, busy_poll)
            }
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

    use qga_ops::fake::FakeOps;

    use super::*;
    use crate::{DispatcherConfig, StateDir};

    /// A scripted peer. While `hung_up` it behaves like a virtio-serial port without
    /// a host: reads return 0, writes EAGAIN, poll reports POLLHUP and never POLLOUT.
    /// While `full`, writes find no room and poll never reports POLLOUT.
    struct Script {
        input: VecDeque<Vec<u8>>,
        hung_up: bool,
        /// Hang up when the first reply is about to be written.
        hang_up_on_write: bool,
        full: bool,
        written: Vec<u8>,
        writes: usize,
        polls: usize,
    }

    impl Script {
        fn new(input: &[&[u8]]) -> Self {
            Script {
                input: input.iter().map(|c| c.to_vec()).collect(),
                hung_up: false,
                hang_up_on_write: false,
                full: false,
                written: Vec::new(),
                writes: 0,
                polls: 0,
            }
        }

        /// What poll would report for `interest`.
        fn poll(&mut self, interest: PollFlags) -> PollFlags {
            self.polls += 1;
            if self.hung_up {
                return PollFlags::POLLHUP;
            }
            let mut ready = PollFlags::empty();
            if interest.contains(PollFlags::POLLIN) && !self.input.is_empty() {
                ready |= PollFlags::POLLIN;
            }
            if interest.contains(PollFlags::POLLOUT) && !self.full {
                ready |= PollFlags::POLLOUT;
            }
            ready
        }
    }

    impl Conn for Script {
        fn read_append(&mut self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
            if let Some(mut chunk) = self.input.pop_front() {
                let n = chunk.len().min(max);
                buf.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.input.push_front(chunk.split_off(n));
                }
                return Ok(n);
            }
            if self.hung_up {
                return Ok(0);
            }
            Err(io::ErrorKind::WouldBlock.into())
        }

        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.writes += 1;
            self.hung_up |= self.hang_up_on_write;
            if self.hung_up || self.full {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
    }

    /// Runs the loop's part for one scripted connection: poll, serve, until poll
    /// reports nothing (the loop would sleep) or the connection pauses or closes.
    /// Returns how it ended.
    fn drive(conn: &mut Connection<Script>, d: &mut Dispatcher, rounds: usize) -> &'static str {
        for _ in 0..rounds {
            if conn.paused_until.is_some() {
                return "paused";
            }
            let ready = conn.io.poll(conn.interest());
            if ready.is_empty() {
                return "asleep";
            }
            if conn.serve(ready, d, &log()) == Status::Closed {
                return "closed";
            }
        }
        "spinning"
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

    const PING: &[u8] = b"{\"execute\":\"guest-ping\"}";
    const PONG: &[u8] = b"{\"return\":{}}\n";

    #[test]
    fn a_reply_to_a_port_whose_host_left_is_dropped_without_spinning() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let mut port = Connection::new(Script::new(&[PING]), Kind::Port);
        port.io.hang_up_on_write = true;
        assert_eq!(drive(&mut port, &mut d, 100), "paused");
        // One write got EAGAIN, one poll said POLLHUP without POLLOUT: the reply
        // was dropped there, and the port is left alone for a while.
        assert_eq!(port.io.writes, 1, "the write was retried");
        assert!(port.io.polls <= 3, "{} polls", port.io.polls);
        assert!(port.io.written.is_empty());
        assert_eq!(port.unsent(), 0, "the reply is still held");
        assert!(port.interest().is_empty(), "a paused port is polled");
        // The pause ends; the host is back with a new request and gets a clean
        // parser and only its own reply.
        next_host_pings(&mut port, &mut d);
    }

    /// A paused port's pause ends and a new host, reading and writing as it should,
    /// sends a ping: it must get that ping's reply and nothing else.
    fn next_host_pings(port: &mut Connection<Script>, d: &mut Dispatcher) {
        port.on_timer(Instant::now() + NO_HOST_PAUSE);
        port.io.hung_up = false;
        port.io.hang_up_on_write = false;
        port.io.full = false;
        port.io.input.push_back(PING.to_vec());
        assert_eq!(drive(port, d, 100), "asleep");
        assert_eq!(port.io.written, PONG);
    }

    #[test]
    fn a_port_without_a_host_is_paused_not_spun_on() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let mut port = Connection::new(Script::new(&[b"{\"execute\":"]), Kind::Port);
        port.io.hung_up = true;
        assert_eq!(drive(&mut port, &mut d, 100), "paused");
        assert!(port.io.polls <= 2, "{} polls", port.io.polls);
        // The host's half request is forgotten with it.
        assert!(port.input.is_empty() && !port.decoder.is_mid_message());
        let due = port.next_timer().unwrap();
        assert!(due > Instant::now() + NO_HOST_PAUSE / 2, "pause too short");
    }

    #[test]
    fn a_peer_that_does_not_read_stops_dispatching_at_the_budget() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        // Far more pings than the budget has room for replies, sent at once.
        let pings = REPLY_BUDGET / PONG.len() * 3;
        let input = PING.repeat(pings);
        let mut conn = Connection::new(Script::new(&[&input]), Kind::Stream);
        conn.io.full = true;
        assert_eq!(drive(&mut conn, &mut d, 1000), "asleep");
        // Over the budget by less than one reply; the rest of the requests wait,
        // unread or unframed, and the connection is no longer polled for input.
        let held = conn.unsent();
        assert!(
            held >= REPLY_BUDGET && held < REPLY_BUDGET + PONG.len(),
            "{held}"
        );
        assert!(!conn.interest().contains(PollFlags::POLLIN));
        assert!(conn.interest().contains(PollFlags::POLLOUT));
        let unread: usize = conn.io.input.iter().map(Vec::len).sum();
        assert!(unread > 0, "everything was read");
        assert!(
            conn.input.len() <= READ_CHUNK,
            "{} bytes buffered",
            conn.input.len()
        );
        // The peer reads: every request is answered, once, in order.
        conn.io.full = false;
        assert_eq!(drive(&mut conn, &mut d, 10_000), "asleep");
        assert_eq!(conn.io.written.len(), pings * PONG.len());
        assert!(conn.io.written.chunks(PONG.len()).all(|r| r == PONG));
        assert_eq!(conn.unsent(), 0);
    }

    #[test]
    fn requests_held_by_the_budget_are_answered_when_the_peer_reads_at_once() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        // Fits in one read; the replies (a few KiB each) are many times the budget.
        let requests = 2000;
        let input = b"{\"execute\":\"guest-info\"}".repeat(requests);
        assert!(input.len() < READ_CHUNK);
        // Every write finds room: the output drains each time, and nothing more
        // comes from the peer to wake the loop for the requests still buffered.
        let mut conn = Connection::new(Script::new(&[&input]), Kind::Stream);
        assert_eq!(drive(&mut conn, &mut d, 10), "asleep");
        let replies = conn.io.written.iter().filter(|&&b| b == b'\n').count();
        assert!(conn.io.written.len() > 4 * REPLY_BUDGET);
        assert_eq!(replies, requests);
        assert!(conn.interest().contains(PollFlags::POLLIN));
    }

    #[test]
    fn a_stream_answers_what_it_got_before_closing_on_eof() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let input = PING.repeat(3);
        let mut conn = Connection::new(Script::new(&[&input, b"{\"execute\""]), Kind::Stream);
        conn.io.full = true;
        assert_eq!(drive(&mut conn, &mut d, 100), "asleep");
        // EOF arrives while the replies wait for room: they still go out.
        conn.io.hung_up = true;
        conn.io.full = false;
        conn.io.input.clear();
        // The hang-up is seen (POLLHUP) with replies pending and no room: dropped.
        assert_eq!(drive(&mut conn, &mut d, 100), "closed");
        assert!(conn.io.written.is_empty());

        // Half-closed instead: EOF, but the peer still reads.
        let mut conn = Connection::new(Script::new(&[&input]), Kind::Stream);
        assert_eq!(conn.serve(PollFlags::POLLIN, &mut d, &log()), Status::Open);
        assert_eq!(
            conn.serve(PollFlags::POLLIN, &mut d, &log()),
            Status::Open,
            "no EOF yet"
        );
        conn.io.hung_up = true;
        assert_eq!(
            conn.serve(PollFlags::POLLIN, &mut d, &log()),
            Status::Closed
        );
        assert_eq!(conn.io.written, PONG.repeat(3));
    }

    /// A file of `len` bytes in the fakes, open in `d`; its handle and bytes.
    fn open_fake_file(fakes: &FakeOps, d: &mut Dispatcher, len: usize) -> (i64, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        fakes.files.insert("/big", data.clone());
        let mut out = BytesMut::new();
        d.handle_message(
            br#"{"execute":"guest-file-open","arguments":{"path":"/big"}}"#,
            &mut out,
        );
        let reply: serde_json::Value = serde_json::from_slice(&out).unwrap();
        (reply["return"].as_i64().expect("open failed"), data)
    }

    fn read_request(handle: i64, count: usize, id: u32) -> Vec<u8> {
        format!(
            r#"{{"execute":"guest-file-read","arguments":{{"handle":{handle},"count":{count}}},"id":{id}}}"#
        )
        .into_bytes()
    }

    /// The reply lines written so far, parsed.
    fn replies(written: &[u8]) -> Vec<serde_json::Value> {
        written
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    fn decoded(reply: &serde_json::Value) -> Vec<u8> {
        use base64::Engine;
        let text = reply["return"]["buf-b64"].as_str().unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
    }

    #[test]
    fn a_large_read_streams_its_reply_a_piece_at_a_time_and_requests_after_it_wait() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let len = 3 * 1024 * 1024 + 5;
        let (handle, data) = open_fake_file(&fakes, &mut d, len);
        // The same read through the whole-reply path, for comparison.
        let mut whole = BytesMut::new();
        d.handle_message(&read_request(handle, len + 10, 7), &mut whole);
        d.handle_message(
            &format!(r#"{{"execute":"guest-file-seek","arguments":{{"handle":{handle},"offset":0,"whence":"set"}}}}"#)
                .into_bytes(),
            &mut BytesMut::new(),
        );
        let input = read_request(handle, len + 10, 7);
        let mut conn = Connection::new(Script::new(&[&input, PING]), Kind::Stream);
        // The peer takes nothing at first: only the first piece is produced.
        conn.io.full = true;
        assert_eq!(drive(&mut conn, &mut d, 100), "asleep");
        assert!(conn.tail.is_some(), "the read did not stream");
        // And the ping the peer sent after the read is not read while the reply
        // streams: requests queue in the kernel, not in the agent's input.
        assert_eq!(conn.io.input.len(), 1, "read on during the stream");
        assert!(!conn.interest().contains(PollFlags::POLLIN));
        assert!(
            conn.unsent() < 300 * 1024,
            "{} bytes produced",
            conn.unsent()
        );
        // Then it reads as it comes: every byte arrives, the ping's reply after.
        conn.io.full = false;
        assert_eq!(drive(&mut conn, &mut d, 1000), "asleep");
        assert!(conn.tail.is_none());
        assert!(conn.peak < 600 * 1024, "output grew to {} bytes", conn.peak);
        let got = replies(&conn.io.written);
        assert_eq!(got.len(), 2);
        assert_eq!(&conn.io.written[..whole.len()], &whole[..]);
        assert_eq!(decoded(&got[0]), data);
        assert_eq!(got[0]["return"]["eof"], true);
        assert_eq!(got[1], serde_json::json!({"return": {}}));
    }

    /// A connection whose peer asked for 1 MiB of `handle` and takes nothing yet:
    /// the read streams, its first piece produced and waiting.
    fn streaming_read(d: &mut Dispatcher, kind: Kind, handle: i64, id: u32) -> Connection<Script> {
        let request = read_request(handle, 1024 * 1024, id);
        let mut conn = Connection::new(Script::new(&[&request]), kind);
        conn.io.full = true;
        assert_eq!(drive(&mut conn, d, 100), "asleep");
        assert!(conn.tail.is_some(), "the read did not stream");
        conn
    }

    #[test]
    fn a_streamed_read_ends_as_a_short_read_when_its_handle_goes_or_a_read_fails() {
        for how in ["closed", "failed"] {
            let fakes = FakeOps::new();
            let mut d = dispatcher(&fakes);
            let (handle, data) = open_fake_file(&fakes, &mut d, 2 * 1024 * 1024);
            let mut conn = streaming_read(&mut d, Kind::Stream, handle, 9);
            // Meanwhile, on another connection (the one dispatcher serves both).
            let mut out = BytesMut::new();
            if how == "closed" {
                d.handle_message(
                    &format!(
                        r#"{{"execute":"guest-file-close","arguments":{{"handle":{handle}}}}}"#
                    )
                    .into_bytes(),
                    &mut out,
                );
                assert_eq!(&out[..], b"{\"return\":{}}\n");
            } else {
                fakes
                    .files
                    .fail_io
                    .set(qga_ops::OpsError::failed("failed to read file"));
            }
            conn.io.full = false;
            assert_eq!(drive(&mut conn, &mut d, 1000), "asleep", "{how}");
            let got = replies(&conn.io.written);
            assert_eq!(got.len(), 1, "{how}");
            // The first piece went out before: the reply ends with it.
            let bytes = decoded(&got[0]);
            assert_eq!(bytes.len(), crate::commands::files::READ_PIECE, "{how}");
            assert_eq!(bytes, data[..bytes.len()], "{how}");
            assert_eq!(got[0]["return"]["count"], bytes.len(), "{how}");
            assert_eq!(got[0]["return"]["eof"], false, "{how}");
            assert_eq!(got[0]["id"], 9, "{how}");
        }
    }

    #[test]
    fn a_port_whose_host_leaves_mid_stream_gives_the_next_host_only_its_own_replies() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        let (handle, _) = open_fake_file(&fakes, &mut d, 2 * 1024 * 1024);
        let mut port = streaming_read(&mut d, Kind::Port, handle, 5);
        // The host goes away with the reply under way.
        port.io.hung_up = true;
        assert_eq!(drive(&mut port, &mut d, 100), "paused");
        assert!(
            port.tail.is_none(),
            "the old host's reply is still being produced"
        );
        // The next host gets a clean stream: its ping's reply and nothing else.
        next_host_pings(&mut port, &mut d);
    }

    #[test]
    fn large_buffers_are_released_once_quiet_only() {
        let fakes = FakeOps::new();
        let mut d = dispatcher(&fakes);
        // A 3 MiB request (rejected as garbage, one error) grows the input buffer.
        let mut big = b"{\"execute\":\"guest-ping\",\"arguments\":{\"x\":\"".to_vec();
        big.resize(3 << 20, b'a');
        big.extend_from_slice(b"\"}}");
        let mut conn = Connection::new(Script::new(&[&big]), Kind::Stream);
        assert_eq!(drive(&mut conn, &mut d, 100), "asleep");
        assert!(!conn.io.written.is_empty());
        assert!(conn.peak >= 3 << 20);
        let due = conn.next_timer().expect("no release timer");
        assert!(!conn.on_timer(due - Duration::from_millis(10)));
        assert!(conn.peak >= 3 << 20, "released early");
        // The split-off message left the input sharing its 3 MiB allocation, which
        // it would reuse: released, it holds what it needs and no more.
        assert!(conn.on_timer(due), "the caller was not told to release");
        assert!(conn.input.capacity() <= IDLE_CAPACITY);
        assert!(conn.out.capacity() <= IDLE_CAPACITY);
        assert!(conn.peak <= IDLE_CAPACITY);
        // Nothing left to release: no timer keeps waking the loop.
        assert_eq!(conn.next_timer(), None);
    }

    /// An epoll set watching the read end of a pipe, and the write end.
    fn watched_pipe() -> (Watch, OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let watch = Watch::new().unwrap();
        let mut registered = PollFlags::empty();
        watch
            .set(r.as_fd(), 7, &mut registered, PollFlags::POLLIN)
            .unwrap();
        (watch, r, w)
    }

    #[test]
    fn busy_polling_starts_only_after_a_sleep_it_would_have_shortened() {
        let max = Duration::from_micros(200);
        let mut busy = BusyPoll::new(max);
        assert!(busy.window.is_zero(), "polls before any sleep");
        // Woken at once: the peer shares the CPU or wake-ups are cheap.
        busy.slept(Duration::from_micros(3), 1);
        assert!(busy.window.is_zero());
        // Woken a real wake-up later, within the window: poll next time.
        busy.slept(Duration::from_micros(90), 1);
        assert_eq!(busy.window, max);
        // A request a second later: polling would have been wasted.
        busy.slept(Duration::from_secs(1), 1);
        assert!(busy.window.is_zero());
        busy.slept(Duration::from_micros(90), 1);
        // A timer, not a request, ended the sleep.
        busy.slept(Duration::from_micros(90), 0);
        assert!(busy.window.is_zero());
        // Off: never.
        let mut off = BusyPoll::new(Duration::ZERO);
        off.slept(Duration::ZERO, 1);
        off.slept(Duration::from_micros(90), 1);
        assert!(off.window.is_zero());
    }

    #[test]
    fn busy_polling_returns_what_is_ready_and_stops_after_its_window() {
        let (watch, _r, w) = watched_pipe();
        let mut events = [EpollEvent::empty(); 4];
        let mut busy = BusyPoll::new(Duration::from_millis(20));
        busy.slept(Duration::from_millis(1), 1);
        // Nothing comes: it polls its window once (less if another task wants
        // the CPU: tests run side by side), then sleeps until the next sleep says
        // polling pays again.
        assert_eq!(busy.poll(&watch, &mut events), 0);
        assert!(busy.window.is_zero());
        assert_eq!(busy.poll(&watch, &mut events), 0);
        // Something ready: reported, and polling stays on.
        busy.slept(Duration::from_millis(1), 1);
        nix::unistd::write(&w, b"x").unwrap();
        assert_eq!(busy.poll(&watch, &mut events), 1);
        assert_eq!(events[0].data(), 7);
        assert!(!busy.window.is_zero());
    }

    #[test]
    fn busy_polling_gives_way_to_another_task_on_its_cpu() {
        // This thread and a busy one pinned to the same CPU: the first yield runs
        // the other task, so polling stops at once instead of taking a CPU that is
        // wanted (the window is long enough to tell the two apart).
        let cpu = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .and_then(|set| {
                (0..nix::sched::CpuSet::count()).find(|&c| set.is_set(c).unwrap_or(false))
            })
            .expect("no CPU to run on");
        let mut only = nix::sched::CpuSet::new();
        only.set(cpu).unwrap();
        let pin = move || nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &only);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let hog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        let result = std::thread::spawn(move || {
            pin().unwrap();
            let (watch, _r, _w) = watched_pipe();
            let mut events = [EpollEvent::empty(); 4];
            let mut busy = BusyPoll::new(Duration::from_secs(5));
            busy.slept(Duration::from_millis(1), 1);
            let start = Instant::now();
            let n = busy.poll(&watch, &mut events);
            (n, start.elapsed(), busy)
        })
        .join()
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        hog.join().unwrap();
        let (n, took, busy) = result;
        assert_eq!(n, 0);
        assert!(busy.window.is_zero(), "still polling");
        assert!(
            took < Duration::from_secs(1),
            "polled for {took:?} beside a busy task"
        );
    }
}
