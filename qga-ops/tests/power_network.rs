//! Power paths through scripts standing in for the real programs (nothing here can
//! power the machine off), sysfs capability checks on fake files, and the real
//! network listing.

mod common;

use std::path::{Path, PathBuf};

use qga_ops::{LinuxNetwork, LinuxPower, Network, Power, PowerConfig, ShutdownMode, SuspendMode};

/// A script that appends its name and argv to `log` and exits with `exit`.
fn script(dir: &Path, name: &str, exit: i32) -> PathBuf {
    let path = dir.join(name);
    let log = dir.join("calls.log");
    common::write_script(
        &path,
        &format!(
            "#!/bin/sh\nprintf '%s' '{name}' >> '{}'\nfor a in \"$@\"; do printf ' [%s]' \"$a\" >> '{}'; done\necho >> '{}'\nexit {exit}\n",
            log.display(),
            log.display(),
            log.display()
        ),
    );
    path
}

fn calls(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("calls.log")).unwrap_or_default()
}

/// A config where nothing points at a real program or sysfs file.
fn sandbox(dir: &Path) -> PowerConfig {
    PowerConfig {
        poweroff: dir.join("missing-poweroff"),
        halt: dir.join("missing-halt"),
        reboot: dir.join("missing-reboot"),
        shutdown: dir.join("missing-shutdown"),
        systemctl: dir.join("missing-systemctl"),
        systemd_marker: dir.join("no-systemd"),
        pm_utils_dir: dir.join("no-pm-utils"),
        sys_power_state: dir.join("state"),
        sys_power_disk: dir.join("disk"),
    }
}

#[test]
fn shutdown_prefers_poweroff_halt_reboot_then_shutdown_with_7_2_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = sandbox(d);
    config.shutdown = script(d, "shutdown", 0);
    let power = LinuxPower {
        config: config.clone(),
    };
    power.shutdown(ShutdownMode::Powerdown).unwrap();
    power.shutdown(ShutdownMode::Halt).unwrap();
    power.shutdown(ShutdownMode::Reboot).unwrap();
    assert_eq!(
        calls(d),
        "shutdown [-h] [-P] [+0] [hypervisor initiated shutdown]\n\
         shutdown [-h] [-H] [+0] [hypervisor initiated shutdown]\n\
         shutdown [-r] [+0] [hypervisor initiated shutdown]\n"
    );
    std::fs::remove_file(d.join("calls.log")).unwrap();
    config.poweroff = script(d, "poweroff", 0);
    LinuxPower { config }
        .shutdown(ShutdownMode::Powerdown)
        .unwrap();
    assert_eq!(calls(d), "poweroff\n");
}

#[test]
fn shutdown_failures_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sandbox(dir.path());
    config.poweroff = script(dir.path(), "poweroff", 1);
    let err = LinuxPower { config }
        .shutdown(ShutdownMode::Powerdown)
        .unwrap_err();
    assert_eq!(err.to_string(), "child process has failed to shutdown");
    let err = LinuxPower {
        config: sandbox(dir.path()),
    }
    .shutdown(ShutdownMode::Reboot)
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to create child process: No such file"),
        "{err}"
    );
}

#[test]
fn suspend_refuses_unsupported_modes_instead_of_pretending() {
    let dir = tempfile::tempdir().unwrap();
    let config = sandbox(dir.path());
    // Like the build machine: an empty /sys/power/state.
    std::fs::write(&config.sys_power_state, "\n").unwrap();
    let power = LinuxPower { config };
    for mode in [SuspendMode::Disk, SuspendMode::Ram, SuspendMode::Hybrid] {
        assert_eq!(
            power.suspend(mode).unwrap_err().to_string(),
            "the requested suspend mode is not supported by the guest"
        );
    }
}

