//! `qga`: talk to a QEMU Guest Agent from a shell.
//!
//! Exit status: 0 the agent answered (or stdout was closed by its reader, as with
//! `qga ... | head`); 1 the agent refused (an error reply); 2 bad command line;
//! 3 the agent was unreachable, closed the connection or timed out; 4 the agent's
//! answer made no sense; 5 a local file (or stdout) could not be opened, read or
//! written. `exec` otherwise exits with the guest program's status (128 + N for
//! signal N).

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use qga_client::proto::{self as proto, Command, FsfreezeStatus};
use qga_client::{Client, ClientError, Timeouts};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

mod local;
mod out;
mod transfer;
mod views;

use out::{Out, Table};

const EXIT_STATUS_HELP: &str = "Exit status: 0 answered, 1 refused by the agent, 2 usage error, \
    3 unreachable or timed out, 4 protocol error, 5 local file error; \
    exec otherwise exits with the program's status (128+N for signal N).";

#[derive(Parser)]
#[command(
    name = "qga",
    about = "Talk to a QEMU Guest Agent",
    version,
    after_help = EXIT_STATUS_HELP
)]
struct Cli {
    /// Unix socket of the agent (QEMU's chardev socket, or an agent in unix-listen mode).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// AF_VSOCK address of the agent.
    #[arg(long, value_name = "CID:PORT", global = true)]
    vsock: Option<String>,
    /// Cloud Hypervisor / Firecracker hybrid vsock socket and port.
    #[arg(long = "hybrid-vsock", value_name = "PATH:PORT", global = true)]
    hybrid_vsock: Option<String>,
    /// Print replies as JSON (the agent's raw return value).
    #[arg(long, global = true)]
    json: bool,
    /// Timeout in seconds for each call (default: by command class).
    #[arg(long, value_name = "SECONDS", global = true, value_parser = parse_timeout)]
    timeout: Option<Duration>,
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
        #[arg(value_name = "JSON")]
        request: String,
    },
    /// Print a guest file to stdout.
    Cat {
        /// Path in the guest.
        guest_file: String,
    },
    /// Copy a guest file to a local file (a progress bar when stderr is a terminal).
    Get {
        /// Path in the guest.
        guest_file: String,
        /// Local destination.
        local: PathBuf,
    },
    /// Copy a local file to the guest (a progress bar when stderr is a terminal).
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
    /// Network interfaces and their addresses (guest-network-get-interfaces).
    #[command(visible_alias = "interfaces")]
    Ifconfig,
    /// Kernel and distribution (guest-get-osinfo).
    Osinfo,
    /// The guest's clock, in UTC (guest-get-time); with --set, set it (guest-set-time).
    Time {
        /// Set the guest's clock: to NS nanoseconds since the epoch, to this host's
        /// current time with `now`, or from the guest's hardware clock when no value
        /// is given.
        #[arg(long, value_name = "NS|now", num_args = 0..=1)]
        set: Option<Option<String>>,
    },
    /// The guest's host name (guest-get-host-name).
    Hostname,
    /// The guest's time zone and UTC offset (guest-get-timezone).
    Timezone,
    /// Logged-in users (guest-get-users).
    Users,
    /// Mounted filesystems, their usage and disks (guest-get-fsinfo).
    Fsinfo,
    /// Disks and partitions (guest-get-disks).
    Disks,
    /// Devices and their drivers; Windows agents (guest-get-devices).
    Devices,
    /// Logical CPUs and whether they are online (guest-get-vcpus); with --online or
    /// --offline, change them (guest-set-vcpus).
    Vcpus {
        /// Bring these CPUs online (comma-separated or repeated).
        #[arg(long, value_name = "CPU", value_delimiter = ',')]
        online: Vec<i64>,
        /// Take these CPUs offline (comma-separated or repeated).
        #[arg(long, value_name = "CPU", value_delimiter = ',')]
        offline: Vec<i64>,
    },
    /// Memory blocks and whether they are online (guest-get-memory-blocks).
    MemoryBlocks,
    /// The size of a memory block (guest-get-memory-block-info).
    MemoryBlockInfo,
    /// CPU times per CPU, in milliseconds (guest-get-cpustats).
    Cpustats,
    /// I/O counters per block device (guest-get-diskstats).
    Diskstats,
    /// Load averages (guest-get-load; QEMU 10.0 agents and ours).
    Load,
    /// Routing tables (guest-network-get-route; QEMU 9.1 agents and ours).
    Routes,
    /// Run a program in the guest and wait for it: its stdout and stderr are
    /// copied to ours, and qga exits with its status (128+N for signal N).
    /// `qga exec -- ls -l /`. No shell; --timeout bounds the whole run.
    Exec {
        /// Feed this file (`-`: our stdin) to the program's stdin.
        #[arg(long, value_name = "FILE|-")]
        input: Option<PathBuf>,
        /// An environment entry (repeatable); given, the entries replace the
        /// agent's whole environment.
        #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
        env: Vec<String>,
        /// What the agent captures (stdout, stderr, merged: QEMU 8.0+ agents).
        #[arg(long, value_enum, default_value = "separated")]
        capture: CaptureMode,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "PROG ARGS")]
        command: Vec<String>,
    },
    /// Set a guest user's password (guest-set-user-password): prompted for on a
    /// terminal, else stdin's first line. Never on the command line.
    Passwd {
        /// The guest user.
        user: String,
        /// The password is already a crypt(3) hash.
        #[arg(long)]
        crypted: bool,
    },
    /// A guest user's ssh authorized keys.
    SshKeys {
        #[command(subcommand)]
        action: SshKeysAction,
    },
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
    /// Print a shell completion script: `qga completions bash > /etc/bash_completion.d/qga`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `qga man | man -l -`.
    Man,
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

