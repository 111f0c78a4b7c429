//! Information elements: which fields a template lists, and how each value of a
//! [`FlowRecord`] is written. IPFIX and NetFlow v9 share the IANA numbers (v9's field
//! types are where IPFIX's numbering started).

use super::record::{Addrs, FlowRecord};

/// inferlane's Private Enterprise Number for its own IEs: 32473 is the PEN that RFC 5612
/// reserves for documentation and examples. A collector that knows nothing of
/// inferlane skips these fields by their length, as RFC 7011 §3.2 intends.
pub const PEN: u32 = 32473;

/// Enterprise-specific element ids under [`PEN`] (docs/export.md defines them).
pub mod enterprise {
    pub const CLASS_ID: u16 = 1;
    pub const CLASSIFICATION_SOURCE: u16 = 2;
    pub const HANDSHAKE_RTT_US: u16 = 3;
    pub const TTFB_US: u16 = 4;
    pub const STREAMING: u16 = 5;
}

/// IANA element ids used here.
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const IP_CLASS_OF_SERVICE: u16 = 5;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const EGRESS_INTERFACE: u16 = 14;
    /// NetFlow v9 LAST_SWITCHED / FIRST_SWITCHED: sysUptime milliseconds.
    pub const LAST_SWITCHED: u16 = 21;
    pub const FIRST_SWITCHED: u16 = 22;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const SAMPLING_INTERVAL: u16 = 34;
    pub const SAMPLING_ALGORITHM: u16 = 35;
    pub const FLOW_DIRECTION: u16 = 61;
    pub const INTERFACE_NAME: u16 = 82;
    pub const INTERFACE_DESCRIPTION: u16 = 83;
    pub const APPLICATION_ID: u16 = 95;
    pub const APPLICATION_NAME: u16 = 96;
    pub const FLOW_END_REASON: u16 = 136;
    pub const OBSERVATION_DOMAIN_ID: u16 = 149;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
}

/// RFC 6759 classification engine 20, PANA-L7-PEN: "proprietary layer 7 definition,
/// including a Private Enterprise Number". The selector after the PEN is inferlane's
/// provider id, so ids never collide with another vendor's (Cisco NBAR uses engine 13).
pub const ENGINE_PANA_L7_PEN: u8 = 20;
/// applicationId: engine (1) + PEN (4) + selector (4).
pub const APPLICATION_ID_LEN: u16 = 9;
/// Fixed-length names: collectors (nfdump among them) decode option records at fixed
/// offsets only. Linux interface names are at most 15 bytes (IFNAMSIZ 16).
pub const INTERFACE_NAME_LEN: u16 = 16;
pub const APPLICATION_NAME_LEN: u16 = 32;

/// The value a field takes from a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value {
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    Protocol,
    Tos,
    TcpFlags,
    Octets,
    Packets,
    StartMs,
    EndMs,
    /// Milliseconds since the exporter's boot, wrapping at 2^32 (NetFlow v9).
    StartUptime,
    EndUptime,
    Ingress,
    Egress,
    Direction,
    EndReason,
    ApplicationId,
    ClassId,
    Source,
    HandshakeRtt,
    Ttfb,
    Streaming,
}

/// One field specifier of a data template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub id: u16,
    pub len: u16,
    /// Set for enterprise-specific elements (IPFIX only).
    pub pen: Option<u32>,
    pub value: Value,
}

pub(crate) const fn iana(id: u16, len: u16, value: Value) -> Field {
    Field { id, len, pen: None, value }
}

pub(crate) const fn ours(id: u16, len: u16, value: Value) -> Field {
    Field { id, len, pen: Some(PEN), value }
}

pub(crate) fn record_len(fields: &[Field]) -> usize {
    fields.iter().map(|f| f.len as usize).sum()
}

