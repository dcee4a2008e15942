//! guest-network-get-route: `/proc/net/route` and `/proc/net/ipv6_route` captured
//! from this machine and written by hand, parsed values checked by hand; IPv6
//! formatting against the C library's `inet_ntop`; the live table against `ip`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use qga_ops::fake::FakeNetwork;
use qga_ops::{parse_proc_net_ipv6_route, LinuxNetwork, Network, OpsError, Route};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn net(v4: &str, v6: &str) -> LinuxNetwork {
    LinuxNetwork {
        proc_net_route: fixture(v4),
        proc_net_ipv6_route: fixture(v6),
        ..LinuxNetwork::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn v4(
    iface: &str,
    dest: &str,
    gw: &str,
    mask: &str,
    flags: u64,
    refcnt: i64,
    used: i64,
    metric: i64,
    mtu: i64,
    window: i64,
    irtt: i64,
) -> Route {
    Route {
        iface: iface.into(),
        destination: dest.into(),
        metric,
        gateway: Some(gw.into()),
        mask: Some(mask.into()),
        irtt: Some(irtt),
        flags: Some(flags),
        refcnt: Some(refcnt),
        r#use: Some(used),
        window: Some(window),
        mtu: Some(mtu),
        version: 4,
        ..Route::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn v6(
    dest: &str,
    dlen: &str,
    src: Option<&str>,
    slen: &str,
    next: &str,
    metric: i64,
    refcnt: i64,
    used: i64,
    flags: u64,
    iface: &str,
) -> Route {
    Route {
        iface: iface.into(),
        destination: dest.into(),
        metric,
        flags: Some(flags),
        refcnt: Some(refcnt),
        r#use: Some(used),
        desprefixlen: Some(dlen.into()),
        source: src.map(Into::into),
        srcprefixlen: Some(slen.into()),
        nexthop: Some(next.into()),
        version: 6,
        ..Route::default()
    }
}

/// 0x80200001 (RTF_LOCAL | RTF_NONEXTHOP | RTF_UP) as an unsigned value.
const LOCAL_FLAGS: u64 = 0x8020_0001;

#[test]
fn captured_tables_parse_to_hand_checked_routes() {
    let got = net("route.captured", "ipv6_route.captured")
        .routes()
        .unwrap();
    let expected = [
        v4(
            "eth0",
            "0.0.0.0",
            "192.0.2.1",
            "0.0.0.0",
            3,
            0,
            0,
            0,
            0,
            0,
            0,
        ),
        v4(
            "eth0",
            "192.0.2.0",
            "0.0.0.0",
            "255.255.255.0",
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ),
        v6("fd00::", "64", Some("::"), "0", "::", 256, 1, 0, 1, "eth0"),
        v6("fe80::", "64", Some("::"), "0", "::", 256, 2, 0, 1, "eth0"),
        v6("::", "0", Some("::"), "0", "fd00::1", 1024, 2, 0, 3, "eth0"),
        v6(
            "::1",
            "128",
            Some("::"),
            "0",
            "::",
            0,
            2,
            0,
            LOCAL_FLAGS,
            "lo",
        ),
        v6(
            "fd00::2",
            "128",
            Some("::"),
            "0",
            "::",
            0,
            3,
            0,
            LOCAL_FLAGS,
            "eth0",
        ),
        v6(
            "fe80::fc:ff:fe00:1",
            "128",
            Some("::"),
            "0",
            "::",
            0,
            2,
            0,
            LOCAL_FLAGS,
            "eth0",
        ),
        v6("ff00::", "8", Some("::"), "0", "::", 256, 3, 0, 1, "eth0"),
        // The reject route: metric ffffffff is read as a signed int, as QEMU does.
        v6(
            "::",
            "0",
            Some("::"),
            "0",
            "::",
            -1,
            1,
            0,
            0x0020_0200,
            "lo",
        ),
    ];
    assert_eq!(got, expected);
}

#[test]
fn handwritten_tables_cover_gateways_masks_prefixes_and_skipped_lines() {
    let got = net("route.handwritten", "ipv6_route.handwritten")
        .routes()
        .unwrap();
    let expected = [
        v4(
            "eth0",
            "0.0.0.0",
            "192.168.1.1",
            "0.0.0.0",
            3,
            0,
            0,
            100,
            0,
            0,
            0,
        ),
        v4(
            "eth0",
            "192.168.1.0",
            "0.0.0.0",
            "255.255.255.0",
            1,
            2,
            17,
            100,
            1500,
            64,
            30,
        ),
        v4(
            "wlan0",
            "10.16.0.0",
            "10.16.1.254",
            "255.240.0.0",
            7,
            0,
            0,
            600,
            0,
            0,
            0,
        ),
        // `short` (6 fields) and `bad` (destination XYZ) are skipped; a 12th
        // field is ignored, as by QEMU's sscanf.
        v4(
            "docker0",
            "172.17.0.0",
            "0.0.0.0",
            "255.255.0.0",
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ),
        v6(
            "2001:db8::",
            "32",
            Some("::"),
            "0",
            "fe80::1",
            1024,
            1,
            42,
            3,
            "eth0",
        ),
        v6(
            "2001:db8:1::",
            "64",
            Some("2001:db8::"),
            "48",
            "::",
            256,
            0,
            0,
            1,
            "eth1",
        ),
        v6(
            "::ffff:1.2.3.4",
            "128",
            Some("::"),
            "0",
            "::",
            0,
            2,
            0,
            LOCAL_FLAGS,
            "lo",
        ),
        // glibc prints an address with 96 leading zero bits in dotted form.
        v6(
            "::1.2.3.10",
            "128",
            Some("::"),
            "0",
            "::",
            0,
            2,
            0,
            LOCAL_FLAGS,
            "lo",
        ),
        v6(
            "2001:0:0:1::1",
            "128",
            Some("::"),
            "0",
            "::",
            -1,
            1,
            0,
            0x0020_0200,
            "lo",
        ),
        // A short destination and a 8-field line are skipped; a source that is
        // not hex is left out.
        v6("fe80::", "64", None, "0", "::", 256, 2, 0, 1, "eth2"),
    ];
    assert_eq!(got, expected);
    // Members by version, as QEMU fills them.
    for r in &got {
        let v4_only = [
            r.gateway.is_some(),
            r.mask.is_some(),
            r.irtt.is_some(),
            r.window.is_some(),
            r.mtu.is_some(),
        ];
        let v6_only = [
            r.desprefixlen.is_some(),
            r.srcprefixlen.is_some(),
            r.nexthop.is_some(),
        ];
        assert!(r.flags.is_some() && r.refcnt.is_some() && r.r#use.is_some());
        match r.version {
            4 => assert!(
                v4_only.iter().all(|b| *b) && !v6_only.iter().any(|b| *b) && r.source.is_none()
            ),
            6 => assert!(!v4_only.iter().any(|b| *b) && v6_only.iter().all(|b| *b)),
            v => panic!("version {v}"),
        }
    }
}

#[test]
fn the_ipv4_header_line_is_skipped_whatever_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let v4 = dir.path().join("route");
    let v6 = dir.path().join("ipv6_route");
    // A data line in first position is taken for the header.
    std::fs::write(&v4, "eth0 0100007F 00000000 0001 0 0 0 FFFFFFFF 0 0 0\neth1 0200007F 00000000 0001 0 0 0 FFFFFFFF 0 0 0\n").unwrap();
    std::fs::write(&v6, "").unwrap();
    let n = LinuxNetwork {
        proc_net_route: v4,
        proc_net_ipv6_route: v6,
        ..LinuxNetwork::default()
    };
    let got = n.routes().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].iface.as_str(), got[0].destination.as_str()),
        ("eth1", "127.0.0.2")
    );
    assert_eq!(got[0].mask.as_deref(), Some("255.255.255.255"));
}

#[test]
fn a_missing_table_is_an_error_naming_it() {
    let missing = fixture("no-such-route");
    let n = LinuxNetwork {
        proc_net_route: missing.clone(),
        ..net("route.captured", "ipv6_route.captured")
    };
    assert_eq!(
        n.routes().unwrap_err().to_string(),
        format!("open(\"{}\"): No such file or directory", missing.display())
    );
    let n = LinuxNetwork {
        proc_net_ipv6_route: missing.clone(),
        ..net("route.captured", "ipv6_route.captured")
    };
    assert_eq!(
        n.routes().unwrap_err().to_string(),
        format!("open(\"{}\"): No such file or directory", missing.display())
    );
}

unsafe extern "C" {
    /// glibc's `inet_ntop` (the `libc` crate does not bind it).
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// The C library's `inet_ntop(AF_INET6)`, which QEMU uses.
fn libc_inet_ntop(bytes: [u8; 16]) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: `bytes` is a 16-byte in6_addr and `buf` has room for
    // INET6_ADDRSTRLEN (46) bytes; both outlive the call.
    let p = unsafe {
        inet_ntop(
            libc::AF_INET6,
            bytes.as_ptr().cast(),
            buf.as_mut_ptr(),
            buf.len() as libc::socklen_t,
        )
    };
    assert!(!p.is_null());
    // SAFETY: inet_ntop succeeded, so `buf` holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn ipv6_addresses_are_formatted_as_inet_ntop_does() {
    // Every address whose eight groups are each one of these: all zero-run
    // positions and lengths, and the dotted-IPv4 forms.
    let groups = [0u16, 1, 0xffff, 0x0102];
    let mut text = String::new();
    let mut addrs = Vec::new();
    for n in 0..4usize.pow(8) {
        let mut bytes = [0u8; 16];
        for i in 0..8 {
            let g = groups[(n >> (2 * i)) & 3];
            bytes[2 * i..2 * i + 2].copy_from_slice(&g.to_be_bytes());
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!(
            "{hex} 80 {hex} 00 {hex} 00000000 00000001 00000000 00000001 lo\n"
        ));
        addrs.push(bytes);
    }
    let routes = parse_proc_net_ipv6_route(&text);
    assert_eq!(routes.len(), addrs.len());
    for (r, a) in routes.iter().zip(&addrs) {
        let want = libc_inet_ntop(*a);
        assert_eq!(r.destination, want);
        assert_eq!(r.source.as_deref(), Some(want.as_str()));
        assert_eq!(r.nexthop.as_deref(), Some(want.as_str()));
    }
}

fn prefix(mask: &str) -> u32 {
    u32::from(mask.parse::<Ipv4Addr>().unwrap()).count_ones()
}

/// `ip` prints what the kernel's netlink says; /proc/net/route shows the main
/// table, so the two must list the same IPv4 routes.
#[test]
fn live_ipv4_table_matches_ip_route() {
    let Ok(out) = std::process::Command::new("ip")
        .args(["-4", "route", "show", "table", "main"])
        .output()
    else {
        println!("SKIPPED: no `ip` program");
        return;
    };
    let ours: BTreeSet<(String, Option<String>, String)> = LinuxNetwork::default()
        .routes()
        .unwrap()
        .into_iter()
        .filter(|r| r.version == 4)
        .map(|r| {
            let dest = match (r.destination.as_str(), prefix(r.mask.as_deref().unwrap())) {
                ("0.0.0.0", 0) => "default".to_owned(),
                (d, 32) => d.to_owned(),
                (d, p) => format!("{d}/{p}"),
            };
            let gw = r.gateway.filter(|g| g != "0.0.0.0");
            (dest, gw, r.iface)
        })
        .collect();
    let theirs: BTreeSet<(String, Option<String>, String)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let after = |k: &str| w.iter().position(|x| *x == k).map(|i| w[i + 1].to_owned());
            (w[0].to_owned(), after("via"), after("dev").unwrap())
        })
        .collect();
    assert!(!ours.is_empty());
    assert_eq!(ours, theirs);
}

#[test]
fn fake_network_returns_its_routes_and_fails_on_demand() {
    let fake = FakeNetwork::default();
    assert_eq!(fake.routes().unwrap(), []);
    let r = Route {
        iface: "eth0".into(),
        destination: "0.0.0.0".into(),
        gateway: Some("10.0.0.1".into()),
        version: 4,
        ..Route::default()
    };
    fake.routes.lock().unwrap().push(r.clone());
    assert_eq!(fake.routes().unwrap(), std::slice::from_ref(&r));
    fake.fail_next
        .set(OpsError::failed("open(\"/proc/net/route\"): gone"));
    assert_eq!(
        fake.routes().unwrap_err().to_string(),
        "open(\"/proc/net/route\"): gone"
    );
    assert_eq!(fake.routes().unwrap(), [r]);
}
