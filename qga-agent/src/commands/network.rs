//! guest-network-get-interfaces, guest-network-get-route.

use qga_proto::*;

use super::ops_err;
use crate::dispatcher::Context;

pub(super) fn interfaces(
    ctx: &mut Context,
    _: GuestNetworkGetInterfaces,
) -> Result<Vec<GuestNetworkInterface>, QgaError> {
    let ifs = ctx.ops.network.interfaces().map_err(ops_err)?;
    Ok(ifs
        .into_iter()
        .map(|i| GuestNetworkInterface {
            name: i.name,
            hardware_address: i.hardware_address,
            ip_addresses: (!i.addresses.is_empty()).then(|| {
                i.addresses
                    .iter()
                    .map(|(addr, prefix)| GuestIpAddress {
                        ip_address: addr.to_string(),
                        ip_address_type: if addr.is_ipv4() {
                            GuestIpAddressType::Ipv4
                        } else {
                            GuestIpAddressType::Ipv6
                        },
                        prefix: i64::from(*prefix),
                    })
                    .collect()
            }),
            statistics: i.statistics.map(|s| GuestNetworkInterfaceStat {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_errs: s.rx_errs,
                rx_dropped: s.rx_dropped,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_errs: s.tx_errs,
                tx_dropped: s.tx_dropped,
            }),
        })
        .collect())
}

pub(super) fn routes(
    ctx: &mut Context,
    _: GuestNetworkGetRoute,
) -> Result<Vec<GuestNetworkRoute>, QgaError> {
    let routes = ctx.ops.network.routes().map_err(ops_err)?;
    Ok(routes
        .into_iter()
        .map(|r| GuestNetworkRoute {
            iface: r.iface,
            destination: r.destination,
            metric: r.metric,
            gateway: r.gateway,
            mask: r.mask,
            irtt: r.irtt,
            flags: r.flags,
            refcnt: r.refcnt,
            r#use: r.r#use,
            window: r.window,
            mtu: r.mtu,
            desprefixlen: r.desprefixlen,
            source: r.source,
            srcprefixlen: r.srcprefixlen,
            nexthop: r.nexthop,
            version: r.version,
        })
        .collect())
}
