//! Parsers for `/proc/stat`, `/proc/diskstats` and `/proc/loadavg`, following
//! qemu-ga 7.2's reading of them (guest-get-cpustats, guest-get-diskstats) and
//! current QEMU's guest-get-load.
//!
//! qemu-ga reads each line with `sscanf`: conversions are counted until the first
//! one that fails, and that count decides which members are present. [`Scanner`]
//! reproduces that counting: `%s` takes a run of non-blank characters, `%lu` skips
//! blanks and takes an optional sign and a run of digits (saturating, a minus sign
//! negates modulo 2^64, as `strtoul`), and stops at the first character that is
//! not a digit, so `12ab` counts as `12` and ends the line.

use crate::OpsError;

/// One CPU's times from a `cpuN` line of `/proc/stat`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuStats {
    /// The CPU number (`N` of `cpuN`).
    pub cpu: i64,
    /// Time in user mode.
    pub user: u64,
    /// Time in user mode at low priority.
    pub nice: u64,
    /// Time in system mode.
    pub system: u64,
    /// Idle time.
    pub idle: u64,
    /// Time waiting for I/O (5th column onwards).
    pub iowait: Option<u64>,
    /// Time servicing interrupts.
    pub irq: Option<u64>,
    /// Time servicing softirqs.
    pub softirq: Option<u64>,
    /// Time stolen by the hypervisor.
    pub steal: Option<u64>,
    /// Time running a guest.
    pub guest: Option<u64>,
    /// Time running a niced guest.
    pub guestnice: Option<u64>,
}

/// The counters of one `/proc/diskstats` line; which are present depends on the
/// number of columns (see [`parse_diskstats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DiskCounters {
    /// Sectors read.
    pub read_sectors: Option<u64>,
    /// Reads completed.
    pub read_ios: Option<u64>,
    /// Reads merged.
    pub read_merges: Option<u64>,
    /// Sectors written.
    pub write_sectors: Option<u64>,
    /// Writes completed.
    pub write_ios: Option<u64>,
    /// Writes merged.
    pub write_merges: Option<u64>,
    /// Sectors discarded.
    pub discard_sectors: Option<u64>,
    /// Discards completed.
    pub discard_ios: Option<u64>,
    /// Discards merged.
    pub discard_merges: Option<u64>,
    /// Flush requests completed.
    pub flush_ios: Option<u64>,
    /// Milliseconds spent reading.
    pub read_ticks: Option<u64>,
    /// Milliseconds spent writing.
    pub write_ticks: Option<u64>,
    /// Milliseconds spent discarding.
    pub discard_ticks: Option<u64>,
    /// Milliseconds spent flushing.
    pub flush_ticks: Option<u64>,
    /// I/Os currently in progress.
    pub ios_pgr: Option<u64>,
    /// Milliseconds spent doing I/Os.
    pub total_ticks: Option<u64>,
    /// Weighted milliseconds spent doing I/Os.
    pub weight_ticks: Option<u64>,
}

/// One block device (or partition) of `/proc/diskstats`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskStats {
    /// Device name (`vda`, `sda1`).
    pub name: String,
    /// Major device number.
    pub major: u64,
    /// Minor device number.
    pub minor: u64,
    /// Its counters.
    pub counters: DiskCounters,
}

/// The 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoadAverage {
    /// Over 1 minute.
    pub load1m: f64,
    /// Over 5 minutes.
    pub load5m: f64,
    /// Over 15 minutes.
    pub load15m: f64,
}

/// `sscanf`-style reading of one line.
struct Scanner<'a> {
    rest: &'a str,
}

impl<'a> Scanner<'a> {
    fn new(line: &'a str) -> Self {
        Scanner { rest: line }
    }

    fn skip_blanks(&mut self) {
        self.rest = self
            .rest
            .trim_start_matches(|c: char| c.is_ascii_whitespace());
    }

    /// `%s`: a run of non-blank characters.
    fn word(&mut self) -> Option<&'a str> {
        self.skip_blanks();
        let end = self
            .rest
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(self.rest.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(w)
    }

