//! A custom guest agent built on the qga-agent library: the stock commands, one of
//! its own, one removed and one disabled, served on a unix socket.
//!
//! ```sh
//! cargo run -p qga-agent --example custom_agent -- /tmp/custom.sock [STATE_DIR]
//! python3 - <<'EOF'
//! import socket; s = socket.socket(socket.AF_UNIX); s.connect("/tmp/custom.sock")
//! s.sendall(b'{"execute":"x-example-greet","arguments":{"name":"host"}}')
//! print(s.recv(4096))   # {"return":{"greeting":"hello, host","agent-version":"..."}}
//! EOF
//! ```
//!
//! * `x-example-greet` (new): optional string argument `name`; answers
//!   `{"greeting": "hello, <name>", "agent-version": ...}`. Its argument errors use
//!   qemu-ga's texts, like every stock command.
//! * `guest-shutdown` and the `guest-suspend-*` commands (removed from the
//!   registry: power stays with the host): answered as unknown, `The command
//!   guest-shutdown has not been found`, and not listed by guest-info, as if this
//!   agent never had them.
//! * `guest-file-open` (disabled, like `-b guest-file-open`): listed by guest-info
//!   with `enabled: false`, answered `Command guest-file-open has been disabled`.
//!
//! The state directory (file handle counter, frozen marker) defaults to
//! `<socket>.state`; like the stock agent's, it must be private to its user. The
//! agent stops on SIGTERM or SIGINT (exit status 0).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use qga_agent::{
    channel, Config, Context, Dispatcher, DispatcherConfig, Log, Method, Registry, StateDir,
};
use qga_proto::{ArgType, ArgumentError, Command, QgaError, RawValue};
use serde::{Deserialize, Serialize};

/// `x-example-greet`: the command this agent adds. What the `command!` macro of
/// qga-proto generates for the stock commands, written out by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Greet {
    /// Who to greet; "world" when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// What `x-example-greet` returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Greeting {
    greeting: String,
    agent_version: String,
}

impl Command for Greet {
    const NAME: &'static str = "x-example-greet";
    type Returns = Greeting;
    const HAS_ARGUMENTS: bool = true;

    /// Validates the arguments as qemu-ga does: a member of the wrong type or one
    /// the command does not declare is refused with qemu-ga's text.
    fn from_arguments(args: Option<&RawValue>) -> Result<Self, ArgumentError> {
        let members: BTreeMap<&str, &RawValue> = match args {
            Some(raw) => {
                serde_json::from_str(raw.get()).map_err(|e| ArgumentError::Json(e.to_string()))?
            }
            None => BTreeMap::new(),
        };
        if let Some(other) = members.keys().find(|k| **k != "name") {
            return Err(ArgumentError::Unexpected((*other).to_owned()));
        }
        let name = match members.get("name") {
            Some(raw) => Some(String::from_raw("name", raw)?),
            None => None,
        };
        Ok(Greet { name })
    }
}

fn greet(ctx: &mut Context, cmd: Greet) -> Result<Greeting, QgaError> {
    let name = cmd.name.unwrap_or_else(|| "world".to_owned());
    if name.is_empty() {
        return Err(QgaError::generic("name must not be empty"));
    }
    Ok(Greeting {
        greeting: format!("hello, {name}"),
        agent_version: ctx.version(),
    })
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(socket) = args.next().map(PathBuf::from) else {
        eprintln!("usage: custom_agent SOCKET [STATE_DIR]");
        std::process::exit(2);
    };
    let statedir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        let mut s = socket.clone().into_os_string();
        s.push(".state");
        s.into()
    });

    // The stock commands, plus ours, minus what this agent must never offer.
    let mut registry = Registry::stock();
    registry.register(greet);
    for removed in [
        "guest-shutdown",
        "guest-suspend-disk",
        "guest-suspend-ram",
        "guest-suspend-hybrid",
    ] {
        assert!(registry.remove(removed), "{removed} is a stock command");
    }

    // The channel: what `qga-agent -m unix-listen -p SOCKET -t STATE_DIR` would use.
    let config = Config {
        daemonize: false,
        method: Method::UnixListen,
        path: socket.to_string_lossy().into_owned(),
        logfile: None,
        pidfile: statedir.join("custom-agent.pid"),
        fsfreeze_hook: None,
        statedir: statedir.clone(),
        verbose: false,
        retry_path: false,
        block_rpcs: vec!["guest-file-open".to_owned()],
        allow_rpcs: Vec::new(),
        fsfreeze_timeout: None,
        busy_poll_us: qga_agent::DEFAULT_BUSY_POLL_US,
    };
    let log = Log::new(None, config.verbose);
    if let Err(e) = serve(&config, registry, &log) {
        eprintln!("custom_agent: {e}");
        std::process::exit(1);
    }
}

fn serve(config: &Config, registry: Registry, log: &Log) -> Result<(), Box<dyn std::error::Error>> {
    // Before the channel opens, so a stop is never missed.
    channel::install_signal_handlers()?;
    let state = StateDir::new(&config.statedir)?;
    let ops = qga_ops::Ops::linux(qga_ops::LinuxConfig::default());
    let blocked: HashSet<String> = config.blocked();
    let mut dispatcher = Dispatcher::with_registry(
        ops,
        state,
        DispatcherConfig {
            blocked,
            version: Some(format!(
                "{} (custom_agent example)",
                env!("CARGO_PKG_VERSION")
            )),
            ..DispatcherConfig::default()
        },
        registry,
    )?;
    // Serves one client at a time until SIGTERM/SIGINT.
    channel::run(config, &mut dispatcher, log)?;
    Ok(())
}
