//! guest-get-fsinfo / guest-get-disks: the real code over fixture trees (this VM's
//! captured sysfs, the end-to-end test guest's with virtio-scsi, NVMe and a
//! partition, and a hand-built tree with dm-on-md-on-virtio, SCSI, SATA and NVMe
//! disks), the fake, and a differential test against /usr/sbin/qemu-ga.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qga_ops::fake::FakeStorage;
use qga_ops::{
    BusType, DiskAddress, DiskInfo, FsInfo, FsUsage, LinuxStorage, NvmeSmart, OpsError, PciAddress,
    Storage, NVME_SMART_LOG_SIZE,
};
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/storage")
        .join(name)
}

fn no_statvfs(_: &Path) -> io::Result<FsUsage> {
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

fn no_smart(_: &Path) -> io::Result<[u8; NVME_SMART_LOG_SIZE]> {
    Err(io::Error::from_raw_os_error(libc::ENOTTY))
}

fn over(name: &str) -> LinuxStorage {
    let root = fixture(name);
    LinuxStorage {
        sys: root.join("sys"),
        dev: root.join("dev"),
        mountinfo: root.join("mountinfo"),
        udev_data: root.join("run/udev/data"),
        statvfs: no_statvfs,
        nvme_smart_log: no_smart,
        sysfs_serial: false,
    }
}

fn pci(domain: i64, bus: i64, slot: i64, function: i64) -> PciAddress {
    PciAddress {
        domain,
        bus,
        slot,
        function,
    }
}

fn addr(pci: PciAddress, bus_type: BusType, dev: &str) -> DiskAddress {
    DiskAddress {
        pci,
        bus_type,
        dev: Some(dev.into()),
        ..DiskAddress::unknown()
    }
}

// ---------------------------------------------------------------- wire shapes

fn address_json(a: &DiskAddress) -> Value {
    let mut v = json!({
        "pci-controller": {"domain": a.pci.domain, "bus": a.pci.bus,
                           "slot": a.pci.slot, "function": a.pci.function},
        "bus-type": a.bus_type.as_str(),
        "bus": a.bus, "target": a.target, "unit": a.unit,
    });
    if let Some(s) = &a.serial {
        v["serial"] = json!(s);
    }
    if let Some(d) = &a.dev {
        v["dev"] = json!(d);
    }
    if let Some(c) = &a.ccw {
        v["ccw-address"] =
            json!({"cssid": c.cssid, "ssid": c.ssid, "subchno": c.subchno, "devno": c.devno});
    }
    v
}

/// 7.2's GuestFilesystemInfo (no total-bytes-privileged).
fn fsinfo_json(f: &FsInfo) -> Value {
    let mut v = json!({
        "name": f.name, "mountpoint": f.mountpoint, "type": f.fs_type,
        "disk": f.disks.iter().map(address_json).collect::<Vec<_>>(),
    });
    if let Some(u) = f.used_bytes {
        v["used-bytes"] = json!(u);
    }
    if let Some(t) = f.total_bytes {
        v["total-bytes"] = json!(t);
    }
    v
}

fn disk_json(d: &DiskInfo) -> Value {
    let mut v = json!({"name": d.name, "partition": d.partition});
    if let Some(deps) = &d.dependencies {
        v["dependencies"] = json!(deps);
    }
    if let Some(a) = &d.address {
        v["address"] = address_json(a);
    }
    if let Some(a) = &d.alias {
        v["alias"] = json!(a);
    }
    if let Some(s) = &d.smart {
        v["smart"] = json!({
            "type": "nvme",
            "critical-warning": s.critical_warning, "temperature": s.temperature,
            "available-spare": s.available_spare,
            "available-spare-threshold": s.available_spare_threshold,
            "percentage-used": s.percentage_used,
        });
        for (name, n) in [
            ("data-units-read", s.data_units_read),
            ("data-units-written", s.data_units_written),
            ("host-read-commands", s.host_read_commands),
            ("host-write-commands", s.host_write_commands),
            ("controller-busy-time", s.controller_busy_time),
            ("power-cycles", s.power_cycles),
            ("power-on-hours", s.power_on_hours),
            ("unsafe-shutdowns", s.unsafe_shutdowns),
            ("media-errors", s.media_errors),
            ("number-of-error-log-entries", s.number_of_error_log_entries),
        ] {
            v["smart"][format!("{name}-lo")] = json!(n as u64);
            v["smart"][format!("{name}-hi")] = json!((n >> 64) as u64);
        }
    }
    v
}

// ------------------------------------------------------- this VM's captured tree

#[test]
fn captured_vm_fsinfo_is_the_root_on_vda() {
    let fs = over("virtio-vm").fs_info().unwrap();
    // Every other mount of the VM has major 0 (proc, tmpfs, cgroup...).
    assert_eq!(fs.len(), 1, "{fs:#?}");
    let root = &fs[0];
    assert_eq!(
        (
            root.name.as_str(),
            root.mountpoint.as_str(),
            root.fs_type.as_str()
        ),
        ("vda", "/", "ext4")
    );
    assert_eq!((root.used_bytes, root.total_bytes), (None, None));
    assert_eq!(
        root.disks,
        [addr(pci(0, 0, 2, 0), BusType::Virtio, "/dev/vda")]
    );
}

#[test]
fn captured_vm_disks_skip_zero_sized_devices() {
    let disks = over("virtio-vm").disks().unwrap();
    // loop0..7 and zram0 have size 0.
    assert_eq!(
        disks,
        [DiskInfo {
            name: "/dev/vda".into(),
            partition: false,
            dependencies: Some(vec![]),
            address: Some(addr(pci(0, 0, 2, 0), BusType::Virtio, "/dev/vda")),
            alias: None,
            smart: None,
        }]
    );
    // The sysfs serial only when asked for (qemu-ga without udev reports none).
    let with_sysfs = LinuxStorage {
        sysfs_serial: true,
        ..over("virtio-vm")
    };
    let disks = with_sysfs.disks().unwrap();
    let a = disks[0].address.as_ref().unwrap();
    assert_eq!(a.serial.as_deref(), Some("overlayblk"));
    assert_eq!(
        with_sysfs.fs_info().unwrap()[0].disks[0].serial.as_deref(),
        Some("overlayblk")
    );
}

#[test]
fn captured_vm_matches_what_qemu_ga_said_at_capture() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("virtio-vm/reference.json")).unwrap(),
    )
    .unwrap();
    let st = over("virtio-vm");
    let disks: Vec<Value> = st.disks().unwrap().iter().map(disk_json).collect();
    assert_eq!(Value::from(disks), reference["guest-get-disks"]["return"]);
    let mut want = reference["guest-get-fsinfo"]["return"].clone();
    for f in want.as_array_mut().unwrap() {
        let f = f.as_object_mut().unwrap();
        f.remove("used-bytes");
        f.remove("total-bytes");
    }
    let fs: Vec<Value> = st.fs_info().unwrap().iter().map(fsinfo_json).collect();
    assert_eq!(Value::from(fs), want);
}

