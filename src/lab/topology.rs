//! Builds the lab topology inside namespaces that already exist (see [`super::Lab::build`]).
//!
//! Steps, in the order the kernel needs them:
//! 1. sysctls, before any interface exists, so `default.*` values apply to the veths;
//! 2. veth pairs, each created in one namespace with its peer placed straight into the
//!    other, so no interface ever appears in the host namespace;
//! 3. per namespace, one `ip -batch`: links up, addresses, routes;
//! 4. NAT (nftables) on the router, TBF bottlenecks in the ISPs;
//! 5. a connectivity check from the LAN client to the servers.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use super::addr::*;
use super::error::LabError;
use super::{Lab, LabOptions, Role};

/// Name of the nftables table the lab's NAT lives in, so it is easy to find and to tell
/// apart from tables inferlane itself may add in the router namespace.
pub const NAT_TABLE: &str = "inferlane_lab";

/// Largest Ethernet frame on the veths (1500 MTU + 14 header), used to size TBF.
const MAX_FRAME: u64 = 1514;

/// Token bucket parameters for one direction of an ISP bottleneck.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tbf {
    pub rate_kbit: u64,
    pub burst_bytes: u64,
    pub limit_bytes: u64,
}

impl Tbf {
    /// Burst and queue limit derived from the rate.
    ///
    /// - burst: 5 ms worth of tokens, at least two full frames. The bucket must hold one
    ///   full frame or TBF can never send it, and it is refilled from a timer, so a
    ///   bucket of a few milliseconds lets the link reach its rate without letting
    ///   larger bursts through than a real shaper would.
    /// - limit: 100 ms of queue at the rate, at least 16 KiB, about what an access link
    ///   buffers. That is deliberate: loaded-latency (bufferbloat) tests should see the
    ///   delay a real uplink adds, and a slow link still fits a few full frames.
    pub fn for_rate(rate_kbit: u64) -> Tbf {
        // kbit/s is 1000 bit/s, so kbit/s ÷ 8 is bytes per millisecond.
        let bytes_per_ms = rate_kbit / 8;
        Tbf {
            rate_kbit,
            burst_bytes: (bytes_per_ms * 5).max(2 * MAX_FRAME),
            limit_bytes: (bytes_per_ms * 100).max(16 * 1024),
        }
    }

    /// The rate as tc reports it in `tc -j qdisc show` (bytes per second).
    pub fn rate_bytes_per_sec(&self) -> u64 {
        self.rate_kbit * 1000 / 8
    }
}

pub(crate) fn validate(opts: &LabOptions) -> Result<(), LabError> {
    for (option, rate) in [
        ("isp1_rate_kbit", opts.isp1_rate_kbit),
        ("isp2_rate_kbit", opts.isp2_rate_kbit),
    ] {
        // Below 8 kbit/s a full frame takes over a second; tc rejects 0.
        if let Some(r) = rate.filter(|&r| r < 8) {
            return Err(LabError::InvalidOption {
                option,
                detail: format!("{r} kbit/s; the lowest usable rate is 8 kbit/s"),
            });
        }
    }
    Ok(())
}

pub(crate) fn configure(lab: &Lab, opts: &LabOptions) -> Result<(), LabError> {
    for role in Role::ALL {
        lab.ns(role).set_sysctls(&sysctls(role))?;
    }
    create_links(lab)?;
    for role in Role::ALL {
        lab.ns(role).ip_batch(&ip_script(role))?;
    }
    lab.ns(Role::Router).nft(&nat_ruleset())?;
    for (role, rate) in [
        (Role::Isp1, opts.isp1_rate_kbit),
        (Role::Isp2, opts.isp2_rate_kbit),
    ] {
        if let Some(rate) = rate {
            lab.ns(role).tc_batch(&tbf_script(Tbf::for_rate(rate)))?;
        }
    }
    check_connectivity(lab)
}

fn sysctls(role: Role) -> Vec<(&'static str, &'static str)> {
    let mut s = vec![
        // Skip DAD on link-local addresses too (global ones get `nodad`): nothing else
        // shares these links, and waiting ~2 s for DAD would dominate the build time.
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_dad", "0"),
        // Nobody sends router advertisements here; routes are static.
        ("net.ipv6.conf.default.accept_ra", "0"),
        // Lets the lab's in-process ICMP probe open ping sockets in any namespace.
        ("net.ipv4.ping_group_range", "0 2147483647"),
    ];
    if matches!(role, Role::Router | Role::Isp1 | Role::Isp2) {
        s.push(("net.ipv4.ip_forward", "1"));
        s.push(("net.ipv6.conf.all.forwarding", "1"));
    }
    if role == Role::Router {
        // Loose reverse-path filtering. New namespaces start with rp_filter off, but the
        // value can be inherited from the host (net.core.devconf_inherit_init_net), and
        // in strict mode a multi-homed router drops replies to flows it steered to isp2:
        // their source (a server) is routed via isp1 in the main table.
        s.push(("net.ipv4.conf.all.rp_filter", "2"));
        s.push(("net.ipv4.conf.default.rp_filter", "2"));
    }
    s
}

