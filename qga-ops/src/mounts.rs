//! The mount table, as qemu-ga reads it from `/proc/self/mountinfo`.

use std::path::Path;

use crate::OpsError;

/// A mounted filesystem that freeze and trim consider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Mount point, octal escapes (`\040`) decoded.
    pub dir: String,
    /// Filesystem type (`ext4`, `xfs`, ...).
    pub fstype: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Mount source (`/dev/vda1`), octal escapes decoded; btrfs mounts (major 0)
    /// are looked up by it.
    pub source: String,
}

/// Decodes the `\NNN` octal escapes the kernel uses for space, tab, newline and `\`.
pub fn decode_octal(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text into the mounts freeze and trim act on, in mount order.
/// Like qemu-ga, filesystems without a backing device (major 0: proc, tmpfs,
/// overlay, NFS, ...) are left out, except btrfs, whose subvolumes report major 0.
/// Nothing is allocated for a line that is left out.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for line in text.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let mut fields = line.split(' ');
        let (mut dev, mut dir) = ("", "");
        // The first field that is exactly "-" separates the optional fields.
        let mut sep = None;
        for (i, f) in fields.by_ref().enumerate() {
            match i {
                2 => dev = f,
                4 => dir = f,
                _ => {}
            }
            if f == "-" {
                sep = Some(i);
                break;
            }
        }
        let Some(sep) = sep else {
            continue;
        };
        let Some(fstype) = fields.next() else {
            continue;
        };
        if sep < 6 {
            continue;
        }
        let Some((major, minor)) = dev.split_once(':') else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
            continue;
        };
        if major == 0 && fstype != "btrfs" && decode_octal(fstype) != "btrfs" {
            continue;
        }
        mounts.push(Mount {
            dir: decode_octal(dir),
            fstype: decode_octal(fstype),
            major,
            minor,
            source: fields.next().map(decode_octal).unwrap_or_default(),
        });
    }
    mounts
}

/// Reads and parses a mountinfo file.
///
/// The kernel writes `/proc/self/mountinfo` out afresh on every open, which costs
/// ~20 us here for 20 mounts (and grows with them: a container host has hundreds),
/// more than the rest of a guest-get-fsinfo call. So the last table read from a
/// procfs file is kept with the file left open, and handed out again for as long
/// as `poll(2)` on that file reports no change: the kernel marks it with `POLLPRI`
/// after any mount, unmount, move or propagation in the mount namespace (see
/// `proc_pid_mounts(5)`), and the check costs one system call (~0.2 us). Files
/// that are not on procfs (test fixtures) are read every time. The kept table
/// follows the mount namespace the process was in when it read it: a process that
/// moves to another (`setns(2)`, `unshare(2)`) should not rely on it.
pub fn read_mountinfo(path: &Path) -> Result<Vec<Mount>, OpsError> {
    static TABLE: MountTable = MountTable::new();
    TABLE.read(path)
}

/// The last mount table read from procfs, with its file kept open to ask the
/// kernel whether the table changed since (see [`read_mountinfo`]).
struct MountTable {
    kept: std::sync::Mutex<Option<Kept>>,
    /// Files read (rather than the kept table handed out), for tests.
    file_reads: std::sync::atomic::AtomicU64,
}

struct Kept {
    path: std::path::PathBuf,
    file: std::fs::File,
    mounts: Vec<Mount>,
}

impl MountTable {
    const fn new() -> Self {
        MountTable {
            kept: std::sync::Mutex::new(None),
            file_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn read(&self, path: &Path) -> Result<Vec<Mount>, OpsError> {
        let mut kept = self
            .kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = kept.as_ref().filter(|k| k.path == path) {
            if !changed(&k.file) {
                return Ok(k.mounts.clone());
            }
        }
        let err = |e| OpsError::os(format!("failed to open mtab file: '{}'", path.display()), e);
        // The file is opened before it is read, and its change mark starts at
        // opening: a change while it is read is reported by the next poll.
        let mut file = std::fs::File::open(path).map_err(err)?;
        let mounts = parse_mountinfo(&crate::sys::read_text(&mut file).map_err(err)?);
        self.file_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *kept = on_procfs(&file).then(|| Kept {
            path: path.to_owned(),
            file,
            mounts: mounts.clone(),
        });
        Ok(mounts)
    }
}

/// Whether the mount table behind a procfs mount file changed since the file was
/// opened or last polled; any doubt (an error, `POLLNVAL`) counts as a change.
fn changed(file: &std::fs::File) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0].revents().is_none_or(|r| {
            r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR | PollFlags::POLLNVAL)
        }),
        Err(_) => true,
    }
}

