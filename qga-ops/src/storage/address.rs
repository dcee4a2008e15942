//! Disk addresses from sysfs device paths, parsed the way qemu-ga 7.2 parses them.

use std::fs;
use std::path::Path;

use super::{LinuxStorage, SysPath};
use crate::OpsError;

/// A PCI address; every member is -1 when the disk is not on PCI (or qemu-ga could
/// not tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddress {
    /// Domain.
    pub domain: i64,
    /// Bus.
    pub bus: i64,
    /// Slot.
    pub slot: i64,
    /// Function.
    pub function: i64,
}

impl PciAddress {
    /// The "no address" value, all -1.
    pub const INVALID: PciAddress = PciAddress {
        domain: -1,
        bus: -1,
        slot: -1,
        function: -1,
    };
}

/// An s390 channel I/O (CCW) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CcwAddress {
    /// Channel subsystem id.
    pub cssid: i64,
    /// Subchannel set id.
    pub ssid: i64,
    /// Subchannel number.
    pub subchno: i64,
    /// Device number.
    pub devno: i64,
}

/// `GuestDiskBusType`: how a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BusType {
    /// `ide`.
    Ide,
    /// `fdc` (floppy).
    Fdc,
    /// `scsi`.
    Scsi,
    /// `virtio` (virtio-blk).
    Virtio,
    /// `xen`.
    Xen,
    /// `usb`.
    Usb,
    /// `uml`.
    Uml,
    /// `sata`.
    Sata,
    /// `sd`.
    Sd,
    /// `unknown`.
    Unknown,
    /// `ieee1394`.
    Ieee1394,
    /// `ssa`.
    Ssa,
    /// `fibre`.
    Fibre,
    /// `raid`.
    Raid,
    /// `iscsi`.
    Iscsi,
    /// `sas`.
    Sas,
    /// `mmc`.
    Mmc,
    /// `virtual`.
    Virtual,
    /// `file-backed-virtual`.
    FileBackedVirtual,
    /// `nvme`.
    Nvme,
}

impl BusType {
    /// Every value, in the schema's order.
    pub const ALL: [BusType; 20] = [
        BusType::Ide,
        BusType::Fdc,
        BusType::Scsi,
        BusType::Virtio,
        BusType::Xen,
        BusType::Usb,
        BusType::Uml,
        BusType::Sata,
        BusType::Sd,
        BusType::Unknown,
        BusType::Ieee1394,
        BusType::Ssa,
        BusType::Fibre,
        BusType::Raid,
        BusType::Iscsi,
        BusType::Sas,
        BusType::Mmc,
        BusType::Virtual,
        BusType::FileBackedVirtual,
        BusType::Nvme,
    ];

    /// The wire name (`virtio`, `file-backed-virtual`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            BusType::Ide => "ide",
            BusType::Fdc => "fdc",
            BusType::Scsi => "scsi",
            BusType::Virtio => "virtio",
            BusType::Xen => "xen",
            BusType::Usb => "usb",
            BusType::Uml => "uml",
            BusType::Sata => "sata",
            BusType::Sd => "sd",
            BusType::Unknown => "unknown",
            BusType::Ieee1394 => "ieee1394",
            BusType::Ssa => "ssa",
            BusType::Fibre => "fibre",
            BusType::Raid => "raid",
            BusType::Iscsi => "iscsi",
            BusType::Sas => "sas",
            BusType::Mmc => "mmc",
            BusType::Virtual => "virtual",
            BusType::FileBackedVirtual => "file-backed-virtual",
            BusType::Nvme => "nvme",
        }
    }

    /// The value with this wire name.
    pub fn from_wire(name: &str) -> Option<BusType> {
        BusType::ALL.into_iter().find(|b| b.as_str() == name)
    }
}

/// Where a disk is (`GuestDiskAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskAddress {
    /// The PCI device of the controller (wire: `pci-controller`).
    pub pci: PciAddress,
    /// Bus type (wire: `bus-type`).
    pub bus_type: BusType,
    /// Bus number (IDE: index of the host among the controller's hosts).
    pub bus: i64,
    /// Target (SCSI over a non-PCI virtio transport only; qemu-ga leaves it 0 on PCI).
    pub target: i64,
    /// Unit (SCSI target or LUN depending on the controller, SATA port index).
    pub unit: i64,
    /// Serial (udev's `ID_SERIAL`).
    pub serial: Option<String>,
    /// Device node (`/dev/vda`).
    pub dev: Option<String>,
    /// s390 channel address (wire: `ccw-address`).
    pub ccw: Option<CcwAddress>,
}

impl DiskAddress {
    /// The starting point: no PCI address, unknown bus, zeros.
    pub fn unknown() -> Self {
        DiskAddress {
            pci: PciAddress::INVALID,
            bus_type: BusType::Unknown,
            bus: 0,
            target: 0,
            unit: 0,
            serial: None,
            dev: None,
            ccw: None,
        }
    }
}