    /// `%lu`: `[+-]?[0-9]+`, saturating at `u64::MAX`, a minus negating modulo 2^64.
    fn ulong(&mut self) -> Option<u64> {
        self.skip_blanks();
        let bytes = self.rest.as_bytes();
        let mut i = 0;
        let negative = match bytes.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let start = i;
        let mut value: u64 = 0;
        let mut overflow = false;
        while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            match value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(d - b'0')))
            {
                Some(v) => value = v,
                None => overflow = true,
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        self.rest = &self.rest[i..];
        let value = if overflow { u64::MAX } else { value };
        Some(if negative && !overflow {
            value.wrapping_neg()
        } else {
            value
        })
    }

    /// Up to `max` `%lu` conversions, stopping at the first that fails.
    fn ulongs(&mut self, max: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(max);
        while out.len() < max {
            match self.ulong() {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

/// Clock ticks to milliseconds with qemu-ga's unsigned arithmetic:
/// `ticks * 1000 / clk_tck`, the product wrapping at 2^64.
fn ticks_to_ms(ticks: u64, clk_tck: u64) -> u64 {
    ticks.wrapping_mul(1000) / clk_tck.max(1)
}

/// Parses `/proc/stat` text into per-CPU times in milliseconds (`clk_tck` is
/// `sysconf(_SC_CLK_TCK)`, 100 on every Linux architecture).
///
/// As qemu-ga 7.2: only lines whose first word starts with `cpu` and is longer
/// than `cpu` are read (the aggregate `cpu` line is not); the CPU number is the
/// `atoi` of what follows `cpu`; with `n` numbers after the name, `iowait` is
/// present when `n >= 5`, `irq` when `n >= 6`, `steal` when `n >= 8`, `guest` when
/// `n >= 9` and `guestnice` when `n >= 10`.
///
/// Differences, on purpose: 7.2 reports `softirq` together with `irq` (at
/// `n >= 6`) although with exactly 6 numbers it was never read (an uninitialised
/// value); here it is present from `n >= 7`. And where 7.2 silently stops at a
/// `cpuN` line with fewer than 4 numbers and returns the CPUs before it, this is
/// an error naming the line.
pub fn parse_proc_stat(text: &str, clk_tck: u64) -> Result<Vec<CpuStats>, OpsError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut sc = Scanner::new(line);
        let Some(name) = sc.word() else {
            continue;
        };
        let Some(num) = name.strip_prefix("cpu").filter(|n| !n.is_empty()) else {
            continue;
        };
        let v = sc.ulongs(10);
        if v.len() < 4 {
            return Err(OpsError::failed(format!(
                "parsing cpu stat failed: line '{}' has {} of at least 4 values",
                line.trim(),
                v.len()
            )));
        }
        let ms = |i: usize| v.get(i).map(|t| ticks_to_ms(*t, clk_tck));
        out.push(CpuStats {
            cpu: atoi(num),
            user: ticks_to_ms(v[0], clk_tck),
            nice: ticks_to_ms(v[1], clk_tck),
            system: ticks_to_ms(v[2], clk_tck),
            idle: ticks_to_ms(v[3], clk_tck),
            iowait: ms(4),
            irq: ms(5),
            softirq: ms(6),
            steal: ms(7),
            guest: ms(8),
            guestnice: ms(9),
        });
    }
    Ok(out)
}

/// C `atoi`: optional blanks and sign, then digits; 0 when there are none.
/// Saturates instead of overflowing.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (negative, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for d in digits.bytes().take_while(u8::is_ascii_digit) {
        v = v.saturating_mul(10).saturating_add(i64::from(d - b'0'));
    }
    if negative {
        -v
    } else {
        v
    }
}

/// Parses `/proc/diskstats` text.
///
/// As qemu-ga 7.2, the number of columns read (major, minor and name included,
/// counted `sscanf`-style up to the first non-number, at most 20) decides:
/// - fewer than 7: the line is skipped;
/// - exactly 7 (the pre-2.6.25 partition form `major minor name reads
///   read-sectors writes write-sectors`): `read-ios`, `read-sectors`,
///   `write-ios`, `write-sectors`;
/// - 8 to 13: the device is listed with no counters at all;
/// - 14 or more: the eleven classic counters; 18 or more adds the four discard
///   counters; 20 adds `flush-ios` and `flush-ticks`.
///
/// No device is skipped (loop and ram devices with all-zero counters included),
/// in file order. 7.2 reads some tick columns as 32-bit `%u`; the kernel prints
/// those as 32-bit values, and here they are read as 64-bit without truncation.
pub fn parse_diskstats(text: &str) -> Vec<DiskStats> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut sc = Scanner::new(line);
        let Some(major) = sc.ulong() else { continue };
        let Some(minor) = sc.ulong() else { continue };
        let Some(name) = sc.word() else { continue };
        let v = sc.ulongs(17);
        let columns = 3 + v.len();
        if columns < 7 {
            continue;
        }
        let mut c = DiskCounters::default();
        if columns == 7 {
            c.read_ios = Some(v[0]);
            c.read_sectors = Some(v[1]);
            c.write_ios = Some(v[2]);
            c.write_sectors = Some(v[3]);
        }
        if columns >= 14 {
            c.read_ios = Some(v[0]);
            c.read_merges = Some(v[1]);
            c.read_sectors = Some(v[2]);
            c.read_ticks = Some(v[3]);
            c.write_ios = Some(v[4]);
            c.write_merges = Some(v[5]);
            c.write_sectors = Some(v[6]);
            c.write_ticks = Some(v[7]);
            c.ios_pgr = Some(v[8]);
            c.total_ticks = Some(v[9]);
            c.weight_ticks = Some(v[10]);
        }
        if columns >= 18 {
            c.discard_ios = Some(v[11]);
            c.discard_merges = Some(v[12]);
            c.discard_sectors = Some(v[13]);
            c.discard_ticks = Some(v[14]);
        }
        if columns >= 20 {
            c.flush_ios = Some(v[15]);
            c.flush_ticks = Some(v[16]);
        }
        out.push(DiskStats {
            name: name.to_owned(),
            major,
            minor,
            counters: c,
        });
    }
    out
}

/// Parses `/proc/loadavg` text (`0.70 0.63 0.29 3/111 12104`): the first three
/// numbers, or `None` when they are not there.
pub fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut it = text.split_ascii_whitespace().map(|w| w.parse::<f64>().ok());
    let (Some(Some(load1m)), Some(Some(load5m)), Some(Some(load15m))) =
        (it.next(), it.next(), it.next())
    else {
        return None;
    };
    if ![load1m, load5m, load15m]
        .iter()
        .all(|v| v.is_finite() && *v >= 0.0)
    {
        return None;
    }
    Some(LoadAverage {
        load1m,
        load5m,
        load15m,
    })
}
