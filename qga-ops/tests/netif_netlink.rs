//! guest-network-get-interfaces from rtnetlink dumps: the parser over dumps
//! captured from a kernel and over hand-built ones (order, labels,
//! point-to-point addresses, prefixes, MAC text, counters, the `/proc/net/dev`
//! fallback), errors, truncated and corrupted input, and the live netlink
//! listing against the getifaddrs one on this machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use qga_ops::{
    interfaces_from_rtnetlink_dumps, parse_proc_net_dev, DumpError, Interface, InterfaceStats,
    LinuxNetwork, Network,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/netlink")
        .join(name)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const NO_PROC: &str = "/nonexistent/proc/net/dev";

// --- Building dumps by hand (native byte order, as the kernel sends them). ---

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_MULTI: u16 = 2;
const NLM_F_DUMP_INTR: u16 = 0x10;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_STATS64: u16 = 23;
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
const NLA_F_NESTED: u16 = 0x8000;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFA_CACHEINFO: u16 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const AF_MCTP: u8 = 45;

fn pad4(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(4) * 4, 0);
}

fn attr(ty: u16, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    pad4(&mut v);
    v
}

fn msg(ty: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&1u32.to_ne_bytes()); // seq
    v.extend_from_slice(&4242u32.to_ne_bytes()); // port id
    v.extend_from_slice(payload);
    pad4(&mut v);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// `rtnl_link_stats64` with field i set to `base + i`.
fn stats64(base: u64) -> Vec<u8> {
    (0..24u64).flat_map(|i| (base + i).to_ne_bytes()).collect()
}

fn link(index: u32, name: &str, mac: Option<&[u8]>, stats: Option<Vec<u8>>) -> Vec<u8> {
    link_with(index, name, mac, stats, &[])
}

fn link_with(
    index: u32,
    name: &str,
    mac: Option<&[u8]>,
    stats: Option<Vec<u8>>,
    altnames: &[&str],
) -> Vec<u8> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut p = vec![0u8, 0, 1, 0];
    p.extend_from_slice(&index.to_ne_bytes());
    p.extend_from_slice(&0x1043u32.to_ne_bytes());
    p.extend_from_slice(&0u32.to_ne_bytes());
    p.extend(attr(IFLA_IFNAME, &cstr(name)));
    p.extend(attr(IFLA_MTU, &1500u32.to_ne_bytes()));
    if let Some(mac) = mac {
        p.extend(attr(IFLA_ADDRESS, mac));
    }
    if let Some(s) = stats {
        p.extend(attr(IFLA_STATS64, &s));
    }
    if !altnames.is_empty() {
        let nested: Vec<u8> = altnames
            .iter()
            .flat_map(|a| attr(IFLA_ALT_IFNAME, &cstr(a)))
            .collect();
        p.extend(attr(IFLA_PROP_LIST | NLA_F_NESTED, &nested));
    }
    msg(RTM_NEWLINK, NLM_F_MULTI, &p)
}

fn addr(family: u8, prefix: u8, index: u32, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
    // struct ifaddrmsg: family, prefixlen, flags, scope, index.
    let mut p = vec![family, prefix, 0, 0];
    p.extend_from_slice(&index.to_ne_bytes());
    for (ty, data) in attrs {
        p.extend(attr(*ty, data));
    }
    msg(RTM_NEWADDR, NLM_F_MULTI, &p)
}

fn done() -> Vec<u8> {
    msg(NLMSG_DONE, NLM_F_MULTI, &0u32.to_ne_bytes())
}

fn v4(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv4Addr>().unwrap().octets().to_vec()
}

fn v6(s: &str) -> Vec<u8> {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec()
}

fn iface(
    name: &str,
    mac: Option<&str>,
    addrs: &[(&str, u8)],
    stats: Option<InterfaceStats>,
) -> Interface {
    Interface {
        name: name.into(),
        hardware_address: mac.map(Into::into),
        addresses: addrs.iter().map(|(a, p)| (ip(a), *p)).collect(),
        statistics: stats,
    }
}