/// A tiny scanf: hex or decimal numbers and literal characters.
struct Scan<'a>(&'a str);

impl<'a> Scan<'a> {
    fn num(&mut self, radix: u32) -> Option<u32> {
        let end = self
            .0
            .find(|c: char| !c.is_digit(radix))
            .unwrap_or(self.0.len());
        if end == 0 {
            return None;
        }
        let v = u32::from_str_radix(&self.0[..end], radix).ok()?;
        self.0 = &self.0[end..];
        Some(v)
    }
    fn hex(&mut self) -> Option<u32> {
        self.num(16)
    }
    fn dec(&mut self) -> Option<u32> {
        self.num(10)
    }
    fn lit(&mut self, c: char) -> Option<()> {
        self.0 = self.0.strip_prefix(c)?;
        Some(())
    }
    /// `D:B:S.F` in hex.
    fn pci(&mut self) -> Option<[u32; 4]> {
        let d = self.hex()?;
        self.lit(':')?;
        let b = self.hex()?;
        self.lit(':')?;
        let s = self.hex()?;
        self.lit('.')?;
        let f = self.hex()?;
        Some([d, b, s, f])
    }
}

/// `(channel, target, lun)` from `/targetH:C:T/H:C:T:L`.
fn scsi_target(virt: &str) -> Option<[u32; 3]> {
    let at = virt.find("/target")?;
    let mut s = Scan(&virt[at + 7..]);
    s.dec()?;
    s.lit(':')?;
    s.dec()?;
    s.lit(':')?;
    s.dec()?;
    s.lit('/')?;
    s.dec()?;
    s.lit(':')?;
    let c = s.dec()?;
    s.lit(':')?;
    let t = s.dec()?;
    s.lit(':')?;
    let l = s.dec()?;
    Some([c, t, l])
}