#[test]
fn suspend_writes_sysfs_when_the_kernel_offers_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let config = sandbox(dir.path());
    std::fs::write(&config.sys_power_state, "freeze mem disk\n").unwrap();
    std::fs::write(
        &config.sys_power_disk,
        "[platform] shutdown reboot suspend\n",
    )
    .unwrap();
    let power = LinuxPower {
        config: config.clone(),
    };
    power.suspend(SuspendMode::Ram).unwrap();
    assert_eq!(
        std::fs::read_to_string(&config.sys_power_state).unwrap(),
        "mem"
    );
    std::fs::write(&config.sys_power_state, "freeze mem disk\n").unwrap();
    power.suspend(SuspendMode::Hybrid).unwrap();
    assert_eq!(
        std::fs::read_to_string(&config.sys_power_disk).unwrap(),
        "suspend"
    );
    assert_eq!(
        std::fs::read_to_string(&config.sys_power_state).unwrap(),
        "disk"
    );
}

#[test]
fn suspend_uses_systemd_only_when_it_runs_then_pm_utils() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut config = sandbox(d);
    // systemctl present but systemd not running: not used.
    config.systemctl = script(d, "systemctl", 3);
    std::fs::write(&config.sys_power_state, "").unwrap();
    let err = LinuxPower {
        config: config.clone(),
    }
    .suspend(SuspendMode::Ram)
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the requested suspend mode is not supported by the guest"
    );
    assert_eq!(calls(d), "");
    // systemd running, `status` says supported (3), `suspend` fails (3): the error
    // is reported, since nothing else supports the mode.
    std::fs::create_dir(&config.systemd_marker).unwrap();
    let err = LinuxPower {
        config: config.clone(),
    }
    .suspend(SuspendMode::Ram)
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the helper program 'systemctl suspend' returned an unexpected exit status code (3)"
    );
    assert_eq!(
        calls(d),
        "systemctl [status] [systemd-suspend]\nsystemctl [suspend]\n"
    );
    // pm-utils next.
    std::fs::remove_file(d.join("calls.log")).unwrap();
    std::fs::remove_dir(&config.systemd_marker).unwrap();
    std::fs::create_dir(&config.pm_utils_dir).unwrap();
    script(&config.pm_utils_dir, "pm-is-supported", 0);
    script(&config.pm_utils_dir, "pm-hibernate", 0);
    LinuxPower { config }.suspend(SuspendMode::Disk).unwrap();
    let log = std::fs::read_to_string(d.join("no-pm-utils/calls.log")).unwrap();
    assert_eq!(log, "pm-is-supported [--hibernate]\npm-hibernate\n");
}

#[test]
fn network_lists_loopback_with_its_addresses() {
    let ifs = LinuxNetwork::default().interfaces().unwrap();
    let lo = ifs.iter().find(|i| i.name == "lo").expect("lo is listed");
    assert_eq!(lo.hardware_address.as_deref(), Some("00:00:00:00:00:00"));
    assert!(lo.addresses.contains(&("127.0.0.1".parse().unwrap(), 8)));
    let has_v6_lo = std::fs::read_to_string("/proc/net/if_inet6")
        .map(|t| t.lines().any(|l| l.ends_with(" lo")))
        .unwrap_or(false);
    if has_v6_lo {
        assert!(lo.addresses.contains(&("::1".parse().unwrap(), 128)));
    } else {
        eprintln!("no IPv6 on lo here: ::1/128 not checked");
    }
    assert!(lo.statistics.is_some());
    // Interfaces without addresses carry no statistics, as qemu-ga.
    for i in &ifs {
        if i.addresses.is_empty() {
            assert!(i.statistics.is_none(), "{i:?}");
        }
    }
}

#[test]
fn proc_net_dev_columns() {
    let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo: 1000 10 1 2 0 0 0 0 2000 20 3 4 0 0 0 0\n";
    let stats = qga_ops::parse_proc_net_dev(text);
    let lo = stats["lo"];
    assert_eq!(
        (lo.rx_bytes, lo.rx_packets, lo.rx_errs, lo.rx_dropped),
        (1000, 10, 1, 2)
    );
    assert_eq!(
        (lo.tx_bytes, lo.tx_packets, lo.tx_errs, lo.tx_dropped),
        (2000, 20, 3, 4)
    );
}