/// Veth pairs. Each `link add` runs in the namespace of one end and places the peer
/// directly in the other namespace.
fn create_links(lab: &Lab) -> Result<(), LabError> {
    let mut router = String::new();
    for (local, peer, role) in [
        (ROUTER_LAN_IF, LAN_IF, Role::Lan),
        (ROUTER_WAN1_IF, ISP_DOWN_IF, Role::Isp1),
        (ROUTER_WAN2_IF, ISP_DOWN_IF, Role::Isp2),
    ] {
        let _ = writeln!(
            router,
            "link add {local} type veth peer name {peer} netns {}",
            lab.netns(role)
        );
    }
    lab.ns(Role::Router).ip_batch(&router)?;
    for (isp, peer) in [(Role::Isp1, INET_ISP1_IF), (Role::Isp2, INET_ISP2_IF)] {
        let script = format!(
            "link add {ISP_UP_IF} type veth peer name {peer} netns {}\n",
            lab.netns(Role::Inet)
        );
        lab.ns(isp).ip_batch(&script)?;
    }
    Ok(())
}

/// Links, addresses and routes of one namespace, as an `ip -batch` script. IPv6
/// addresses carry `nodad` so they are usable at once.
fn ip_script(role: Role) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    // Loopback starts down in a new namespace; servers and probes need it.
    line("link set lo up".into());
    match role {
        Role::Lan => {
            line(format!("link set {LAN_IF} up"));
            line(format!("addr add {LAN_CLIENT_V4} dev {LAN_IF}"));
            line(format!("addr add {LAN_CLIENT_V6} dev {LAN_IF} nodad"));
            line(format!(
                "route add default via {} dev {LAN_IF}",
                ROUTER_LAN_V4.addr
            ));
            line(format!(
                "route add ::/0 via {} dev {LAN_IF}",
                ROUTER_LAN_V6.addr
            ));
        }
        Role::Router => {
            for (ifname, a4, a6) in [
                (ROUTER_LAN_IF, ROUTER_LAN_V4, ROUTER_LAN_V6),
                (ROUTER_WAN1_IF, ROUTER_WAN1_V4, ROUTER_WAN1_V6),
                (ROUTER_WAN2_IF, ROUTER_WAN2_V4, ROUTER_WAN2_V6),
            ] {
                line(format!("link set {ifname} up"));
                line(format!("addr add {a4} dev {ifname}"));
                line(format!("addr add {a6} dev {ifname} nodad"));
            }
            for (ifname, gw4, gw6, metric) in [
                (ROUTER_WAN1_IF, ISP1_DOWN_V4, ISP1_DOWN_V6, WAN1_METRIC),
                (ROUTER_WAN2_IF, ISP2_DOWN_V4, ISP2_DOWN_V6, WAN2_METRIC),
            ] {
                line(format!(
                    "route add default via {} dev {ifname} metric {metric}",
                    gw4.addr
                ));
                line(format!(
                    "route add ::/0 via {} dev {ifname} metric {metric}",
                    gw6.addr
                ));
            }
        }
        Role::Isp1 | Role::Isp2 => {
            let (down4, down6, up4, up6, inet4, inet6) = if role == Role::Isp1 {
                (
                    ISP1_DOWN_V4,
                    ISP1_DOWN_V6,
                    ISP1_UP_V4,
                    ISP1_UP_V6,
                    INET_ISP1_V4,
                    INET_ISP1_V6,
                )
            } else {
                (
                    ISP2_DOWN_V4,
                    ISP2_DOWN_V6,
                    ISP2_UP_V4,
                    ISP2_UP_V6,
                    INET_ISP2_V4,
                    INET_ISP2_V6,
                )
            };
            for (ifname, a4, a6) in [(ISP_DOWN_IF, down4, down6), (ISP_UP_IF, up4, up6)] {
                line(format!("link set {ifname} up"));
                line(format!("addr add {a4} dev {ifname}"));
                line(format!("addr add {a6} dev {ifname} nodad"));
            }
            // An ISP sends everything that is not its customer's to "the internet".
            line(format!(
                "route add default via {} dev {ISP_UP_IF}",
                inet4.addr
            ));
            line(format!("route add ::/0 via {} dev {ISP_UP_IF}", inet6.addr));
        }
        Role::Inet => {
            for a in [SERVER_V4, DNS_V4] {
                line(format!("addr add {a}/32 dev {INET_SERVER_IF}"));
            }
            for a in [SERVER_V6, DNS_V6] {
                line(format!("addr add {a}/128 dev {INET_SERVER_IF} nodad"));
            }
            for (ifname, a4, a6, isp4, isp6, cust4, cust6) in [
                (
                    INET_ISP1_IF,
                    INET_ISP1_V4,
                    INET_ISP1_V6,
                    ISP1_UP_V4,
                    ISP1_UP_V6,
                    ISP1_DOWN_V4,
                    ISP1_DOWN_V6,
                ),
                (
                    INET_ISP2_IF,
                    INET_ISP2_V4,
                    INET_ISP2_V6,
                    ISP2_UP_V4,
                    ISP2_UP_V6,
                    ISP2_DOWN_V4,
                    ISP2_DOWN_V6,
                ),
            ] {
                line(format!("link set {ifname} up"));
                line(format!("addr add {a4} dev {ifname}"));
                line(format!("addr add {a6} dev {ifname} nodad"));
                // Only the ISPs' customer prefixes: no default route, so the LAN's
                // private addresses are unreachable from here, as on the real internet.
                // `src` the server address: a server on an unbound (wildcard) UDP
                // socket, like iperf3's, otherwise answers from the transit address,
                // and the router's NAT drops a reply from an address it never sent to.
                line(format!(
                    "route add {} via {} dev {ifname} src {SERVER_V4}",
                    network_v4(cust4),
                    isp4.addr
                ));
                line(format!(
                    "route add {} via {} dev {ifname} src {SERVER_V6}",
                    network_v6(cust6),
                    isp6.addr
                ));
            }
        }
    }
    s
}

