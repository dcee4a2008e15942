//! guest-network-get-interfaces from two rtnetlink dumps (RTM_GETLINK for names,
//! MACs and counters, RTM_GETADDR for addresses) on a socket kept between calls.
//!
//! The listing is built the way qemu-ga 7.2 builds it from getifaddrs (glibc's
//! getifaddrs makes the same two dumps): interfaces in link-dump order, then one
//! more entry per address label that is no link's name (`eth0:1`); addresses in
//! address-dump order (the kernel dumps IPv4, then IPv6). What qemu-ga asks
//! elsewhere is derived so that it is the same text and numbers:
//!
//! - the MAC: qemu-ga asks `SIOCGIFHWADDR` for each name, which looks the name
//!   up up to its first `:` (so `eth0:1` gives `eth0`'s; a name or alternative
//!   name of no device gives no member) and returns the first 6 bytes of the
//!   device's address, zero-filled (all zero for a device without one, such as
//!   `lo` or a `tun`). Here: the first 6 bytes of `IFLA_ADDRESS` (the kernel's
//!   `dev_addr`, absent when `addr_len` is 0), looked up by name and
//!   `IFLA_ALT_IFNAME`;
//! - the counters are the `/proc/net/dev` columns, which the kernel prints from
//!   the same `rtnl_link_stats64` that `IFLA_STATS64` carries: `drop` on receive
//!   is `rx_dropped + rx_missed_errors`; bytes, packets, `errs` and the transmit
//!   `drop` are the raw fields. A link without a usable `IFLA_STATS64` gets its
//!   counters from `/proc/net/dev` (read once per call).
//!
//! The parser is bounds-checked: malformed or truncated input is a
//! [`DumpError`], never a panic; the live path then falls back to getifaddrs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{self, MsgFlags, NetlinkAddr};

use super::{parse_proc_net_dev, Interface, InterfaceStats};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
/// `struct ifinfomsg`.
const IFINFOMSG_LEN: usize = 16;
/// `struct ifaddrmsg`.
const IFADDRMSG_LEN: usize = 8;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_STATS64: u16 = 23;
const IFLA_PROP_LIST: u16 = 52;
const IFLA_ALT_IFNAME: u16 = 53;
/// `NLA_TYPE_MASK`: the type bits of an attribute (without `NLA_F_NESTED`).
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
/// `IFNAMSIZ`: names are at most 15 bytes and a NUL.
const IFNAMSIZ: usize = 16;
/// Indexes (in u64 words) of the `rtnl_link_stats64` fields the reply uses.
const ST_RX_PACKETS: usize = 0;
const ST_TX_PACKETS: usize = 1;
const ST_RX_BYTES: usize = 2;
const ST_TX_BYTES: usize = 3;
const ST_RX_ERRORS: usize = 4;
const ST_TX_ERRORS: usize = 5;
const ST_RX_DROPPED: usize = 6;
const ST_TX_DROPPED: usize = 7;
const ST_RX_MISSED_ERRORS: usize = 15;
/// The receive buffer: the kernel fills dump datagrams up to 32 KiB when the
/// reader offers that much (and to about a page otherwise).
const RECV_BUF: usize = 32 * 1024;
/// A dump that does not finish within this time is given up (and getifaddrs is
/// used instead) rather than hanging the agent.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Why rtnetlink dump bytes could not be turned into an interface list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The bytes end inside a message or an attribute.
    #[error("netlink data truncated at byte {0}")]
    Truncated(usize),
    /// A length or field that no kernel produces.
    #[error("malformed netlink data at byte {offset}: {what}")]
    Malformed {
        /// Offset of the message or attribute in the dump.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The kernel answered with an error (a positive errno).
    #[error("netlink error: errno {0}")]
    Kernel(i32),
    /// The kernel flagged the dump as inconsistent (`NLM_F_DUMP_INTR`: the set
    /// changed while it was dumped); glibc's getifaddrs starts over then.
    #[error("the dump was interrupted by a change")]
    Interrupted,
    /// An address of an interface index that the link dump did not list (it
    /// appeared between the dumps); glibc's getifaddrs starts over then.
    #[error("address of interface index {0}, which the link dump did not list")]
    UnknownIndex(u32),
    /// Sending or receiving failed.
    #[error("netlink socket: errno {0}")]
    Io(i32),
}

