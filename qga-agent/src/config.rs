//! Command line and configuration file, compatible with qemu-ga's.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::AgentError;

/// Default virtio-serial port.
pub const DEFAULT_VIRTIO_PATH: &str = "/dev/virtio-ports/org.qemu.guest_agent.0";
/// Default isa-serial port.
pub const DEFAULT_ISA_PATH: &str = "/dev/ttyS0";
/// Default configuration file (`QGA_CONF` overrides it).
pub const DEFAULT_CONFIG: &str = "/etc/qemu/qemu-ga.conf";
/// Default fsfreeze hook when `-F` is given without a path.
pub const DEFAULT_FSFREEZE_HOOK: &str = "/etc/qemu/fsfreeze-hook";

/// The command line, as `qemu-ga --help` describes it.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "qga-agent",
    about = "QEMU Guest Agent (qemu-ga compatible)",
    disable_version_flag = true
)]
pub struct Cli {
    /// Transport method: virtio-serial (default), isa-serial, unix-listen, vsock-listen.
    #[arg(short = 'm', long = "method", value_name = "METHOD")]
    pub method: Option<String>,
    /// Device/socket path (virtio-serial default /dev/virtio-ports/org.qemu.guest_agent.0,
    /// isa-serial default /dev/ttyS0); vsock-listen takes CID:PORT.
    #[arg(short = 'p', long = "path", value_name = "PATH")]
    pub path: Option<String>,
    /// Log file (default stderr).
    #[arg(short = 'l', long = "logfile", value_name = "PATH")]
    pub logfile: Option<PathBuf>,
    /// Pid file, used with --daemonize (default /var/run/qemu-ga.pid).
    #[arg(short = 'f', long = "pidfile", value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// Enable the fsfreeze hook; the optional path must be attached (-F/path,
    /// --fsfreeze-hook=/path); default /etc/qemu/fsfreeze-hook.
    #[arg(
        short = 'F',
        long = "fsfreeze-hook",
        value_name = "PATH",
        num_args = 0..=1,
        require_equals = false,
        default_missing_value = DEFAULT_FSFREEZE_HOOK
    )]
    pub fsfreeze_hook: Option<PathBuf>,
    /// State directory for the handle counter and the frozen marker (default /var/run).
    #[arg(short = 't', long = "statedir", value_name = "DIR")]
    pub statedir: Option<PathBuf>,
    /// Log everything, debug messages included.
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Print the version and exit.
    #[arg(short = 'V', long = "version")]
    pub version: bool,
    /// Become a daemon.
    #[arg(short = 'd', long = "daemonize")]
    pub daemonize: bool,
    /// Comma-separated commands to disable; `help` lists all commands.
    #[arg(short = 'b', long = "block-rpcs", value_name = "LIST")]
    pub block_rpcs: Vec<String>,
    /// Comma-separated commands to enable, all others disabled (blocking wins).
    #[arg(short = 'a', long = "allow-rpcs", value_name = "LIST")]
    pub allow_rpcs: Vec<String>,
    /// Print the effective configuration and exit.
    #[arg(short = 'D', long = "dump-conf")]
    pub dump_conf: bool,
    /// Configuration file (default /etc/qemu/qemu-ga.conf, or $QGA_CONF).
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Reopen the channel every 5 s when it is missing or goes away.
    #[arg(short = 'r', long = "retry-path")]
    pub retry_path: bool,
    /// Thaw by ourselves after SECONDS frozen (off by default; not in qemu-ga).
    #[arg(long = "fsfreeze-timeout", value_name = "SECONDS")]
    pub fsfreeze_timeout: Option<u64>,
    /// Poll up to MICROSECONDS for the next request before sleeping, while requests
    /// come in quick succession (default 200; 0: never; not in qemu-ga).
    #[arg(long = "busy-poll", value_name = "MICROSECONDS")]
    pub busy_poll: Option<u64>,
}

/// How long the agent polls for the next request before sleeping, by default
/// (`--busy-poll`): KVM's and Linux's `haltpoll` default for the same trade.
pub const DEFAULT_BUSY_POLL_US: u64 = 200;