// ------------------------------- the test guest's virtio-blk, virtio-scsi and NVMe

/// The SMART log page QEMU's NVMe controller gave at capture (what qemu-ga decoded
/// into reference.json): 323 K, one data unit read and written, 11 reads, 1 write,
/// everything else 0.
fn captured_smart_log(path: &Path) -> io::Result<[u8; NVME_SMART_LOG_SIZE]> {
    assert!(path.ends_with("dev/nvme0n1"), "{}", path.display());
    let mut log = [0u8; NVME_SMART_LOG_SIZE];
    log[1..3].copy_from_slice(&323u16.to_le_bytes());
    for (off, n) in [(32, 1u128), (48, 1), (64, 11), (80, 1)] {
        log[off..off + 16].copy_from_slice(&n.to_le_bytes());
    }
    Ok(log)
}

/// tests/tests/vm.rs' guest (captured there by capture_storage_fixture, capture.sh
/// under busybox): ext4 on virtio-blk vda, on virtio-scsi sda (target 1, LUN 3) and
/// on nvme0n1p1, the MBR partition of an NVMe disk; no udev.
fn scsi_nvme_vm() -> LinuxStorage {
    LinuxStorage {
        nvme_smart_log: captured_smart_log,
        ..over("scsi-nvme-vm")
    }
}

