//! Policy routing per uplink, through rtnetlink: one table per uplink holding its
//! default routes, and fwmark rules that send the flows the datapath steered to it
//! (uplink bits of skb->mark) into that table.
//!
//! Per uplink `i` (config order), both families:
//! - table `table_base + i`: `default via GATEWAY dev IFACE` (the gateway from the
//!   config, else learned from the main table's default route through the
//!   interface; on a point-to-point link without one, `default dev IFACE`), and an
//!   `unreachable default` with the worst metric, so a marked packet never falls
//!   through to the main table and out of a link its class may not use;
//! - rule `rule_priority + 2i`: `fwmark M/0x0f000000 lookup main
//!   suppress_prefixlength 0`, so LAN-to-LAN traffic and the ISPs' own subnets
//!   still follow the main table's specific routes (mwan3 does the same);
//! - rule `rule_priority + 2i + 1`: `fwmark M/0x0f000000 lookup table_base + i`.
//!
//! Every route and rule carries our protocol number ([`RTPROT_INFERLANE`]); only
//! objects with it, in our tables and priority range, are ever changed or removed.
//! Start replaces and keeps: routes are added with NLM_F_REPLACE, a rule already
//! there stays, and only then are objects of ours that this config does not want
//! removed (leftovers of a crash, or of another config). A successor after a
//! handover, or a start after SIGKILL, thus never has an instant without routing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::bpf::abi::{MARK_UPLINK_MASK, MARK_UPLINK_SHIFT, MAX_UPLINKS};
use crate::config::Config;

/// Route protocol number on everything we install (`ip route show proto 173`).
/// Unassigned in iproute2's rt_protos; chosen to be easy to grep for.
pub const RTPROT_INFERLANE: u8 = 173;

/// Metric of the catch-all unreachable route: worse than any real default.
const UNREACHABLE_METRIC: u32 = u32::MAX;

/// Rule priorities an uplink takes: a main-table rule and its own table's.
pub const RULES_PER_UPLINK: u32 = 2;

const RT_TABLE_MAIN: u32 = 254;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink connection: {0}")]
    Connect(std::io::Error),
    #[error("uplink {uplink}: interface {iface} does not exist")]
    NoInterface { uplink: String, iface: String },
    #[error("{op}: {source}")]
    Netlink { op: String, source: rtnetlink::Error },
    #[error("{path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
}

/// What one uplink's routing looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkRoutes {
    pub index: usize,
    pub name: String,
    pub iface: String,
    pub ifindex: u32,
    pub table: u32,
    /// Priority of its main-table rule; its own table's rule is the next one.
    pub rule_priority: u32,
    /// fwmark value (uplink bits) and mask its rules match.
    pub mark: u32,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// No gateway, but a point-to-point link: `default dev IFACE`.
    pub direct: bool,
}

impl UplinkRoutes {
    /// Whether new flows can leave through it at all (a default route per family
    /// we could install).
    pub fn has_route(&self) -> bool {
        self.gateway4.is_some() || self.gateway6.is_some() || self.direct
    }
}

/// The fwmark of uplink `index` (0-based): its index + 1 in the uplink bits.
pub fn uplink_mark(index: usize) -> u32 {
    ((index as u32 + 1) << MARK_UPLINK_SHIFT) & MARK_UPLINK_MASK
}

/// Installed policy routing; [`Routing::remove`] takes it all away.
pub struct Routing {
    handle: Handle,
    conn: tokio::task::JoinHandle<()>,
    pub uplinks: Vec<UplinkRoutes>,
    table_base: u32,
    rule_priority: u32,
    /// Gateways the config gave, per uplink (the rest are learned).
    configured: Vec<(Option<Ipv4Addr>, Option<Ipv6Addr>)>,
    /// rp_filter values we changed: (path, value to restore).
    rp_filter: Vec<(String, String)>,
}

impl Routing {
    /// Install tables and rules for every uplink of `config` (removing leftovers
    /// of a previous run first), and loosen reverse-path filtering where it is
    /// strict on an uplink: replies to flows steered to a backup arrive on an
    /// interface the main table would not route their source to.
    pub async fn install(config: &Config) -> Result<Routing, RouteError> {
        Self::install_adopting(config, Vec::new()).await
    }