/// How the agent reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A virtio-serial port.
    VirtioSerial,
    /// An ISA serial port (a tty).
    IsaSerial,
    /// A unix socket the agent listens on (one client at a time).
    UnixListen,
    /// An AF_VSOCK socket the agent listens on.
    VsockListen,
}

impl Method {
    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::VirtioSerial => "virtio-serial",
            Method::IsaSerial => "isa-serial",
            Method::UnixListen => "unix-listen",
            Method::VsockListen => "vsock-listen",
        }
    }

    fn parse(s: &str) -> Result<Self, AgentError> {
        Ok(match s {
            "virtio-serial" => Method::VirtioSerial,
            "isa-serial" => Method::IsaSerial,
            "unix-listen" => Method::UnixListen,
            "vsock-listen" => Method::VsockListen,
            other => {
                return Err(AgentError::Config(format!(
                    "unsupported channel method/type: {other}"
                )))
            }
        })
    }
}

/// The validated configuration: config file, then command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Become a daemon.
    pub daemonize: bool,
    /// Transport.
    pub method: Method,
    /// Channel path (or `cid:port`).
    pub path: String,
    /// Log file; stderr when `None`.
    pub logfile: Option<PathBuf>,
    /// Pid file (written when daemonized).
    pub pidfile: PathBuf,
    /// fsfreeze hook.
    pub fsfreeze_hook: Option<PathBuf>,
    /// State directory.
    pub statedir: PathBuf,
    /// Log everything.
    pub verbose: bool,
    /// Reopen the channel when it goes away.
    pub retry_path: bool,
    /// Disabled commands.
    pub block_rpcs: Vec<String>,
    /// If non-empty, the only enabled commands.
    pub allow_rpcs: Vec<String>,
    /// Auto-thaw timeout in seconds.
    pub fsfreeze_timeout: Option<u64>,
    /// How long the channel loop may poll for the next request before it sleeps,
    /// in microseconds (0: never). See the README's "Busy polling".
    pub busy_poll_us: u64,
}

/// A parsed key file: `[group]` then `key=value` lines.
#[derive(Debug, Default)]
struct KeyFile {
    general: Vec<(String, String)>,
}