fn scsi_nvme_reference() -> Value {
    let text = std::fs::read_to_string(fixture("scsi-nvme-vm/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn scsi_nvme_vm_fsinfo_is_what_qemu_ga_said() {
    let mut want = scsi_nvme_reference()["guest-get-fsinfo"]["return"].clone();
    for f in want.as_array_mut().unwrap() {
        let f = f.as_object_mut().unwrap();
        f.remove("used-bytes");
        f.remove("total-bytes");
    }
    let fs: Vec<Value> = scsi_nvme_vm()
        .fs_info()
        .unwrap()
        .iter()
        .map(fsinfo_json)
        .collect();
    // In mount order, last first: nvme, scsi, data.
    assert_eq!(Value::from(fs), want);
}

#[test]
fn scsi_nvme_vm_addresses() {
    let fs = scsi_nvme_vm().fs_info().unwrap();
    let by_mount = |m: &str| fs.iter().find(|f| f.mountpoint == m).unwrap();
    // virtio-scsi behind PCI: the LUN is the unit; target and bus stay 0 (qemu-ga's
    // parser assumes target*:0:0:<lun>, the sysfs path says target 1).
    let sda = &by_mount("/mnt/scsi").disks;
    assert_eq!(
        sda.as_slice(),
        [DiskAddress {
            unit: 3,
            ..addr(pci(0, 0, 5, 0), BusType::Scsi, "/dev/sda")
        }]
    );
    // A partition: its own node, its disk's controller.
    let nvme = by_mount("/mnt/nvme");
    assert_eq!(nvme.name, "nvme0n1p1");
    assert_eq!(
        nvme.disks,
        [addr(pci(0, 0, 6, 0), BusType::Nvme, "/dev/nvme0n1p1")]
    );
    // No udev: no serial, though sysfs knows the NVMe controller's.
    assert!(fs.iter().flat_map(|f| &f.disks).all(|d| d.serial.is_none()));
}

#[test]
fn scsi_nvme_vm_disks_are_what_qemu_ga_said() {
    let disks = scsi_nvme_vm().disks().unwrap();
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    // Each partition right before its disk (the fixture's readdir order is not the
    // guest's, so the disks themselves are compared by name).
    let p = names.iter().position(|n| *n == "/dev/nvme0n1p1").unwrap();
    assert_eq!(names.get(p + 1), Some(&"/dev/nvme0n1"), "{names:?}");
    let mut got: Vec<Value> = disks.iter().map(disk_json).collect();
    let mut want = scsi_nvme_reference()["guest-get-disks"]["return"]
        .as_array()
        .unwrap()
        .clone();
    let by_name = |v: &Value| v["name"].as_str().unwrap().to_owned();
    got.sort_by_key(by_name);
    want.sort_by_key(by_name);
    assert_eq!(got, want);
    // Only the NVMe disk is asked for SMART; the partition is not.
    let smart: Vec<&str> = disks
        .iter()
        .filter(|d| d.smart.is_some())
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(smart, ["/dev/nvme0n1"]);
}

// ------------------------------------------------------- the hand-built tree

fn usage(path: &Path) -> io::Result<FsUsage> {
    match path.to_str() {
        Some("/") => Ok(FsUsage {
            frsize: 4096,
            blocks: 1000,
            bfree: 300,
            bavail: 250,
        }),
        Some("/srv") => Ok(FsUsage {
            frsize: 512,
            blocks: 10,
            bfree: 10,
            bavail: 10,
        }),
        _ => Err(io::Error::from_raw_os_error(libc::EACCES)),
    }
}

fn smart_log(path: &Path) -> io::Result<[u8; NVME_SMART_LOG_SIZE]> {
    assert!(path.ends_with("dev/nvme0n1"), "{}", path.display());
    let mut log = [0u8; NVME_SMART_LOG_SIZE];
    log[0] = 0x04;
    log[1..3].copy_from_slice(&310u16.to_le_bytes());
    log[3] = 100;
    log[4] = 10;
    log[5] = 3;
    log[32..48].copy_from_slice(&((7u128 << 64) | 5).to_le_bytes());
    log[176..192].copy_from_slice(&9u128.to_le_bytes());
    Ok(log)
}

fn synthetic() -> LinuxStorage {
    LinuxStorage {
        statvfs: usage,
        nvme_smart_log: smart_log,
        ..over("synthetic")
    }
}

fn sorted(mut v: Vec<DiskAddress>) -> Vec<DiskAddress> {
    v.sort_by(|a, b| a.dev.cmp(&b.dev));
    v
}

fn vdb() -> DiskAddress {
    DiskAddress {
        serial: Some("disk-b".into()),
        ..addr(pci(0, 0, 4, 0), BusType::Virtio, "/dev/vdb")
    }
}

fn vdc() -> DiskAddress {
    DiskAddress {
        serial: Some("disk-c".into()),
        ..addr(pci(0, 0, 5, 0), BusType::Virtio, "/dev/vdc")
    }
}

#[test]
fn synthetic_fsinfo_walks_every_stack() {
    let fs = synthetic().fs_info().unwrap();
    let mounts: Vec<&str> = fs.iter().map(|f| f.mountpoint.as_str()).collect();
    // Last mounted first; /proc (major 0) and the btrfs whose source is gone are
    // left out; the btrfs subvolume is found through its source device.
    assert_eq!(mounts, ["/container", "/data dir", "/srv", "/boot", "/"]);
    let by: BTreeMap<&str, &FsInfo> = fs.iter().map(|f| (f.mountpoint.as_str(), f)).collect();

    // LVM on md on two virtio disks: both disks, the name of the top device.
    let root = by["/"];
    assert_eq!(
        (root.name.as_str(), root.fs_type.as_str()),
        ("dm-0", "ext4")
    );
    assert_eq!(sorted(root.disks.clone()), [vdb(), vdc()]);
    // (1000 - 300) * 4096 used, + 250 available, all 1000 privileged.
    assert_eq!(root.used_bytes, Some(700 * 4096));
    assert_eq!(root.total_bytes, Some(950 * 4096));
    assert_eq!(root.total_bytes_privileged, Some(1000 * 4096));

    // A partition: its own node, the disk's address (virtio-scsi on PCI: unit is
    // the LUN, bus and target stay 0), the serial from its -part1 by-id link.
    let boot = by["/boot"];
    assert_eq!(boot.name, "sda1");
    assert_eq!(
        boot.disks,
        [DiskAddress {
            unit: 3,
            serial: Some("0QEMU_QEMU_HARDDISK_drive-scsi0-0-1-3".into()),
            ..addr(pci(0, 0, 6, 0), BusType::Scsi, "/dev/sda1")
        }]
    );
    assert_eq!((boot.used_bytes, boot.total_bytes), (None, None));

    // NVMe behind a PCIe root port: the controller's own address.
    let srv = by["/srv"];
    assert_eq!(
        (srv.name.as_str(), srv.fs_type.as_str()),
        ("nvme0n1p1", "btrfs")
    );
    assert_eq!(
        srv.disks,
        [addr(pci(0, 1, 0, 0), BusType::Nvme, "/dev/nvme0n1p1")]
    );
    assert_eq!((srv.used_bytes, srv.total_bytes), (Some(0), Some(5120)));

    // SATA: the unit is the index of ata3 among ata1..ata6.
    let data = by["/data dir"];
    assert_eq!(data.name, "sdb");
    assert_eq!(
        data.disks,
        [DiskAddress {
            unit: 2,
            ..addr(pci(0, 0, 0x1f, 2), BusType::Sata, "/dev/sdb")
        }]
    );

    // No /sys/dev/block/7:9 (a container): named after the numbers, no disks.
    let c = by["/container"];
    assert_eq!((c.name.as_str(), c.disks.len()), ("7:9", 0));
}

#[test]
fn synthetic_disks_list_every_device_with_partitions_and_dependencies() {
    let disks = synthetic().disks().unwrap();
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    // loop0 (size 0) is left out; each partition comes right before its disk.
    assert_eq!(names.len(), 10, "{names:?}");
    for (part, disk) in [
        ("/dev/sda1", "/dev/sda"),
        ("/dev/nvme0n1p1", "/dev/nvme0n1"),
    ] {
        let i = names.iter().position(|n| *n == part).unwrap();
        assert_eq!(names[i + 1], disk, "{names:?}");
    }
    let by: BTreeMap<&str, &DiskInfo> = disks.iter().map(|d| (d.name.as_str(), d)).collect();

    let plain = |name: &str, address: DiskAddress| DiskInfo {
        name: name.into(),
        partition: false,
        dependencies: Some(vec![]),
        address: Some(address),
        alias: None,
        smart: None,
    };
    assert_eq!(*by["/dev/vdb"], plain("/dev/vdb", vdb()));
    assert_eq!(*by["/dev/vdc"], plain("/dev/vdc", vdc()));

    // Virtual devices: no address, their slaves as dependencies, dm's name.
    let md0 = by["/dev/md0"];
    assert_eq!((md0.address.as_ref(), md0.alias.as_ref()), (None, None));
    let mut deps = md0.dependencies.clone().unwrap();
    deps.sort();
    assert_eq!(deps, ["/dev/vdb", "/dev/vdc"]);
    let dm = by["/dev/dm-0"];
    assert_eq!(dm.dependencies, Some(vec!["/dev/md0".to_string()]));
    assert_eq!(dm.alias.as_deref(), Some("vg-root"));
    assert_eq!(dm.address, None);

    // The disk's by-id serial: the ID_SERIAL-style name wins over the others.
    let sda_addr = DiskAddress {
        unit: 3,
        serial: Some("0QEMU_QEMU_HARDDISK_drive-scsi0-0-1-3".into()),
        ..addr(pci(0, 0, 6, 0), BusType::Scsi, "/dev/sda")
    };
    assert_eq!(*by["/dev/sda"], plain("/dev/sda", sda_addr));
    assert_eq!(
        *by["/dev/sda1"],
        DiskInfo {
            name: "/dev/sda1".into(),
            partition: true,
            dependencies: Some(vec!["/dev/sda".into()]),
            address: None,
            alias: None,
            smart: None,
        }
    );

    // IDE: the bus is the index of ata2 among ata1, ata2; the unit the target.
    assert_eq!(
        by["/dev/sdc"].address,
        Some(DiskAddress {
            bus: 1,
            unit: 1,
            ..addr(pci(0, 0, 1, 1), BusType::Ide, "/dev/sdc")
        })
    );
    assert_eq!(
        by["/dev/sdb"].address,
        Some(DiskAddress {
            unit: 2,
            ..addr(pci(0, 0, 0x1f, 2), BusType::Sata, "/dev/sdb")
        })
    );

    // NVMe: SMART through the injected log reader.
    let nvme = by["/dev/nvme0n1"];
    assert_eq!(
        nvme.address,
        Some(addr(pci(0, 1, 0, 0), BusType::Nvme, "/dev/nvme0n1"))
    );
    let smart = nvme.smart.unwrap();
    assert_eq!(
        (
            smart.critical_warning,
            smart.temperature,
            smart.available_spare,
            smart.available_spare_threshold,
            smart.percentage_used
        ),
        (4, 310, 100, 10, 3)
    );
    assert_eq!(smart.data_units_read, (7 << 64) | 5);
    assert_eq!(smart.number_of_error_log_entries, 9);
    assert_eq!(smart.power_cycles, 0);
    assert_eq!(
        by["/dev/nvme0n1p1"].dependencies,
        Some(vec!["/dev/nvme0n1".to_string()])
    );
    // Only NVMe disks are asked for SMART (smart_log asserts the path).
    assert!(disks.iter().filter(|d| d.smart.is_some()).count() == 1);
}

#[test]
fn synthetic_sysfs_serials_only_fill_gaps() {
    let st = LinuxStorage {
        sysfs_serial: true,
        ..synthetic()
    };
    let disks = st.disks().unwrap();
    let serial = |name: &str| {
        disks
            .iter()
            .find(|d| d.name == name)
            .and_then(|d| d.address.as_ref())
            .and_then(|a| a.serial.clone())
    };
    // udev's database beats the sysfs attribute (disk-b-sysfs).
    assert_eq!(serial("/dev/vdb").as_deref(), Some("disk-b"));
    // NVMe: the controller's serial, trailing blanks trimmed.
    assert_eq!(serial("/dev/nvme0n1").as_deref(), Some("SERIAL-NVME"));
    assert_eq!(serial("/dev/sdb"), None);
}

#[test]
fn failing_smart_leaves_it_out() {
    let st = LinuxStorage {
        nvme_smart_log: no_smart,
        ..synthetic()
    };
    assert!(st.disks().unwrap().iter().all(|d| d.smart.is_none()));
}

#[test]
fn missing_sources_are_errors_with_the_reference_texts() {
    let st = LinuxStorage {
        mountinfo: "/nonexistent/mountinfo".into(),
        ..synthetic()
    };
    assert_eq!(
        st.fs_info().unwrap_err().to_string(),
        "failed to open mtab file: '/nonexistent/mountinfo': No such file or directory"
    );
    let st = LinuxStorage {
        sys: "/nonexistent/sys".into(),
        ..synthetic()
    };
    assert_eq!(
        st.disks().unwrap_err().to_string(),
        "Can't open directory \"/nonexistent/sys/block\": No such file or directory"
    );
    // Without sysfs every mount is named after its numbers and has no disks, and
    // the btrfs source cannot be looked up (skipped).
    let fs = st.fs_info().unwrap();
    let names: Vec<&str> = fs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["7:9", "8:16", "8:1", "253:0"]);
    assert!(fs.iter().all(|f| f.disks.is_empty()));
}

#[test]
fn a_slaves_cycle_is_an_error_not_a_stack_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    for (me, other) in [("dm-0", "dm-1"), ("dm-1", "dm-0")] {
        let d = sys.join("devices/virtual/block").join(me);
        std::fs::create_dir_all(d.join("slaves")).unwrap();
        std::os::unix::fs::symlink(format!("../../{other}"), d.join("slaves").join(other)).unwrap();
    }
    std::fs::create_dir_all(sys.join("dev/block")).unwrap();
    std::os::unix::fs::symlink(
        "../../devices/virtual/block/dm-0",
        sys.join("dev/block/253:0"),
    )
    .unwrap();
    let mountinfo = dir.path().join("mountinfo");
    std::fs::write(&mountinfo, "20 1 253:0 / / rw - ext4 /dev/dm-0 rw\n").unwrap();
    let st = LinuxStorage {
        sys,
        mountinfo,
        ..over("synthetic")
    };
    let err = st.fs_info().unwrap_err().to_string();
    assert!(
        err.starts_with("block devices stacked deeper than 64"),
        "{err}"
    );
}