#[derive(Subcommand)]
enum SshKeysAction {
    /// Print the user's keys, one per line (guest-ssh-get-authorized-keys).
    Get {
        /// The guest user.
        user: String,
    },
    /// Add keys, one per line; blank lines and # comments are skipped
    /// (guest-ssh-add-authorized-keys).
    Add {
        /// The guest user.
        user: String,
        /// The public keys (`-` or none: stdin).
        #[arg(value_name = "KEYFILE|-")]
        keyfile: Option<PathBuf>,
        /// Replace the user's keys with these (none given: remove them all).
        #[arg(long)]
        reset: bool,
    },
    /// Remove keys, one per line (guest-ssh-remove-authorized-keys).
    Remove {
        /// The guest user.
        user: String,
        /// The public keys (`-` or none: stdin).
        #[arg(value_name = "KEYFILE|-")]
        keyfile: Option<PathBuf>,
    },
}

/// `exec --capture`.
#[derive(Clone, Copy, ValueEnum)]
enum CaptureMode {
    /// Capture nothing: the output goes nowhere.
    None,
    /// stdout and stderr, separately (sent as `true`, which 7.2 agents know too).
    Separated,
    /// stdout only.
    Stdout,
    /// stderr only.
    Stderr,
    /// Both into stdout, interleaved as written.
    Merged,
}

