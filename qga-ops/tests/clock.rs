//! guest-set-time's Linux implementation with the clock setter and hwclock
//! injected: the machine's clock is never touched.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use qga_ops::{Clock, LinuxClock};

/// What the injected setter was asked to do, per test (tests run in parallel, so
/// each uses its own slot).
static SET: Mutex<Vec<(u32, i64, i64)>> = Mutex::new(Vec::new());
thread_local!(static SLOT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });

fn record(secs: i64, usecs: i64) -> std::io::Result<()> {
    SET.lock().unwrap().push((SLOT.get(), secs, usecs));
    Ok(())
}

fn refuse(_: i64, _: i64) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::EPERM))
}

fn calls(slot: u32) -> Vec<(i64, i64)> {
    SET.lock()
        .unwrap()
        .iter()
        .filter(|c| c.0 == slot)
        .map(|c| (c.1, c.2))
        .collect()
}

/// An hwclock that records its arguments in `log` and exits with `status`.
fn hwclock(dir: &Path, status: i32) -> (PathBuf, PathBuf) {
    let log = dir.join("hwclock.log");
    let prog = dir.join("hwclock");
    common::write_script(
        &prog,
        &format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nexit {status}\n",
            log.display()
        ),
    );
    (prog, log)
}

#[test]
fn a_time_sets_the_system_clock_in_microseconds_then_the_rtc() {
    SLOT.set(1);
    let dir = tempfile::tempdir().unwrap();
    let (prog, log) = hwclock(dir.path(), 0);
    let clock = LinuxClock {
        hwclock: prog,
        set_realtime: record,
    };
    clock.set_time(Some(1_700_000_000_123_456_789)).unwrap();
    assert_eq!(calls(1), [(1_700_000_000, 123_456)]);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "-w\n");
    // Without a time: the system clock from the RTC, and no setter call.
    clock.set_time(None).unwrap();
    assert_eq!(calls(1).len(), 1);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "-w\n-s\n");
}

#[test]
fn times_outside_1970_to_2069_are_refused_before_anything_runs() {
    SLOT.set(2);
    let dir = tempfile::tempdir().unwrap();
    let (prog, log) = hwclock(dir.path(), 0);
    let clock = LinuxClock {
        hwclock: prog,
        set_realtime: record,
    };
    // 2070-01-01, 2100, far past and far future: qemu-ga 7.2 answers "Invalid time".
    for ns in [
        3_155_760_000_000_000_000,
        4_102_444_800_000_000_000,
        i64::MIN,
        i64::MAX,
        -86_400_000_000_000,
    ] {
        let e = clock.set_time(Some(ns)).unwrap_err();
        assert_eq!(e.to_string(), "Invalid time", "{ns}");
    }
    // The last second of 2069 is fine.
    clock.set_time(Some(3_155_759_999_000_000_000)).unwrap();
    assert_eq!(calls(2), [(3_155_759_999, 0)]);
    assert!(!log.exists() || std::fs::read_to_string(&log).unwrap() == "-w\n");
}

#[test]
fn failures_carry_the_reference_texts() {
    SLOT.set(3);
    let dir = tempfile::tempdir().unwrap();
    let refused = LinuxClock {
        hwclock: dir.path().join("missing"),
        set_realtime: refuse,
    };
    assert_eq!(
        refused
            .set_time(Some(1_700_000_000_000_000_000))
            .unwrap_err()
            .to_string(),
        "Failed to set time to guest: Operation not permitted"
    );
    let missing = LinuxClock {
        hwclock: dir.path().join("missing"),
        set_realtime: record,
    };
    assert_eq!(
        missing.set_time(None).unwrap_err().to_string(),
        "this feature or command is not currently supported"
    );
    let (prog, _) = hwclock(dir.path(), 3);
    let failing = LinuxClock {
        hwclock: prog,
        set_realtime: record,
    };
    assert_eq!(
        failing.set_time(None).unwrap_err().to_string(),
        "hwclock failed to set hardware clock to system time"
    );
    let killed = dir.path().join("killed");
    common::write_script(&killed, "#!/bin/sh\nkill -9 $$\n");
    let killed = LinuxClock {
        hwclock: killed,
        set_realtime: record,
    };
    assert_eq!(
        killed.set_time(None).unwrap_err().to_string(),
        "child process has terminated abnormally"
    );
}