/// One netlink message of a dump.
struct Msg<'a> {
    /// Offset of the header in the dump.
    offset: usize,
    ty: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// The messages of `buf`, in order; an error ends the iteration.
struct Messages<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        pos: 0,
        failed: false,
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Msg<'a>, DumpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        let rest = &self.buf[at..];
        let header = (|| {
            let len = u32_at(rest, 0)? as usize;
            Some((len, u16_at(rest, 4)?, u16_at(rest, 6)?, u32_at(rest, 8)?))
        })();
        let Some((len, ty, flags, seq)) = header else {
            self.failed = true;
            return Some(Err(DumpError::Truncated(at)));
        };
        if len < NLMSG_HDRLEN {
            self.failed = true;
            return Some(Err(DumpError::Malformed {
                offset: at,
                what: "message shorter than its header",
            }));
        }
        let Some(payload) = rest.get(NLMSG_HDRLEN..len) else {
            self.failed = true;
            return Some(Err(DumpError::Truncated(at)));
        };
        self.pos = at.saturating_add(align4(len)).min(self.buf.len());
        Some(Ok(Msg {
            offset: at,
            ty,
            flags,
            seq,
            payload,
        }))
    }
}

/// The attributes (`struct rtattr`) of `payload` from `start` on, as (type,
/// data, offset in the dump); `payload_at` is the payload's offset in the dump.
fn attributes<'a>(
    payload: &'a [u8],
    start: usize,
    payload_at: usize,
) -> impl Iterator<Item = Result<(u16, &'a [u8], usize), DumpError>> + 'a {
    let mut pos = start;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || pos >= payload.len() {
            return None;
        }
        let at = pos;
        let offset = payload_at + at;
        let (Some(len), Some(ty)) = (u16_at(payload, at), u16_at(payload, at + 2)) else {
            failed = true;
            return Some(Err(DumpError::Truncated(offset)));
        };
        let len = usize::from(len);
        if len < 4 {
            failed = true;
            return Some(Err(DumpError::Malformed {
                offset,
                what: "attribute shorter than its header",
            }));
        }
        let Some(data) = payload.get(at + 4..at + len) else {
            failed = true;
            return Some(Err(DumpError::Truncated(offset)));
        };
        pos = at + align4(len);
        Some(Ok((ty, data, offset)))
    })
}

