//! The bits of udev's view qemu-ga gets through libudev, read from plain files.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::read_text;
use crate::sys::Dents;

/// `KEY=value` from the text of a sysfs `uevent` file.
pub(super) fn uevent_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// A device's entry in the udev database (`<data>/b<major>:<minor>`).
pub(super) struct Db(Option<String>);

impl Db {
    /// The entry of the block device whose sysfs directory is `rel` under the
    /// open directory `dir` and whose `uevent` reads `uevent` (empty when there
    /// is none: no udev, or udev has not seen the device). The device number is
    /// the `MAJOR=`/`MINOR=` of `uevent`, where libudev takes it from (the `dev`
    /// attribute prints the same number), so no file is read for it; the `dev`
    /// attribute only when `uevent` lacks them.
    pub(super) fn for_device(
        data: &Path,
        dir: BorrowedFd<'_>,
        rel: &Path,
        uevent: Option<&str>,
    ) -> Db {
        let from_uevent = uevent.and_then(|u| {
            let maj = uevent_value(u, "MAJOR")?;
            let min = uevent_value(u, "MINOR")?;
            Some(format!("{maj}:{min}"))
        });
        let dev = from_uevent.or_else(|| read_text(Some(dir), &rel.join("dev")));
        let entry = dev.and_then(|dev| {
            let dev = dev.trim_end();
            let (maj, min) = dev.split_once(':')?;
            // Digits only, so the file name cannot leave the database directory.
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(maj) || !digits(min) {
                return None;
            }
            read_text(None, &data.join(format!("b{maj}:{min}")))
        });
        Db(entry)
    }

    /// A non-empty property (`E:KEY=value`).
    pub(super) fn get(&self, key: &str) -> Option<String> {
        self.0
            .as_deref()?
            .lines()
            .find_map(|l| l.strip_prefix("E:")?.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }
}

/// Bus prefixes udev's persistent-storage rules put before `ID_SERIAL` in
/// `/dev/disk/by-id` names; `scsi-` ranks last because SATA and other disks
/// behind the SCSI layer get a `scsi-` link besides their own.
const BY_ID_BUSES: [&str; 10] = [
    "virtio", "nvme", "ata", "usb", "ieee1394", "mmc", "memstick", "xen", "cciss", "scsi",
];

/// The serial in the name of a `/dev/disk/by-id/<bus>-<serial>` link (in the open
/// directory `by_id`) pointing at
/// `devname`. World-wide names (`wwn-`, `nvme-eui.`, `nvme-nvme.`) are skipped;
/// among several candidates, the best-ranked bus, then the shortest name, wins.
/// For partition number `part`, the link is `<bus>-<serial>-part<N>` (udev gives
/// partitions their disk's `ID_SERIAL`).
pub(super) fn serial_from_by_id(by_id: &File, devname: &str, part: Option<&str>) -> Option<String> {
    let suffix = part.map(|n| format!("-part{n}"));
    let dir = by_id;
    let mut dents = Dents::new();
    let mut best: Option<(usize, String)> = None;
    // A listing error ends the listing, as it ends std's `read_dir`.
    while let Ok(Some(entry)) = dents.next(dir.as_fd()) {
        let Ok(target) = nix::fcntl::readlinkat(dir.as_fd(), entry.name) else {
            continue;
        };
        if Path::new(&target).file_name().is_none_or(|n| n != devname) {
            continue;
        }
        let name = String::from_utf8_lossy(entry.bytes()).into_owned();
        let name = match &suffix {
            Some(sfx) => match name.strip_suffix(sfx.as_str()) {
                Some(n) => n.to_owned(),
                None => continue,
            },
            None => name,
        };
        if name.starts_with("nvme-eui.") || name.starts_with("nvme-nvme.") {
            continue;
        }
        let Some((bus, serial)) = name.split_once('-') else {
            continue;
        };
        let Some(rank) = BY_ID_BUSES.iter().position(|b| *b == bus) else {
            continue;
        };
        if serial.is_empty() {
            continue;
        }
        let better = match &best {
            None => true,
            Some((r, s)) => (rank, serial.len(), serial) < (*r, s.len(), s.as_str()),
        };
        if better {
            best = Some((rank, serial.to_owned()));
        }
    }
    best.map(|(_, s)| s)
}