/// The counters `stats64(base)` stands for in `/proc/net/dev` columns.
fn proc_columns(base: u64) -> InterfaceStats {
    InterfaceStats {
        rx_packets: base,
        tx_packets: base + 1,
        rx_bytes: base + 2,
        tx_bytes: base + 3,
        rx_errs: base + 4,
        tx_errs: base + 5,
        // rx_dropped + rx_missed_errors
        rx_dropped: (base + 6) + (base + 15),
        tx_dropped: base + 7,
    }
}

// --- A dump captured from Linux 6.18 (x86-64). ---

/// The dumps were taken while `/proc/net/dev` read the same before and after,
/// so the counters in the dump must be exactly that file's columns.
#[cfg(target_endian = "little")]
#[test]
fn captured_kernel_dump_gives_the_getifaddrs_listing_and_proc_net_dev_counters() {
    let links = std::fs::read(fixture("links.bin")).unwrap();
    let addrs = std::fs::read(fixture("addrs.bin")).unwrap();
    let proc = parse_proc_net_dev(&std::fs::read_to_string(fixture("proc_net_dev")).unwrap());
    let got = interfaces_from_rtnetlink_dumps(&links, &addrs, Path::new(NO_PROC)).unwrap();
    let want = vec![
        iface(
            "lo",
            Some("00:00:00:00:00:00"),
            &[("127.0.0.1", 8), ("::1", 128)],
            Some(proc["lo"]),
        ),
        iface("ifb0", Some("d2:e8:4c:40:55:29"), &[], None),
        iface("ifb1", Some("5a:29:b8:bf:cf:aa"), &[], None),
        iface(
            "eth0",
            Some("02:fc:00:00:00:01"),
            &[
                ("192.0.2.2", 24),
                ("fd00::2", 64),
                ("fe80::fc:ff:fe00:1", 64),
            ],
            Some(proc["eth0"]),
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(proc["eth0"].rx_bytes, 237_455_819);
}

// --- Hand-built dumps. ---

#[test]
fn listing_follows_getifaddrs_order_labels_and_address_rules() {
    let mut links = Vec::new();
    links.extend(link(1, "lo", Some(&[0; 6]), Some(stats64(100))));
    links.extend(link(
        7,
        "eth0",
        Some(&[0x02, 0xAB, 0, 0, 0, 0x0f]),
        Some(stats64(1000)),
    ));
    // No hardware address (addr_len 0, like a tun or wireguard device):
    // SIOCGIFHWADDR gives zeros.
    links.extend(link(9, "wg0", None, Some(stats64(5000))));
    // A 20-byte InfiniBand address: SIOCGIFHWADDR's first 6 bytes.
    let mut ib = [0x80u8; 20];
    ib[5] = 0x15;
    ib[6] = 0x99;
    links.extend(link(12, "ib0", Some(&ib), Some(stats64(7000))));
    // A 4-byte (ipip/sit) address: zero-filled to 6.
    links.extend(link_with(
        14,
        "enp1s0",
        Some(&[10, 0, 0, 1]),
        None,
        &["uplink0"],
    ));
    links.extend(done());

    let mut addrs = Vec::new();
    // IPv4 first (the kernel dumps by family).
    addrs.extend(addr(
        AF_INET,
        8,
        1,
        &[
            (IFA_ADDRESS, v4("127.0.0.1")),
            (IFA_LOCAL, v4("127.0.0.1")),
            (IFA_LABEL, cstr("lo")),
        ],
    ));
    // Point-to-point: IFA_ADDRESS is the peer, IFA_LOCAL the address.
    addrs.extend(addr(
        AF_INET,
        32,
        9,
        &[
            (IFA_ADDRESS, v4("10.9.0.2")),
            (IFA_LOCAL, v4("10.9.0.1")),
            (IFA_LABEL, cstr("wg0")),
        ],
    ));
    addrs.extend(addr(
        AF_INET,
        24,
        7,
        &[
            (IFA_ADDRESS, v4("192.0.2.2")),
            (IFA_LOCAL, v4("192.0.2.2")),
            (IFA_LABEL, cstr("eth0")),
        ],
    ));
    // An alias label: an entry of its own, after the links.
    addrs.extend(addr(
        AF_INET,
        24,
        7,
        &[
            (IFA_ADDRESS, v4("192.0.2.9")),
            (IFA_LOCAL, v4("192.0.2.9")),
            (IFA_LABEL, cstr("eth0:1")),
        ],
    ));
    // A label that names no device: no MAC. One through an alternative name:
    // that device's.
    addrs.extend(addr(
        AF_INET,
        24,
        14,
        &[(IFA_LOCAL, v4("10.7.0.1")), (IFA_LABEL, cstr("foo"))],
    ));
    addrs.extend(addr(
        AF_INET,
        24,
        14,
        &[(IFA_LOCAL, v4("10.7.0.2")), (IFA_LABEL, cstr("uplink0:2"))],
    ));
    // A prefix over 32 is cut to 32, as glibc builds the netmask.
    addrs.extend(addr(
        AF_INET,
        40,
        7,
        &[(IFA_LOCAL, v4("192.0.2.3")), (IFA_LABEL, cstr("eth0"))],
    ));
    // IPv6: no label; the name is the link's.
    addrs.extend(addr(
        AF_INET6,
        128,
        1,
        &[(IFA_ADDRESS, v6("::1")), (IFA_CACHEINFO, vec![0; 16])],
    ));
    addrs.extend(addr(
        AF_INET6,
        64,
        7,
        &[(IFA_ADDRESS, v6("fe80::ab:ff:fe00:f"))],
    ));
    // IPv6 point-to-point: IFA_LOCAL first, then the peer in IFA_ADDRESS.
    addrs.extend(addr(
        AF_INET6,
        128,
        9,
        &[(IFA_LOCAL, v6("fd00::1")), (IFA_ADDRESS, v6("fd00::2"))],
    ));
    // A wrong-size address leaves it zero, as glibc does.
    addrs.extend(addr(AF_INET6, 64, 12, &[(IFA_ADDRESS, vec![1, 2, 3])]));
    // Another family (MCTP): no address, the interface is listed anyway.
    addrs.extend(addr(AF_MCTP, 0, 12, &[(IFA_LOCAL, vec![8])]));
    addrs.extend(done());

    let got = interfaces_from_rtnetlink_dumps(&links, &addrs, Path::new(NO_PROC)).unwrap();
    let want = vec![
        iface(
            "lo",
            Some("00:00:00:00:00:00"),
            &[("127.0.0.1", 8), ("::1", 128)],
            Some(proc_columns(100)),
        ),
        iface(
            "eth0",
            Some("02:ab:00:00:00:0f"),
            &[
                ("192.0.2.2", 24),
                ("192.0.2.3", 32),
                ("fe80::ab:ff:fe00:f", 64),
            ],
            Some(proc_columns(1000)),
        ),
        iface(
            "wg0",
            Some("00:00:00:00:00:00"),
            &[("10.9.0.1", 32), ("fd00::1", 128)],
            Some(proc_columns(5000)),
        ),
        iface(
            "ib0",
            Some("80:80:80:80:80:15"),
            &[("::", 64)],
            Some(proc_columns(7000)),
        ),
        // Listed, but without addresses no counters (and none in the dump).
        iface("enp1s0", Some("0a:00:00:01:00:00"), &[], None),
        // Alias entries: the MAC of the device before the ':', no counters
        // (/proc/net/dev has no such line).
        iface(
            "eth0:1",
            Some("02:ab:00:00:00:0f"),
            &[("192.0.2.9", 24)],
            None,
        ),
        iface("foo", None, &[("10.7.0.1", 24)], None),
        iface(
            "uplink0:2",
            Some("0a:00:00:01:00:00"),
            &[("10.7.0.2", 24)],
            None,
        ),
    ];
    assert_eq!(got, want);
}

#[test]
fn counters_wrap_like_the_kernel_sum_and_links_without_stats64_use_proc_net_dev() {
    let dir = tempfile::tempdir().unwrap();
    let proc = dir.path().join("dev");
    std::fs::write(
        &proc,
        "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n  \
old0: 11 12 13 14 0 0 0 0 21 22 23 24 0 0 0 0\n",
    )
    .unwrap();
    let mut wrap = stats64(0);
    // rx_dropped = u64::MAX, rx_missed_errors = 2: /proc/net/dev prints 1.
    wrap[6 * 8..7 * 8].copy_from_slice(&u64::MAX.to_ne_bytes());
    wrap[15 * 8..16 * 8].copy_from_slice(&2u64.to_ne_bytes());
    let mut links = Vec::new();
    links.extend(link(2, "big0", None, Some(wrap)));
    // Too short to hold rx_missed_errors: not used.
    links.extend(link(3, "old0", None, Some(stats64(0)[..15 * 8].to_vec())));
    links.extend(link(4, "none0", None, None));
    let mut addrs = Vec::new();
    for i in 2..=4 {
        addrs.extend(addr(
            AF_INET,
            24,
            i,
            &[(IFA_LOCAL, vec![10, 0, i as u8, 1])],
        ));
    }
    let got = interfaces_from_rtnetlink_dumps(&links, &addrs, &proc).unwrap();
    assert_eq!(got[0].statistics.unwrap().rx_dropped, 1);
    assert_eq!(
        got[1].statistics,
        Some(InterfaceStats {
            rx_bytes: 11,
            rx_packets: 12,
            rx_errs: 13,
            rx_dropped: 14,
            tx_bytes: 21,
            tx_packets: 22,
            tx_errs: 23,
            tx_dropped: 24,
        })
    );
    // Neither in the dump nor in /proc/net/dev.
    assert_eq!(got[2].statistics, None);
    // No /proc/net/dev at all: no counters, no error (as the getifaddrs path).
    let got = interfaces_from_rtnetlink_dumps(&links, &addrs, Path::new(NO_PROC)).unwrap();
    assert_eq!(got[1].statistics, None);
}

#[test]
fn kernel_errors_interrupted_dumps_and_unknown_indexes_are_errors() {
    let links = [link(1, "lo", None, None), done()].concat();
    let ok_addr = addr(AF_INET, 8, 1, &[(IFA_LOCAL, v4("127.0.0.1"))]);
    let p = Path::new(NO_PROC);

    // struct nlmsgerr: -EPERM and the request's header.
    let mut err = (-1i32).to_ne_bytes().to_vec();
    err.extend_from_slice(&[0; 16]);
    let e = interfaces_from_rtnetlink_dumps(&msg(NLMSG_ERROR, 0, &err), &ok_addr, p);
    assert_eq!(e, Err(DumpError::Kernel(1)));

    // A dump that failed part-way: NLMSG_DONE with a negative errno.
    let bad_done = msg(NLMSG_DONE, NLM_F_MULTI, &(-105i32).to_ne_bytes());
    let e = interfaces_from_rtnetlink_dumps(&links, &[ok_addr.clone(), bad_done].concat(), p);
    assert_eq!(e, Err(DumpError::Kernel(105)));

    let mut intr = link(2, "eth0", None, None);
    intr[6..8].copy_from_slice(&(NLM_F_MULTI | NLM_F_DUMP_INTR).to_ne_bytes());
    let e = interfaces_from_rtnetlink_dumps(&[intr, done()].concat(), &ok_addr, p);
    assert_eq!(e, Err(DumpError::Interrupted));
    // Also when only the closing NLMSG_DONE carries the flag.
    let mut intr_done = done();
    intr_done[6..8].copy_from_slice(&(NLM_F_MULTI | NLM_F_DUMP_INTR).to_ne_bytes());
    let e = interfaces_from_rtnetlink_dumps(&links, &[ok_addr.clone(), intr_done].concat(), p);
    assert_eq!(e, Err(DumpError::Interrupted));

    let stray = addr(AF_INET, 8, 99, &[(IFA_LOCAL, v4("10.0.0.1"))]);
    let e = interfaces_from_rtnetlink_dumps(&links, &stray, p);
    assert_eq!(e, Err(DumpError::UnknownIndex(99)));

    // Messages after NLMSG_DONE are not read.
    let after = [done(), stray].concat();
    let got = interfaces_from_rtnetlink_dumps(&links, &after, p).unwrap();
    assert_eq!(got, vec![iface("lo", Some("00:00:00:00:00:00"), &[], None)]);

    // A name longer than IFNAMSIZ, a link without a name.
    let long = link(5, "a-name-of-17-byte", None, None);
    assert!(matches!(
        interfaces_from_rtnetlink_dumps(&long, &[], p),
        Err(DumpError::Malformed { .. })
    ));
    let mut nameless = vec![0u8; 16];
    nameless[4..8].copy_from_slice(&5u32.to_ne_bytes());
    assert!(matches!(
        interfaces_from_rtnetlink_dumps(&msg(RTM_NEWLINK, 0, &nameless), &[], p),
        Err(DumpError::Malformed { .. })
    ));
}

#[test]
fn truncated_dumps_are_errors_at_every_cut() {
    let links = [
        link(1, "lo", Some(&[0; 6]), Some(stats64(1))),
        link(2, "eth0", Some(&[2; 6]), Some(stats64(2))),
        done(),
    ]
    .concat();
    let addrs = [
        addr(
            AF_INET,
            8,
            1,
            &[(IFA_LOCAL, v4("127.0.0.1")), (IFA_LABEL, cstr("lo"))],
        ),
        addr(AF_INET6, 64, 2, &[(IFA_ADDRESS, v6("fe80::1"))]),
        done(),
    ]
    .concat();
    let p = Path::new(NO_PROC);
    let full = interfaces_from_rtnetlink_dumps(&links, &addrs, p).unwrap();
    assert_eq!(full.len(), 2);
    // Cutting inside a message is an error; cutting between messages is a
    // shorter (valid) dump.
    let boundaries = |d: &[u8]| {
        let mut b = vec![0];
        let mut at = 0;
        while at < d.len() {
            at += u32::from_ne_bytes(d[at..at + 4].try_into().unwrap()) as usize;
            b.push(at);
        }
        b
    };
    let (lb, ab) = (boundaries(&links), boundaries(&addrs));
    for cut in 0..links.len() {
        let r = interfaces_from_rtnetlink_dumps(&links[..cut], &[], p);
        assert_eq!(
            r.is_ok(),
            lb.contains(&cut),
            "link dump cut at {cut}: {r:?}"
        );
    }
    for cut in 0..addrs.len() {
        let r = interfaces_from_rtnetlink_dumps(&links, &addrs[..cut], p);
        assert_eq!(
            r.is_ok(),
            ab.contains(&cut),
            "address dump cut at {cut}: {r:?}"
        );
    }
}

fn captured() -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(fixture("links.bin")).unwrap(),
        std::fs::read(fixture("addrs.bin")).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes: an error or a listing, never a panic.
    #[test]
    fn garbage_never_panics(links in proptest::collection::vec(any::<u8>(), 0..600),
                            addrs in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = interfaces_from_rtnetlink_dumps(&links, &addrs, Path::new(NO_PROC));
    }

    /// A real dump with bytes overwritten, cut short, or both.
    #[test]
    fn corrupted_captured_dumps_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        which in 0..2usize,
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut links, mut addrs) = captured();
        let d = if which == 0 { &mut links } else { &mut addrs };
        for (at, b) in edits {
            let i = at.index(d.len());
            d[i] = b;
        }
        let _ = interfaces_from_rtnetlink_dumps(&links, &addrs, Path::new(NO_PROC));
        let c = cut.index(links.len());
        let _ = interfaces_from_rtnetlink_dumps(&links[..c], &addrs, Path::new(NO_PROC));
        let c = cut.index(addrs.len());
        let _ = interfaces_from_rtnetlink_dumps(&links, &addrs[..c], Path::new(NO_PROC));
    }

    /// Hand-built messages with random lengths in their headers and attributes.
    #[test]
    fn lying_lengths_never_panic(nl_len in any::<u32>(), rta_len in any::<u16>(), name in "[a-z]{0,20}") {
        let mut l = link(1, &name, Some(&[1; 6]), Some(stats64(0)));
        l[0..4].copy_from_slice(&nl_len.to_ne_bytes());
        let mut a = addr(AF_INET, 8, 1, &[(IFA_LOCAL, v4("10.0.0.1")), (IFA_LABEL, cstr(&name))]);
        a[24..26].copy_from_slice(&rta_len.to_ne_bytes());
        let _ = interfaces_from_rtnetlink_dumps(&l, &a, Path::new(NO_PROC));
        let ok = link(1, "x", None, None);
        let _ = interfaces_from_rtnetlink_dumps(&ok, &a, Path::new(NO_PROC));
    }
}