/// A C string in an attribute: the bytes before the first NUL.
fn c_str(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

/// Lower-case hex pairs joined by `:`, as qemu-ga prints a hardware address.
pub(super) fn mac_text(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
    s
}

/// The `/proc/net/dev` columns the reply uses, from an `IFLA_STATS64` payload
/// (`None` if it is too short to hold `rx_missed_errors`).
fn stats_from_link64(data: &[u8]) -> Option<InterfaceStats> {
    let f = |i: usize| u64_at(data, i * 8);
    Some(InterfaceStats {
        rx_bytes: f(ST_RX_BYTES)?,
        rx_packets: f(ST_RX_PACKETS)?,
        rx_errs: f(ST_RX_ERRORS)?,
        rx_dropped: f(ST_RX_DROPPED)?.wrapping_add(f(ST_RX_MISSED_ERRORS)?),
        tx_bytes: f(ST_TX_BYTES)?,
        tx_packets: f(ST_TX_PACKETS)?,
        tx_errs: f(ST_TX_ERRORS)?,
        tx_dropped: f(ST_TX_DROPPED)?,
    })
}

/// What the listing needs of one link.
struct Link {
    index: u32,
    name: String,
    /// `IFLA_ALT_IFNAME`s.
    altnames: Vec<String>,
    /// What `SIOCGIFHWADDR` returns: the first 6 bytes of the address, zero-filled.
    hwaddr: [u8; 6],
    /// `None`: no usable `IFLA_STATS64`, so `/proc/net/dev` decides.
    stats: Option<InterfaceStats>,
}

/// Checks the message flags and type shared by both dumps: `Ok(false)` at
/// `NLMSG_DONE`, an error for `NLMSG_ERROR` or an interrupted dump.
fn check(msg: &Msg<'_>) -> Result<bool, DumpError> {
    if msg.flags & NLM_F_DUMP_INTR != 0 {
        return Err(DumpError::Interrupted);
    }
    match msg.ty {
        NLMSG_DONE => {
            // A dump that failed part-way ends with NLMSG_DONE carrying the
            // negative errno.
            match u32_at(msg.payload, 0).map(|v| v as i32) {
                Some(e) if e < 0 => Err(DumpError::Kernel(e.saturating_neg())),
                _ => Ok(false),
            }
        }
        NLMSG_ERROR => {
            let e = u32_at(msg.payload, 0).map_or(libc::EIO, |v| (v as i32).saturating_neg());
            Err(DumpError::Kernel(if e == 0 { libc::EIO } else { e }))
        }
        _ => Ok(true),
    }
}

fn parse_links(dump: &[u8]) -> Result<Vec<Link>, DumpError> {
    let mut links = Vec::new();
    for msg in messages(dump) {
        let msg = msg?;
        if !check(&msg)? {
            break;
        }
        if msg.ty != RTM_NEWLINK {
            continue;
        }
        if msg.payload.len() < IFINFOMSG_LEN {
            return Err(DumpError::Truncated(msg.offset));
        }
        let index = u32_at(msg.payload, 4).ok_or(DumpError::Truncated(msg.offset))?;
        let mut link = Link {
            index,
            name: String::new(),
            altnames: Vec::new(),
            hwaddr: [0; 6],
            stats: None,
        };
        let mut named = false;
        for attr in attributes(msg.payload, IFINFOMSG_LEN, msg.offset + NLMSG_HDRLEN) {
            let (ty, data, offset) = attr?;
            match ty {
                IFLA_IFNAME => {
                    if data.len() > IFNAMSIZ {
                        return Err(DumpError::Malformed {
                            offset,
                            what: "interface name longer than IFNAMSIZ",
                        });
                    }
                    link.name = c_str(data);
                    named = true;
                }
                IFLA_ADDRESS => {
                    let n = data.len().min(6);
                    link.hwaddr[..n].copy_from_slice(&data[..n]);
                }
                t if t & NLA_TYPE_MASK == IFLA_PROP_LIST => {
                    for alt in attributes(data, 0, offset + 4) {
                        let (ty, alt, _) = alt?;
                        if ty & NLA_TYPE_MASK == IFLA_ALT_IFNAME {
                            link.altnames.push(c_str(alt));
                        }
                    }
                }
                IFLA_STATS64 => link.stats = stats_from_link64(data),
                _ => {}
            }
        }
        if !named {
            return Err(DumpError::Malformed {
                offset: msg.offset,
                what: "link without IFLA_IFNAME",
            });
        }
        links.push(link);
    }
    Ok(links)
}

/// An address entry as getifaddrs makes it: the name (the label, else the
/// link's), and the address with its prefix when it is IPv4 or IPv6.
fn parse_address(
    msg: &Msg<'_>,
    links: &[Link],
    by_index: &HashMap<u32, usize>,
) -> Result<(String, Option<(IpAddr, u8)>), DumpError> {
    let p = msg.payload;
    if p.len() < IFADDRMSG_LEN {
        return Err(DumpError::Truncated(msg.offset));
    }
    let (family, prefixlen) = (p[0], p[1]);
    let index = u32_at(p, 4).ok_or(DumpError::Truncated(msg.offset))?;
    let link = by_index
        .get(&index)
        .map(|&li| &links[li])
        .ok_or(DumpError::UnknownIndex(index))?;
    let mut label = None;
    // glibc: the first IFA_ADDRESS or IFA_LOCAL sets the address; a later
    // IFA_LOCAL replaces it (the earlier one was the peer of a point-to-point
    // link), a later IFA_ADDRESS is the peer. A payload of the wrong size
    // leaves the address zero.
    let mut addr: Option<[u8; 16]> = None;
    let fill = |data: &[u8]| {
        let mut a = [0u8; 16];
        let want = match family {
            AF_INET => 4,
            AF_INET6 => 16,
            _ => usize::MAX,
        };
        if data.len() == want {
            a[..want].copy_from_slice(data);
        }
        a
    };
    for attr in attributes(p, IFADDRMSG_LEN, msg.offset + NLMSG_HDRLEN) {
        let (ty, data, offset) = attr?;
        match ty {
            IFA_ADDRESS if addr.is_none() => addr = Some(fill(data)),
            IFA_LOCAL => addr = Some(fill(data)),
            IFA_LABEL => {
                if data.len() > IFNAMSIZ {
                    return Err(DumpError::Malformed {
                        offset,
                        what: "address label longer than IFNAMSIZ",
                    });
                }
                label = Some(c_str(data));
            }
            _ => {}
        }
    }
    let name = label.unwrap_or_else(|| link.name.clone());
    let pair = addr.and_then(|a| match family {
        AF_INET => Some((
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
            prefixlen.min(32),
        )),
        AF_INET6 => Some((IpAddr::V6(Ipv6Addr::from(a)), prefixlen.min(128))),
        _ => None,
    });
    Ok((name, pair))
}

/// The interface list from the bytes of an RTM_GETLINK dump and an RTM_GETADDR
/// dump (the messages as the kernel sent them, datagrams concatenated; a
/// trailing `NLMSG_DONE` is optional). Counters of links whose dump carries no
/// usable `IFLA_STATS64` come from `proc_net_dev` (read at most once; missing
/// means no counters, as on the getifaddrs path).
///
/// # Errors
///
/// Truncated or malformed messages, an `NLMSG_ERROR`, an interrupted dump, or
/// an address of an index the link dump lacks (see [`DumpError`]).
pub fn interfaces_from_rtnetlink_dumps(
    link_dump: &[u8],
    addr_dump: &[u8],
    proc_net_dev: &Path,
) -> Result<Vec<Interface>, DumpError> {
    let links = parse_links(link_dump)?;
    // Device names and alternative names -> link, for the MAC lookup.
    let mut devices: HashMap<&str, usize> = HashMap::with_capacity(links.len());
    let mut by_index: HashMap<u32, usize> = HashMap::with_capacity(links.len());
    for (li, link) in links.iter().enumerate() {
        by_index.entry(link.index).or_insert(li);
        devices.entry(link.name.as_str()).or_insert(li);
        for alt in &link.altnames {
            devices.entry(alt.as_str()).or_insert(li);
        }
    }
    let hardware_address = |name: &str| {
        let device = name.split(':').next().unwrap_or(name);
        devices.get(device).map(|&li| mac_text(&links[li].hwaddr))
    };
    let mut list: Vec<Interface> = Vec::with_capacity(links.len());
    // Interface name -> (position in `list`, link it names, if any).
    let mut by_name: HashMap<String, (usize, Option<usize>)> = HashMap::with_capacity(links.len());
    for (li, link) in links.iter().enumerate() {
        if by_name.contains_key(&link.name) {
            continue;
        }
        by_name.insert(link.name.clone(), (list.len(), Some(li)));
        list.push(Interface {
            name: link.name.clone(),
            hardware_address: hardware_address(&link.name),
            addresses: Vec::new(),
            statistics: None,
        });
    }
    for msg in messages(addr_dump) {
        let msg = msg?;
        if !check(&msg)? {
            break;
        }
        if msg.ty != RTM_NEWADDR {
            continue;
        }
        let (name, pair) = parse_address(&msg, &links, &by_index)?;
        let pos = match by_name.get(&name) {
            Some(&(pos, _)) => pos,
            None => {
                // A label that is no link's name: its own entry.
                by_name.insert(name.clone(), (list.len(), None));
                list.push(Interface {
                    hardware_address: hardware_address(&name),
                    name,
                    addresses: Vec::new(),
                    statistics: None,
                });
                list.len() - 1
            }
        };
        if let Some(pair) = pair {
            list[pos].addresses.push(pair);
        }
    }
    let mut proc_stats: Option<HashMap<String, InterfaceStats>> = None;
    for iface in &mut list {
        if iface.addresses.is_empty() {
            continue;
        }
        let Some(&(_, Some(li))) = by_name.get(&iface.name) else {
            // No link of that name: no /proc/net/dev line either.
            continue;
        };
        iface.statistics = match links[li].stats {
            Some(s) => Some(s),
            None => proc_stats
                .get_or_insert_with(|| {
                    crate::sys::read_proc_text(proc_net_dev)
                        .map(|t| parse_proc_net_dev(&t))
                        .unwrap_or_default()
                })
                .get(&iface.name)
                .copied(),
        };
    }
    Ok(list)
}

/// The rtnetlink socket (and buffers) kept between calls, opened on first use.
/// A clone starts without one; after any failure it is closed and reopened on
/// the next call.
#[derive(Default)]
pub struct RtnetlinkSocket {
    state: Mutex<Option<Conn>>,
}

impl Clone for RtnetlinkSocket {
    fn clone(&self) -> Self {
        RtnetlinkSocket::default()
    }
}

impl std::fmt::Debug for RtnetlinkSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.state.lock().map(|s| s.is_some()).unwrap_or(false);
        f.debug_struct("RtnetlinkSocket")
            .field("open", &open)
            .finish()
    }
}