impl CaptureMode {
    /// The `capture-output` argument; none for `none`, the agent's default.
    fn to_arg(self) -> Option<proto::GuestExecCaptureOutput> {
        use proto::{GuestExecCaptureOutput as C, GuestExecCaptureOutputMode as M};
        Some(match self {
            CaptureMode::None => return None,
            CaptureMode::Separated => C::Flag(true),
            CaptureMode::Stdout => C::Mode(M::Stdout),
            CaptureMode::Stderr => C::Mode(M::Stderr),
            CaptureMode::Merged => C::Mode(M::Merged),
        })
    }
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
/// Chunk of `get` and `put`: one request is in flight at a time, and the next is
/// prepared (or the last one's data written out) while the agent handles it, so
/// 1 MiB keeps the agent busy with little memory on either side (agent-bench's
/// copy rows measure this size).
const COPY_CHUNK: usize = 1024 * 1024;

/// The command behind a read-only verb without arguments: with `--json`, its raw
/// return value is printed as the agent sent it.
fn query_command(cmd: &Cmd) -> Option<&'static str> {
    Some(match cmd {
        Cmd::Info => proto::GuestInfo::NAME,
        Cmd::Ifconfig => proto::GuestNetworkGetInterfaces::NAME,
        Cmd::Osinfo => proto::GuestGetOsinfo::NAME,
        Cmd::Time { set: None } => proto::GuestGetTime::NAME,
        Cmd::Hostname => proto::GuestGetHostName::NAME,
        Cmd::Timezone => proto::GuestGetTimezone::NAME,
        Cmd::Users => proto::GuestGetUsers::NAME,
        Cmd::Fsinfo => proto::GuestGetFsinfo::NAME,
        Cmd::Disks => proto::GuestGetDisks::NAME,
        Cmd::Devices => proto::GuestGetDevices::NAME,
        Cmd::Vcpus { online, offline } if online.is_empty() && offline.is_empty() => {
            proto::GuestGetVcpus::NAME
        }
        Cmd::MemoryBlocks => proto::GuestGetMemoryBlocks::NAME,
        Cmd::MemoryBlockInfo => proto::GuestGetMemoryBlockInfo::NAME,
        Cmd::Cpustats => proto::GuestGetCpustats::NAME,
        Cmd::Diskstats => proto::GuestGetDiskstats::NAME,
        Cmd::Load => proto::GuestGetLoad::NAME,
        Cmd::Routes => proto::GuestNetworkGetRoute::NAME,
        _ => return None,
    })
}

/// `--timeout`: seconds, positive and finite.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("{s:?}: the timeout must be positive"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// `exec --env`: `NAME=value`, with a name.
fn parse_env(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((name, _)) if !name.is_empty() => Ok(s.to_owned()),
        _ => Err(format!("{s:?} is not NAME=value")),
    }
}

/// `time --set`: the time to send, in nanoseconds since the epoch (`None`: from
/// the hardware clock).
fn set_time_arg(v: Option<&str>) -> Result<Option<i64>, CliError> {
    match v {
        None => Ok(None),
        Some("now") => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| CliError::Usage(format!("this host's clock is before 1970: {e}")))?;
            i64::try_from(now.as_nanos())
                .map(Some)
                .map_err(|_| CliError::Usage("this host's clock is past 2262".into()))
        }
        Some(ns) => ns.parse().map(Some).map_err(|_| {
            CliError::Usage(format!(
                "--set {ns:?}: expected nanoseconds since the epoch, or `now`"
            ))
        }),
    }
}

/// A program's end as a shell reports it: its exit status, or 128 + the signal.
fn exit_status(exit: qga_client::ExecExit) -> Option<u8> {
    match exit {
        qga_client::ExecExit::Code(c) => Some(u8::try_from(c).unwrap_or(1)),
        qga_client::ExecExit::Signal(n) => Some(u8::try_from(128 + n).unwrap_or(255)),
        qga_client::ExecExit::Unknown => None,
    }
}

/// Why `qga` failed: the agent side, the command line, or the local side.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// Connecting failed: the client's error names the socket or address.
    #[error(transparent)]
    Connect(ClientError),
    /// A call failed: `what` names the command (and guest path) and the agent.
    #[error("{what}: {source}")]
    Client {
        what: String,
        #[source]
        source: ClientError,
    },
    /// The command line made no sense (clap's own errors exit 2 too).
    #[error("{0}")]
    Usage(String),
    /// A local file (or stdout) could not be opened, read or written.
    #[error("cannot {action} {}: {source}", what.display())]
    Local {
        action: &'static str,
        what: PathBuf,
        source: io::Error,
    },
    /// `exec`'s program was still running when --timeout passed.
    #[error(
        "guest process {pid} still running after the timeout on {target}; poll it with: \
         qga exec-raw '{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{pid}}}}}'"
    )]
    ExecTimeout { pid: i64, target: String },
    /// stdout's reader went away (`qga ... | head`): stop quietly, as other tools do.
    #[error("stdout closed")]
    StdoutClosed,
}