// --- The live listing. ---

fn counters(s: &InterfaceStats) -> [u64; 8] {
    [
        s.rx_bytes,
        s.rx_packets,
        s.rx_errs,
        s.rx_dropped,
        s.tx_bytes,
        s.tx_packets,
        s.tx_errs,
        s.tx_dropped,
    ]
}

/// Netlink gives the getifaddrs path's list: same entries, order, MACs,
/// addresses and prefixes; counters (which move) between the values read just
/// before and just after.
#[test]
fn live_netlink_listing_matches_getifaddrs() {
    let n = LinuxNetwork::default();
    // Twice: the second call reuses the socket.
    for _ in 0..2 {
        let before = n.interfaces_via_getifaddrs().unwrap();
        let ours = n.rtnetlink.interfaces(&n.proc_net_dev).unwrap();
        let after = n.interfaces_via_getifaddrs().unwrap();
        let shape = |l: &[Interface]| {
            l.iter()
                .map(|i| {
                    (
                        i.name.clone(),
                        i.hardware_address.clone(),
                        i.addresses.clone(),
                        i.statistics.is_some(),
                    )
                })
                .collect::<Vec<_>>()
        };
        if shape(&before) != shape(&after) {
            eprintln!("interfaces changed during the test; not compared");
            return;
        }
        assert_eq!(shape(&ours), shape(&before));
        for ((b, o), a) in before.iter().zip(&ours).zip(&after) {
            let name = &o.name;
            if let (Some(b), Some(o), Some(a)) = (&b.statistics, &o.statistics, &a.statistics) {
                for ((b, o), a) in counters(b).into_iter().zip(counters(o)).zip(counters(a)) {
                    assert!(b <= o && o <= a, "{name}: {b} <= {o} <= {a}");
                }
            }
        }
    }
    // The trait method takes the netlink path and gives the same shape.
    assert!(n.interfaces().unwrap().iter().any(|i| i.name == "lo"));
}

