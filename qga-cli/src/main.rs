//! `qga`: talk to a QEMU Guest Agent from a shell.
//!
//! Exit status: 0 the agent answered; 1 the agent refused (an error reply);
//! 2 bad command line; 3 the agent was unreachable, closed the connection or timed
//! out; 4 the agent's answer made no sense; 5 a local file (or stdout) could not be
//! opened, read or written.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use qga_client::proto::{FsfreezeStatus, GuestNetworkInterface};
use qga_client::{Client, ClientError, Timeouts};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Parser)]
#[command(
    name = "qga",
    about = "Talk to a QEMU Guest Agent",
    version,
    after_help = "Exit status: 0 answered, 1 refused by the agent, 2 usage error, \
                  3 unreachable or timed out, 4 protocol error, 5 local file error."
)]
struct Cli {
    /// Unix socket of the agent (QEMU's chardev socket, or an agent in unix-listen mode).
    #[arg(long, value_name = "PATH", group = "target")]
    socket: Option<PathBuf>,
    /// AF_VSOCK address of the agent.
    #[arg(long, value_name = "CID:PORT", group = "target")]
    vsock: Option<String>,
    /// Cloud Hypervisor / Firecracker hybrid vsock socket and port.
    #[arg(long = "hybrid-vsock", value_name = "PATH:PORT", group = "target")]
    hybrid_vsock: Option<String>,
    /// Print replies as JSON.
    #[arg(long)]
    json: bool,
    /// Timeout in seconds for each call (default: by command class).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Is the agent alive?
    Ping,
    /// Agent version and commands.
    Info,
    /// Resynchronise the stream (0xFF + guest-sync-delimited).
    Sync,
    /// Send any command: `qga exec-raw '{"execute":"guest-ping"}'`.
    ExecRaw {
        /// The request, with `execute` and optional `arguments`.
        json: String,
    },
    /// Print a guest file to stdout.
    Cat {
        /// Path in the guest.
        guest_file: String,
    },
    /// Copy a guest file to a local file.
    Get {
        /// Path in the guest.
        guest_file: String,
        /// Local destination.
        local: PathBuf,
    },
    /// Copy a local file to the guest.
    Put {
        /// Local source.
        local: PathBuf,
        /// Path in the guest.
        guest_file: String,
    },
    /// Filesystem freeze.
    Fsfreeze {
        #[command(subcommand)]
        action: FreezeAction,
    },
    /// Discard unused blocks on guest filesystems.
    Fstrim {
        /// Minimum free extent in bytes.
        #[arg(long)]
        minimum: Option<i64>,
    },
    /// List network interfaces.
    Ifconfig,
    /// Shut the guest down.
    Shutdown {
        /// halt, powerdown or reboot.
        #[arg(long, value_enum, default_value = "powerdown")]
        mode: ShutdownMode,
    },
    /// Suspend the guest.
    Suspend {
        /// disk, ram or hybrid.
        #[arg(value_enum)]
        mode: SuspendMode,
    },
}

#[derive(Subcommand)]
enum FreezeAction {
    /// frozen or thawed.
    Status,
    /// Freeze all filesystems, or only the given mountpoints.
    Freeze {
        /// Mountpoint to freeze (repeatable).
        #[arg(long = "mountpoint")]
        mountpoints: Vec<String>,
    },
    /// Thaw.
    Thaw,
}

#[derive(Clone, Copy, ValueEnum)]
enum ShutdownMode {
    Halt,
    Powerdown,
    Reboot,
}

#[derive(Clone, Copy, ValueEnum)]
enum SuspendMode {
    Disk,
    Ram,
    Hybrid,
}

const CHUNK: usize = 4 * 1024 * 1024;

/// Why `qga` failed: the agent side, or the local side of a file copy.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The command line made no sense (clap's own errors exit 2 too).
    #[error("{0}")]
    Usage(String),
    /// A local file (or stdout) could not be opened, read or written.
    #[error("cannot {action} {}: {source}", what.display())]
    Local {
        action: &'static str,
        what: PathBuf,
        source: std::io::Error,
    },
}

