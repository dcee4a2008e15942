//! Read-only system information: time, host name, time zone, OS, logged-in users,
//! load, CPU and disk counters (guest-get-time, guest-get-host-name,
//! guest-get-timezone, guest-get-osinfo, guest-get-users, guest-get-load,
//! guest-get-cpustats, guest-get-diskstats).
//!
//! Every file the Linux implementation reads is a field of [`LinuxSystemInfo`], so
//! tests run the real parsers over fixture trees. The parsers are public too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::stats::{parse_diskstats, parse_loadavg, parse_proc_stat};
use crate::{CpuStats, DiskStats, LoadAverage, OpsError};

/// The local time zone now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Timezone {
    /// Its abbreviation (`UTC`, `CEST`), when there is one.
    pub zone: Option<String>,
    /// Seconds east of UTC.
    pub offset: i64,
}

/// Kernel and distribution (guest-get-osinfo). Every member is optional, as on
/// the wire: the kernel ones come from `uname`, the others from os-release.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsInfo {
    /// `uname -r` (`6.1.0-18-amd64`).
    pub kernel_release: Option<String>,
    /// `uname -v` (`#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)`).
    pub kernel_version: Option<String>,
    /// `uname -m` (`x86_64`).
    pub machine: Option<String>,
    /// os-release `ID`.
    pub id: Option<String>,
    /// os-release `NAME`.
    pub name: Option<String>,
    /// os-release `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// os-release `VERSION`.
    pub version: Option<String>,
    /// os-release `VERSION_ID`.
    pub version_id: Option<String>,
    /// os-release `VARIANT`.
    pub variant: Option<String>,
    /// os-release `VARIANT_ID`.
    pub variant_id: Option<String>,
}

/// The os-release part of [`OsInfo`] (`ID` ... `VARIANT_ID`), as parsed by
/// [`parse_os_release`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OsRelease {
    /// `ID`.
    pub id: Option<String>,
    /// `NAME`.
    pub name: Option<String>,
    /// `PRETTY_NAME`.
    pub pretty_name: Option<String>,
    /// `VERSION`.
    pub version: Option<String>,
    /// `VERSION_ID`.
    pub version_id: Option<String>,
    /// `VARIANT`.
    pub variant: Option<String>,
    /// `VARIANT_ID`.
    pub variant_id: Option<String>,
}

/// A user with a login session (guest-get-users).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedInUser {
    /// User name.
    pub user: String,
    /// Earliest login of this user, seconds since the epoch (fractional).
    pub login_time: f64,
}

/// Read-only system information.
pub trait SystemInfo: Send + Sync {
    /// guest-get-time: ns since the epoch, microsecond resolution (ends in 000, as
    /// qemu-ga).
    fn time_ns(&self) -> Result<i64, OpsError>;
    /// guest-get-host-name (gethostname, not cached; error text
    /// `cannot get hostname: <strerror>`).
    fn host_name(&self) -> Result<String, OpsError>;
    /// guest-get-timezone: abbreviation and UTC offset of the local time now.
    fn timezone(&self) -> Result<Timezone, OpsError>;
    /// guest-get-osinfo: uname + os-release.
    fn os_info(&self) -> Result<OsInfo, OpsError>;
    /// guest-get-users: USER_PROCESS entries of utmp, one per user name, earliest
    /// login, in order of first appearance.
    fn users(&self) -> Result<Vec<LoggedInUser>, OpsError>;
    /// guest-get-load (current QEMU, not in 7.2): `/proc/loadavg`.
    fn load(&self) -> Result<LoadAverage, OpsError>;
    /// guest-get-cpustats: per-CPU lines of `/proc/stat`, in milliseconds.
    fn cpu_stats(&self) -> Result<Vec<CpuStats>, OpsError>;
    /// guest-get-diskstats: `/proc/diskstats`, members present by column count.
    fn disk_stats(&self) -> Result<Vec<DiskStats>, OpsError>;
}