fn driver_of(dir: &Path) -> Option<String> {
    let link = fs::read_link(dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

const KNOWN_DRIVERS: [&str; 5] = ["ata_piix", "sym53c8xx", "virtio-pci", "ahci", "nvme"];

/// Sorted numbers of the first 8 `ataN` (or `hostN`) entries of `dir`.
fn hosts(dir: &Path, ata: bool) -> Result<Vec<u32>, OpsError> {
    let entries = fs::read_dir(dir)
        .map_err(|e| OpsError::os(format!("opendir(\"{}\")", dir.display()), e))?;
    let prefix = if ata { "ata" } else { "host" };
    let mut out: Vec<u32> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            Scan(name.to_string_lossy().strip_prefix(prefix)?).dec()
        })
        .take(8)
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// Fills the hardware part of `disk` from the device's sysfs path; true when
/// qemu-ga would count it as hardware information found.
pub(super) fn fill(
    st: &LinuxStorage,
    root: &Path,
    sp: &SysPath,
    disk: &mut DiskAddress,
) -> Result<bool, OpsError> {
    let virt = sp.virt.as_str();
    if virt.contains("/devices/pci") {
        pci(st, root, virt, disk)
    } else if virt.contains("/devices/css") {
        Ok(ccw(virt, disk))
    } else if virt.contains("/virtio") {
        Ok(nonpci_virtio(virt, disk))
    } else {
        Ok(false)
    }
}

fn pci(
    st: &LinuxStorage,
    root: &Path,
    virt: &str,
    disk: &mut DiskAddress,
) -> Result<bool, OpsError> {
    let Some(at) = virt.find("/devices/pci") else {
        return Ok(false);
    };
    // /devices/pciDDDD:BB/DDDD:BB:SS.F[/DDDD:BB:SS.F...]
    let after_root = {
        let mut s = Scan(&virt[at + 12..]);
        (|| {
            s.hex()?;
            s.lit(':')?;
            s.hex()?;
            s.lit('/')?;
            let a = s.pci()?;
            Some((a, s.0))
        })()
    };
    let Some((mut addr, mut rest)) = after_root else {
        return Ok(false);
    };
    // Walk down through bridges to the first device a known driver is bound to.
    let driver = loop {
        let prefix = &virt[..virt.len() - rest.len()];
        if let Some(d) = driver_of(&st.real_of(root, prefix)) {
            if KNOWN_DRIVERS.contains(&d.as_str()) {
                break d;
            }
        }
        let mut s = Scan(rest);
        match s.lit('/').and_then(|_| s.pci()) {
            Some(a) => {
                addr = a;
                rest = s.0;
            }
            None => return Ok(false),
        }
    };
    let tgt = scsi_target(virt);
    let (host_at, ata) = match virt.find("/ata") {
        Some(p) => (Some((p, p + 4)), true),
        None => (virt.find("/host").map(|p| (p, p + 5)), false),
    };
    let mut host = None;
    let mut all_hosts = Vec::new();
    if let Some((p, q)) = host_at {
        if let Some(h) = Scan(&virt[q..]).dec() {
            host = Some(h);
            all_hosts = hosts(&st.real_of(root, &virt[..p]), ata)?;
        }
    }
    let [d, b, s, f] = addr;
    disk.pci = PciAddress {
        domain: d.into(),
        bus: b.into(),
        slot: s.into(),
        function: f.into(),
    };
    let host_index = || {
        let h = host?;
        all_hosts.iter().position(|x| *x == h)
    };
    match driver.as_str() {
        "ata_piix" => {
            // One host per IDE bus; target*:0:<unit>:0.
            let (Some(t), Some(i)) = (tgt, host_index()) else {
                return Ok(false);
            };
            disk.bus_type = BusType::Ide;
            disk.bus = i as i64;
            disk.unit = t[1].into();
        }
        "sym53c8xx" => {
            let Some(t) = tgt else {
                return Ok(false);
            };
            disk.bus_type = BusType::Scsi;
            disk.unit = t[1].into();
        }
        "virtio-pci" => match tgt {
            // virtio-scsi: target*:0:0:<unit>
            Some(t) => {
                disk.bus_type = BusType::Scsi;
                disk.unit = t[2].into();
            }
            // virtio-blk: one disk per device.
            None => disk.bus_type = BusType::Virtio,
        },
        "ahci" => {
            // One host per port.
            let (Some(_), Some(i)) = (tgt, host_index()) else {
                return Ok(false);
            };
            disk.bus_type = BusType::Sata;
            disk.unit = i as i64;
        }
        "nvme" => disk.bus_type = BusType::Nvme,
        _ => return Ok(false),
    }
    Ok(true)
}

fn nonpci_virtio(virt: &str, disk: &mut DiskAddress) -> bool {
    if !virt.contains("/virtio") || !virt.contains("/block") {
        return false;
    }
    match scsi_target(virt) {
        Some([c, t, l]) => {
            disk.bus_type = BusType::Scsi;
            disk.bus = c.into();
            disk.target = t.into();
            disk.unit = l.into();
        }
        None => disk.bus_type = BusType::Virtio,
    }
    true
}

fn ccw(virt: &str, disk: &mut DiskAddress) -> bool {
    let Some(at) = virt.find("/devices/css") else {
        return false;
    };
    // /devices/cssN/C.S.SUBCH/X.Y.DEVNO/
    let mut s = Scan(&virt[at + 12..]);
    let parsed = (|| {
        s.hex()?;
        s.lit('/')?;
        let cssid = s.hex()?;
        s.lit('.')?;
        let ssid = s.hex()?;
        s.lit('.')?;
        let subchno = s.hex()?;
        s.lit('/')?;
        s.hex()?;
        s.lit('.')?;
        s.hex()?;
        s.lit('.')?;
        let devno = s.hex()?;
        Some((cssid, ssid, subchno, devno))
    })();
    let Some((cssid, ssid, subchno, devno)) = parsed else {
        return false;
    };
    disk.ccw = Some(CcwAddress {
        cssid: cssid.into(),
        ssid: ssid.into(),
        subchno: subchno.into(),
        devno: devno.into(),
    });
    if virt[at..].contains("/virtio") {
        nonpci_virtio(virt, disk);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_target_takes_channel_target_lun() {
        assert_eq!(
            scsi_target(
                "/sys/devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:3/2:0:3:7/block/sda"
            ),
            Some([0, 3, 7])
        );
        assert_eq!(scsi_target("/sys/devices/x/target2:0/block/sda"), None);
    }

    #[test]
    fn ccw_path() {
        let mut d = DiskAddress::unknown();
        assert!(ccw(
            "/sys/devices/css0/0.0.0002/0.0.0001/virtio0/block/vda",
            &mut d
        ));
        assert_eq!(
            d.ccw,
            Some(CcwAddress {
                cssid: 0,
                ssid: 0,
                subchno: 2,
                devno: 1
            })
        );
        assert_eq!(d.bus_type, BusType::Virtio);
        let mut d = DiskAddress::unknown();
        assert!(!ccw("/sys/devices/css0/garbage", &mut d));
        assert_eq!(d, DiskAddress::unknown());
    }

    #[test]
    fn bus_type_names_round_trip() {
        for b in BusType::ALL {
            assert_eq!(BusType::from_wire(b.as_str()), Some(b));
        }
        assert_eq!(BusType::FileBackedVirtual.as_str(), "file-backed-virtual");
        assert_eq!(BusType::from_wire("floppy"), None);
    }
}
