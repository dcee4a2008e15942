//! The read-only commands of the modern-command work, and guest-exec, side by side.
//!
//! Each is a run of sequential calls on one fresh agent (same CPU as the client, so the
//! agent's own cost dominates, as for the guest-ping target), checked cheaply: the reply
//! must be a success whose `return` has the expected JSON kind and, when not empty, a
//! member every element of that command has.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use qga_benches::reply::{member, member_bool, member_u64, return_value, BadReply};
use qga_benches::stats::percentile_sorted;

use crate::agent::Conn;
use crate::scenarios::{CpuMeter, Inputs, Samples};

/// The JSON kind a command returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{...}`
    Object,
    /// `[...]`, possibly empty.
    List,
    /// An integer.
    Number,
}

/// One read-only command.
#[derive(Debug)]
pub struct ModernCmd {
    /// The QGA command name.
    pub name: &'static str,
    /// Short key for metric names (`modern.{key}.rate`).
    pub key: &'static str,
    /// What `return` must be.
    pub shape: Shape,
    /// A member a non-empty reply must have (found by text search).
    pub member: Option<&'static str>,
    /// qemu-ga 7.2 lacks it: measured for ours only.
    pub ours_only: bool,
}

const fn cmd(
    name: &'static str,
    key: &'static str,
    shape: Shape,
    member: Option<&'static str>,
    ours_only: bool,
) -> ModernCmd {
    ModernCmd {
        name,
        key,
        shape,
        member,
        ours_only,
    }
}

/// The commands, in table order.
pub const MODERN: &[ModernCmd] = &[
    cmd(
        "guest-get-osinfo",
        "osinfo",
        Shape::Object,
        Some("kernel-release"),
        false,
    ),
    cmd(
        "guest-get-host-name",
        "host-name",
        Shape::Object,
        Some("host-name"),
        false,
    ),
    cmd(
        "guest-get-timezone",
        "timezone",
        Shape::Object,
        Some("offset"),
        false,
    ),
    cmd("guest-get-users", "users", Shape::List, Some("user"), false),
    cmd("guest-get-time", "time", Shape::Number, None, false),
    cmd(
        "guest-get-vcpus",
        "vcpus",
        Shape::List,
        Some("logical-id"),
        false,
    ),
    cmd(
        "guest-get-memory-blocks",
        "memory-blocks",
        Shape::List,
        Some("phys-index"),
        false,
    ),
    cmd(
        "guest-get-memory-block-info",
        "memory-block-info",
        Shape::Object,
        Some("size"),
        false,
    ),
    cmd(
        "guest-get-fsinfo",
        "fsinfo",
        Shape::List,
        Some("mountpoint"),
        false,
    ),
    cmd("guest-get-disks", "disks", Shape::List, Some("name"), false),
    cmd(
        "guest-get-cpustats",
        "cpustats",
        Shape::List,
        Some("cpu"),
        false,
    ),
    cmd(
        "guest-get-diskstats",
        "diskstats",
        Shape::List,
        Some("stats"),
        false,
    ),
    cmd(
        "guest-get-load",
        "load",
        Shape::Object,
        Some("load1m"),
        true,
    ),
    cmd(
        "guest-network-get-route",
        "route",
        Shape::List,
        Some("iface"),
        true,
    ),
];

/// The index of the command named `name` (or its short key) in [`MODERN`].
pub fn find(name: &str) -> Option<usize> {
    MODERN.iter().position(|c| c.name == name || c.key == name)
}

/// Checks one reply of `cmd`.
pub fn check(cmd: &ModernCmd, reply: &[u8]) -> Result<(), BadReply> {
    let value = return_value(reply)?;
    let bad = |what: &str| {
        let shown = &reply[..reply.len().min(300)];
        BadReply(format!(
            "{}: {what}: {}",
            cmd.name,
            String::from_utf8_lossy(shown)
        ))
    };
    let kind_ok = match (cmd.shape, value.first()) {
        (Shape::Object, Some(b'{')) | (Shape::List, Some(b'[')) => true,
        (Shape::Number, Some(c)) => c.is_ascii_digit() || *c == b'-',
        _ => false,
    };
    if !kind_ok {
        return Err(bad("unexpected kind of return value"));
    }
    let empty = value
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .take(3)
        .count()
        == 2;
    if let (Some(m), false) = (cmd.member, empty) {
        if member(value, m.as_bytes()).is_none() {
            return Err(bad(&format!("no {m:?} member")));
        }
    }
    Ok(())
}

/// Sequential calls of `cmd`: a warm-up, then up to `sizes.modern_calls` calls or until
/// `sizes.modern_budget` has passed (at least `MIN_CALLS`). Samples `{key}.rate` (calls
/// per second), `{key}.p50` (us) and `{key}.agent_cpu` (agent CPU us per call).
pub fn calls(
    cmd: &ModernCmd,
    conn: &mut Conn,
    inputs: &Inputs,
    key: &str,
    pid: u32,
) -> io::Result<Samples> {
    let request = format!("{{\"execute\":\"{}\"}}\n", cmd.name);
    let one = |conn: &mut Conn| -> io::Result<()> {
        conn.get_mut().write_all(request.as_bytes())?;
        let reply = conn.next_reply()?;
        check(cmd, reply).map_err(io::Error::other)
    };
    timed(conn, inputs, key, pid, one)
}

/// Fewest timed iterations per run, whatever the time budget.
const MIN_CALLS: usize = 20;