/// Linux implementation. `Default` reads the real system paths.
#[derive(Debug, Clone)]
pub struct LinuxSystemInfo {
    /// `/proc`: `stat`, `diskstats` and `loadavg` are read below it.
    pub proc_dir: PathBuf,
    /// The os-release file to read instead of searching `os_release_paths` (the
    /// agent sets it from the `QGA_OS_RELEASE` environment variable, as qemu-ga).
    /// When it cannot be read or parsed, no os-release member is reported.
    pub os_release: Option<PathBuf>,
    /// Tried in order until one reads and parses:
    /// `/etc/os-release`, `/usr/lib/os-release`.
    pub os_release_paths: Vec<PathBuf>,
    /// The utmp file: `/run/utmp`.
    pub utmp: PathBuf,
}

impl Default for LinuxSystemInfo {
    fn default() -> Self {
        LinuxSystemInfo {
            proc_dir: "/proc".into(),
            os_release: None,
            os_release_paths: vec!["/etc/os-release".into(), "/usr/lib/os-release".into()],
            utmp: "/run/utmp".into(),
        }
    }
}

impl LinuxSystemInfo {
    fn read_proc(&self, name: &str) -> Result<String, OpsError> {
        let path = self.proc_dir.join(name);
        crate::sys::read_proc_text(&path)
            .map_err(|e| OpsError::os(format!("open(\"{}\")", path.display()), e))
    }

    /// The os-release values, from the override or the first of the search paths
    /// that reads and parses; `None` when none does.
    pub fn os_release_values(&self) -> Option<OsRelease> {
        match &self.os_release {
            Some(p) => read_os_release(p),
            None => self
                .os_release_paths
                .iter()
                .find_map(|p| read_os_release(p)),
        }
    }
}

fn read_os_release(path: &Path) -> Option<OsRelease> {
    parse_os_release(&std::fs::read(path).ok()?)
}

impl SystemInfo for LinuxSystemInfo {
    fn time_ns(&self) -> Result<i64, OpsError> {
        let now = std::time::SystemTime::now();
        let micros: i64 = match now.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
            Err(e) => {
                // Before 1970: round towards minus infinity, as a timeval does.
                let d = e.duration();
                let whole = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                -(whole + i64::from(d.subsec_nanos() % 1000 != 0))
            }
        };
        micros
            .checked_mul(1000)
            .ok_or_else(|| OpsError::failed("Failed to get time: out of range"))
    }

    fn host_name(&self) -> Result<String, OpsError> {
        ffi::host_name().map_err(|e| OpsError::os("cannot get hostname", e))
    }

    /// As qemu-ga (GLib's local zone): a `TZ` that names no zone file and is no
    /// POSIX rule with an offset is UTC (glibc would report its first letters as
    /// the abbreviation, offset 0).
    fn timezone(&self) -> Result<Timezone, OpsError> {
        if let Some(tz) = std::env::var_os("TZ") {
            if !tz_is_usable(&tz) {
                return Ok(Timezone {
                    zone: Some("UTC".into()),
                    offset: 0,
                });
            }
        }
        ffi::local_timezone().ok_or_else(|| {
            OpsError::failed(
                "Guest agent command failed, error was 'Couldn't retrieve local timezone'",
            )
        })
    }

    fn os_info(&self) -> Result<OsInfo, OpsError> {
        let u = ffi::uname().map_err(|e| OpsError::os("uname failed", e))?;
        let r = self.os_release_values().unwrap_or_default();
        Ok(OsInfo {
            kernel_release: Some(u.release),
            kernel_version: Some(u.version),
            machine: Some(u.machine),
            id: r.id,
            name: r.name,
            pretty_name: r.pretty_name,
            version: r.version,
            version_id: r.version_id,
            variant: r.variant,
            variant_id: r.variant_id,
        })
    }

    /// As qemu-ga (glibc's `getutxent`): a utmp file that cannot be read gives no
    /// users, not an error.
    fn users(&self) -> Result<Vec<LoggedInUser>, OpsError> {
        Ok(std::fs::read(&self.utmp)
            .map(|data| parse_utmp(&data))
            .unwrap_or_default())
    }

    fn load(&self) -> Result<LoadAverage, OpsError> {
        let path = self.proc_dir.join("loadavg");
        let text = crate::sys::read_proc_text(&path)
            .map_err(|e| OpsError::os("cannot query load average", e))?;
        parse_loadavg(&text).ok_or_else(|| {
            OpsError::failed(format!(
                "cannot query load average: unexpected content in {}",
                path.display()
            ))
        })
    }

    fn cpu_stats(&self) -> Result<Vec<CpuStats>, OpsError> {
        parse_proc_stat(&self.read_proc("stat")?, clock_ticks())
    }

    fn disk_stats(&self) -> Result<Vec<DiskStats>, OpsError> {
        Ok(parse_diskstats(&self.read_proc("diskstats")?))
    }
}

