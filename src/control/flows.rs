//! `inferlane flows`: the live flow table as the operator reads it.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::bpf::abi::{self, Flow, FlowKey};
use crate::config::Config;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: IpAddr,
    pub client_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    /// "tcp", "udp", "icmp", "icmpv6" or the protocol number.
    pub proto: String,
    pub interface: String,
    /// Class name, or null when unclassified.
    pub class: Option<String>,
    /// The AI provider (catalog name), or null when unknown.
    pub provider: Option<String>,
    /// The server name the client's ClientHello (TLS or QUIC) carried.
    pub name: Option<String>,
    /// The ClientHello carried ECH: its name is the outer one, not trusted alone.
    pub ech: bool,
    /// Still waiting for the datapath to learn what it is (SNI, QUIC).
    pub pending: bool,
    /// 1-based index of the config rule that matched, or null.
    pub rule: Option<u32>,
    /// Where the verdict came from: "static", "dns", "sni", "quic", "http" or null.
    pub source: Option<String>,
    pub blocked: bool,
    /// DSCP written on the flow's upload packets, null when left as sent.
    pub dscp: Option<u8>,
    /// DSCP of the first upload packet as the client sent it.
    pub dscp_seen: u8,
    pub mark: u32,
    pub priority: u32,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    pub tcp_flags_up: u8,
    pub tcp_flags_down: u8,
    pub age_ms: u64,
    pub idle_ms: u64,
    /// Provider-side TCP handshake round trip: the client's SYN to the server's
    /// SYN-ACK, as the router saw them (microseconds).
    pub handshake_rtt_us: Option<u64>,
    /// LAN-side round trip: SYN-ACK to the client's ACK (microseconds).
    pub lan_rtt_us: Option<u64>,
    /// Time to first byte: the client's first payload byte to the server's first
    /// (microseconds): request upload, server think time and one WAN round trip.
    pub ttfb_us: Option<u64>,
    /// From the first response byte to the latest packet (milliseconds).
    pub response_ms: Option<u64>,
    /// A long response of small packets: token streaming (server-sent events).
    pub streaming: bool,
}

pub(crate) fn span_us(from: u64, to: u64) -> Option<u64> {
    (from > 0 && to >= from).then(|| (to - from) / 1000)
}

/// Many small download packets over more than a second: tokens arriving one by
/// one (server-sent events), not a bulk transfer of full-size segments. Average
/// sizes count headers, so the bound sits well below an MSS.
pub(crate) fn is_streaming(f: &Flow) -> bool {
    let long = f.first_down_payload_ns > 0 && f.last_ns.saturating_sub(f.first_down_payload_ns) >= 1_000_000_000;
    long && f.down_packets >= 20 && f.down_bytes / f.down_packets.max(1) < 400
}

pub(crate) fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

pub(crate) fn source_name(s: u8) -> Option<String> {
    Some(
        match s {
            abi::SRC_STATIC => "static",
            abi::SRC_DNS => "dns",
            abi::SRC_SNI => "sni",
            abi::SRC_QUIC => "quic",
            abi::SRC_HTTP => "http",
            _ => return None,
        }
        .into(),
    )
}

impl FlowInfo {
    /// `now_ns` is CLOCK_MONOTONIC, the datapath's clock. Class names come from the
    /// config in force; a flow classified before a reload that renumbered classes
    /// shows the class now at its index.
    pub fn from_entry(k: &FlowKey, f: &Flow, now_ns: u64, config: &Config, ifnames: &[(u32, String)]) -> Self {
        let class = (f.class_id > 0).then(|| config.classes.get(f.class_id as usize - 1).map(|c| c.name.clone())).flatten();
        FlowInfo {
            client: abi::addr_from_bytes(k.client, k.family),
            client_port: u16::from_be(k.client_port),
            remote: abi::addr_from_bytes(k.remote, k.family),
            remote_port: u16::from_be(k.remote_port),
            proto: proto_name(k.proto),
            interface: ifnames
                .iter()
                .find(|(i, _)| *i == f.ifindex)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| f.ifindex.to_string()),
            class,
            provider: None,
            name: None,
            ech: f.flags & abi::FLOW_F_ECH != 0,
            pending: f.flags & abi::FLOW_F_PENDING != 0,
            rule: (f.rule_id > 0).then_some(f.rule_id),
            source: source_name(f.source),
            blocked: f.verdict == abi::VERDICT_BLOCK,
            dscp: (f.dscp != abi::DSCP_KEEP).then_some(f.dscp),
            dscp_seen: f.dscp_seen,
            mark: f.mark,
            priority: f.priority,
            up_packets: f.up_packets,
            up_bytes: f.up_bytes,
            down_packets: f.down_packets,
            down_bytes: f.down_bytes,
            tcp_flags_up: f.tcp_flags_up,
            tcp_flags_down: f.tcp_flags_down,
            age_ms: now_ns.saturating_sub(f.first_ns) / 1_000_000,
            idle_ms: now_ns.saturating_sub(f.last_ns) / 1_000_000,
            handshake_rtt_us: span_us(f.syn_ns, f.synack_ns),
            lan_rtt_us: span_us(f.synack_ns, f.lan_ack_ns),
            ttfb_us: span_us(f.first_up_payload_ns, f.first_down_payload_ns),
            response_ms: span_us(f.first_down_payload_ns, f.last_ns.max(f.first_down_payload_ns)).map(|us| us / 1000),
            streaming: is_streaming(f),
        }
    }
}

fn ms(us: Option<u64>) -> String {
    us.map(|u| format!("{:.1}", u as f64 / 1000.0)).unwrap_or_else(|| "-".into())
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// The human table of `inferlane flows`, busiest first.
pub fn render(flows: &[FlowInfo]) -> String {
    let mut sorted: Vec<&FlowInfo> = flows.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.up_bytes + f.down_bytes));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<44} {:<44} {:<14} {:<7} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8} {:>9}",
        "proto", "client", "remote", "provider", "via", "class", "dscp", "up pkts", "up bytes", "down pkts", "down bytes",
        "rtt ms", "ttfb ms", "age"
    );
    for f in sorted {
        let class = match (&f.class, f.blocked) {
            (_, true) => "BLOCKED".to_string(),
            (Some(c), _) => c.clone(),
            (None, _) => "-".into(),
        };
        let via = match (&f.source, f.pending) {
            (_, true) => "pending".to_string(),
            (Some(s), _) => s.clone(),
            (None, _) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<44} {:<44} {:<14} {:<7} {:<12} {:>4} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8} {:>8.1}s{}",
            f.proto,
            endpoint(f.client, f.client_port),
            endpoint(f.remote, f.remote_port),
            f.provider.as_deref().unwrap_or("-"),
            via,
            class,
            f.dscp.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
            f.up_packets,
            f.up_bytes,
            f.down_packets,
            f.down_bytes,
            ms(f.handshake_rtt_us),
            ms(f.ttfb_us),
            f.age_ms as f64 / 1000.0,
            if f.streaming { " streaming" } else { "" }
        );
    }
    let _ = writeln!(out, "{} flows", flows.len());
    out
}