impl CliError {
    fn local(action: &'static str, what: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_owned();
        move |source| CliError::Local {
            action,
            what,
            source,
        }
    }

    fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(ClientError::Agent(_)) => 1,
            CliError::Client(ClientError::Protocol(_)) => 4,
            CliError::Client(_) => 3,
            CliError::Usage(_) => 2,
            CliError::Local { .. } => 5,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qga: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qga: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn split_port(s: &str) -> Result<(&str, u32), CliError> {
    let (a, p) = s
        .rsplit_once(':')
        .ok_or_else(|| CliError::Usage(format!("expected ADDRESS:PORT, got {s:?}")))?;
    let port = p
        .parse()
        .map_err(|_| CliError::Usage(format!("bad port in {s:?}")))?;
    Ok((a, port))
}

/// `exec-raw`'s request: the command name and its arguments.
fn parse_raw(json: &str) -> Result<(String, Option<Value>), CliError> {
    let v: Value =
        serde_json::from_str(json).map_err(|e| CliError::Usage(format!("invalid JSON: {e}")))?;
    let name = v["execute"]
        .as_str()
        .ok_or_else(|| CliError::Usage("missing \"execute\"".into()))?;
    Ok((name.to_owned(), v.get("arguments").cloned()))
}

async fn run(cli: Cli) -> Result<(), CliError> {
    // Refuse a bad request before connecting.
    if let Cmd::ExecRaw { json } = &cli.command {
        parse_raw(json)?;
    }
    if let Some(path) = &cli.socket {
        let c = qga_client::connect_unix(path).await?;
        return drive(c, &cli).await;
    }
    if let Some(v) = &cli.vsock {
        let (cid, port) = split_port(v)?;
        let cid = cid
            .parse()
            .map_err(|_| CliError::Usage(format!("bad cid in {v:?}")))?;
        let c = qga_client::connect_vsock(cid, port).await?;
        return drive(c, &cli).await;
    }
    if let Some(h) = &cli.hybrid_vsock {
        let (path, port) = split_port(h)?;
        let c = qga_client::connect_hybrid_vsock(path, port).await?;
        return drive(c, &cli).await;
    }
    Err(CliError::Usage(
        "give one of --socket, --vsock or --hybrid-vsock".into(),
    ))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn progress_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin + Send>(
    client: Client<S>,
    cli: &Cli,
) -> Result<(), CliError> {
    let mut timeouts = Timeouts::default();
    if let Some(t) = cli.timeout {
        let d = Duration::from_secs_f64(t.max(0.001));
        timeouts = Timeouts {
            quick: d,
            file: d,
            slow: d,
            ..timeouts
        };
    }
    let mut c = client.with_timeouts(timeouts);
    match &cli.command {
        Cmd::Ping => {
            c.ping().await?;
            if cli.json {
                print_json(&serde_json::json!({}));
            } else {
                println!("pong");
            }
        }
        Cmd::Sync => {
            c.sync().await?;
            if !cli.json {
                println!("in sync");
            }
        }
        Cmd::Info => {
            let info = c.info().await?;
            if cli.json {
                print_json(&info);
            } else {
                println!("version {}", info.version);
                println!("{:<36} {:<8} success-response", "command", "enabled");
                for cmd in &info.supported_commands {
                    println!(
                        "{:<36} {:<8} {}",
                        cmd.name,
                        if cmd.enabled { "yes" } else { "no" },
                        if cmd.success_response { "yes" } else { "no" }
                    );
                }
            }
        }
        Cmd::ExecRaw { json } => {
            let (name, arguments) = parse_raw(json)?;
            let r = c.execute_raw(&name, arguments).await?;
            print_json(&r);
        }
        Cmd::Cat { guest_file } => {
            let data = c.read_file(guest_file, CHUNK, None).await?;
            std::io::stdout()
                .write_all(&data)
                .and_then(|()| std::io::stdout().flush())
                .map_err(CliError::local("write", Path::new("stdout")))?;
        }
        Cmd::Get { guest_file, local } => {
            let bar = progress_bar(None);
            let mut cb = |done: u64, _: Option<u64>| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            let data = c.read_file(guest_file, CHUNK, Some(&mut cb)).await?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            std::fs::write(local, &data).map_err(CliError::local("write local file", local))?;
            if !cli.json {
                println!("{} bytes", data.len());
            }
        }
        Cmd::Put { local, guest_file } => {
            let data = std::fs::read(local).map_err(CliError::local("read local file", local))?;
            let bar = progress_bar(Some(data.len() as u64));
            let mut cb = |done: u64, _: Option<u64>| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            c.write_file(guest_file, &data, CHUNK, Some(&mut cb))
                .await?;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            if !cli.json {
                println!("{} bytes", data.len());
            }
        }
        Cmd::Fsfreeze { action } => match action {
            FreezeAction::Status => {
                let s = c.fsfreeze_status().await?;
                if cli.json {
                    print_json(&s);
                } else {
                    println!(
                        "{}",
                        match s {
                            FsfreezeStatus::Frozen => "frozen",
                            FsfreezeStatus::Thawed => "thawed",
                        }
                    );
                }
            }
            FreezeAction::Freeze { mountpoints } => {
                let list = (!mountpoints.is_empty()).then(|| mountpoints.clone());
                let n = c.fsfreeze_freeze(list).await?;
                if cli.json {
                    print_json(&n);
                } else {
                    println!("{n} filesystems frozen");
                }
            }
            FreezeAction::Thaw => {
                let n = c.fsfreeze_thaw().await?;
                if cli.json {
                    print_json(&n);
                } else {
                    println!("{n} filesystems thawed");
                }
            }
        },
        Cmd::Fstrim { minimum } => {
            let r = c.fstrim(*minimum).await?;
            if cli.json {
                print_json(&r);
            } else {
                for p in &r.paths {
                    match (&p.error, p.trimmed) {
                        (Some(e), _) => println!("{}: {e}", p.path),
                        (None, Some(t)) => println!("{}: {t} bytes trimmed", p.path),
                        (None, None) => println!("{}: done", p.path),
                    }
                }
            }
        }
        Cmd::Ifconfig => {
            let ifs = c.network_interfaces().await?;
            if cli.json {
                print_json(&ifs);
            } else {
                print_interfaces(&ifs);
            }
        }
        Cmd::Shutdown { mode } => {
            let m = match mode {
                ShutdownMode::Halt => "halt",
                ShutdownMode::Powerdown => "powerdown",
                ShutdownMode::Reboot => "reboot",
            };
            c.shutdown(Some(m)).await?;
        }
        Cmd::Suspend { mode } => match mode {
            SuspendMode::Disk => c.suspend_disk().await?,
            SuspendMode::Ram => c.suspend_ram().await?,
            SuspendMode::Hybrid => c.suspend_hybrid().await?,
        },
    }
    Ok(())
}

fn print_interfaces(ifs: &[GuestNetworkInterface]) {
    println!("{:<16} {:<18} {:<40} rx/tx bytes", "name", "mac", "address");
    for i in ifs {
        let stats = i
            .statistics
            .map(|s| format!("{}/{}", s.rx_bytes, s.tx_bytes))
            .unwrap_or_default();
        let mac = i.hardware_address.as_deref().unwrap_or("-");
        let addrs: Vec<String> = i
            .ip_addresses
            .iter()
            .flatten()
            .map(|a| format!("{}/{}", a.ip_address, a.prefix))
            .collect();
        if addrs.is_empty() {
            println!("{:<16} {:<18} {:<40} {stats}", i.name, mac, "-");
        }
        for (n, a) in addrs.iter().enumerate() {
            if n == 0 {
                println!("{:<16} {:<18} {:<40} {stats}", i.name, mac, a);
            } else {
                println!("{:<16} {:<18} {:<40}", "", "", a);
            }
        }
    }
}