fn timed(
    conn: &mut Conn,
    inputs: &Inputs,
    key: &str,
    pid: u32,
    mut one: impl FnMut(&mut Conn) -> io::Result<()>,
) -> io::Result<Samples> {
    let n = inputs.sizes.modern_calls.max(MIN_CALLS);
    for _ in 0..(n / 10).clamp(2, 20) {
        one(conn)?;
    }
    let meter = CpuMeter::start(pid);
    let started = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut total = Duration::ZERO;
    while lat.len() < n && (lat.len() < MIN_CALLS || started.elapsed() < inputs.sizes.modern_budget)
    {
        let t = Instant::now();
        one(conn)?;
        let dt = t.elapsed();
        lat.push(dt.as_nanos() as u64);
        total += dt;
    }
    let done = lat.len();
    let mut out = meter.finish(key, done as f64, 1e-3);
    lat.sort_unstable();
    let p50 = percentile_sorted(&lat, 50.0).unwrap_or(0) as f64 / 1000.0;
    out.extend([
        (format!("{key}.rate"), done as f64 / total.as_secs_f64()),
        (format!("{key}.p50"), p50),
        (format!("{key}.calls"), done as f64),
    ]);
    Ok(out)
}

/// Most `guest-exec-status` polls for one child before the run is an error.
const MAX_POLLS: u64 = 1_000_000;

/// `guest-exec` of `/bin/true`, then `guest-exec-status` polled back to back until it
/// reports `exited` with exit code 0; one such cycle is one iteration. Samples
/// `{key}.rate` (cycles/s), `{key}.p50` (us per cycle), `{key}.agent_cpu` (agent CPU us
/// per cycle; the child's own CPU is not included) and `{key}.polls` (status calls per
/// cycle, mean).
pub fn exec(conn: &mut Conn, inputs: &Inputs, key: &str, pid: u32) -> io::Result<Samples> {
    const EXEC: &[u8] = b"{\"execute\":\"guest-exec\",\"arguments\":{\"path\":\"/bin/true\"}}\n";
    let mut polls = 0u64;
    let mut cycles = 0u64;
    let mut status = Vec::with_capacity(96);
    let one = |conn: &mut Conn| -> io::Result<()> {
        conn.get_mut().write_all(EXEC)?;
        let reply = conn.next_reply()?;
        let child = return_value(reply)
            .ok()
            .and_then(|r| member_u64(r, b"pid"))
            .ok_or_else(|| {
                io::Error::other(format!(
                    "guest-exec: no pid: {}",
                    String::from_utf8_lossy(reply)
                ))
            })?;
        status.clear();
        let _ = writeln!(
            status,
            "{{\"execute\":\"guest-exec-status\",\"arguments\":{{\"pid\":{child}}}}}"
        );
        for _ in 0..MAX_POLLS {
            conn.get_mut().write_all(&status)?;
            polls += 1;
            let reply = conn.next_reply()?;
            let ret = return_value(reply).map_err(io::Error::other)?;
            match member_bool(ret, b"exited") {
                Some(true) => {
                    cycles += 1;
                    return match member_u64(ret, b"exitcode") {
                        Some(0) => Ok(()),
                        _ => Err(io::Error::other(format!(
                            "/bin/true did not exit 0: {}",
                            String::from_utf8_lossy(reply)
                        ))),
                    };
                }
                Some(false) => {}
                None => {
                    return Err(io::Error::other(format!(
                        "guest-exec-status: no exited: {}",
                        String::from_utf8_lossy(reply)
                    )))
                }
            }
        }
        Err(io::Error::other(format!(
            "pid {child} not exited after {MAX_POLLS} polls"
        )))
    };
    let mut out = timed(conn, inputs, key, pid, one)?;
    if cycles > 0 {
        out.push((format!("{key}.polls"), polls as f64 / cycles as f64));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name(name: &str) -> &'static ModernCmd {
        &MODERN[find(name).unwrap()]
    }

    #[test]
    fn replies_of_both_agents_pass() {
        let osinfo = by_name("guest-get-osinfo");
        check(
            osinfo,
            b"{\"return\": {\"name\": \"Debian\", \"kernel-release\": \"6.1\"}}",
        )
        .unwrap();
        check(osinfo, b"{\"return\":{\"kernel-release\":\"6.1\"}}").unwrap();
        let users = by_name("users");
        check(users, b"{\"return\": []}").unwrap();
        check(users, b"{\"return\": [ ]}").unwrap();
        check(
            users,
            b"{\"return\":[{\"user\":\"root\",\"login-time\":1.5}]}",
        )
        .unwrap();
        check(by_name("time"), b"{\"return\": 1796109644486950000}").unwrap();
    }

    #[test]
    fn wrong_replies_are_caught() {
        let fsinfo = by_name("guest-get-fsinfo");
        // An error reply, the wrong kind, and a non-empty list without the member.
        assert!(check(
            fsinfo,
            b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"x\"}}"
        )
        .is_err());
        assert!(check(fsinfo, b"{\"return\": {}}").is_err());
        assert!(check(fsinfo, b"{\"return\": [{\"name\": \"vda\"}]}").is_err());
        check(
            fsinfo,
            b"{\"return\": [{\"name\": \"vda\", \"mountpoint\": \"/\"}]}",
        )
        .unwrap();
        assert!(check(by_name("time"), b"{\"return\": {}}").is_err());
        assert!(check(by_name("load"), b"{\"return\": []}").is_err());
    }

    #[test]
    fn only_load_and_route_are_ours_only() {
        let ours_only: Vec<_> = MODERN
            .iter()
            .filter(|c| c.ours_only)
            .map(|c| c.name)
            .collect();
        assert_eq!(ours_only, ["guest-get-load", "guest-network-get-route"]);
        assert_eq!(MODERN.len(), 14);
        assert_eq!(find("disks"), find("guest-get-disks"));
        assert_eq!(find("guest-exec"), None);
    }
}
