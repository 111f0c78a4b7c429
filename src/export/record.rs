//! The flow record every encoder takes: one direction of one flow over one export
//! interval, in wall-clock time, independent of IPFIX, NetFlow v9 or v5.
//!
//! The flow table keeps a flow's upload and download in one entry (the LAN-side hooks
//! see both directions pre-NAT). Flow collectors, nfdump first of all, expect
//! unidirectional records: `FlowSummary::records` splits an entry in two.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPFIX flowEndReason (IANA IE 136). NetFlow v9 and v5 have no field for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EndReason {
    /// No packet for the inactive timeout.
    Idle = 1,
    /// Still running at the active timeout: this record is an interim report.
    Active = 2,
    /// FIN or RST seen (after a short linger).
    EndDetected = 3,
    /// The daemon stopped and flushed everything in flight.
    Forced = 4,
    /// Evicted from the LRU flow table to make room.
    LackOfResources = 5,
}

/// IPFIX flowDirection (IE 61) relative to the observation point, the LAN interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

/// One direction of traffic: `src` sent `packets` packets (`octets` bytes of IP) to
/// `dst`. Both addresses must be of one family; an IPv4-mapped IPv6 address counts as
/// IPv4 (the flow table stores IPv4 that way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    /// The whole TOS / traffic-class byte as forwarded (DSCP << 2 | ECN), which is what
    /// ipClassOfService and NetFlow's TOS carry.
    pub tos: u8,
    /// TCP flags ORed over the packets counted (FIN 0x01 ... CWR 0x80).
    pub tcp_flags: u8,
    /// Delta counts: what this direction sent since the previous record of the flow.
    pub octets: u64,
    pub packets: u64,
    /// First and last packet, milliseconds since the UNIX epoch.
    pub start_ms: u64,
    pub end_ms: u64,
    pub ingress_ifindex: u32,
    pub egress_ifindex: u32,
    pub direction: Direction,
    pub end_reason: EndReason,
    /// The AI provider (catalog id); 0 when unknown.
    pub application_id: u32,
    // inferlane-specific, exported as enterprise IEs (docs/export.md).
    pub class_id: u8,
    /// How the flow was classified: bpf::abi::SRC_* (0 none, 1 static, 2 dns, ...).
    pub source: u8,
    pub handshake_rtt_us: u32,
    pub ttfb_us: u32,
    /// 1 when the response looked like token streaming, else 0.
    pub streaming: u8,
}

/// A record's addresses, normalised to one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl FlowRecord {
    /// None when the two addresses are of different families, which no template can
    /// carry; encoders skip such a record and count it.
    pub fn addrs(&self) -> Option<Addrs> {
        match (self.src.to_canonical(), self.dst.to_canonical()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Some(Addrs::V4(s, d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => Some(Addrs::V6(s, d)),
            _ => None,
        }
    }
}

/// A bidirectional flow-table entry over one export interval, as the flow scanner
/// hands it over: counters are deltas since the previous export of this flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSummary {
    pub client: IpAddr,
    pub remote: IpAddr,
    pub client_port: u16,
    pub remote_port: u16,
    pub protocol: u8,
    pub up_tos: u8,
    pub down_tos: u8,
    pub up_tcp_flags: u8,
    pub down_tcp_flags: u8,
    pub up_octets: u64,
    pub up_packets: u64,
    pub down_octets: u64,
    pub down_packets: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The LAN interface the client is behind.
    pub lan_ifindex: u32,
    /// The uplink interface the flow left through (0 when not known).
    pub wan_ifindex: u32,
    pub end_reason: EndReason,
    pub application_id: u32,
    pub class_id: u8,
    pub source: u8,
    pub handshake_rtt_us: u32,
    pub ttfb_us: u32,
    pub streaming: bool,
}