#[test]
fn statvfs_arithmetic_is_qemu_gas() {
    let u = FsUsage {
        frsize: 1024,
        blocks: 100,
        bfree: 40,
        bavail: 30,
    };
    assert_eq!(u.bytes(), (60 * 1024, 90 * 1024, 100 * 1024));
    let real = FsUsage::statvfs(Path::new("/")).unwrap();
    assert!(real.frsize > 0 && real.blocks >= real.bfree && real.bfree >= real.bavail);
}

#[test]
fn smart_log_layout() {
    let mut log = [0u8; NVME_SMART_LOG_SIZE];
    for (i, b) in log.iter_mut().enumerate() {
        *b = i as u8;
    }
    let s = NvmeSmart::parse(&log);
    assert_eq!(s.critical_warning, 0);
    assert_eq!(s.temperature, 0x0201);
    assert_eq!(
        (
            s.available_spare,
            s.available_spare_threshold,
            s.percentage_used
        ),
        (3, 4, 5)
    );
    let at = |off: u8| u128::from_le_bytes(std::array::from_fn(|i| off + i as u8));
    assert_eq!(s.data_units_read, at(32));
    assert_eq!(s.data_units_written, at(48));
    assert_eq!(s.host_read_commands, at(64));
    assert_eq!(s.host_write_commands, at(80));
    assert_eq!(s.controller_busy_time, at(96));
    assert_eq!(s.power_cycles, at(112));
    assert_eq!(s.power_on_hours, at(128));
    assert_eq!(s.unsafe_shutdowns, at(144));
    assert_eq!(s.media_errors, at(160));
    assert_eq!(s.number_of_error_log_entries, at(176));
}

