//! A qemu-ga compatible QEMU Guest Agent, as a library and the `qga-agent` binary.
//!
//! * [`Dispatcher`]: sans-IO; one message in, zero or one encoded reply out. It
//!   validates requests with `qga-proto`, runs commands through `qga-ops` (fakes in
//!   tests, Linux in the binary), and owns the agent's state: file handles (from 1000,
//!   never reused, counter persisted in the state directory before the reply),
//!   frozen mode (persisted as a marker; only guest-ping, guest-info, guest-sync,
//!   guest-sync-delimited, guest-fsfreeze-status and guest-fsfreeze-thaw run while
//!   frozen) and blocked/allowed commands. Embed it to build a custom agent.
//! * [`channel`]: the only code that owns descriptors: unix-listen and vsock-listen
//!   (up to 8 clients at once, each with a fresh framer and a bounded reply budget),
//!   virtio-serial and isa-serial ports (which wait for a host without spinning),
//!   `--retry-path`.
//! * [`Config`]/[`Cli`]: qemu-ga's command line and `[general]` key file, `-D` dump.
//!
//! It never talks JSON on its own (that is `qga-proto` and `qga-framing`) and never
//! touches the machine except through `qga-ops` and its channel descriptors.
//!
//! # Building a custom agent
//!
//! `examples/custom_agent.rs` (`cargo run -p qga-agent --example custom_agent --
//! SOCKET`) is a whole one: [`Registry::stock`] plus a command of its own (a
//! [`qga_proto::Command`] type written by hand, with qemu-ga's argument errors),
//! minus guest-shutdown and guest-suspend-* ([`Registry::remove`]), guest-file-open
//! disabled through [`DispatcherConfig::blocked`], served on a unix socket by
//! [`channel::run`] until SIGTERM. `tests/example.rs` runs it and talks to it.
//!
//! # Example: a dispatcher over fake ops
//!
//! ```
//! use bytes::BytesMut;
//! use qga_agent::{Dispatcher, DispatcherConfig, StateDir};
//! use qga_ops::fake::FakeOps;
//!
//! let fakes = FakeOps::new();
//! let mut d = Dispatcher::new(fakes.ops(), StateDir::in_memory(), DispatcherConfig::default()).unwrap();
//! let mut out = BytesMut::new();
//! d.handle_message(br#"{"execute":"guest-file-open","arguments":{"path":"/f","mode":"w"},"id":1}"#, &mut out);
//! d.handle_message(br#"{"execute":"guest-sync-delimited","arguments":{"id":42}}"#, &mut out);
//! d.handle_message(br#"{"execute":"guest-file-read","arguments":{"handle":7}}"#, &mut out);
//! assert_eq!(
//!     &out[..],
//!     &b"{\"return\":1000,\"id\":1}\n\xff{\"return\":42}\n\
//!        {\"error\":{\"class\":\"GenericError\",\"desc\":\"handle '7' has not been found\"}}\n"[..]
//! );
//! ```
#![warn(missing_docs)]

pub mod channel;
mod commands;
mod config;
mod dispatcher;
mod log;
mod registry;
mod state;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

pub use config::{
    Cli, Config, Method, DEFAULT_BUSY_POLL_US, DEFAULT_FSFREEZE_HOOK, DEFAULT_ISA_PATH,
    DEFAULT_VIRTIO_PATH,
};
pub use dispatcher::{Context, Dispatcher, DispatcherConfig, MAX_READ_COUNT};
pub use log::Log;
pub use registry::{RawHandler, Registry};
pub use state::{StateDir, StateError, FIRST_HANDLE};

/// Why the agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Bad command line or configuration file (exit status 1).
    #[error("{0}")]
    Config(String),
    /// The channel could not be opened or failed (exit status 1).
    #[error("{0}")]
    Channel(String),
    /// State directory, pid file, log file or another I/O failure (exit status 1).
    #[error("{0}")]
    Io(String),
}

