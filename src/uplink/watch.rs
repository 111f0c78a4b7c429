//! Kernel events that decide an uplink's fate at once, without waiting for a
//! probe: carrier (IFF_LOWER_UP) and administrative state of its interface, its
//! addresses, and the main table's routes (a DHCP client replacing the gateway).
//! Read from rtnetlink multicast groups; nothing is polled.

use futures::StreamExt;
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{new_multicast_connection, MulticastGroup};
use tokio::sync::mpsc;

/// What happened to an interface, as the failover logic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Link state of `iface`: carrier means administratively up with IFF_LOWER_UP.
    Link { iface: String, carrier: bool },
    /// The interface disappeared (a USB modem unplugged).
    Gone { iface: String },
    /// An address was added or removed on interface `ifindex`.
    Address { ifindex: u32, added: bool },
    /// A route changed somewhere: gateways may need learning again.
    Route,
}

/// Whether `msg` shows a usable link.
pub fn link_carrier(msg: &LinkMessage) -> bool {
    msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp)
}

fn link_name(msg: &LinkMessage) -> Option<String> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// The carrier of each interface now (false when it does not exist).
pub async fn carriers(ifaces: &[String]) -> std::io::Result<Vec<bool>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(conn);
    let mut out = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        let mut links = handle.link().get().match_name(iface.clone()).execute();
        let carrier = match links.next().await {
            Some(Ok(msg)) => link_carrier(&msg),
            _ => false,
        };
        out.push(carrier);
    }
    conn.abort();
    Ok(out)
}

/// Subscribe to link, address and route events; they arrive on the returned
/// channel until the task is aborted (returned too).
pub fn subscribe() -> std::io::Result<(mpsc::UnboundedReceiver<Event>, tokio::task::JoinHandle<()>)> {
    let (conn, _handle, mut messages) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])?;
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while let Some((message, _)) = messages.next().await {
            let NetlinkPayload::InnerMessage(msg) = message.payload else { continue };
            let event = match msg {
                RouteNetlinkMessage::NewLink(l) => link_name(&l).map(|iface| Event::Link { carrier: link_carrier(&l), iface }),
                RouteNetlinkMessage::DelLink(l) => link_name(&l).map(|iface| Event::Gone { iface }),
                RouteNetlinkMessage::NewAddress(a) => Some(Event::Address { ifindex: a.header.index, added: true }),
                RouteNetlinkMessage::DelAddress(a) => {
                    // Only addresses that matter for forwarding: not link-local ones.
                    let link_local = a.attributes.iter().any(|attr| {
                        matches!(attr, AddressAttribute::Address(std::net::IpAddr::V6(v6)) if v6.segments()[0] & 0xffc0 == 0xfe80)
                    });
                    (!link_local).then_some(Event::Address { ifindex: a.header.index, added: false })
                }
                RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => Some(Event::Route),
                _ => None,
            };
            if let Some(e) = event {
                if tx.send(e).is_err() {
                    break;
                }
            }
        }
        conn.abort();
    });
    Ok((rx, task))
}

/// Global (non-link-local) addresses on interface `ifindex`.
pub async fn global_addresses(ifindex: u32) -> std::io::Result<usize> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let conn = tokio::spawn(conn);
    let mut count = 0;
    let mut addrs = handle.address().get().set_link_index_filter(ifindex).execute();
    while let Some(Ok(a)) = addrs.next().await {
        let global = a.attributes.iter().any(|attr| match attr {
            AddressAttribute::Address(std::net::IpAddr::V4(_)) => true,
            AddressAttribute::Address(std::net::IpAddr::V6(v6)) => v6.segments()[0] & 0xffc0 != 0xfe80,
            _ => false,
        });
        if global {
            count += 1;
        }
    }
    conn.abort();
    Ok(count)
}
