//! Setting the guest's clocks (guest-set-time): the system clock from a time the
//! host gives, then the hardware clock from the system clock (`hwclock -w`); or,
//! without a time, the system clock from the hardware clock (`hwclock -s`).

use std::io;
use std::path::PathBuf;

use crate::OpsError;

/// Sets the guest's clocks.
pub trait Clock: Send + Sync {
    /// guest-set-time. With `ns` (nanoseconds since the epoch, truncated to
    /// microseconds as qemu-ga does): refuse a time outside 1970..2069 (`Invalid
    /// time`), set the system clock (`Failed to set time to guest: <strerror>`), then
    /// run `hwclock -w`. Without: run `hwclock -s`. A missing hwclock is qemu-ga 7.2's
    /// `this feature or command is not currently supported`; a failing one
    /// `hwclock failed to set hardware clock to system time`.
    fn set_time(&self, ns: Option<i64>) -> Result<(), OpsError>;
}

/// Sets the system clock to `secs` + `usecs` since the epoch (`clock_settime` on
/// `CLOCK_REALTIME` in the real implementation).
pub type SetRealtime = fn(secs: i64, usecs: i64) -> io::Result<()>;

/// Linux implementation. The clock setter and the hwclock program are injectable, so
/// tests never change the machine's clock.
#[derive(Debug, Clone)]
pub struct LinuxClock {
    /// The hwclock program (qemu-ga runs `/sbin/hwclock`, no PATH search).
    pub hwclock: PathBuf,
    /// Sets the system clock.
    pub set_realtime: SetRealtime,
}

impl Default for LinuxClock {
    fn default() -> Self {
        LinuxClock {
            hwclock: "/sbin/hwclock".into(),
            set_realtime: clock_settime_realtime,
        }
    }
}

fn clock_settime_realtime(secs: i64, usecs: i64) -> io::Result<()> {
    // A negative microsecond part (a negative time that is not a whole second) is
    // passed on as qemu-ga passes it to settimeofday, which refuses it (EINVAL).
    if !(0..1_000_000).contains(&usecs) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ts = nix::sys::time::TimeSpec::new(secs as libc::time_t, (usecs * 1000) as _);
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// The proleptic Gregorian year of a count of days since 1970-01-01.
fn year_of_days(days: i64) -> i64 {
    // Civil-from-days (Howard Hinnant's algorithm): eras of 400 years.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

impl Clock for LinuxClock {
    fn set_time(&self, ns: Option<i64>) -> Result<(), OpsError> {
        if let Some(ns) = ns {
            // As qemu-ga: seconds and microseconds truncated toward zero; the year
            // (UTC here; qemu-ga takes the local one, which differs only within
            // hours of a year's edge) must be within 1970..=2069.
            let secs = ns / 1_000_000_000;
            let usecs = (ns % 1_000_000_000) / 1000;
            let year = year_of_days(secs.div_euclid(86_400));
            if !(1970..2070).contains(&year) {
                return Err(OpsError::failed("Invalid time"));
            }
            (self.set_realtime)(secs, usecs)
                .map_err(|e| OpsError::os("Failed to set time to guest", e))?;
        }
        if !self.hwclock.exists() {
            return Err(OpsError::failed(
                "this feature or command is not currently supported",
            ));
        }
        let arg = if ns.is_some() { "-w" } else { "-s" };
        let status = crate::power::run(&self.hwclock, &[arg])
            .map_err(|e| OpsError::os("failed to create child process", e))?;
        match status.code() {
            Some(0) => Ok(()),
            Some(_) => Err(OpsError::failed(
                "hwclock failed to set hardware clock to system time",
            )),
            None => Err(OpsError::failed("child process has terminated abnormally")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_of_days_at_the_edges() {
        assert_eq!(year_of_days(0), 1970);
        assert_eq!(year_of_days(-1), 1969);
        // 2069-12-31 and 2070-01-01.
        assert_eq!(year_of_days(36_524), 2069);
        assert_eq!(year_of_days(36_525), 2070);
        // 2000-02-29 (leap day of a century leap year).
        assert_eq!(year_of_days(11_016), 2000);
    }
}