struct Conn {
    fd: OwnedFd,
    seq: u32,
    recv: Vec<u8>,
    links: Vec<u8>,
    addrs: Vec<u8>,
}

fn errno(e: nix::errno::Errno) -> DumpError {
    DumpError::Io(e as i32)
}

impl Conn {
    fn open() -> Result<Conn, DumpError> {
        let fd = socket::socket(
            socket::AddressFamily::Netlink,
            socket::SockType::Raw,
            socket::SockFlag::SOCK_CLOEXEC,
            socket::SockProtocol::NetlinkRoute,
        )
        .map_err(errno)?;
        socket::setsockopt(
            &fd,
            socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0),
        )
        .map_err(errno)?;
        // Connected to the kernel (port 0): nothing else can send to it.
        socket::connect(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(errno)?;
        Ok(Conn {
            fd,
            seq: 0,
            recv: vec![0; RECV_BUF],
            links: Vec::new(),
            addrs: Vec::new(),
        })
    }

    /// Runs one dump request; its messages (those of our sequence number, up to
    /// and including `NLMSG_DONE`) go to `links` or `addrs`.
    fn dump(&mut self, ty: u16) -> Result<(), DumpError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        // nlmsghdr and a struct rtgenmsg (AF_UNSPEC) padded to 4, as glibc asks.
        let mut req = [0u8; NLMSG_HDRLEN + 4];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&ty.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        socket::send(self.fd.as_raw_fd(), &req, MsgFlags::empty()).map_err(errno)?;
        let out = if ty == RTM_GETLINK {
            &mut self.links
        } else {
            &mut self.addrs
        };
        out.clear();
        loop {
            let n = loop {
                match socket::recv(self.fd.as_raw_fd(), &mut self.recv, MsgFlags::MSG_TRUNC) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    r => break r.map_err(errno)?,
                }
            };
            // With MSG_TRUNC the length is the datagram's, even if larger.
            let Some(datagram) = self.recv.get(..n) else {
                return Err(DumpError::Truncated(out.len()));
            };
            let mut done = false;
            for msg in messages(datagram) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                let end = msg.offset + NLMSG_HDRLEN + msg.payload.len();
                out.extend_from_slice(&datagram[msg.offset..end]);
                out.resize(align4(out.len()), 0);
                if msg.ty == NLMSG_DONE || msg.ty == NLMSG_ERROR {
                    done = true;
                    break;
                }
            }
            if done {
                return Ok(());
            }
        }
    }
}