/// Whether `TZ` is one GLib understands: empty (UTC), a zone file (absolute, or
/// under `TZDIR` or `/usr/share/zoneinfo`, after an optional `:`), or a POSIX rule
/// whose standard-time name is followed by an offset (`CET-1`, `<+0530>-5:30`).
fn tz_is_usable(tz: &std::ffi::OsStr) -> bool {
    let Some(tz) = tz.to_str() else {
        return false;
    };
    let id = tz.strip_prefix(':').unwrap_or(tz);
    if id.is_empty() {
        return true;
    }
    let dir = std::env::var_os("TZDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/share/zoneinfo".into());
    if Path::new(id).is_absolute() && Path::new(id).is_file() {
        return true;
    }
    if !id.starts_with('/') && !id.split('/').any(|c| c == "..") && dir.join(id).is_file() {
        return true;
    }
    let rest = if let Some(quoted) = id.strip_prefix('<') {
        match quoted.find('>') {
            Some(end) if end > 0 => &quoted[end + 1..],
            _ => return false,
        }
    } else {
        let name_len = id.bytes().take_while(u8::is_ascii_alphabetic).count();
        if name_len < 3 {
            return false;
        }
        &id[name_len..]
    };
    let rest = rest.strip_prefix(['+', '-']).unwrap_or(rest);
    rest.starts_with(|c: char| c.is_ascii_digit())
}

/// `sysconf(_SC_CLK_TCK)`: the unit of `/proc/stat` (100 when it cannot be read).
pub fn clock_ticks() -> u64 {
    ffi::clock_ticks().unwrap_or(100)
}

// ---------------------------------------------------------------------------
// os-release

/// Parses os-release content the way qemu-ga 7.2 does: GLib's key-file reader
/// (the text behind an `[os-release]` group line), then its own unquoting.
///
/// `None` (no os-release member at all, and the next search path is tried) when
/// the content is not UTF-8 or a line is none of: blank, `#` comment, `[group]`,
/// or `KEY=VALUE` with a valid key. Content after a NUL byte is ignored. Keys after
/// another `[group]` line are not in the os-release group. The last of duplicate
/// keys wins. Whitespace around the key and before the value is dropped.
///
/// Values: a double-quoted value ends at the next unescaped `"` (or the end), and a
/// backslash before any of `$ ' " \ `` ` `` is dropped (other backslashes are
/// kept); an unquoted value is cut at the first space and at the first `;`.
///
/// On purpose better than 7.2:
/// - single quotes: 7.2 treats a single-quoted value as unquoted (`NAME='My OS'`
///   gives `'My`, quote included); here it is the text up to the closing `'` (or the
///   end), literally, as a shell reads it;
/// - a double-quoted value without its closing quote: 7.2 unquotes in place and
///   never terminates the result, so the last characters of the raw value are left
///   over (`"a\$b` gives `a$b$b`, a lone `"` gives `"`); here it is the unquoted
///   text to the end of the line (`a$b`, empty).
pub fn parse_os_release(content: &[u8]) -> Option<OsRelease> {
    let content = match content.iter().position(|b| *b == 0) {
        Some(nul) => &content[..nul],
        None => content,
    };
    let text = std::str::from_utf8(content).ok()?;
    let keys = parse_key_file_group(text, "os-release")?;
    let get = |k: &str| keys.get(k).map(|v| unquote_os_release_value(v));
    Some(OsRelease {
        id: get("ID"),
        name: get("NAME"),
        pretty_name: get("PRETTY_NAME"),
        version: get("VERSION"),
        version_id: get("VERSION_ID"),
        variant: get("VARIANT"),
        variant_id: get("VARIANT_ID"),
    })
}