// ------------------------------------------------------------------ the fake

#[test]
fn fake_returns_what_it_is_given_and_fails_once() {
    let fake = FakeStorage::new();
    assert_eq!(fake.fs_info().unwrap()[0].name, "vda");
    assert_eq!(fake.disks().unwrap()[0].name, "/dev/vda");
    fake.disks.lock().unwrap().clear();
    assert!(fake.disks().unwrap().is_empty());
    fake.fail_next.set(OpsError::failed("boom"));
    assert_eq!(fake.fs_info().unwrap_err().to_string(), "boom");
    assert_eq!(fake.fs_info().unwrap().len(), 1);
    let ops = qga_ops::fake::FakeOps::new().ops();
    assert_eq!(ops.storage.disks().unwrap().len(), 1);
}

// ------------------------------------------------------- against qemu-ga live

struct RefAgent {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for RefAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_qemu_ga() -> Option<RefAgent> {
    let bin = Path::new("/usr/sbin/qemu-ga");
    if !bin.exists() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sock");
    let child = Command::new(bin)
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let agent = RefAgent { child, dir };
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(agent)
}

fn ask(agent: &RefAgent, command: &str) -> Value {
    let stream = UnixStream::connect(agent.dir.path().join("sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (&stream)
        .write_all(json!({ "execute": command }).to_string().as_bytes())
        .unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    v.get("return")
        .cloned()
        .unwrap_or_else(|| panic!("{command}: {line}"))
}

/// Takes the byte counts out, checking ours are within `tolerance` of theirs.
fn strip_bytes(ours: &mut Value, theirs: &mut Value, tolerance: u64) {
    for (o, t) in ours
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(theirs.as_array_mut().unwrap())
    {
        for key in ["used-bytes", "total-bytes"] {
            let a = o.as_object_mut().unwrap().remove(key);
            let b = t.as_object_mut().unwrap().remove(key);
            match (a.and_then(|v| v.as_u64()), b.and_then(|v| v.as_u64())) {
                (Some(a), Some(b)) => assert!(a.abs_diff(b) <= tolerance, "{key}: {a} vs {b}"),
                (a, b) => assert_eq!(a, b, "{key}"),
            }
        }
    }
}

#[test]
fn same_as_qemu_ga_on_this_machine() {
    let Some(agent) = start_qemu_ga() else {
        println!("SKIPPED: /usr/sbin/qemu-ga not installed");
        return;
    };
    let st = LinuxStorage::default();
    let mut theirs_fs = ask(&agent, "guest-get-fsinfo");
    let mut ours_fs = Value::from(
        st.fs_info()
            .unwrap()
            .iter()
            .map(fsinfo_json)
            .collect::<Vec<_>>(),
    );
    // Other builds write to the disk meanwhile: 256 MiB of slack.
    strip_bytes(&mut ours_fs, &mut theirs_fs, 256 << 20);
    assert_eq!(ours_fs, theirs_fs);

    let theirs_disks = ask(&agent, "guest-get-disks");
    let ours_disks = Value::from(
        st.disks()
            .unwrap()
            .iter()
            .map(disk_json)
            .collect::<Vec<_>>(),
    );
    assert_eq!(ours_disks, theirs_disks);
}