/// Runs the agent as the binary does; returns the process exit status:
/// 0 after SIGTERM/SIGINT, `-V`, `-D` or `-b help`; 1 for bad configuration, an
/// unusable state directory or pid file, or a channel that fails without `-r`;
/// 2 for command-line syntax errors (clap's convention).
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    if cli.version {
        println!("QEMU Guest Agent {} (qga-rs)", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if cli.block_rpcs.iter().any(|b| b == "help" || b == "?") {
        let mut stdout = std::io::stdout().lock();
        for name in Registry::stock().names() {
            let _ = writeln!(stdout, "{name}");
        }
        return 0;
    }
    let config = match Config::from_cli(&cli, std::env::var_os("QGA_CONF").map(Into::into)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qga-agent: {e}");
            return 1;
        }
    };
    if cli.dump_conf {
        print!("{}", config.dump());
        return 0;
    }
    match run(&config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("qga-agent: {e}");
            1
        }
    }
}

/// Starts the agent with a validated configuration and serves until stopped.
pub fn run(config: &Config) -> Result<(), AgentError> {
    let logfile = match &config.logfile {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| AgentError::Io(format!("unable to open specified log file: {e}")))?,
        ),
        None => None,
    };
    let log = Log::new(logfile, config.verbose);
    // Lock the pid file before forking, so a second instance fails visibly.
    let pidfile = if config.daemonize {
        Some(process::lock_pidfile(&config.pidfile)?)
    } else {
        None
    };
    if config.daemonize {
        process::daemonize()?;
    }
    if let Some(p) = &pidfile {
        process::write_pid(p)?;
    }
    channel::install_signal_handlers()?;
    // The error names the directory and says what to do.
    let state = StateDir::new(&config.statedir).map_err(|e| AgentError::Io(e.to_string()))?;
    match state.frozen() {
        Ok(true) => log.warning("previous instance appears to have exited with frozen filesystems: starting in frozen state"),
        Ok(false) => {}
        Err(e) => log.warning(&format!("{e}; starting thawed")),
    }
    let ops = qga_ops::Ops::linux(qga_ops::LinuxConfig {
        fsfreeze_hook: config.fsfreeze_hook.clone(),
        sysinfo: qga_ops::LinuxSystemInfo {
            // As qemu-ga: the environment may point guest-get-osinfo at another file.
            os_release: std::env::var_os("QGA_OS_RELEASE").map(Into::into),
            ..Default::default()
        },
        ..Default::default()
    });
    let mut dispatcher = Dispatcher::new(
        ops,
        state,
        DispatcherConfig {
            blocked: config.blocked(),
            allowed: config.allowed(),
            version: None,
            auto_thaw: config.fsfreeze_timeout.map(std::time::Duration::from_secs),
        },
    )
    .map_err(|e| AgentError::Io(format!("failed to load persistent state: {e}")))?;
    let result = channel::run(config, &mut dispatcher, &log);
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(&p.path);
    }
    result
}

mod process {
    //! Daemonizing and the pid file.

    use std::fs::File;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::{Path, PathBuf};

    use crate::AgentError;

    /// A locked pid file; the lock lives as long as this value (and the process).
    pub(crate) struct PidFile {
        pub(crate) path: PathBuf,
        file: nix::fcntl::Flock<File>,
    }

    pub(crate) fn lock_pidfile(path: &Path) -> Result<PidFile, AgentError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| AgentError::Io(format!("Cannot open pid file: {e}")))?;
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| AgentError::Io(format!("Cannot lock pid file: {}", e.desc())))?;
        Ok(PidFile {
            path: path.to_owned(),
            file,
        })
    }

    pub(crate) fn write_pid(p: &PidFile) -> Result<(), AgentError> {
        let mut f: &File = &p.file;
        f.set_len(0)
            .and_then(|()| writeln!(f, "{}", std::process::id()))
            .map_err(|e| AgentError::Io(format!("Failed to write pid file: {e}")))
    }

    pub(crate) fn daemonize() -> Result<(), AgentError> {
        nix::unistd::daemon(false, false)
            .map_err(|e| AgentError::Io(format!("failed to daemonize: {e}")))?;
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        Ok(())
    }
}