impl FlowSummary {
    /// The upload record (client → remote, entering at the LAN interface: ingress) and
    /// the download record (remote → client, leaving through it: egress). A direction
    /// with no packets in this interval gives no record: collectors count every record
    /// as a flow, and an empty one says nothing.
    pub fn records(&self) -> Vec<FlowRecord> {
        let base = |src, dst, src_port, dst_port| FlowRecord {
            src,
            dst,
            src_port,
            dst_port,
            protocol: self.protocol,
            tos: 0,
            tcp_flags: 0,
            octets: 0,
            packets: 0,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            ingress_ifindex: 0,
            egress_ifindex: 0,
            direction: Direction::Ingress,
            end_reason: self.end_reason,
            application_id: self.application_id,
            class_id: self.class_id,
            source: self.source,
            handshake_rtt_us: self.handshake_rtt_us,
            ttfb_us: self.ttfb_us,
            streaming: u8::from(self.streaming),
        };
        let mut out = Vec::with_capacity(2);
        if self.up_packets > 0 {
            out.push(FlowRecord {
                tos: self.up_tos,
                tcp_flags: self.up_tcp_flags,
                octets: self.up_octets,
                packets: self.up_packets,
                ingress_ifindex: self.lan_ifindex,
                egress_ifindex: self.wan_ifindex,
                direction: Direction::Ingress,
                ..base(self.client, self.remote, self.client_port, self.remote_port)
            });
        }
        if self.down_packets > 0 {
            out.push(FlowRecord {
                tos: self.down_tos,
                tcp_flags: self.down_tcp_flags,
                octets: self.down_octets,
                packets: self.down_packets,
                ingress_ifindex: self.wan_ifindex,
                egress_ifindex: self.lan_ifindex,
                direction: Direction::Egress,
                ..base(self.remote, self.client, self.remote_port, self.client_port)
            });
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP flow from a LAN client to an AI provider, used by every encoder's tests.
    pub(crate) fn summary_v4() -> FlowSummary {
        FlowSummary {
            client: "192.168.1.10".parse().unwrap(),
            remote: "203.0.113.5".parse().unwrap(),
            client_port: 50000,
            remote_port: 443,
            protocol: 6,
            up_tos: 0x88, // AF41 (34 << 2)
            down_tos: 0,
            up_tcp_flags: 0x1b, // FIN PSH ACK SYN
            down_tcp_flags: 0x12,
            up_octets: 1500,
            up_packets: 10,
            down_octets: 60000,
            down_packets: 45,
            start_ms: 1_700_000_000_123,
            end_ms: 1_700_000_002_456,
            lan_ifindex: 2,
            wan_ifindex: 3,
            end_reason: EndReason::EndDetected,
            application_id: 7,
            class_id: 1,
            source: 3,
            handshake_rtt_us: 12_345,
            ttfb_us: 250_000,
            streaming: true,
        }
    }

    #[test]
    fn summary_splits_into_upload_and_download() {
        let s = summary_v4();
        let r = s.records();
        assert_eq!(r.len(), 2, "expected upload and download records, got {r:?}");
        let (up, down) = (&r[0], &r[1]);
        assert_eq!((up.src, up.dst, up.src_port, up.dst_port), (s.client, s.remote, 50000, 443));
        assert_eq!((down.src, down.dst, down.src_port, down.dst_port), (s.remote, s.client, 443, 50000));
        assert_eq!((up.octets, up.packets, up.tos, up.tcp_flags), (1500, 10, 0x88, 0x1b));
        assert_eq!((down.octets, down.packets, down.tos, down.tcp_flags), (60000, 45, 0, 0x12));
        assert_eq!((up.ingress_ifindex, up.egress_ifindex, up.direction), (2, 3, Direction::Ingress));
        assert_eq!((down.ingress_ifindex, down.egress_ifindex, down.direction), (3, 2, Direction::Egress));
        assert_eq!((up.streaming, down.streaming), (1, 1));
    }

    #[test]
    fn empty_direction_gives_no_record() {
        let s = FlowSummary { down_packets: 0, down_octets: 0, ..summary_v4() };
        let r = s.records();
        assert_eq!(r.len(), 1, "expected only the upload record, got {r:?}");
        assert_eq!(r[0].direction, Direction::Ingress);
    }

    #[test]
    fn mapped_ipv4_counts_as_ipv4_and_mixed_families_are_refused() {
        let mut r = summary_v4().records().remove(0);
        r.src = "::ffff:192.168.1.10".parse().unwrap();
        assert_eq!(
            r.addrs(),
            Some(Addrs::V4("192.168.1.10".parse().unwrap(), "203.0.113.5".parse().unwrap()))
        );
        r.src = "2001:db8::1".parse().unwrap();
        assert_eq!(r.addrs(), None, "expected a v6/v4 pair to be refused");
    }
}