/// The getifaddrs fallback reads MACs from (injected) sysfs the way
/// SIOCGIFHWADDR reports them: the first 6 bytes, zeros for an empty address,
/// nothing for a device sysfs does not have.
#[test]
fn getifaddrs_path_reads_macs_from_sysfs_like_siocgifhwaddr() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("lo")).unwrap();
    let n = LinuxNetwork {
        sys_class_net: dir.path().into(),
        ..LinuxNetwork::default()
    };
    let lo_mac = |content: &str| {
        std::fs::write(dir.path().join("lo/address"), content).unwrap();
        let list = n.interfaces_via_getifaddrs().unwrap();
        for i in list
            .iter()
            .filter(|i| i.name.split(':').next() != Some("lo"))
        {
            assert_eq!(
                i.hardware_address, None,
                "{} has no sysfs directory",
                i.name
            );
        }
        list.into_iter()
            .find(|i| i.name == "lo")
            .expect("lo is listed")
            .hardware_address
    };
    assert_eq!(
        lo_mac("01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10:11:12:13:14\n").as_deref(),
        Some("01:02:03:04:05:06")
    );
    assert_eq!(lo_mac("\n").as_deref(), Some("00:00:00:00:00:00"));
    assert_eq!(lo_mac("0A:b\n").as_deref(), Some("0a:0b:00:00:00:00"));
    assert_eq!(lo_mac("zz:00\n"), None);
}