impl CliError {
    fn local(action: &'static str, what: &Path) -> impl FnOnce(io::Error) -> Self {
        let what = what.to_owned();
        move |source| CliError::Local {
            action,
            what,
            source,
        }
    }

    /// A failed write to stdout.
    fn stdout(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            CliError::StdoutClosed
        } else {
            CliError::Local {
                action: "write",
                what: PathBuf::from("stdout"),
                source: e,
            }
        }
    }

    fn exit_code(&self) -> u8 {
        let client = match self {
            CliError::Connect(e) | CliError::Client { source: e, .. } => e,
            CliError::ExecTimeout { .. } => return 3,
            CliError::Usage(_) => return 2,
            CliError::Local { .. } => return 5,
            CliError::StdoutClosed => return 0,
        };
        match client {
            ClientError::Agent(_) => 1,
            ClientError::Protocol(_) => 4,
            _ => 3,
        }
    }
}

fn main() -> ExitCode {
    // clap prints its own errors and help, ignoring a closed stdout, and exits 2
    // (or 0 for --help and --version).
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local {
            action: "start the runtime for",
            what: PathBuf::from("qga"),
            source: e,
        })
        .and_then(|rt| {
            let mut out = Out::stdout();
            let result = rt.block_on(run(cli, &mut out));
            // What was printed goes out even when a later step failed.
            let flushed = out.flush();
            result.and_then(|code| flushed.map(|()| code))
        });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(CliError::StdoutClosed) => ExitCode::SUCCESS,
        Err(e) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(io::stderr(), "qga: {e}");
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

/// What a verb read on this side before connecting.
#[derive(Default)]
struct Local {
    /// `exec --input`.
    input: Option<Vec<u8>>,
    /// `passwd`.
    password: Vec<u8>,
    /// `ssh-keys add|remove`.
    keys: Vec<String>,
}

/// Reads what the verb needs from this side (files, stdin, the terminal) and checks
/// its arguments, all before the agent is contacted.
fn read_local(cmd: &Cmd) -> Result<Local, CliError> {
    let mut local = Local::default();
    match cmd {
        Cmd::Exec { input, .. } => local.input = local::exec_input(input.as_deref())?,
        Cmd::Passwd { user, .. } => local.password = local::password(user)?,
        Cmd::SshKeys {
            action: SshKeysAction::Add { keyfile, reset, .. },
        } => {
            local.keys = local::ssh_keys(keyfile.as_deref())?;
            if local.keys.is_empty() && !reset {
                return Err(CliError::Usage(
                    "no keys to add (with --reset, no keys removes them all)".into(),
                ));
            }
        }
        Cmd::SshKeys {
            action: SshKeysAction::Remove { keyfile, .. },
        } => {
            local.keys = local::ssh_keys(keyfile.as_deref())?;
            if local.keys.is_empty() {
                return Err(CliError::Usage("no keys to remove".into()));
            }
        }
        Cmd::Time { set: Some(v) } => {
            set_time_arg(v.as_deref())?;
        }
        Cmd::Vcpus { online, offline } => {
            if let Some(cpu) = online.iter().find(|c| offline.contains(c)) {
                return Err(CliError::Usage(format!(
                    "CPU {cpu} cannot go both online and offline"
                )));
            }
        }
        _ => {}
    }
    Ok(local)
}