    /// [`Routing::install`] after a handover: `rp_filter` holds the values the
    /// predecessor changed (and would have restored), which we restore at stop.
    pub async fn install_adopting(config: &Config, rp_filter: Vec<(String, String)>) -> Result<Routing, RouteError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(RouteError::Connect)?;
        let conn = tokio::spawn(conn);
        let mut routing = Routing {
            handle,
            conn,
            uplinks: Vec::new(),
            table_base: config.routing.table_base,
            rule_priority: config.routing.rule_priority,
            configured: Vec::new(),
            rp_filter,
        };
        match routing.install_inner(config).await {
            Ok(()) => Ok(routing),
            Err(e) => {
                // Nothing half-applied: take back whatever went in.
                for undo in routing.remove().await {
                    tracing::warn!("undoing partial routing setup: {undo}");
                }
                Err(e)
            }
        }
    }

    async fn install_inner(&mut self, config: &Config) -> Result<(), RouteError> {
        for (index, uplink) in config.uplinks.iter().enumerate().take(MAX_UPLINKS) {
            let ifindex = nix::net::if_::if_nametoindex(uplink.interface.as_str()).map_err(|_| {
                RouteError::NoInterface { uplink: uplink.name.clone(), iface: uplink.interface.clone() }
            })?;
            let mut u = UplinkRoutes {
                index,
                name: uplink.name.clone(),
                iface: uplink.interface.clone(),
                ifindex,
                table: self.table_base + index as u32,
                rule_priority: self.rule_priority + RULES_PER_UPLINK * index as u32,
                mark: uplink_mark(index),
                gateway4: uplink.gateways.iter().find_map(|g| match g {
                    IpAddr::V4(a) => Some(*a),
                    _ => None,
                }),
                gateway6: uplink.gateways.iter().find_map(|g| match g {
                    IpAddr::V6(a) => Some(*a),
                    _ => None,
                }),
                direct: false,
            };
            self.configured.push((u.gateway4, u.gateway6));
            self.learn_gateways(&mut u).await?;
            self.add_routes(&u).await?;
            self.add_rules(&u).await?;
            self.loosen_rp_filter(&u.iface)?;
            if !u.has_route() {
                tracing::warn!(
                    uplink = %u.name,
                    iface = %u.iface,
                    "no gateway configured or learned: flows steered to this uplink are refused until one appears"
                );
            }
            self.uplinks.push(u);
        }
        self.remove_unwanted().await
    }

    /// Handover: leave routes, rules and rp_filter in place for the successor;
    /// returns the rp_filter values to restore at a clean stop.
    pub fn keep(mut self) -> Vec<(String, String)> {
        self.conn.abort();
        std::mem::take(&mut self.rp_filter)
    }

    /// Delete rules and routes of ours that the installed uplinks do not want.
    async fn remove_unwanted(&self) -> Result<(), RouteError> {
        // (family is v6, priority, table, mark, suppress)
        let mut wanted_rules = Vec::new();
        for u in &self.uplinks {
            for v6 in [false, true] {
                wanted_rules.push((v6, u.rule_priority, RT_TABLE_MAIN, u.mark, true));
                wanted_rules.push((v6, u.rule_priority + 1, u.table, u.mark, false));
            }
        }
        self.delete_our_rules(|rule, prio| {
            let mut table = u32::from(rule.header.table);
            let mut mark = 0;
            let mut suppress = false;
            for a in &rule.attributes {
                match a {
                    RuleAttribute::Table(t) => table = *t,
                    RuleAttribute::FwMark(m) => mark = *m,
                    RuleAttribute::SuppressPrefixLen(0) => suppress = true,
                    _ => {}
                }
            }
            let v6 = rule.header.family == AddressFamily::Inet6;
            !wanted_rules.contains(&(v6, prio, table, mark, suppress))
        })
        .await?;
        for i in 0..MAX_UPLINKS as u32 {
            let table = self.table_base + i;
            match self.uplinks.iter().find(|u| u.table == table) {
                None => self.delete_routes_in(table).await?,
                Some(u) => self.delete_unwanted_routes(u).await?,
            }
        }
        Ok(())
    }

    /// Routes of ours in `u`'s table other than its defaults and unreachables
    /// (a gateway that changed while no daemon ran).
    async fn delete_unwanted_routes(&self, u: &UplinkRoutes) -> Result<(), RouteError> {
        self.delete_our_routes_in(u.table, |route| {
            let gateway = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            let default = route.header.destination_prefix_length == 0;
            let wanted = default
                && match route.header.kind {
                    RouteType::Unreachable => true,
                    RouteType::Unicast => match gateway {
                        Some(IpAddr::V4(g)) => u.gateway4 == Some(g) && oif == Some(u.ifindex),
                        Some(IpAddr::V6(g)) => u.gateway6 == Some(g) && oif == Some(u.ifindex),
                        None => u.direct && oif == Some(u.ifindex),
                    },
                    _ => false,
                };
            !wanted
        })
        .await
    }

    /// Gateways from the main table's default routes through the interface
    /// (what DHCP or router advertisements installed), for families the config
    /// left open.
    async fn learn_gateways(&self, u: &mut UplinkRoutes) -> Result<(), RouteError> {
        let (learned4, learned6, device_route) = main_defaults(&self.handle, u.ifindex).await?;
        if u.gateway4.is_none() {
            u.gateway4 = learned4;
        }
        if u.gateway6.is_none() {
            u.gateway6 = learned6;
        }
        u.direct = u.gateway4.is_none() && u.gateway6.is_none() && device_route;
        Ok(())
    }

    /// Learn the gateways again (DHCP renewed, RA changed) and replace the
    /// uplink's routes when they changed. Returns whether anything changed.
    pub async fn refresh(&mut self, index: usize) -> Result<bool, RouteError> {
        let (Some(before), Some(&(conf4, conf6))) = (self.uplinks.get(index).cloned(), self.configured.get(index)) else {
            return Ok(false);
        };
        let mut u = UplinkRoutes { gateway4: conf4, gateway6: conf6, direct: false, ..before.clone() };
        self.learn_gateways(&mut u).await?;
        if u == before {
            return Ok(false);
        }
        self.delete_routes_in(u.table).await?;
        self.add_routes(&u).await?;
        tracing::info!(uplink = %u.name, gateway4 = ?u.gateway4, gateway6 = ?u.gateway6, "uplink routes follow new gateways");
        self.uplinks[index] = u;
        Ok(true)
    }

    async fn add_routes(&self, u: &UplinkRoutes) -> Result<(), RouteError> {
        let proto = RouteProtocol::Other(RTPROT_INFERLANE);
        let mut msgs: Vec<(String, RouteMessage)> = Vec::new();
        if let Some(gw) = u.gateway4 {
            let m = RouteMessageBuilder::<Ipv4Addr>::new()
                .table_id(u.table)
                .output_interface(u.ifindex)
                .gateway(gw)
                .protocol(proto)
                .build();
            msgs.push((format!("add default via {gw} dev {} table {}", u.iface, u.table), m));
        }
        if let Some(gw) = u.gateway6 {
            let m = RouteMessageBuilder::<Ipv6Addr>::new()
                .table_id(u.table)
                .output_interface(u.ifindex)
                .gateway(gw)
                .protocol(proto)
                .build();
            msgs.push((format!("add ::/0 via {gw} dev {} table {}", u.iface, u.table), m));
        }
        if u.direct {
            for v6 in [false, true] {
                let m = if v6 {
                    RouteMessageBuilder::<Ipv6Addr>::new().table_id(u.table).output_interface(u.ifindex)
                        .protocol(proto).scope(RouteScope::Link).build()
                } else {
                    RouteMessageBuilder::<Ipv4Addr>::new().table_id(u.table).output_interface(u.ifindex)
                        .protocol(proto).scope(RouteScope::Link).build()
                };
                msgs.push((format!("add default dev {} table {}", u.iface, u.table), m));
            }
        }
        for v6 in [false, true] {
            let m = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new().table_id(u.table).kind(RouteType::Unreachable)
                    .priority(UNREACHABLE_METRIC).protocol(proto).build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new().table_id(u.table).kind(RouteType::Unreachable)
                    .priority(UNREACHABLE_METRIC).protocol(proto).scope(RouteScope::Universe).build()
            };
            msgs.push((format!("add unreachable default table {}", u.table), m));
        }
        for (op, m) in msgs {
            match self.handle.route().add(m).replace().execute().await {
                Ok(()) => {}
                Err(source) => return Err(RouteError::Netlink { op, source }),
            }
        }
        Ok(())
    }

    async fn add_rules(&self, u: &UplinkRoutes) -> Result<(), RouteError> {
        for v6 in [false, true] {
            for (prio, table, suppress) in
                [(u.rule_priority, RT_TABLE_MAIN, true), (u.rule_priority + 1, u.table, false)]
            {
                let mut req = self.handle.rule().add().table_id(table).priority(prio).action(RuleAction::ToTable);
                let msg = req.message_mut();
                msg.header.family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
                msg.attributes.push(RuleAttribute::FwMark(u.mark));
                msg.attributes.push(RuleAttribute::FwMask(MARK_UPLINK_MASK));
                msg.attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(RTPROT_INFERLANE)));
                if suppress {
                    msg.attributes.push(RuleAttribute::SuppressPrefixLen(0));
                }
                let op = format!(
                    "add rule {}fwmark {:#x}/{:#x} lookup {table}{} pref {prio}",
                    if v6 { "-6 " } else { "" },
                    u.mark,
                    MARK_UPLINK_MASK,
                    if suppress { " suppress_prefixlength 0" } else { "" }
                );
                match req.execute().await {
                    Ok(()) => {}
                    // Same rule already there (our leftovers were removed, so
                    // this is a race with ourselves): fine.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(source) => return Err(RouteError::Netlink { op, source }),
                }
            }
        }
        Ok(())
    }

    fn loosen_rp_filter(&mut self, iface: &str) -> Result<(), RouteError> {
        let all = read_sysctl("net/ipv4/conf/all/rp_filter")?;
        let path = format!("net/ipv4/conf/{iface}/rp_filter");
        let own = read_sysctl(&path)?;
        // The kernel applies max(all, interface): strict (1) only when one says 1
        // and none says 2; writing 2 on the interface makes it loose either way.
        let effective = all.trim().parse::<u8>().unwrap_or(0).max(own.trim().parse::<u8>().unwrap_or(0));
        if self.rp_filter.iter().any(|(p, _)| *p == path) {
            // Loosened by the daemon we took over from; its value is restored at stop.
            if effective == 1 {
                write_sysctl(&path, "2")?;
            }
        } else if effective == 1 {
            write_sysctl(&path, "2")?;
            tracing::info!(iface, "reverse-path filter set to loose (was strict); restored at stop");
            self.rp_filter.push((path, own.trim().to_string()));
        }
        Ok(())
    }

    /// Delete every rule of ours (our protocol, our priority range) and every
    /// route of ours in our tables.
    async fn remove_ours(&self) -> Result<(), RouteError> {
        self.delete_our_rules(|_, _| true).await?;
        for i in 0..MAX_UPLINKS as u32 {
            self.delete_routes_in(self.table_base + i).await?;
        }
        Ok(())
    }

    /// Deletes the rules of ours (our protocol, our priority range), both
    /// families, that `unwanted(rule, priority)` picks; one already gone is fine.
    async fn delete_our_rules(&self, unwanted: impl Fn(&RuleMessage, u32) -> bool) -> Result<(), RouteError> {
        let last_prio = self.rule_priority + RULES_PER_UPLINK * MAX_UPLINKS as u32;
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .handle
                .rule()
                .get(version.clone())
                .execute()
                .try_collect()
                .await
                .map_err(|source| RouteError::Netlink { op: "list rules".into(), source })?;
            for rule in rules {
                let ours = rule.attributes.iter().any(|a| {
                    matches!(a, RuleAttribute::Protocol(RouteProtocol::Other(p)) if *p == RTPROT_INFERLANE)
                });
                let prio = rule.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                let Some(prio) = prio.filter(|p| ours && (self.rule_priority..last_prio).contains(p)) else { continue };
                if !unwanted(&rule, prio) {
                    continue;
                }
                match self.handle.rule().del(rule).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
                    Err(source) => return Err(RouteError::Netlink { op: format!("delete rule pref {prio}"), source }),
                }
            }
        }
        Ok(())
    }

    async fn delete_routes_in(&self, table: u32) -> Result<(), RouteError> {
        self.delete_our_routes_in(table, |_| true).await
    }

    /// Deletes the routes of ours in `table`, both families, that `unwanted`
    /// picks; one already gone is fine.
    async fn delete_our_routes_in(&self, table: u32, unwanted: impl Fn(&RouteMessage) -> bool) -> Result<(), RouteError> {
        for v6 in [false, true] {
            let filter = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new().table_id(table).build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new().table_id(table).build()
            };
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(filter)
                .execute()
                .try_collect()
                .await
                .map_err(|source| RouteError::Netlink { op: format!("list routes of table {table}"), source })?;
            for route in routes {
                if route_table(&route) != table
                    || route.header.protocol != RouteProtocol::Other(RTPROT_INFERLANE)
                    || !unwanted(&route)
                {
                    continue;
                }
                match self.handle.route().del(route).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENOENT => {}
                    Err(source) => {
                        return Err(RouteError::Netlink { op: format!("delete route in table {table}"), source })
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove everything installed, restore rp_filter; continues past errors and
    /// returns them all.
    pub async fn remove(mut self) -> Vec<RouteError> {
        let mut errors = Vec::new();
        if let Err(e) = self.remove_ours().await {
            errors.push(e);
        }
        for (path, value) in std::mem::take(&mut self.rp_filter) {
            if let Err(e) = write_sysctl(&path, &value) {
                errors.push(e);
            }
        }
        self.conn.abort();
        errors
    }
}

/// The table a route message belongs to (the attribute for tables above 255).
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// Default routes of the main table through `ifindex`: the IPv4 gateway, the
/// IPv6 gateway, and whether there is a gatewayless (device) default.
async fn main_defaults(handle: &Handle, ifindex: u32) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>, bool), RouteError> {
    let mut gw4 = None;
    let mut gw6 = None;
    let mut device = false;
    for v6 in [false, true] {
        let filter = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let routes: Vec<RouteMessage> = handle
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|source| RouteError::Netlink { op: "list main routes".into(), source })?;
        // The best (lowest metric) default through this interface.
        let mut best: Option<(u32, Option<IpAddr>)> = None;
        for r in &routes {
            if route_table(r) != RT_TABLE_MAIN || r.header.destination_prefix_length != 0 || r.header.kind != RouteType::Unicast {
                continue;
            }
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if oif != Some(ifindex) {
                continue;
            }
            let metric = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Priority(p) => Some(*p),
                _ => None,
            }).unwrap_or(0);
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            if best.is_none_or(|(m, _)| metric < m) {
                best = Some((metric, gw));
            }
        }
        match best {
            Some((_, Some(IpAddr::V4(a)))) => gw4 = Some(a),
            Some((_, Some(IpAddr::V6(a)))) => gw6 = Some(a),
            Some((_, None)) => device = true,
            None => {}
        }
    }
    Ok((gw4, gw6, device))
}

fn read_sysctl(path: &str) -> Result<String, RouteError> {
    let full = format!("/proc/sys/{path}");
    std::fs::read_to_string(&full).map_err(|source| RouteError::Sysctl { path: full, source })
}

fn write_sysctl(path: &str, value: &str) -> Result<(), RouteError> {
    let full = format!("/proc/sys/{path}");
    std::fs::write(&full, value).map_err(|source| RouteError::Sysctl { path: full, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_carry_the_uplink_number_in_the_uplink_bits() {
        assert_eq!(uplink_mark(0), 0x0100_0000);
        assert_eq!(uplink_mark(1), 0x0200_0000);
        assert_eq!(uplink_mark(14), 0x0f00_0000);
        // The same bits the datapath writes.
        assert_eq!(uplink_mark(3) & !MARK_UPLINK_MASK, 0);
    }
}