fn is_glib_space(c: char) -> bool {
    // g_ascii_isspace: space, \t, \n, \v, \f, \r.
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// GKeyFile's reading of `[group]\n` + `text`: the raw values of `group`, or
/// `None` on a parse error.
fn parse_key_file_group(text: &str, group: &str) -> Option<HashMap<String, String>> {
    let mut current_is_wanted = true;
    let mut keys = HashMap::new();
    // Lines end at \n; a \r right before it is dropped.
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let line = line.trim_start_matches(is_glib_space);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = group_line(line) {
            if !is_group_name(name) {
                return None;
            }
            current_is_wanted = name == group;
            continue;
        }
        let eq = line.find('=').filter(|i| *i > 0)?;
        let key = line[..eq].trim_end_matches(is_glib_space);
        if !is_key_name(key) {
            return None;
        }
        let value = line[eq + 1..].trim_start_matches(is_glib_space);
        if key == "Encoding" && !value.eq_ignore_ascii_case("UTF-8") {
            return None;
        }
        if current_is_wanted {
            keys.insert(key.to_owned(), value.to_owned());
        }
    }
    Some(keys)
}

/// `[name]` followed only by spaces and tabs: the name.
fn group_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find(']')?;
    rest[close + 1..]
        .chars()
        .all(|c| c == ' ' || c == '\t')
        .then(|| &rest[..close])
}

fn is_group_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c == '[' || c == ']' || c.is_ascii_control())
}

/// GLib's key-name rule: not empty, no `[`/`]` except a trailing `[locale]`, no
/// leading or trailing space.
fn is_key_name(key: &str) -> bool {
    let end = key.find(['[', ']']).unwrap_or(key.len());
    let base = &key[..end];
    if base.is_empty() || base.starts_with(' ') || base.ends_with(' ') {
        return false;
    }
    let rest = &key[end..];
    if rest.is_empty() {
        return true;
    }
    let Some(locale) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) else {
        return false;
    };
    locale
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'))
}

fn unquote_os_release_value(value: &str) -> String {
    if let Some(body) = value.strip_prefix('"') {
        let mut out = String::with_capacity(body.len());
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&n @ ('$' | '\'' | '"' | '\\' | '`')) => {
                        out.push(n);
                        chars.next();
                    }
                    _ => out.push('\\'),
                },
                '"' => break,
                c => out.push(c),
            }
        }
        out
    } else if let Some(body) = value.strip_prefix('\'') {
        body.split('\'').next().unwrap_or_default().to_owned()
    } else {
        let cut = value.find([' ', ';']).unwrap_or(value.len());
        value[..cut].to_owned()
    }
}

// ---------------------------------------------------------------------------
// utmp

/// Size of glibc's `struct utmp` on x86_64 and aarch64.
pub const UTMP_RECORD_SIZE: usize = 384;
/// `ut_type` of a user's login process.
pub const USER_PROCESS: i16 = 7;
const UT_USER_OFFSET: usize = 44;
const UT_USER_LEN: usize = 32;
const UT_TV_OFFSET: usize = 340;