impl KeyFile {
    fn parse(text: &str, path: &Path) -> Result<Self, AgentError> {
        let mut kf = KeyFile::default();
        let mut group: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                group = Some(g.to_owned());
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(AgentError::Config(format!(
                    "error loading configuration from path: {}, Key file contains line “{line}” which is not a key-value pair, group, or comment (line {})",
                    path.display(),
                    n + 1
                )));
            };
            if group.is_none() {
                return Err(AgentError::Config(format!(
                    "error loading configuration from path: {}, Key file does not start with a group",
                    path.display()
                )));
            }
            if group.as_deref() == Some("general") {
                kf.general.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        Ok(kf)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.general
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn bool(&self, key: &str, path: &Path) -> Result<Option<bool>, AgentError> {
        match self.get(key) {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(AgentError::Config(format!(
                "error loading configuration from path: {}, Value “{v}” cannot be interpreted as a boolean.",
                path.display()
            ))),
        }
    }
}

fn split_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Config {
    /// Builds the configuration from the command line and the config file it points
    /// at (`-c`, else `$QGA_CONF`, else /etc/qemu/qemu-ga.conf; a missing default
    /// file is fine, a missing `-c` file is an error).
    pub fn from_cli(cli: &Cli, env_conf: Option<PathBuf>) -> Result<Self, AgentError> {
        let (path, explicit) = match (&cli.config, env_conf) {
            (Some(p), _) => (p.clone(), true),
            (None, Some(p)) => (p, false),
            (None, None) => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let kf = match std::fs::read_to_string(&path) {
            Ok(text) => KeyFile::parse(&text, &path)?,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => KeyFile::default(),
            Err(e) => {
                return Err(AgentError::Config(format!(
                    "error loading configuration from path: {}, {e}",
                    path.display()
                )))
            }
        };
        let method_name = cli
            .method
            .clone()
            .or_else(|| kf.get("method").map(str::to_owned))
            .unwrap_or_else(|| "virtio-serial".to_owned());
        let method = Method::parse(&method_name)?;
        let channel_path = cli
            .path
            .clone()
            .or_else(|| kf.get("path").map(str::to_owned));
        let path_value = match (channel_path, method) {
            (Some(p), _) => p,
            (None, Method::VirtioSerial) => DEFAULT_VIRTIO_PATH.to_owned(),
            (None, Method::IsaSerial) => DEFAULT_ISA_PATH.to_owned(),
            (None, _) => {
                return Err(AgentError::Config(
                    "must specify a path for this channel".to_owned(),
                ))
            }
        };
        let from_file = |k: &str| kf.get(k).map(PathBuf::from);
        let mut block = kf
            .get("block-rpcs")
            .or_else(|| kf.get("blacklist"))
            .map(|v| split_list(&[v.to_owned()]))
            .unwrap_or_default();
        block.extend(split_list(&cli.block_rpcs));
        let mut allow = kf
            .get("allow-rpcs")
            .map(|v| split_list(&[v.to_owned()]))
            .unwrap_or_default();
        allow.extend(split_list(&cli.allow_rpcs));
        let fsfreeze_timeout = match (cli.fsfreeze_timeout, kf.get("fsfreeze-timeout")) {
            (Some(t), _) => Some(t),
            (None, Some(v)) => Some(v.parse().map_err(|_| {
                AgentError::Config(format!(
                    "invalid fsfreeze-timeout '{v}' in {}",
                    path.display()
                ))
            })?),
            (None, None) => None,
        };
        let busy_poll_us = match (cli.busy_poll, kf.get("busy-poll")) {
            (Some(us), _) => us,
            (None, Some(v)) => v.parse().map_err(|_| {
                AgentError::Config(format!("invalid busy-poll '{v}' in {}", path.display()))
            })?,
            (None, None) => DEFAULT_BUSY_POLL_US,
        };
        Ok(Config {
            daemonize: cli.daemonize || kf.bool("daemon", &path)?.unwrap_or(false),
            method,
            path: path_value,
            logfile: cli.logfile.clone().or_else(|| from_file("logfile")),
            pidfile: cli
                .pidfile
                .clone()
                .or_else(|| from_file("pidfile"))
                .unwrap_or_else(|| PathBuf::from("/var/run/qemu-ga.pid")),
            fsfreeze_hook: cli
                .fsfreeze_hook
                .clone()
                .or_else(|| from_file("fsfreeze-hook")),
            statedir: cli
                .statedir
                .clone()
                .or_else(|| from_file("statedir"))
                .unwrap_or_else(|| PathBuf::from("/var/run")),
            verbose: cli.verbose || kf.bool("verbose", &path)?.unwrap_or(false),
            retry_path: cli.retry_path || kf.bool("retry-path", &path)?.unwrap_or(false),
            block_rpcs: block,
            allow_rpcs: allow,
            fsfreeze_timeout,
            busy_poll_us,
        })
    }

    /// The configuration as a key file (`-D`), readable back with `-c`.
    pub fn dump(&self) -> String {
        let mut s = String::from("[general]\n");
        s += &format!("daemon={}\n", self.daemonize);
        s += &format!("method={}\n", self.method.as_str());
        s += &format!("path={}\n", self.path);
        if let Some(l) = &self.logfile {
            s += &format!("logfile={}\n", l.display());
        }
        s += &format!("pidfile={}\n", self.pidfile.display());
        if let Some(h) = &self.fsfreeze_hook {
            s += &format!("fsfreeze-hook={}\n", h.display());
        }
        s += &format!("statedir={}\n", self.statedir.display());
        s += &format!("verbose={}\n", self.verbose);
        s += &format!("retry-path={}\n", self.retry_path);
        s += &format!("block-rpcs={}\n", self.block_rpcs.join(","));
        s += &format!("allow-rpcs={}\n", self.allow_rpcs.join(","));
        if let Some(t) = self.fsfreeze_timeout {
            s += &format!("fsfreeze-timeout={t}\n");
        }
        s += &format!("busy-poll={}\n", self.busy_poll_us);
        s
    }

    /// The blocked commands as a set.
    pub fn blocked(&self) -> HashSet<String> {
        self.block_rpcs.iter().cloned().collect()
    }

    /// The allow list, if one was given.
    pub fn allowed(&self) -> Option<HashSet<String>> {
        (!self.allow_rpcs.is_empty()).then(|| self.allow_rpcs.iter().cloned().collect())
    }
}