async fn run(cli: Cli, out: &mut Out) -> Result<u8, CliError> {
    // Commands that need no agent.
    match &cli.command {
        Cmd::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "qga", &mut script);
            return out.bytes(&script).map(|()| 0);
        }
        Cmd::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .map_err(CliError::stdout)?;
            return out.bytes(&page).map(|()| 0);
        }
        // Refuse a bad request before connecting.
        Cmd::ExecRaw { request } => {
            parse_raw(request)?;
        }
        _ => {}
    }
    let targets = [
        cli.socket.is_some(),
        cli.vsock.is_some(),
        cli.hybrid_vsock.is_some(),
    ];
    if targets.iter().filter(|t| **t).count() != 1 {
        return Err(CliError::Usage(
            "give exactly one of --socket, --vsock or --hybrid-vsock".into(),
        ));
    }
    let local = read_local(&cli.command)?;
    if let Some(path) = &cli.socket {
        let c = qga_client::connect_unix(path)
            .await
            .map_err(CliError::Connect)?;
        let target = format!("unix socket {}", path.display());
        return drive(c, &cli, &target, out, local).await;
    }
    if let Some(v) = &cli.vsock {
        let (cid, port) = split_port(v)?;
        let cid = cid
            .parse()
            .map_err(|_| CliError::Usage(format!("bad cid in {v:?}")))?;
        let c = qga_client::connect_vsock(cid, port)
            .await
            .map_err(CliError::Connect)?;
        return drive(c, &cli, &format!("vsock {cid}:{port}"), out, local).await;
    }
    if let Some(h) = &cli.hybrid_vsock {
        let (path, port) = split_port(h)?;
        let c = qga_client::connect_hybrid_vsock(path, port)
            .await
            .map_err(CliError::Connect)?;
        let target = format!("hybrid vsock {path} port {port}");
        return drive(c, &cli, &target, out, local).await;
    }
    unreachable!("exactly one target was checked above")
}

/// A progress bar on stderr, only when stderr is a terminal: pipes and logs stay
/// quiet.
fn progress_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
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