/// Parses a utmp file (glibc's 384-byte records, native byte order): the
/// `USER_PROCESS` entries, one per user name (the bytes of `ut_user` up to the
/// first NUL, lossily decoded), in order of first appearance, each with its
/// earliest `ut_tv` as `sec + usec / 1e6`. A truncated trailing record is ignored,
/// as glibc's reader does.
pub fn parse_utmp(data: &[u8]) -> Vec<LoggedInUser> {
    let mut out: Vec<LoggedInUser> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for rec in data.chunks_exact(UTMP_RECORD_SIZE) {
        let ut_type = i16::from_ne_bytes([rec[0], rec[1]]);
        if ut_type != USER_PROCESS {
            continue;
        }
        let user_field = &rec[UT_USER_OFFSET..UT_USER_OFFSET + UT_USER_LEN];
        let len = user_field
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(UT_USER_LEN);
        let name = &user_field[..len];
        let field = |o: usize| i32::from_ne_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        let login_time =
            f64::from(field(UT_TV_OFFSET)) + f64::from(field(UT_TV_OFFSET + 4)) / 1_000_000.0;
        match index.get(name) {
            Some(&i) => {
                if login_time < out[i].login_time {
                    out[i].login_time = login_time;
                }
            }
            None => {
                index.insert(name.to_vec(), out.len());
                out.push(LoggedInUser {
                    user: String::from_utf8_lossy(name).into_owned(),
                    login_time,
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// libc calls

/// The `unsafe` libc calls of this module.
mod ffi {
    use std::ffi::CStr;
    use std::io;

    use super::Timezone;

    extern "C" {
        /// POSIX `tzset` (not exported by the `libc` crate).
        fn tzset();
    }

    /// uname's fields that guest-get-osinfo reports.
    pub(super) struct Uname {
        pub(super) release: String,
        pub(super) version: String,
        pub(super) machine: String,
    }

    fn field(chars: &[libc::c_char]) -> String {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub(super) fn uname() -> io::Result<Uname> {
        // SAFETY: utsname is plain old data; all-zero is a valid value.
        let mut u: libc::utsname = unsafe { std::mem::zeroed() };
        // SAFETY: `u` is a valid, writable utsname for the whole call.
        if unsafe { libc::uname(&mut u) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Uname {
            release: field(&u.release),
            version: field(&u.version),
            machine: field(&u.machine),
        })
    }

    /// gethostname into a buffer larger than any Linux host name (64 bytes), so,
    /// unlike 7.2's `sysconf(_SC_HOST_NAME_MAX)`-sized buffer, a 64-character name
    /// is no ENAMETOOLONG.
    pub(super) fn host_name() -> io::Result<String> {
        let mut buf = [0 as libc::c_char; 257];
        // SAFETY: the buffer is writable for `len` bytes, one less than its size,
        // so it stays NUL-terminated whatever gethostname writes.
        if unsafe { libc::gethostname(buf.as_mut_ptr(), buf.len() - 1) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(field(&buf))
    }

    pub(super) fn clock_ticks() -> Option<u64> {
        // SAFETY: sysconf has no memory arguments.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(t).ok().filter(|t| *t > 0)
    }

    /// localtime_r of now, after tzset so that changes of TZ and /etc/localtime
    /// are seen (glibc's localtime_r reads them only once).
    pub(super) fn local_timezone() -> Option<Timezone> {
        // SAFETY: tzset only reads the environment and zone files and updates
        // libc's internal state under its own lock.
        unsafe { tzset() };
        // SAFETY: time accepts a null pointer.
        let now = unsafe { libc::time(std::ptr::null_mut()) };
        // SAFETY: tm is plain old data; all-zero is a valid value.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; localtime_r writes only `tm`.
        if unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
            return None;
        }
        let zone = if tm.tm_zone.is_null() {
            None
        } else {
            // SAFETY: a non-null tm_zone points at a NUL-terminated string in
            // libc's zone-name table, which is never freed.
            let name = unsafe { CStr::from_ptr(tm.tm_zone) };
            Some(name.to_string_lossy().into_owned()).filter(|z| !z.is_empty())
        };
        Some(Timezone {
            zone,
            offset: tm.tm_gmtoff,
        })
    }
}
