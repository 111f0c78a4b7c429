//! The client packets the datapath punts (TLS handshakes, QUIC Initials), peeled
//! to the flow they belong to and their transport payload. Only what the punt
//! path needs: Ethernet, up to two VLAN tags, IPv4, IPv6 with hop-by-hop,
//! routing and destination options headers, TCP and UDP.

use crate::bpf::abi::{self, FlowKey};

/// A client packet: its flow (upload orientation, as the datapath keys it), the
/// TCP sequence number (0 for UDP), and the transport payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPacket<'a> {
    pub key: FlowKey,
    pub seq: u32,
    pub payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

pub fn client_packet(frame: &[u8]) -> Option<ClientPacket<'_>> {
    let mut off = 12;
    let mut ethertype = be16(frame, off)?;
    off += 2;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = be16(frame, off + 2)?;
        off += 4;
    }
    let (family, src, dst, mut proto, mut l4, end) = match ethertype {
        0x0800 => {
            let ihl = (*frame.get(off)? & 0x0f) as usize * 4;
            if ihl < 20 || be16(frame, off + 6)? & 0x3fff != 0 {
                return None; // fragments carry no (or only part of the) payload
            }
            let total = be16(frame, off + 2)? as usize;
            let mut s = [0u8; 4];
            let mut d = [0u8; 4];
            s.copy_from_slice(frame.get(off + 12..off + 16)?);
            d.copy_from_slice(frame.get(off + 16..off + 20)?);
            let src = abi::addr_bytes(std::net::Ipv4Addr::from(s).into());
            let dst = abi::addr_bytes(std::net::Ipv4Addr::from(d).into());
            (4u8, src, dst, *frame.get(off + 9)?, off + ihl, (off + total).min(frame.len()))
        }
        0x86dd => {
            let payload_len = be16(frame, off + 4)? as usize;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(frame.get(off + 8..off + 24)?);
            dst.copy_from_slice(frame.get(off + 24..off + 40)?);
            (6u8, src, dst, *frame.get(off + 6)?, off + 40, (off + 40 + payload_len).min(frame.len()))
        }
        _ => return None,
    };
    if family == 6 {
        for _ in 0..6 {
            match proto {
                0 | 43 | 60 => {
                    let next = *frame.get(l4)?;
                    l4 += (*frame.get(l4 + 1)? as usize + 1) * 8;
                    proto = next;
                }
                _ => break,
            }
        }
    }
    let (sport, dport, seq, payload_at) = match proto {
        6 => {
            let doff = (*frame.get(l4 + 12)? >> 4) as usize * 4;
            let seq = u32::from_be_bytes(frame.get(l4 + 4..l4 + 8)?.try_into().ok()?);
            (be16(frame, l4)?, be16(frame, l4 + 2)?, seq, l4 + doff)
        }
        17 => (be16(frame, l4)?, be16(frame, l4 + 2)?, 0, l4 + 8),
        _ => return None,
    };
    let payload = frame.get(payload_at..end.max(payload_at))?;
    Some(ClientPacket {
        key: FlowKey {
            client: src,
            remote: dst,
            client_port: sport.to_be(),
            remote_port: dport.to_be(),
            proto,
            family,
            pad: 0,
        },
        seq,
        payload,
    })
}