/// Clears the bar and, on the terminal it was drawn on, says what was copied.
fn finish_bar(bar: Option<indicatif::ProgressBar>, summary: impl Display) {
    if let Some(b) = bar {
        b.finish_and_clear();
        let _ = writeln!(io::stderr(), "{summary}");
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin + Send>(
    client: Client<S>,
    cli: &Cli,
    target: &str,
    out: &mut Out,
    local: Local,
) -> Result<u8, CliError> {
    let mut timeouts = Timeouts::default();
    if let Some(d) = cli.timeout {
        timeouts = Timeouts {
            quick: d,
            file: d,
            slow: d,
            ..timeouts
        };
    }
    let mut c = client.with_timeouts(timeouts);
    // Names what failed: the command (and guest path), and the agent.
    let failed = |what: &str| {
        let what = format!("{what} on {target}");
        move |source| CliError::Client { what, source }
    };
    let json = cli.json;
    if json {
        if let Some(name) = query_command(&cli.command) {
            let v = c.execute_raw(name, None).await.map_err(failed(name))?;
            return out.json(&v).map(|()| 0);
        }
    }
    // The human-readable forms; the error names the command as query_command does.
    let what = query_command(&cli.command).unwrap_or_default();
    match &cli.command {
        Cmd::Ping => {
            c.ping().await.map_err(failed("guest-ping"))?;
            if json {
                out.json(&serde_json::json!({}))?;
            } else {
                out.line("pong")?;
            }
        }
        Cmd::Sync => {
            c.sync().await.map_err(failed("guest-sync-delimited"))?;
            if !json {
                out.line("in sync")?;
            }
        }
        Cmd::Info => {
            let info = c.info().await.map_err(failed(what))?;
            out.line(format_args!("version {}", info.version))?;
            let mut t = Table::new(["command", "enabled", "success-response"]);
            let yes = |b: bool| if b { "yes" } else { "no" };
            for cmd in &info.supported_commands {
                t.row([
                    cmd.name.clone(),
                    yes(cmd.enabled).into(),
                    yes(cmd.success_response).into(),
                ]);
            }
            out.table(&t)?;
        }
        Cmd::ExecRaw { request } => {
            let (name, arguments) = parse_raw(request)?;
            let r = c
                .execute_raw(&name, arguments)
                .await
                .map_err(failed(&name))?;
            out.json(&r)?;
        }
        Cmd::Cat { guest_file } => {
            let data = c
                .read_file(guest_file, CHUNK, None)
                .await
                .map_err(failed(&format!("reading guest file {guest_file}")))?;
            out.bytes(&data)?;
        }
        Cmd::Get { guest_file, local } => {
            // Streamed into a temporary file that replaces `local` once complete.
            let mut dest = transfer::Destination::create(local)
                .map_err(CliError::local("write local file", local))?;
            let bar = progress_bar(None);
            let mut cb = |done: u64, _: Option<u64>| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            let copied = c
                .copy_from_guest(
                    guest_file,
                    &mut transfer::Blocking(dest.file()),
                    COPY_CHUNK,
                    Some(&mut cb),
                )
                .await
                .map_err(|e| match e {
                    ClientError::Local(e) => CliError::local("write local file", local)(e),
                    e => failed(&format!("reading guest file {guest_file}"))(e),
                })?;
            dest.commit()
                .map_err(CliError::local("write local file", local))?;
            finish_bar(
                bar,
                format_args!("{copied} bytes copied to {}", local.display()),
            );
        }
        Cmd::Put { local, guest_file } => {
            // Checked before the guest file is opened (and truncated).
            let (file, total) =
                transfer::source(local).map_err(CliError::local("read local file", local))?;
            let bar = progress_bar(total);
            let mut cb = |done: u64, _: Option<u64>| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            };
            let copied = c
                .copy_to_guest(
                    &mut transfer::Blocking(file),
                    guest_file,
                    COPY_CHUNK,
                    total,
                    Some(&mut cb),
                )
                .await
                .map_err(|e| match e {
                    ClientError::Local(e) => CliError::local("read local file", local)(e),
                    e => failed(&format!("writing guest file {guest_file}"))(e),
                })?;
            finish_bar(bar, format_args!("{copied} bytes copied to {guest_file}"));
        }
        Cmd::Fsfreeze { action } => match action {
            FreezeAction::Status => {
                let s = c
                    .fsfreeze_status()
                    .await
                    .map_err(failed("guest-fsfreeze-status"))?;
                if json {
                    out.json(&s)?;
                } else {
                    out.line(match s {
                        FsfreezeStatus::Frozen => "frozen",
                        FsfreezeStatus::Thawed => "thawed",
                    })?;
                }
            }
            FreezeAction::Freeze { mountpoints } => {
                let list = (!mountpoints.is_empty()).then(|| mountpoints.clone());
                let what = if list.is_some() {
                    "guest-fsfreeze-freeze-list"
                } else {
                    "guest-fsfreeze-freeze"
                };
                let n = c.fsfreeze_freeze(list).await.map_err(failed(what))?;
                if json {
                    out.json(&n)?;
                } else {
                    out.line(format_args!("{n} filesystems frozen"))?;
                }
            }
            FreezeAction::Thaw => {
                let n = c
                    .fsfreeze_thaw()
                    .await
                    .map_err(failed("guest-fsfreeze-thaw"))?;
                if json {
                    out.json(&n)?;
                } else {
                    out.line(format_args!("{n} filesystems thawed"))?;
                }
            }
        },
        Cmd::Fstrim { minimum } => {
            let r = c.fstrim(*minimum).await.map_err(failed("guest-fstrim"))?;
            if json {
                out.json(&r)?;
            } else {
                for p in &r.paths {
                    match (&p.error, p.trimmed) {
                        (Some(e), _) => out.line(format_args!("{}: {e}", p.path))?,
                        (None, Some(t)) => {
                            out.line(format_args!("{}: {t} bytes trimmed", p.path))?
                        }
                        (None, None) => out.line(format_args!("{}: done", p.path))?,
                    }
                }
            }
        }
        Cmd::Ifconfig => {
            let ifs = c.network_interfaces().await.map_err(failed(what))?;
            out.table(&views::interfaces(&ifs))?;
        }
        Cmd::Osinfo => {
            let os = c.get_osinfo().await.map_err(failed(what))?;
            out.table(&views::osinfo(&os))?;
        }
        Cmd::Time { set: None } => {
            let ns = c.get_time().await.map_err(failed(what))?;
            out.line(views::utc_ns(ns))?;
        }
        Cmd::Time { set: Some(v) } => {
            // `now` is read at the last moment.
            let time = set_time_arg(v.as_deref())?;
            c.set_time(time).await.map_err(failed("guest-set-time"))?;
            if json {
                out.json(&serde_json::json!({}))?;
            }
        }
        Cmd::Hostname => {
            let name = c.get_host_name().await.map_err(failed(what))?;
            out.line(name)?;
        }
        Cmd::Timezone => {
            let tz = c.get_timezone().await.map_err(failed(what))?;
            out.line(views::timezone(&tz))?;
        }
        Cmd::Users => {
            let users = c.get_users().await.map_err(failed(what))?;
            out.table(&views::users(&users))?;
        }
        Cmd::Fsinfo => {
            let fss = c.get_fsinfo().await.map_err(failed(what))?;
            out.table(&views::fsinfo(&fss))?;
        }
        Cmd::Disks => {
            let disks = c.get_disks().await.map_err(failed(what))?;
            out.table(&views::disks(&disks))?;
        }
        Cmd::Devices => {
            let devs = c.get_devices().await.map_err(failed(what))?;
            out.table(&views::devices(&devs))?;
        }
        Cmd::Vcpus { online, offline } if online.is_empty() && offline.is_empty() => {
            let cpus = c.get_vcpus().await.map_err(failed(what))?;
            out.table(&views::vcpus(&cpus))?;
        }
        Cmd::Vcpus { online, offline } => {
            let cpu = |&logical_id: &i64, online: bool| proto::GuestLogicalProcessor {
                logical_id,
                online,
                can_offline: None,
            };
            let vcpus: Vec<_> = online
                .iter()
                .map(|id| cpu(id, true))
                .chain(offline.iter().map(|id| cpu(id, false)))
                .collect();
            let n = c
                .set_vcpus(vcpus.clone())
                .await
                .map_err(failed("guest-set-vcpus"))?;
            if json {
                out.json(&n)?;
            } else {
                out.line(format_args!("{n} of {} vcpus processed", vcpus.len()))?;
            }
            // The agent stops at the first CPU it cannot change.
            if n < vcpus.len() as i64 {
                out.flush()?;
                let stuck = usize::try_from(n).ok().and_then(|i| vcpus.get(i));
                let _ = match stuck {
                    Some(v) => writeln!(
                        io::stderr(),
                        "qga: guest-set-vcpus stopped at CPU {} (nothing done from there on)",
                        v.logical_id
                    ),
                    None => writeln!(io::stderr(), "qga: guest-set-vcpus processed {n}"),
                };
                return Ok(1);
            }
        }
        Cmd::Exec {
            env,
            capture,
            command,
            ..
        } => {
            let (path, args) = command
                .split_first()
                .ok_or_else(|| CliError::Usage("no program given".into()))?;
            let cmd = qga_client::ExecCommand {
                path: path.clone(),
                args: args.to_vec(),
                env: (!env.is_empty()).then(|| env.clone()),
                input: local.input,
                capture: capture.to_arg(),
            };
            // Without --timeout, wait as long as the program runs.
            let bound = cli.timeout.unwrap_or(Duration::MAX);
            let r = match c.exec_wait(&cmd, bound).await {
                Ok(r) => r,
                Err(ClientError::ExecTimeout { pid }) => {
                    return Err(CliError::ExecTimeout {
                        pid,
                        target: target.to_owned(),
                    })
                }
                Err(e) => return Err(failed(&format!("guest-exec {path}"))(e)),
            };
            let status = exit_status(r.exit);
            if json {
                out.json(&r.raw)?;
            } else {
                // stdout first and whole; a reader that went away does not change
                // the status the program ended with.
                match out.bytes(&r.stdout).and_then(|()| out.flush()) {
                    Ok(()) | Err(CliError::StdoutClosed) => {}
                    Err(e) => return Err(e),
                }
                let mut err = io::stderr().lock();
                let _ = err.write_all(&r.stderr);
                for (truncated, which) in [
                    (r.stdout_truncated, "stdout"),
                    (r.stderr_truncated, "stderr"),
                ] {
                    if truncated {
                        let _ = writeln!(
                            err,
                            "qga: the agent truncated process {}'s {which} (its capture limit)",
                            r.pid
                        );
                    }
                }
                if status.is_none() {
                    let _ = writeln!(
                        err,
                        "qga: process {} ended without an exit status or signal",
                        r.pid
                    );
                }
                let _ = err.flush();
            }
            return Ok(status.unwrap_or(1));
        }
        Cmd::Passwd { user, crypted } => {
            c.set_user_password(user, &local.password, *crypted)
                .await
                .map_err(failed(&format!("guest-set-user-password for {user}")))?;
            if json {
                out.json(&serde_json::json!({}))?;
            }
        }
        Cmd::SshKeys { action } => match action {
            SshKeysAction::Get { user } => {
                let what = format!("guest-ssh-get-authorized-keys for {user}");
                if json {
                    let v = c
                        .execute_raw(
                            proto::GuestSshGetAuthorizedKeys::NAME,
                            Some(serde_json::json!({ "username": user })),
                        )
                        .await
                        .map_err(failed(&what))?;
                    out.json(&v)?;
                } else {
                    let keys = c
                        .ssh_get_authorized_keys(user)
                        .await
                        .map_err(failed(&what))?;
                    for k in keys {
                        out.line(k)?;
                    }
                }
            }
            SshKeysAction::Add { user, reset, .. } => {
                c.ssh_add_authorized_keys(user, local.keys, *reset)
                    .await
                    .map_err(failed(&format!("guest-ssh-add-authorized-keys for {user}")))?;
                if json {
                    out.json(&serde_json::json!({}))?;
                }
            }
            SshKeysAction::Remove { user, .. } => {
                c.ssh_remove_authorized_keys(user, local.keys)
                    .await
                    .map_err(failed(&format!(
                        "guest-ssh-remove-authorized-keys for {user}"
                    )))?;
                if json {
                    out.json(&serde_json::json!({}))?;
                }
            }
        },
        Cmd::MemoryBlocks => {
            let blocks = c.get_memory_blocks().await.map_err(failed(what))?;
            out.table(&views::memory_blocks(&blocks))?;
        }
        Cmd::MemoryBlockInfo => {
            let info = c.get_memory_block_info().await.map_err(failed(what))?;
            out.line(format_args!(
                "block size {} ({} bytes)",
                views::size(info.size),
                info.size
            ))?;
        }
        Cmd::Cpustats => {
            let stats = c.get_cpustats().await.map_err(failed(what))?;
            out.table(&views::cpustats(&stats))?;
        }
        Cmd::Diskstats => {
            let stats = c.get_diskstats().await.map_err(failed(what))?;
            out.table(&views::diskstats(&stats))?;
        }
        Cmd::Load => {
            let load = c.get_load().await.map_err(failed(what))?;
            out.table(&views::load(&load))?;
        }
        Cmd::Routes => {
            let routes = c.get_routes().await.map_err(failed(what))?;
            out.table(&views::routes(&routes))?;
        }
        Cmd::Shutdown { mode } => {
            let m = match mode {
                ShutdownMode::Halt => "halt",
                ShutdownMode::Powerdown => "powerdown",
                ShutdownMode::Reboot => "reboot",
            };
            c.shutdown(Some(m))
                .await
                .map_err(failed("guest-shutdown"))?;
        }
        Cmd::Suspend { mode } => match mode {
            SuspendMode::Disk => c
                .suspend_disk()
                .await
                .map_err(failed("guest-suspend-disk"))?,
            SuspendMode::Ram => c.suspend_ram().await.map_err(failed("guest-suspend-ram"))?,
            SuspendMode::Hybrid => c
                .suspend_hybrid()
                .await
                .map_err(failed("guest-suspend-hybrid"))?,
        },
        Cmd::Completions { .. } | Cmd::Man => unreachable!("handled before connecting"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // clap's own checks (clashing names, such as a positional named like a
        // global option) run lazily per subcommand; this runs them all.
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_must_be_positive_and_finite() {
        assert_eq!(parse_timeout("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["0", "-1", "NaN", "inf", "1e300", "soon"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
    }
}
