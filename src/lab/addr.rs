//! The lab's address plan, in one place so the topology, the tests and the demo agree.
//!
//! Every address lives only inside namespaces the lab creates. Apart from the LAN, which
//! uses private and ULA space the way a real office does, everything is documentation
//! space (RFC 5737 for IPv4, RFC 3849 for IPv6), so even a mistake cannot point traffic
//! at someone real:
//!
//! ```text
//!  lan                router                 isp1 / isp2              inet
//!  eth0 ─────────── lan0
//!  10.77.0.2/24     10.77.0.1/24
//!  fd77::2/64       fd77::1/64
//!                   wan0 ───────────────── down0 (isp1)
//!                   198.51.100.2/24        198.51.100.1/24
//!                   2001:db8:1::2/64       2001:db8:1::1/64
//!                                          up0 ──────────────────── isp1
//!                                          192.0.2.129/30           192.0.2.130/30
//!                                          2001:db8:ff01::1/64      2001:db8:ff01::2/64
//!                   wwan0 ──────────────── down0 (isp2)
//!                   203.0.113.2/24         203.0.113.1/24
//!                   2001:db8:2::2/64       2001:db8:2::1/64
//!                                          up0 ──────────────────── isp2
//!                                          192.0.2.133/30           192.0.2.134/30
//!                                          2001:db8:ff02::1/64      2001:db8:ff02::2/64
//!                                                                   lo
//!                                                                   192.0.2.10, 192.0.2.53
//!                                                                   2001:db8:100::10, ::53
//! ```
//!
//! 192.0.2.0/24 is split: the lower half (192.0.2.0/25) is where servers live, the
//! upper half holds the ISP–inet transit /30s. The IPv6 transits and the server /64 are
//! carved out of 2001:db8::/32 the same way.
//!
//! Routing: the LAN client defaults to the router; the router defaults to isp1 (metric
//! 100) and isp2 (metric 200); each ISP defaults to inet; inet knows only the ISPs'
//! customer prefixes. inet has no route to the LAN, as the real internet has none to
//! private space, so a reply only comes back if the router NATed the request.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address as configured on an interface: the address and its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IfAddr<A> {
    pub addr: A,
    pub prefix_len: u8,
}

impl<A: Into<IpAddr> + Copy> IfAddr<A> {
    pub fn ip(&self) -> IpAddr {
        self.addr.into()
    }
}

impl<A: fmt::Display> fmt::Display for IfAddr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> IfAddr<Ipv4Addr> {
    IfAddr {
        addr: Ipv4Addr::new(a, b, c, d),
        prefix_len,
    }
}

const fn v6(segments: [u16; 8], prefix_len: u8) -> IfAddr<Ipv6Addr> {
    let [a, b, c, d, e, f, g, h] = segments;
    IfAddr {
        addr: Ipv6Addr::new(a, b, c, d, e, f, g, h),
        prefix_len,
    }
}

// Interface names. They are the same in every lab: each lab has its own namespaces, so
// names cannot clash, and tests and configs can hard-code them.

/// The client's interface in `lan`.
pub const LAN_IF: &str = "eth0";
/// The router's LAN-facing interface.
pub const ROUTER_LAN_IF: &str = "lan0";
/// The router's primary uplink (to isp1, "fiber").
pub const ROUTER_WAN1_IF: &str = "wan0";
/// The router's backup uplink (to isp2, "LTE").
pub const ROUTER_WAN2_IF: &str = "wwan0";
/// An ISP's interface toward the router (its egress is the download direction).
pub const ISP_DOWN_IF: &str = "down0";
/// An ISP's interface toward inet (its egress is the upload direction).
pub const ISP_UP_IF: &str = "up0";
/// inet's interface toward isp1.
pub const INET_ISP1_IF: &str = "isp1";
/// inet's interface toward isp2.
pub const INET_ISP2_IF: &str = "isp2";
/// The interface in inet that carries the server addresses: loopback, because it is
/// always there (the dummy driver is not built into every kernel the lab runs on) and
/// an address on it is reachable through any interface, like a server's service address.
pub const INET_SERVER_IF: &str = "lo";

// LAN: private and ULA, as a real office would use; never routed past the router.
pub const LAN_CLIENT_V4: IfAddr<Ipv4Addr> = v4(10, 77, 0, 2, 24);
pub const LAN_CLIENT_V6: IfAddr<Ipv6Addr> = v6([0xfd77, 0, 0, 0, 0, 0, 0, 2], 64);
pub const ROUTER_LAN_V4: IfAddr<Ipv4Addr> = v4(10, 77, 0, 1, 24);
pub const ROUTER_LAN_V6: IfAddr<Ipv6Addr> = v6([0xfd77, 0, 0, 0, 0, 0, 0, 1], 64);