fn on_procfs(file: &std::fs::File) -> bool {
    nix::sys::statfs::fstatfs(file)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_filters_like_the_reference() {
        let text = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
24 22 0:5 / /dev rw shared:2 - devtmpfs udev rw,size=10k
40 22 7:0 / /mnt/with\\040space rw,relatime shared:30 - ext4 /dev/loop0 rw
41 22 0:45 / /srv rw - btrfs /dev/vdb rw
42 22 0:46 / /net rw - nfs4 server:/x rw
43 22 8:1 / /tab\\011dir rw master:1 shared:9 - xfs /dev/sda1 rw
garbage line
";
        let mounts = parse_mountinfo(text);
        let dirs: Vec<&str> = mounts.iter().map(|m| m.dir.as_str()).collect();
        assert_eq!(dirs, ["/", "/mnt/with space", "/srv", "/tab\tdir"]);
        assert_eq!(mounts[1].fstype, "ext4");
        assert_eq!((mounts[1].major, mounts[1].minor), (7, 0));
        assert_eq!(mounts[1].source, "/dev/loop0");
        assert_eq!(mounts[2].source, "/dev/vdb");
    }

    /// The parser before it stopped allocating per line: the reference for the
    /// property test below.
    fn parse_mountinfo_by_vec(text: &str) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let Some(sep) = fields.iter().position(|f| *f == "-") else {
                continue;
            };
            if sep < 6 || fields.len() < sep + 2 {
                continue;
            }
            let Some((major, minor)) = fields[2].split_once(':') else {
                continue;
            };
            let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
                continue;
            };
            let fstype = decode_octal(fields[sep + 1]);
            if major == 0 && fstype != "btrfs" {
                continue;
            }
            mounts.push(Mount {
                dir: decode_octal(fields[4]),
                fstype,
                major,
                minor,
                source: fields
                    .get(sep + 2)
                    .map(|f| decode_octal(f))
                    .unwrap_or_default(),
            });
        }
        mounts
    }

    proptest::proptest! {
        #[test]
        fn parses_as_the_per_line_vec_parser_did(
            lines in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::strategy::Just("-".to_owned()),
                        proptest::strategy::Just("btrfs".to_owned()),
                        proptest::strategy::Just("btr\\146s".to_owned()),
                        proptest::strategy::Just("0:45".to_owned()),
                        proptest::strategy::Just("8:1".to_owned()),
                        proptest::strategy::Just("".to_owned()),
                        "[a-z0-9:/\\\\]{0,6}",
                    ],
                    0..12,
                ),
                0..6,
            )
        ) {
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            proptest::prop_assert_eq!(parse_mountinfo(&text), parse_mountinfo_by_vec(&text));
        }
    }

    #[test]
    fn octal_decoding_leaves_other_backslashes_alone() {
        assert_eq!(decode_octal("a\\134b"), "a\\b");
        assert_eq!(decode_octal("a\\9b\\"), "a\\9b\\");
        assert_eq!(decode_octal("\\012"), "\n");
    }

    #[test]
    fn proc_text_reads_whole_files_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 1, 8 * 1024, 16 * 1024, 40_000] {
            let text: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &text).unwrap();
            let mut file = std::fs::File::open(&path).unwrap();
            assert_eq!(
                crate::sys::read_text(&mut file).unwrap(),
                text,
                "length {len}"
            );
        }
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"ok\xff").unwrap();
        let e = crate::sys::read_text(&mut std::fs::File::open(&bad).unwrap()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = read_mountinfo(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("failed to open mtab file"), "{e}");
    }

    #[test]
    fn the_proc_table_is_read_again_only_when_the_kernel_says_it_changed() {
        let table = MountTable::new();
        let path = Path::new("/proc/self/mountinfo");
        let first = table.read(path).unwrap();
        for _ in 0..100 {
            assert_eq!(table.read(path).unwrap(), first);
        }
        // A mount made elsewhere on the machine meanwhile costs a read or two.
        let reads = table.file_reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(reads <= 3, "{reads} reads of the mount table for 101 calls");
        // What is handed out is the table as it is now.
        let fresh = parse_mountinfo(&std::fs::read_to_string(path).unwrap());
        assert_eq!(table.read(path).unwrap(), fresh);
    }

    #[test]
    fn files_off_procfs_are_read_every_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mountinfo");
        let table = MountTable::new();
        let line = |id: u32, dir: &str| format!("{id} 1 8:1 / {dir} rw - ext4 /dev/sda1 rw\n");
        std::fs::write(&path, line(22, "/")).unwrap();
        assert_eq!(table.read(&path).unwrap().len(), 1);
        std::fs::write(&path, line(22, "/") + &line(23, "/srv")).unwrap();
        let dirs: Vec<String> = table
            .read(&path)
            .unwrap()
            .into_iter()
            .map(|m| m.dir)
            .collect();
        assert_eq!(dirs, ["/", "/srv"]);
        assert_eq!(
            table.file_reads.load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn this_machine_has_a_root_mount() {
        let mounts = read_mountinfo(Path::new("/proc/self/mountinfo")).unwrap();
        assert!(mounts.iter().any(|m| m.dir == "/"), "{mounts:?}");
    }
}