/// Masquerade on both uplinks, both families: this is the box firewall's job in a real
/// deployment, so the lab does it with nftables rather than inferlane.
fn nat_ruleset() -> String {
    format!(
        "table inet {NAT_TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname {{ \"{ROUTER_WAN1_IF}\", \"{ROUTER_WAN2_IF}\" }} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The same bottleneck in both directions, both inside the ISP: egress of `down0` is
/// the download toward the router, egress of `up0` the upload toward inet. Shaping on
/// egress is what TBF can do, and keeping it in the ISP leaves the router's qdiscs
/// free for inferlane.
fn tbf_script(t: Tbf) -> String {
    [ISP_DOWN_IF, ISP_UP_IF]
        .iter()
        .map(|ifname| {
            format!(
                "qdisc add dev {ifname} root tbf rate {}kbit burst {} limit {}\n",
                t.rate_kbit, t.burst_bytes, t.limit_bytes
            )
        })
        .collect()
}

/// Pings both servers from the LAN client. On failure, walks the hops of the primary
/// path to say where traffic stops.
fn check_connectivity(lab: &Lab) -> Result<(), LabError> {
    const ATTEMPTS: u32 = 3;
    const TIMEOUT: Duration = Duration::from_secs(1);
    let paths: [(IpAddr, [(IpAddr, &str); 3]); 2] = [
        (
            SERVER_V4.into(),
            [
                (ROUTER_LAN_V4.ip(), "router lan0"),
                (ISP1_DOWN_V4.ip(), "isp1 down0"),
                (INET_ISP1_V4.ip(), "inet isp1"),
            ],
        ),
        (
            SERVER_V6.into(),
            [
                (ROUTER_LAN_V6.ip(), "router lan0"),
                (ISP1_DOWN_V6.ip(), "isp1 down0"),
                (INET_ISP1_V6.ip(), "inet isp1"),
            ],
        ),
    ];
    for (server, hops) in paths {
        // The first echo can be lost while neighbours are resolved; a few tries with a
        // short timeout keep the common case fast and the slow case robust.
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match lab.ping(Role::Lan, server, TIMEOUT) {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let Some(err) = last else { continue };
        let mut detail = format!("ping {server} from the LAN client failed ({err})");
        match hops
            .iter()
            .find(|(hop, _)| lab.ping(Role::Lan, *hop, TIMEOUT).is_err())
        {
            Some((hop, name)) => {
                let _ = write!(detail, "; first hop without reply: {hop} ({name})");
            }
            None => {
                let _ = write!(
                    detail,
                    "; all hops up to inet answer, so the server address or NAT is at fault"
                );
            }
        }
        return Err(LabError::Connectivity {
            ns: lab.netns(Role::Lan).to_owned(),
            detail,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_params_scale_with_rate() {
        let slow = Tbf::for_rate(1000);
        assert_eq!(slow.burst_bytes, 2 * MAX_FRAME);
        assert_eq!(slow.limit_bytes, 16 * 1024);
        assert_eq!(slow.rate_bytes_per_sec(), 125_000);
        let fast = Tbf::for_rate(100_000);
        assert_eq!(fast.burst_bytes, 62_500);
        assert_eq!(fast.limit_bytes, 1_250_000);
    }

    #[test]
    fn rates_below_8_kbit_are_rejected() {
        let opts = LabOptions {
            isp1_rate_kbit: Some(0),
            isp2_rate_kbit: None,
        };
        assert!(matches!(
            validate(&opts),
            Err(LabError::InvalidOption {
                option: "isp1_rate_kbit",
                ..
            })
        ));
        assert!(validate(&LabOptions {
            isp1_rate_kbit: Some(8),
            isp2_rate_kbit: Some(50_000)
        })
        .is_ok());
    }

    #[test]
    fn scripts_have_no_blank_lines() {
        // ip/tc -batch report the failing line number; keep it equal to the script line.
        for role in Role::ALL {
            assert!(
                ip_script(role).lines().all(|l| !l.trim().is_empty()),
                "{role:?}"
            );
        }
    }
}
