//! Network interfaces: names, MAC, addresses with prefix, counters.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::OpsError;

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, lower-case `aa:bb:cc:dd:ee:ff`, when the interface has one.
    pub hardware_address: Option<String>,
    /// Addresses with prefix length.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Counters, for interfaces that have an address (as qemu-ga).
    pub statistics: Option<InterfaceStats>,
}

/// Interface counters from `/proc/net/dev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterfaceStats {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errs: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errs: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

/// Lists network interfaces.
pub trait Network: Send + Sync {
    /// The interfaces in first-seen (interface index) order.
    fn interfaces(&self) -> Result<Vec<Interface>, OpsError>;
}

/// Linux implementation: getifaddrs for names and addresses, sysfs for MACs,
/// `/proc/net/dev` for counters.
#[derive(Debug, Clone)]
pub struct LinuxNetwork {
    /// `/sys/class/net`.
    pub sys_class_net: PathBuf,
    /// `/proc/net/dev`.
    pub proc_net_dev: PathBuf,
}

impl Default for LinuxNetwork {
    fn default() -> Self {
        LinuxNetwork {
            sys_class_net: "/sys/class/net".into(),
            proc_net_dev: "/proc/net/dev".into(),
        }
    }
}

/// Parses `/proc/net/dev` text.
pub fn parse_proc_net_dev(text: &str) -> HashMap<String, InterfaceStats> {
    let mut out = HashMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let v: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if v.len() < 12 {
            continue;
        }
        out.insert(
            name.trim().to_owned(),
            InterfaceStats {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errs: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errs: v[10],
                tx_dropped: v[11],
            },
        );
    }
    out
}

fn prefix_len(mask: IpAddr) -> u8 {
    match mask {
        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
    }
}

impl Network for LinuxNetwork {
    fn interfaces(&self) -> Result<Vec<Interface>, OpsError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| {
            OpsError::os(
                "getifaddrs failed",
                std::io::Error::from_raw_os_error(e as i32),
            )
        })?;
        let mut list: Vec<Interface> = Vec::new();
        for ifa in addrs {
            let idx = match list.iter().position(|i| i.name == ifa.interface_name) {
                Some(i) => i,
                None => {
                    let mac = std::fs::read_to_string(
                        self.sys_class_net.join(&ifa.interface_name).join("address"),
                    )
                    .ok()
                    .map(|s| s.trim().to_ascii_lowercase())
                    .filter(|s| !s.is_empty());
                    list.push(Interface {
                        name: ifa.interface_name.clone(),
                        hardware_address: mac,
                        addresses: Vec::new(),
                        statistics: None,
                    });
                    list.len() - 1
                }
            };
            let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
                continue;
            };
            let pair = if let (Some(a), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
                Some((IpAddr::V4(a.ip()), prefix_len(IpAddr::V4(m.ip()))))
            } else if let (Some(a), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                Some((IpAddr::V6(a.ip()), prefix_len(IpAddr::V6(m.ip()))))
            } else {
                None
            };
            if let Some(p) = pair {
                list[idx].addresses.push(p);
            }
        }
        let stats = std::fs::read_to_string(&self.proc_net_dev)
            .map(|t| parse_proc_net_dev(&t))
            .unwrap_or_default();
        for i in &mut list {
            if !i.addresses.is_empty() {
                i.statistics = stats.get(&i.name).copied();
            }
        }
        Ok(list)
    }
}