/// A field specifier as IPFIX writes it (enterprise bit and PEN when set); v9 has no
/// enterprise fields, so the same bytes serve it.
pub(crate) fn write_specifier(out: &mut Vec<u8>, id: u16, len: u16, pen: Option<u32>) {
    match pen {
        Some(pen) => {
            out.extend_from_slice(&(id | 0x8000).to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&pen.to_be_bytes());
        }
        None => {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// The applicationId octets for a provider id (RFC 6759 §4.1, engine 20).
pub(crate) fn application_id(id: u32) -> [u8; APPLICATION_ID_LEN as usize] {
    let mut b = [0u8; APPLICATION_ID_LEN as usize];
    b[0] = ENGINE_PANA_L7_PEN;
    b[1..5].copy_from_slice(&PEN.to_be_bytes());
    b[5..9].copy_from_slice(&id.to_be_bytes());
    b
}

/// `s` as a fixed-length field: UTF-8, cut at a character boundary so that at least
/// one NUL ends it (nfdump overwrites the last byte with NUL), zero-filled.
pub(crate) fn write_fixed_str(out: &mut Vec<u8>, s: &str, len: u16) {
    let len = len as usize;
    let mut end = s.len().min(len - 1);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&s.as_bytes()[..end]);
    out.resize(out.len() + len - end, 0);
}

/// Big-endian, reduced to `len` bytes: a value too big for its field saturates rather
/// than wrapping (a wrapped byte count is worse than a capped one).
fn write_uint(out: &mut Vec<u8>, v: u64, len: u16) {
    let max = if len >= 8 { u64::MAX } else { (1u64 << (8 * len)) - 1 };
    let v = v.min(max);
    out.extend_from_slice(&v.to_be_bytes()[8 - len as usize..]);
}

/// Writes `rec` by `fields`. `boot_ms` anchors the uptime-relative times of v9.
pub(crate) fn write_record(out: &mut Vec<u8>, fields: &[Field], rec: &FlowRecord, addrs: Addrs, boot_ms: u64) {
    for f in fields {
        let n = |out: &mut Vec<u8>, v: u64| write_uint(out, v, f.len);
        match f.value {
            Value::SrcAddr => match addrs {
                Addrs::V4(s, _) => out.extend_from_slice(&s.octets()),
                Addrs::V6(s, _) => out.extend_from_slice(&s.octets()),
            },
            Value::DstAddr => match addrs {
                Addrs::V4(_, d) => out.extend_from_slice(&d.octets()),
                Addrs::V6(_, d) => out.extend_from_slice(&d.octets()),
            },
            Value::SrcPort => n(out, rec.src_port.into()),
            Value::DstPort => n(out, rec.dst_port.into()),
            Value::Protocol => n(out, rec.protocol.into()),
            Value::Tos => n(out, rec.tos.into()),
            Value::TcpFlags => n(out, rec.tcp_flags.into()),
            Value::Octets => n(out, rec.octets),
            Value::Packets => n(out, rec.packets),
            Value::StartMs => n(out, rec.start_ms),
            Value::EndMs => n(out, rec.end_ms),
            Value::StartUptime => n(out, uptime(rec.start_ms, boot_ms).into()),
            Value::EndUptime => n(out, uptime(rec.end_ms, boot_ms).into()),
            Value::Ingress => n(out, rec.ingress_ifindex.into()),
            Value::Egress => n(out, rec.egress_ifindex.into()),
            Value::Direction => n(out, rec.direction as u64),
            Value::EndReason => n(out, rec.end_reason as u64),
            Value::ApplicationId => out.extend_from_slice(&application_id(rec.application_id)),
            Value::ClassId => n(out, rec.class_id.into()),
            Value::Source => n(out, rec.source.into()),
            Value::HandshakeRtt => n(out, rec.handshake_rtt_us.into()),
            Value::Ttfb => n(out, rec.ttfb_us.into()),
            Value::Streaming => n(out, rec.streaming.into()),
        }
    }
}

/// Milliseconds since boot as NetFlow's 32-bit sysUptime: it wraps after 49.7 days, as
/// a router's does, and collectors undo the wrap against the header's uptime. A time
/// before boot (a clock step) is clamped to boot.
pub(crate) fn uptime(ms: u64, boot_ms: u64) -> u32 {
    ms.saturating_sub(boot_ms) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uints_saturate_instead_of_wrapping() {
        let mut out = Vec::new();
        write_uint(&mut out, 0x1_0000_0001, 4);
        write_uint(&mut out, 0x0102, 2);
        assert_eq!(out, [0xff, 0xff, 0xff, 0xff, 0x01, 0x02]);
    }

    #[test]
    fn fixed_strings_keep_a_nul_and_cut_at_char_boundaries() {
        let mut out = Vec::new();
        write_fixed_str(&mut out, "eth0", 6);
        assert_eq!(out, b"eth0\0\0");
        let mut out = Vec::new();
        write_fixed_str(&mut out, "abcdé", 6); // é is 2 bytes at 4..6: cut before it
        assert_eq!(out, b"abcd\0\0");
    }

    #[test]
    fn application_id_is_engine_pen_selector() {
        // 32473 = 0x7ed9
        assert_eq!(application_id(0x0102_0304), [20, 0, 0, 0x7e, 0xd9, 1, 2, 3, 4]);
    }
}
