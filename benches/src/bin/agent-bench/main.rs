//! `agent-bench`: our `qga-agent` against the reference `qemu-ga`, side by side in one
//! run. See `benches/README.md` for the command and what each scenario measures.

mod agent;
mod memory;
mod modern;
mod scenarios;
mod stub;
mod via_client;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent::{Agent, Cpus, Pin, Program};
use qga_benches::stats::{max, median};
use scenarios::{Inputs, Scenario, Sizes};

const USAGE: &str = "\
usage: agent-bench [options]
  --quick              small sizes and 2 runs (under ~30 s)
  --runs N             runs per scenario and agent, alternated ours/qemu-ga (default:
                       5 for round-trip and start-up scenarios, 3 for file scenarios;
                       --quick: 3 and 2)
  --ours PATH          our agent binary (default: build it with `cargo build --release
                       -p qga-agent` and use target/release/qga-agent)
  --no-build           do not build; use the default path as it is
  --no-ours            measure only the reference
  --reference PATH     reference agent (default /usr/sbin/qemu-ga)
  --no-reference       measure only ours
  --only LIST          comma list of: floor,ping,sync,pipelined,netif,read,write,startup,client,
                       modern (every read-only modern command), exec, memory, or command names
                       (guest-get-disks or its short name disks; for profiling one)
  --socket-floor       only the socket floor (same as --only floor)
  --read-kib LIST      read counts in KiB (default 4,64,1024,16384; for profiling one)
  --tmp DIR            where temp files go (default /dev/shm if it has room, else /tmp)
  --cpus A,C           CPU of the agent and of the client when split (default 1,0)
";

struct Options {
    quick: bool,
    /// Runs of the file scenarios; 0 = default.
    runs: usize,
    /// Runs of the cheap (round-trip, start-up) scenarios.
    cheap_runs: usize,
    ours: Option<PathBuf>,
    build: bool,
    no_ours: bool,
    reference: Option<PathBuf>,
    only: Option<Vec<String>>,
    tmp: Option<PathBuf>,
    /// Read counts in KiB (default 4, 64, 1024, 16384).
    read_kib: Vec<usize>,
    cpus: Cpus,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        runs: 0,
        cheap_runs: 0,
        ours: None,
        build: true,
        no_ours: false,
        reference: Some(PathBuf::from("/usr/sbin/qemu-ga")),
        only: None,
        tmp: None,
        read_kib: vec![4, 64, 1024, 16384],
        cpus: Cpus {
            agent: 1,
            client: 0,
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--quick" => o.quick = true,
            "--runs" => {
                o.runs = value("--runs")?
                    .parse()
                    .map_err(|e| format!("--runs: {e}"))?;
                o.cheap_runs = o.runs;
            }
            "--ours" => o.ours = Some(value("--ours")?.into()),
            "--no-build" => o.build = false,
            "--no-ours" => o.no_ours = true,
            "--reference" => o.reference = Some(value("--reference")?.into()),
            "--no-reference" => o.reference = None,
            "--only" => o.only = Some(value("--only")?.split(',').map(str::to_string).collect()),
            "--socket-floor" => o.only = Some(vec!["floor".into()]),
            "--tmp" => o.tmp = Some(value("--tmp")?.into()),
            "--read-kib" => {
                o.read_kib = value("--read-kib")?
                    .split(',')
                    .map(|k| k.parse::<usize>().map_err(|e| format!("--read-kib: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--cpus" => {
                let v = value("--cpus")?;
                let (a, c) = v.split_once(',').ok_or("--cpus wants AGENT,CLIENT")?;
                o.cpus = Cpus {
                    agent: a.parse().map_err(|e| format!("--cpus: {e}"))?,
                    client: c.parse().map_err(|e| format!("--cpus: {e}"))?,
                };
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 2 } else { 3 };
        o.cheap_runs = if o.quick { 3 } else { 5 };
    }
    Ok(o)
}

/// The two columns of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Ours,
    Reference,
}

/// Samples per metric key and side.
type Results = BTreeMap<String, BTreeMap<Side, Vec<f64>>>;

fn record(results: &mut Results, key: String, side: Side, v: f64) {
    results
        .entry(key)
        .or_default()
        .entry(side)
        .or_default()
        .push(v);
}

fn locate_ours(o: &Options) -> Option<PathBuf> {
    if o.no_ours {
        return None;
    }
    if let Some(p) = &o.ours {
        return Some(p.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    if o.build {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        eprintln!("building our agent: cargo build --release -p qga-agent --bin qga-agent");
        let ok = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "qga-agent",
                "--bin",
                "qga-agent",
            ])
            .current_dir(&root)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("warning: could not build qga-agent; measuring the reference only");
            return None;
        }
    }
    let path = target.join("release").join("qga-agent");
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "warning: {} not found; measuring the reference only",
            path.display()
        );
        None
    }
}

fn pick_tmp(o: &Options, need: u64) -> (PathBuf, String) {
    if let Some(t) = &o.tmp {
        return (t.clone(), "given with --tmp".into());
    }
    let shm = Path::new("/dev/shm");
    match nix::sys::statvfs::statvfs(shm) {
        Ok(s) if s.blocks_available().saturating_mul(s.fragment_size()) > need * 2 => {
            (shm.to_path_buf(), "tmpfs /dev/shm".into())
        }
        _ => (
            std::env::temp_dir(),
            format!(
                "{} (/dev/shm too small or missing)",
                std::env::temp_dir().display()
            ),
        ),
    }
}

fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{n} CPUs, {model}, Linux {}", kernel.trim())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--echo-server" {
        if let Err(e) = agent::echo_server(Path::new(&args[2])) {
            eprintln!("echo server: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.len() == 4 && args[1] == "--stub-server" {
        let chunk = args[3].parse().unwrap_or(0);
        if let Err(e) = stub::serve(Path::new(&args[2]), chunk) {
            eprintln!("stub server: {e}");
            std::process::exit(1);
        }
        return;
    }
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    std::process::exit(match bench(&o) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("agent-bench: {e}");
            1
        }
    });
}

fn bench(o: &Options) -> Result<(), String> {
    let cpus_avail = agent::remember_affinity();
    if cpus_avail < 2 || o.cpus.agent == o.cpus.client {
        return Err("needs two CPUs (distinct --cpus) to compare same-CPU and split runs".into());
    }
    let sizes = if o.quick {
        Sizes {
            round_trips: 2_000,
            netif_calls: 200,
            read_file: 32 << 20,
            write_total: 8 << 20,
            startups: 5,
            pipelined_batches: 2,
            max_read_requests: 1_024,
            max_client_read: 16 << 20,
            modern_calls: 2_000,
            modern_budget: Duration::from_millis(250),
        }
    } else {
        Sizes {
            round_trips: 10_000,
            netif_calls: 1_000,
            read_file: 256 << 20,
            write_total: 64 << 20,
            startups: 10,
            pipelined_batches: 5,
            max_read_requests: 4_096,
            max_client_read: 64 << 20,
            modern_calls: 10_000,
            modern_budget: Duration::from_secs(1),
        }
    };
    let wants = |g: &str| o.only.as_ref().is_none_or(|l| l.iter().any(|x| x == g));
    let mut scenarios = Vec::new();
    // Start-up first: before the file scenarios churn hundreds of MiB of memory.
    if wants("startup") {
        scenarios.push(Scenario::Startup);
    }
    for pin in [Pin::Same, Pin::Split] {
        if wants("ping") {
            scenarios.push(Scenario::Ping(pin));
        }
        if wants("sync") {
            scenarios.push(Scenario::Sync(pin));
        }
    }
    if wants("pipelined") {
        scenarios.push(Scenario::Pipelined);
    }
    if wants("netif") {
        scenarios.push(Scenario::NetIf);
    }
    if wants("read") {
        scenarios.extend(o.read_kib.iter().map(|k| Scenario::Read(k << 10)));
        // The table pinned both sides to one CPU; small reads are compared
        // that way too (on two CPUs they are bound by the split ping).
        scenarios.extend(o.read_kib.iter().map(|k| Scenario::ReadSame(k << 10)));
    }
    if wants("write") {
        scenarios.extend([64 << 10, 1 << 20].map(Scenario::Write));
        scenarios.extend([64 << 10, 1 << 20].map(Scenario::WriteSame));
    }

    if wants("client") {
        scenarios.extend([
            Scenario::ClientPing(Pin::Same),
            Scenario::ClientPing(Pin::Split),
        ]);
        scenarios.extend([1 << 20, 16 << 20].map(Scenario::ClientRead));
    }
    for (i, c) in modern::MODERN.iter().enumerate() {
        if wants("modern") || wants(c.name) || wants(c.key) {
            scenarios.push(Scenario::Modern(i));
        }
    }
    if wants("exec") || wants("guest-exec") {
        scenarios.push(Scenario::Exec);
    }
    if wants("memory") {
        scenarios.push(Scenario::Memory);
    }
    if let Some(only) = &o.only {
        const GROUPS: &[&str] = &[
            "floor",
            "ping",
            "sync",
            "pipelined",
            "netif",
            "read",
            "write",
            "startup",
            "client",
            "modern",
            "exec",
            "guest-exec",
            "memory",
        ];
        if let Some(bad) = only
            .iter()
            .find(|x| !GROUPS.contains(&x.as_str()) && modern::find(x).is_none())
        {
            return Err(format!("--only: unknown scenario {bad:?}"));
        }
    }
    let needs_data = scenarios.iter().any(|s| {
        matches!(
            s,
            Scenario::Read(_)
                | Scenario::ReadSame(_)
                | Scenario::Write(_)
                | Scenario::WriteSame(_)
                | Scenario::ClientRead(_)
                | Scenario::Memory
        )
    });
    let data_len = if needs_data { sizes.read_file } else { 0 };
    let (base, base_note) = pick_tmp(o, data_len as u64 * 2);
    let work = tempfile::Builder::new()
        .prefix("qga-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("temp dir in {}: {e}", base.display()))?;

    let mut sides: Vec<(Side, Program)> = Vec::new();
    let ours = if scenarios.is_empty() {
        None
    } else {
        locate_ours(o)
    };
    if let Some(p) = &ours {
        sides.push((Side::Ours, Program::Agent(p.clone())));
    }
    if let Some(p) = &o.reference {
        sides.push((Side::Reference, Program::Agent(p.clone())));
    }
    let bench_exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let echo = Program::Echo(bench_exe.clone());

    println!("# agent-bench");
    println!();
    println!("- machine: {}", machine());
    println!(
        "- ours: {}",
        ours.as_ref()
            .map_or("not measured (no binary; see stderr)".into(), |p| format!(
                "{} {}",
                p.display(),
                version(p)
            ))
    );
    if let Some(r) = &o.reference {
        println!("- reference: {} ({})", r.display(), version(r));
    }
    println!("- temp files: {} ({base_note})", work.path().display());
    println!(
        "- pinning: agent on CPU {}, client on CPU {} (split) or {} (same)",
        o.cpus.agent, o.cpus.client, o.cpus.agent
    );
    println!(
        "- runs per scenario and agent (ours, qemu-ga and the stub in an order that rotates run to run, a fresh process each): {} (file scenarios), {} (others); {} round trips per run; mode: {}",
        o.runs,
        o.cheap_runs,
        sizes.round_trips,
        if o.quick { "quick" } else { "full" }
    );
    if needs_data {
        println!(
            "- file read source: {} MiB; a run reads all of it or its first {} chunks; writes: {} MiB",
            sizes.read_file >> 20,
            sizes.max_read_requests,
            sizes.write_total >> 20
        );
    }
    println!("- load average at start: {}", loadavg());
    let started = Instant::now();

    let mut inputs = Inputs {
        data: Vec::new(),
        data_path: work.path().join("read-source.bin"),
        work_dir: work.path().to_path_buf(),
        expected: None,
        sizes: sizes.clone(),
    };
    if needs_data {
        inputs.data = scenarios::test_data(data_len);
        std::fs::write(&inputs.data_path, &inputs.data)
            .map_err(|e| format!("writing the read source: {e}"))?;
    }

    let mut results = Results::new();
    let mut errors: Vec<String> = Vec::new();
    // Agents whose RSS is read one second after their scenario, kept alive (and
    // connected) meanwhile while the next runs go on.
    let mut pending: Vec<(Side, Pending)> = Vec::new();

    // The socket floor: the same round trip against an echo server.
    if wants("floor") {
        for pin in [Pin::Same, Pin::Split] {
            for run in 0..o.cheap_runs {
                match floor_run(&echo, work.path(), o.cpus, pin, sizes.round_trips) {
                    Ok((rate, p50, p99)) => {
                        let k = format!("floor.{}", scenarios::pin_key(pin));
                        for (m, v) in [("rate", rate), ("p50", p50), ("p99", p99)] {
                            record(&mut results, format!("{k}.{m}"), Side::Reference, v);
                            record(&mut results, format!("{k}.{m}"), Side::Ours, v);
                        }
                    }
                    Err(e) => errors.push(format!("socket floor ({}) run {run}: {e}", pin.label())),
                }
            }
        }
        agent::unpin_current_thread();
    }

    for &scenario in &scenarios {
        if let Scenario::Read(chunk) | Scenario::ReadSame(chunk) | Scenario::ClientRead(chunk) =
            scenario
        {
            inputs.expected = None;
            inputs.expected = Some((chunk, scenarios::expected_chunks(&inputs.data, chunk)));
        }
        eprintln!(
            "[{:>5.1}s] {}",
            started.elapsed().as_secs_f64(),
            scenario.describe()
        );
        let runs = match scenario {
            Scenario::Read(_)
            | Scenario::ReadSame(_)
            | Scenario::Write(_)
            | Scenario::WriteSame(_)
            | Scenario::ClientRead(_)
            | Scenario::Memory => o.runs,
            _ => o.cheap_runs,
        };
        // Who runs, in turn: the agents, then the stub for a bounded scenario. The
        // order rotates from run to run, so no one always follows the same
        // process (the stub frees hundreds of MiB on exit; a 16 MiB read right after
        // measured ~5-10 % slower) nor always runs first.
        let stub = stub_for(scenario, &bench_exe);
        let mut turns: Vec<Option<&(Side, Program)>> = sides
            .iter()
            .filter(|(side, _)| !(*side == Side::Reference && scenario.ours_only()))
            .map(Some)
            .collect();
        if stub.is_some() {
            turns.push(None);
        }
        for run in 0..runs {
            for &turn in &turns {
                harvest(&mut pending, &mut results, false);
                let program = match (turn, &stub) {
                    (Some((_, program)), _) | (None, Some(program)) => program,
                    (None, None) => continue,
                };
                let out = run_one(scenario, program, work.path(), o.cpus, &inputs);
                agent::unpin_current_thread();
                let name = match turn {
                    Some((Side::Ours, _)) => "ours",
                    Some((Side::Reference, _)) => "qemu-ga",
                    None => "stub",
                };
                match (out, turn) {
                    (Ok((out, later)), Some((side, _))) => {
                        for (k, v) in out {
                            record(&mut results, k, *side, v);
                        }
                        if let Some(p) = later {
                            pending.push((*side, p));
                        }
                    }
                    // The stub's results are the bounds; a stub kept for an RSS
                    // reading is stopped here (its memory is not measured).
                    (Ok((out, _)), None) => {
                        for (k, v) in out {
                            record(&mut results, format!("bound.{k}"), Side::Ours, v);
                        }
                    }
                    (Err(e), _) => {
                        let msg = format!("{} / {name} run {run}: {e}", scenario.describe());
                        eprintln!("  error: {msg}");
                        errors.push(msg);
                    }
                }
            }
            turns.rotate_left(1);
        }
    }
    harvest(&mut pending, &mut results, true);
    if let (true, Some((_, ours))) = (wants("client"), sides.first().filter(|s| s.0 == Side::Ours))
    {
        eprintln!(
            "[{:>5.1}s] whole-file copies via qga-client",
            started.elapsed().as_secs_f64()
        );
        via_client::copies(
            ours,
            work.path(),
            o.cpus,
            &inputs,
            o.runs,
            &mut results,
            &mut errors,
        );
    }
    drop(inputs);

    let elapsed = started.elapsed();
    println!(
        "- load average at end: {}; wall time {:.0} s",
        loadavg(),
        elapsed.as_secs_f64()
    );
    println!();
    print_tables(&results, &scenarios, ours.is_some(), o.reference.is_some());
    via_client::print_copies(&results);
    print_samples(&results);
    if !errors.is_empty() {
        println!();
        println!("## Errors");
        println!();
        for e in &errors {
            println!("- {e}");
        }
    }
    drop(work);
    Ok(())
}

/// The stub for the scenarios whose target it bounds (see `stub.rs`).
fn stub_for(scenario: Scenario, exe: &Path) -> Option<Program> {
    match scenario {
        Scenario::Ping(Pin::Same) | Scenario::Sync(Pin::Same) | Scenario::Exec => {
            Some(Program::Stub(exe.to_path_buf(), 0))
        }
        Scenario::ReadSame(chunk) => Some(Program::Stub(exe.to_path_buf(), chunk)),
        _ => None,
    }
}

fn floor_run(
    echo: &Program,
    base: &Path,
    cpus: Cpus,
    pin: Pin,
    n: usize,
) -> std::io::Result<(f64, f64, f64)> {
    use std::io::Write;
    let started = Agent::start(echo, base, cpus, pin)?;
    let mut conn = started.conn;
    let warmup = (n / 10).min(200);
    let mut lat = Vec::with_capacity(n);
    let mut total = std::time::Duration::ZERO;
    for i in 0..warmup + n {
        let t = Instant::now();
        conn.get_mut().write_all(agent::PING)?;
        conn.next_reply()?;
        let dt = t.elapsed();
        if i >= warmup {
            lat.push(dt.as_nanos() as u64);
            total += dt;
        }
    }
    lat.sort_unstable();
    let p = |q| qga_benches::stats::percentile_sorted(&lat, q).unwrap_or(0) as f64 / 1000.0;
    Ok((n as f64 / total.as_secs_f64(), p(50.0), p(99.0)))
}

/// How long after a scenario its agent's RSS is read again.
const RSS_AFTER: Duration = Duration::from_secs(1);

/// An agent whose RSS is to be read again at `due`; dropping it stops the agent.
struct Pending {
    started: agent::Started,
    /// `VmRSS` in KiB right before the scenario's first request (after the start-up ping).
    idle_kib: u64,
    due: Instant,
    key: String,
}

/// Reads the RSS of every pending agent that is due (all of them when `all`, waiting
/// as needed), records `rss_idle.KEY`, `rss_after.KEY` (MiB) and `rss_ratio.KEY`, and
/// stops those agents.
fn harvest(pending: &mut Vec<(Side, Pending)>, results: &mut Results, all: bool) {
    let now = Instant::now();
    let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(pending)
        .into_iter()
        .partition(|(_, p)| all || p.due <= now);
    *pending = rest;
    for (side, p) in due {
        let wait = p.due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if let Some(after) = p.started.agent.status_kib("VmRSS") {
            let k = &p.key;
            record(
                results,
                format!("rss_idle.{k}"),
                side,
                p.idle_kib as f64 / 1024.0,
            );
            record(
                results,
                format!("rss_after.{k}"),
                side,
                after as f64 / 1024.0,
            );
            if p.idle_kib > 0 {
                let ratio = after as f64 / p.idle_kib as f64;
                record(results, format!("rss_ratio.{k}"), side, ratio);
            }
        }
    }
}

/// One fresh agent, one scenario; metrics include its start-up and peak RSS. Scenarios
/// whose RSS is read again later hand back their still running agent.
fn run_one(
    scenario: Scenario,
    program: &Program,
    base: &Path,
    cpus: Cpus,
    inputs: &Inputs,
) -> std::io::Result<(scenarios::Samples, Option<Pending>)> {
    let key = scenario.key();
    if scenario == Scenario::Startup {
        let mut out = Vec::new();
        for i in 0..inputs.sizes.startups {
            let started = Agent::start(program, base, cpus, Pin::Split)?;
            out.push((
                "startup.ms".to_string(),
                started.startup.as_secs_f64() * 1e3,
            ));
            if i + 1 == inputs.sizes.startups {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Some(rss) = started.agent.status_kib("VmRSS") {
                    out.push(("idle_rss".to_string(), rss as f64 / 1024.0));
                }
                if let Some(hwm) = started.agent.status_kib("VmHWM") {
                    out.push((format!("peak.{key}"), hwm as f64 / 1024.0));
                }
            }
        }
        return Ok((out, None));
    }
    let mut started = Agent::start(program, base, cpus, scenario.pin())?;
    if scenario.rss_after() {
        let idle_kib = started.agent.status_kib("VmRSS").unwrap_or(0);
        let pid = started.agent.pid();
        let mut out = scenarios::run(scenario, &mut started.conn, inputs, pid)?;
        if let Some(hwm) = started.agent.status_kib("VmHWM") {
            out.push((format!("peak.{key}"), hwm as f64 / 1024.0));
        }
        let pending = Pending {
            started,
            idle_kib,
            due: Instant::now() + RSS_AFTER,
            key,
        };
        return Ok((out, Some(pending)));
    }
    let mut conn = started.conn;
    if let Scenario::ClientPing(_) | Scenario::ClientRead(_) = scenario {
        // One connection at a time: the raw one goes, qga-client connects.
        drop(conn);
        let sock = started.agent.sock();
        let mut out = match scenario {
            Scenario::ClientRead(chunk) => via_client::read(&sock, inputs, chunk, &key)?,
            _ => via_client::ping(&sock, inputs.sizes.round_trips, &key)?,
        };
        if let Some(hwm) = started.agent.status_kib("VmHWM") {
            out.push((format!("peak.{key}"), hwm as f64 / 1024.0));
        }
        return Ok((out, None));
    }
    let mut out = scenarios::run(scenario, &mut conn, inputs, started.agent.pid())?;
    if let Some(hwm) = started.agent.status_kib("VmHWM") {
        out.push((format!("peak.{key}"), hwm as f64 / 1024.0));
    }
    Ok((out, None))
}

#[derive(Clone, Copy)]
enum Target {
    /// The ratio ours / qemu-ga is at least this.
    AtLeast(f64),
    /// The ratio ours / qemu-ga is at most this.
    AtMost(f64),
    /// Our own figure is at most this (an absolute target, e.g. ns per byte).
    OursAtMost(f64),
}

struct Row {
    key: &'static str,
    label: &'static str,
    digits: usize,
    target: Option<Target>,
}

const fn row(key: &'static str, label: &'static str, digits: usize, target: Option<Target>) -> Row {
    Row {
        key,
        label,
        digits,
        target,
    }
}

const ROWS: &[Row] = &[
    row(
        "ping.same.rate",
        "guest-ping round trips/s, same CPU",
        0,
        Some(Target::AtLeast(4.0)),
    ),
    row("ping.same.p50", "guest-ping p50 us, same CPU", 1, None),
    row("ping.same.p99", "guest-ping p99 us, same CPU", 1, None),
    row(
        "ping.split.rate",
        "guest-ping round trips/s, split CPUs",
        0,
        None,
    ),
    row("ping.split.p50", "guest-ping p50 us, split CPUs", 1, None),
    row("ping.split.p99", "guest-ping p99 us, split CPUs", 1, None),
    row(
        "pipelined.rate",
        "10,000 pipelined guest-pings/s",
        0,
        Some(Target::AtLeast(5.0)),
    ),
    row(
        "sync.same.rate",
        "guest-sync-delimited round trips/s, same CPU",
        0,
        Some(Target::AtLeast(3.0)),
    ),
    row(
        "sync.same.p50",
        "guest-sync-delimited p50 us, same CPU",
        1,
        None,
    ),
    row(
        "sync.split.rate",
        "guest-sync-delimited round trips/s, split CPUs",
        0,
        None,
    ),
    row(
        "sync.split.p50",
        "guest-sync-delimited p50 us, split CPUs",
        1,
        None,
    ),
    row(
        "netif.rate",
        "guest-network-get-interfaces calls/s",
        0,
        Some(Target::AtLeast(3.0)),
    ),
    row(
        "read.same.4K.mbs",
        "guest-file-read MB/s, count 4 KiB, same CPU",
        0,
        Some(Target::AtLeast(5.0)),
    ),
    row(
        "read.same.64K.mbs",
        "guest-file-read MB/s, count 64 KiB, same CPU",
        0,
        None,
    ),
    row(
        "read.same.1M.mbs",
        "guest-file-read MB/s, count 1 MiB, same CPU",
        0,
        Some(Target::AtLeast(20.0)),
    ),
    row(
        "read.same.16M.mbs",
        "guest-file-read MB/s, count 16 MiB, same CPU",
        0,
        Some(Target::AtLeast(20.0)),
    ),
    row(
        "write.same.64K.mbs",
        "guest-file-write MB/s, 64 KiB chunks, same CPU",
        0,
        Some(Target::AtLeast(30.0)),
    ),
    row(
        "write.same.1M.mbs",
        "guest-file-write MB/s, 1 MiB chunks, same CPU",
        0,
        Some(Target::AtLeast(30.0)),
    ),
    row(
        "read.4K.mbs",
        "guest-file-read MB/s, count 4 KiB, split CPUs",
        0,
        None,
    ),
    row(
        "read.64K.mbs",
        "guest-file-read MB/s, count 64 KiB, split CPUs",
        0,
        None,
    ),
    row(
        "read.1M.mbs",
        "guest-file-read MB/s, count 1 MiB, split CPUs",
        0,
        None,
    ),
    row(
        "read.16M.mbs",
        "guest-file-read MB/s, count 16 MiB, split CPUs",
        0,
        None,
    ),
    row(
        "write.64K.mbs",
        "guest-file-write MB/s, 64 KiB chunks, split CPUs",
        0,
        None,
    ),
    row(
        "write.1M.mbs",
        "guest-file-write MB/s, 1 MiB chunks, split CPUs",
        0,
        None,
    ),
    row(
        "ping.same.agent_cpu",
        "agent CPU us per guest-ping, same CPU",
        1,
        None,
    ),
    row(
        "pipelined.agent_cpu",
        "agent CPU us per pipelined guest-ping",
        2,
        None,
    ),
    row(
        "netif.agent_cpu",
        "agent CPU us per guest-network-get-interfaces",
        0,
        None,
    ),
    row(
        "read.same.1M.agent_cpu",
        "agent CPU ns per byte read, count 1 MiB, same CPU",
        2,
        None,
    ),
    row(
        "read.same.16M.agent_cpu",
        "agent CPU ns per byte read, count 16 MiB, same CPU",
        2,
        Some(Target::OursAtMost(0.5)),
    ),
    row(
        "write.same.64K.agent_cpu",
        "agent CPU ns per byte written, 64 KiB chunks, same CPU",
        2,
        Some(Target::OursAtMost(1.0)),
    ),
    row(
        "write.same.1M.agent_cpu",
        "agent CPU ns per byte written, 1 MiB chunks, same CPU",
        2,
        Some(Target::OursAtMost(1.0)),
    ),
    row(
        "read.16M.agent_cpu",
        "agent CPU ns per byte read, count 16 MiB, split CPUs",
        2,
        None,
    ),
    row(
        "write.1M.agent_cpu",
        "agent CPU ns per byte written, 1 MiB chunks, split CPUs",
        2,
        None,
    ),
    row(
        "client.ping.same.rate",
        "guest-ping via qga-client round trips/s, same CPU",
        0,
        None,
    ),
    row(
        "client.ping.same.p50",
        "guest-ping via qga-client p50 us, same CPU",
        1,
        None,
    ),
    row(
        "client.ping.split.rate",
        "guest-ping via qga-client round trips/s, split CPUs",
        0,
        None,
    ),
    row(
        "client.ping.split.p50",
        "guest-ping via qga-client p50 us, split CPUs",
        1,
        None,
    ),
    row(
        "client.read.1M.mbs",
        "guest-file-read via qga-client MB/s, count 1 MiB",
        0,
        None,
    ),
    row(
        "client.read.16M.mbs",
        "guest-file-read via qga-client MB/s, count 16 MiB",
        0,
        None,
    ),
    row(
        "startup.ms",
        "start-up to first answer, ms",
        2,
        Some(Target::AtMost(1.0)),
    ),
    row("idle_rss", "idle RSS, MiB", 1, Some(Target::AtMost(1.0))),
    row(
        "peak.read.16M",
        "peak RSS during 16 MiB reads, MiB",
        1,
        Some(Target::AtMost(0.5)),
    ),
];

fn summary(results: &Results, key: &str, side: Side) -> Option<f64> {
    let mut v = results.get(key)?.get(&side)?.clone();
    if key.starts_with("peak.") || key.starts_with("rss_") || key.starts_with("memory.") {
        max(&v)
    } else {
        median(&mut v)
    }
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn print_tables(results: &Results, scenarios: &[Scenario], have_ours: bool, have_ref: bool) {
    println!("## Results (medians over runs; peak RSS = largest VmHWM over runs)");
    println!();
    println!("ratio = ours / qemu-ga (above 1: ours is larger; for rates larger is better, for times and memory smaller is better).");
    println!();
    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|r| results.contains_key(r.key))
        .collect();
    if !rows.is_empty() {
        println!(
            "| scenario | ours | qemu-ga | ratio | target | met? | client CPU %, ours / qemu-ga |"
        );
        println!("|---|---:|---:|---:|---:|:---:|---:|");
    }
    for r in rows {
        let a = if have_ours {
            summary(results, r.key, Side::Ours)
        } else {
            None
        };
        let b = if have_ref {
            summary(results, r.key, Side::Reference)
        } else {
            None
        };
        let ratio = match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let (target, met) = match (r.target, ratio) {
            (None, _) => (String::new(), String::new()),
            (Some(Target::AtLeast(t)), x) => {
                (format!(">= {t}"), x.map_or("?".into(), |x| yes(x >= t)))
            }
            (Some(Target::AtMost(t)), x) => {
                (format!("<= {t}"), x.map_or("?".into(), |x| yes(x <= t)))
            }
            (Some(Target::OursAtMost(t)), _) => (
                format!("ours <= {t}"),
                a.map_or("?".into(), |a| yes(a <= t)),
            ),
        };
        // The client thread's share of the wall time on a rate row: how much of the
        // run the client itself took (on one CPU, time the agent could not have).
        let client = r
            .key
            .rsplit_once('.')
            .filter(|(_, m)| matches!(*m, "rate" | "mbs"))
            .map(|(prefix, _)| format!("{prefix}.client_cpu"));
        let share = |side| client.as_deref().and_then(|k| summary(results, k, side));
        let client = match (share(Side::Ours), share(Side::Reference)) {
            (None, None) => String::new(),
            (x, y) => format!("{} / {}", fmt(x, 0), fmt(y, 0)),
        };
        println!(
            "| {} | {} | {} | {} | {target} | {met} | {client} |",
            r.label,
            fmt(a, r.digits),
            fmt(b, r.digits),
            fmt(ratio, 2)
        );
    }
    if results.keys().any(|k| k.starts_with("floor.")) {
        println!();
        println!("Socket floor (echo server over a unix socket, same request size):");
        println!();
        println!("| pinning | round trips/s | p50 us | p99 us |");
        println!("|---|---:|---:|---:|");
        for pin in ["same", "split"] {
            let g = |m: &str| {
                fmt(
                    summary(results, &format!("floor.{pin}.{m}"), Side::Reference),
                    if m == "rate" { 0 } else { 1 },
                )
            };
            println!(
                "| {} | {} | {} | {} |",
                if pin == "same" {
                    "same CPU"
                } else {
                    "split CPUs"
                },
                g("rate"),
                g("p50"),
                g("p99")
            );
        }
        // The latency target: our same-CPU ping p50 against this floor.
        let floor = summary(results, "floor.same.p50", Side::Ours);
        let ping = summary(results, "ping.same.p50", Side::Ours);
        if let (Some(f), Some(p)) = (floor, ping) {
            let r = p / f;
            println!();
            println!(
                "Our guest-ping p50 on one CPU is {r:.2}x the floor's (target <= {PING_FLOOR_TARGET}: {}).",
                if r <= PING_FLOOR_TARGET { "met" } else { "**not met**" }
            );
        }
    }
    print_bounds(results);
    if scenarios.is_empty() {
        return;
    }
    print_modern(results, scenarios, have_ours, have_ref);
    print_memory(results);
    println!();
    println!("Peak RSS (VmHWM, MiB) of a fresh agent per scenario:");
    println!();
    println!("| scenario | ours | qemu-ga | ratio |");
    println!("|---|---:|---:|---:|");
    for s in scenarios {
        let key = format!("peak.{}", s.key());
        let a = summary(results, &key, Side::Ours);
        let b = summary(results, &key, Side::Reference);
        let ratio = a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        println!(
            "| {} | {} | {} | {} |",
            s.describe(),
            fmt(a, 1),
            fmt(b, 1),
            fmt(ratio, 2)
        );
    }
}

/// The rows the stub bounds, by key, and whether the rate is MB/s (else calls or
/// cycles per second). Their labels and targets are those of [`ROWS`] (guest-exec's,
/// a row of the modern table, are [`EXEC_ROW`]'s), so a target is stated once.
const BOUNDED: &[(&str, bool)] = &[
    ("ping.same.rate", false),
    ("sync.same.rate", false),
    ("read.same.4K.mbs", true),
    ("read.same.1M.mbs", true),
    ("read.same.16M.mbs", true),
    (EXEC_ROW.0, false),
];

/// guest-exec's rate key, label in the bounds table, and target.
const EXEC_ROW: (&str, &str, f64) = ("exec.rate", "guest-exec /bin/true cycles/s", EXEC_TARGET);

/// The label and ratio target of a bounded row.
fn bounded_row(key: &str) -> Option<(&'static str, f64)> {
    if key == EXEC_ROW.0 {
        return Some((EXEC_ROW.1, EXEC_ROW.2));
    }
    ROWS.iter()
        .find(|r| r.key == key)
        .and_then(|r| match r.target {
            Some(Target::AtLeast(t)) => Some((r.label, t)),
            _ => None,
        })
}

/// Time per call (us) or per byte (ns) of a rate (per second, or MB/s).
fn per_unit(rate: f64, mbs: bool) -> f64 {
    if mbs {
        1e3 / rate
    } else {
        1e6 / rate
    }
}

/// What bounds the ratio targets of round trips, small and large reads and
/// guest-exec: the stub (`stub.rs`) run in turn with the agents in every run. Its
/// rate over qemu-ga's is the ceiling, the ratio an agent that cost nothing would
/// reach; the budget is the time an agent may add to the stub's per call or byte
/// and still meet the target.
fn print_bounds(results: &Results) {
    let get = |k: &str, side| summary(results, k, side);
    let rows: Vec<_> = BOUNDED
        .iter()
        .filter(|(k, _)| results.contains_key(&format!("bound.{k}")))
        .filter_map(|&(key, mbs)| bounded_row(key).map(|(label, target)| (key, label, target, mbs)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "Bounds: the stub (this bench answering the same requests with replies prepared before the clock starts; \
         file replies replayed from memory; guest-exec waits for its child, so one status poll) run in turn with the \
         agents in every run (the order rotating). ceiling = stub / qemu-ga, the ratio an agent that cost nothing would reach. \
         budget = time per call (us) or per byte (ns) an agent may add to the stub's and still meet the target; \
         ours adds = what ours adds:"
    );
    println!();
    println!("| scenario | ours | qemu-ga | stub | ratio | ceiling | target | budget | ours adds | unit |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for &(key, label, target, mbs) in &rows {
        let ours = get(key, Side::Ours);
        let theirs = get(key, Side::Reference);
        let stub = get(&format!("bound.{key}"), Side::Ours);
        let ratio = ours.zip(theirs).map(|(a, b)| a / b);
        let ceiling = stub.zip(theirs).map(|(a, b)| a / b);
        let t_stub = stub.map(|r| per_unit(r, mbs));
        let budget = theirs
            .map(|r| per_unit(r * target, mbs))
            .zip(t_stub)
            .map(|(t, s)| t - s);
        let adds = ours
            .map(|r| per_unit(r, mbs))
            .zip(t_stub)
            .map(|(t, s)| t - s);
        let digits = if mbs { 3 } else { 1 };
        println!(
            "| {label} | {} | {} | {} | {} | {} | >= {target} | {} | {} | {} |",
            fmt(ours, 0),
            fmt(theirs, 0),
            fmt(stub, 0),
            fmt(ratio, 2),
            fmt(ceiling, 2),
            fmt(budget, digits),
            fmt(adds, digits),
            if mbs { "ns/byte" } else { "us/call" },
        );
    }
    let stub_p50 = get("bound.ping.same.p50", Side::Ours);
    let ping = get("ping.same.p50", Side::Ours);
    if let (Some(f), Some(p)) = (stub_p50, ping) {
        println!();
        println!(
            "Our guest-ping p50 on one CPU against the stub's in the same runs: {:.2}x (target <= {PING_FLOOR_TARGET}).",
            p / f
        );
    }
}

/// Most our same-CPU guest-ping p50 may be, as a multiple of the socket floor's.
const PING_FLOOR_TARGET: f64 = 1.3;

/// Most peak RSS during the one large write, as a multiple of the request's size.
const WRITE_PEAK_TARGET: f64 = 1.2;

/// Memory back to idle: the steps of one agent side by side (worst run of each).
fn print_memory(results: &Results) {
    if !results.contains_key("memory.idle") {
        return;
    }
    let f = |key: &str, side, digits| fmt(summary(results, key, side), digits);
    println!();
    println!(
        "Memory back to idle: one fresh agent per run takes these steps in turn; RSS (VmRSS) one second after each step's last reply, as a multiple of the same agent's idle RSS (largest over runs):"
    );
    println!();
    println!("| step | ours | qemu-ga | target | met? |");
    println!("|---|---:|---:|---:|:---:|");
    println!(
        "| idle RSS, MiB | {} | {} |  |  |",
        f("memory.idle", Side::Ours, 1),
        f("memory.idle", Side::Reference, 1)
    );
    let met =
        |key: &str, t: f64| summary(results, key, Side::Ours).map_or("?".into(), |x| yes(x <= t));
    println!(
        "| peak RSS during the 32 MiB write / its request's size | {} | {} | <= {WRITE_PEAK_TARGET} | {} |",
        f("memory.write_peak", Side::Ours, 2),
        f("memory.write_peak", Side::Reference, 2),
        met("memory.write_peak", WRITE_PEAK_TARGET)
    );
    for (step, what) in memory::STEPS {
        let key = format!("memory.after.{step}");
        println!(
            "| after {what} | {} | {} | <= {RSS_TARGET} | {} |",
            f(&key, Side::Ours, 2),
            f(&key, Side::Reference, 2),
            met(&key, RSS_TARGET)
        );
    }
}

/// Target of the modern commands (rate ratio) and of guest-exec cycles.
const MODERN_TARGET: f64 = 2.0;
const EXEC_TARGET: f64 = 1.5;
/// Most RSS one second after a scenario, as a multiple of the same agent's idle RSS.
const RSS_TARGET: f64 = 1.5;

/// The modern commands and guest-exec: rates side by side, then RSS after each.
fn print_modern(results: &Results, scenarios: &[Scenario], have_ours: bool, have_ref: bool) {
    let rows: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| s.rss_after())
        .collect();
    if rows.is_empty() {
        return;
    }
    let get = |key: &str, side: Side| {
        let wanted = match side {
            Side::Ours => have_ours,
            Side::Reference => have_ref,
        };
        if wanted {
            summary(results, key, side)
        } else {
            None
        }
    };
    println!();
    println!("Read-only modern commands and guest-exec (client and agent on the same CPU; calls/s, for guest-exec cycles/s of one guest-exec of /bin/true plus guest-exec-status polled until exited; p50 and agent CPU per call or cycle, the child's own CPU not included):");
    println!();
    println!("| command | ours /s | qemu-ga /s | ratio | target | met? | ours p50 us | qemu-ga p50 us | ours agent CPU us | qemu-ga agent CPU us |");
    println!("|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|");
    for s in &rows {
        let k = s.key();
        let a = get(&format!("{k}.rate"), Side::Ours);
        let b = get(&format!("{k}.rate"), Side::Reference);
        let ratio = a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        let t = if *s == Scenario::Exec {
            EXEC_TARGET
        } else {
            MODERN_TARGET
        };
        let (target, met) = if s.ours_only() {
            ("(ours only)".to_string(), String::new())
        } else {
            (format!(">= {t}"), ratio.map_or("?".into(), |x| yes(x >= t)))
        };
        let f = |m: &str, side, d| fmt(get(&format!("{k}.{m}"), side), d);
        println!(
            "| {} | {} | {} | {} | {target} | {met} | {} | {} | {} | {} |",
            s.describe(),
            fmt(a, 0),
            fmt(b, 0),
            fmt(ratio, 2),
            f("p50", Side::Ours, 1),
            f("p50", Side::Reference, 1),
            f("agent_cpu", Side::Ours, 1),
            f("agent_cpu", Side::Reference, 1),
        );
    }
    if rows.contains(&Scenario::Exec) {
        println!();
        println!(
            "guest-exec-status polls per cycle (mean): ours {}, qemu-ga {}",
            fmt(get("exec.polls", Side::Ours), 1),
            fmt(get("exec.polls", Side::Reference), 1)
        );
    }
    println!();
    println!("RSS (VmRSS, MiB) one second after each scenario against the same fresh agent's idle RSS (read after its start-up ping, before the scenario); largest over runs; the connection stays open meanwhile:");
    println!();
    println!("| scenario | ours idle | ours 1 s after | ours after/idle | target | met? | qemu-ga idle | qemu-ga 1 s after | qemu-ga after/idle |");
    println!("|---|---:|---:|---:|---:|:---:|---:|---:|---:|");
    for s in &rows {
        let k = s.key();
        let f = |m: &str, side, d| fmt(get(&format!("{m}.{k}"), side), d);
        let ratio = get(&format!("rss_ratio.{k}"), Side::Ours);
        println!(
            "| {} | {} | {} | {} | <= {RSS_TARGET} | {} | {} | {} | {} |",
            s.describe(),
            f("rss_idle", Side::Ours, 1),
            f("rss_after", Side::Ours, 1),
            fmt(ratio, 2),
            ratio.map_or("?".into(), |x| yes(x <= RSS_TARGET)),
            f("rss_idle", Side::Reference, 1),
            f("rss_after", Side::Reference, 1),
            f("rss_ratio", Side::Reference, 2),
        );
    }
}

/// Every sample, so the spread (noise) can be judged next to the medians.
fn print_samples(results: &Results) {
    println!();
    println!("<details><summary>All samples (one per run; pipelined: one per batch; start-up: one per start)</summary>");
    println!();
    println!("| metric | ours | qemu-ga |");
    println!("|---|---|---|");
    for (key, sides) in results {
        if key.starts_with("floor.") {
            continue;
        }
        let list = |side| {
            sides.get(&side).map_or(String::new(), |v: &Vec<f64>| {
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
        };
        println!(
            "| {key} | {} | {} |",
            list(Side::Ours),
            list(Side::Reference)
        );
    }
    println!();
    println!("</details>");
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "**no**" }.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every bounded row takes its label and target from the tables, so a renamed
    /// key or a dropped target shows here, not as a row missing from the bounds.
    #[test]
    fn every_bounded_row_has_a_label_and_a_target() {
        for &(key, _) in BOUNDED {
            let (label, target) = bounded_row(key).unwrap_or_else(|| panic!("{key}"));
            assert!(!label.is_empty() && target > 1.0, "{key}");
        }
        assert_eq!(bounded_row("ping.same.rate").map(|r| r.1), Some(4.0));
        assert_eq!(bounded_row("exec.rate").map(|r| r.1), Some(EXEC_TARGET));
        assert_eq!(bounded_row("ping.same.p50"), None);
    }
}