// isp1 access network (TEST-NET-2 / 2001:db8:1::/64).
pub const ROUTER_WAN1_V4: IfAddr<Ipv4Addr> = v4(198, 51, 100, 2, 24);
pub const ROUTER_WAN1_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 2], 64);
pub const ISP1_DOWN_V4: IfAddr<Ipv4Addr> = v4(198, 51, 100, 1, 24);
pub const ISP1_DOWN_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 1, 0, 0, 0, 0, 1], 64);

// isp2 access network (TEST-NET-3 / 2001:db8:2::/64).
pub const ROUTER_WAN2_V4: IfAddr<Ipv4Addr> = v4(203, 0, 113, 2, 24);
pub const ROUTER_WAN2_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 2], 64);
pub const ISP2_DOWN_V4: IfAddr<Ipv4Addr> = v4(203, 0, 113, 1, 24);
pub const ISP2_DOWN_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 2, 0, 0, 0, 0, 1], 64);

// ISP ↔ inet transits: the upper half of TEST-NET-1 and 2001:db8:ff0N::/64.
pub const ISP1_UP_V4: IfAddr<Ipv4Addr> = v4(192, 0, 2, 129, 30);
pub const ISP1_UP_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 0xff01, 0, 0, 0, 0, 1], 64);
pub const INET_ISP1_V4: IfAddr<Ipv4Addr> = v4(192, 0, 2, 130, 30);
pub const INET_ISP1_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 0xff01, 0, 0, 0, 0, 2], 64);
pub const ISP2_UP_V4: IfAddr<Ipv4Addr> = v4(192, 0, 2, 133, 30);
pub const ISP2_UP_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 0xff02, 0, 0, 0, 0, 1], 64);
pub const INET_ISP2_V4: IfAddr<Ipv4Addr> = v4(192, 0, 2, 134, 30);
pub const INET_ISP2_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 0xff02, 0, 0, 0, 0, 2], 64);

// Servers in inet, host addresses on lo inside the server prefixes below.

/// Where the lab's servers (AI providers, bulk download) answer.
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
/// Reserved for the lab's DNS server; configured on lo so a server can bind it.
pub const DNS_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);
pub const DNS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x53);
/// The prefixes server addresses come from; more servers take host addresses here.
pub const SERVER_NET_V4: IfAddr<Ipv4Addr> = v4(192, 0, 2, 0, 25);
pub const SERVER_NET_V6: IfAddr<Ipv6Addr> = v6([0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0], 64);

// Routing metrics on the router: isp1 is preferred, isp2 is the backup.
pub const WAN1_METRIC: u32 = 100;
pub const WAN2_METRIC: u32 = 200;

/// The prefix (network address and length) an interface address belongs to.
pub fn network_v4(a: IfAddr<Ipv4Addr>) -> IfAddr<Ipv4Addr> {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(a.prefix_len))
        .unwrap_or(0);
    IfAddr {
        addr: Ipv4Addr::from(u32::from(a.addr) & mask),
        prefix_len: a.prefix_len,
    }
}

/// The prefix (network address and length) an interface address belongs to.
pub fn network_v6(a: IfAddr<Ipv6Addr>) -> IfAddr<Ipv6Addr> {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(a.prefix_len))
        .unwrap_or(0);
    IfAddr {
        addr: Ipv6Addr::from(u128::from(a.addr) & mask),
        prefix_len: a.prefix_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        assert_eq!(network_v4(ISP1_DOWN_V4).to_string(), "198.51.100.0/24");
        assert_eq!(network_v4(ISP2_UP_V4).to_string(), "192.0.2.132/30");
        assert_eq!(network_v6(ISP2_DOWN_V6).to_string(), "2001:db8:2::/64");
    }

    #[test]
    fn servers_are_inside_server_prefixes_and_outside_transits() {
        for s in [SERVER_V4, DNS_V4] {
            let host = IfAddr {
                addr: s,
                prefix_len: SERVER_NET_V4.prefix_len,
            };
            assert_eq!(network_v4(host), SERVER_NET_V4, "{s}");
            for t in [ISP1_UP_V4, ISP2_UP_V4] {
                let host = IfAddr {
                    addr: s,
                    prefix_len: t.prefix_len,
                };
                assert_ne!(network_v4(host), network_v4(t), "{s} inside transit {t}");
            }
        }
        for s in [SERVER_V6, DNS_V6] {
            let host = IfAddr {
                addr: s,
                prefix_len: SERVER_NET_V6.prefix_len,
            };
            assert_eq!(network_v6(host), SERVER_NET_V6, "{s}");
        }
    }
}