impl RtnetlinkSocket {
    /// The interface list from fresh dumps. Interrupted dumps (the set changed
    /// meanwhile) are retried a few times, as glibc does.
    ///
    /// # Errors
    ///
    /// The socket could not be opened or used, or the dumps did not parse ([`DumpError`]).
    pub fn interfaces(&self, proc_net_dev: &Path) -> Result<Vec<Interface>, DumpError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = DumpError::Interrupted;
        for _ in 0..4 {
            if state.is_none() {
                *state = Some(Conn::open()?);
            }
            let Some(conn) = state.as_mut() else {
                continue;
            };
            let r = conn.dump(RTM_GETLINK).and_then(|()| conn.dump(RTM_GETADDR));
            let r = r.and_then(|()| {
                interfaces_from_rtnetlink_dumps(&conn.links, &conn.addrs, proc_net_dev)
            });
            match r {
                Ok(list) => return Ok(list),
                Err(e @ (DumpError::Interrupted | DumpError::UnknownIndex(_))) => last = e,
                Err(e) => {
                    // The socket may hold the rest of a dump: start afresh.
                    *state = None;
                    return Err(e);
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text_is_lower_case_pairs() {
        assert_eq!(mac_text(&[0x02, 0xfc, 0, 0, 0, 0xAB]), "02:fc:00:00:00:ab");
        assert_eq!(mac_text(&[0; 6]), "00:00:00:00:00:00");
    }

    #[test]
    fn messages_stop_at_bad_lengths() {
        // A header claiming 8 bytes.
        let mut b = vec![0u8; 16];
        b[0] = 8;
        assert!(matches!(
            messages(&b).next(),
            Some(Err(DumpError::Malformed { .. }))
        ));
        // A header claiming more than there is.
        b[0] = 200;
        assert!(matches!(
            messages(&b).next(),
            Some(Err(DumpError::Truncated(0)))
        ));
        // Fewer bytes than a header.
        assert!(matches!(
            messages(&b[..7]).next(),
            Some(Err(DumpError::Truncated(0)))
        ));
        assert!(messages(&[]).next().is_none());
    }

    #[test]
    fn attributes_stop_at_bad_lengths() {
        // rta_len 2 (< header), then rta_len past the end.
        let p = [2u8, 0, 1, 0];
        assert!(matches!(
            attributes(&p, 0, 0).next(),
            Some(Err(DumpError::Malformed { .. }))
        ));
        let p = [12u8, 0, 1, 0, 9, 9];
        assert!(matches!(
            attributes(&p, 0, 0).next(),
            Some(Err(DumpError::Truncated(_)))
        ));
        let p = [5u8, 0, 3, 0, b'x', 0, 0, 0, 4, 0, 1, 0];
        let v: Vec<_> = attributes(&p, 0, 0).collect::<Result<_, _>>().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].0, v[0].1), (3, &b"x"[..]));
        assert_eq!((v[1].0, v[1].1.len()), (1, 0));
    }

    #[test]
    fn stats_need_rx_missed_errors() {
        let mut d = vec![0u8; 16 * 8];
        for (i, w) in d.chunks_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64 + 1).to_ne_bytes());
        }
        let s = stats_from_link64(&d).unwrap();
        assert_eq!(
            (s.rx_packets, s.tx_packets, s.rx_bytes, s.tx_bytes),
            (1, 2, 3, 4)
        );
        assert_eq!(
            (s.rx_errs, s.tx_errs, s.rx_dropped, s.tx_dropped),
            (5, 6, 7 + 16, 8)
        );
        assert!(stats_from_link64(&d[..15 * 8]).is_none());
    }
}
