//! DNS answers to LAN clients, as the datapath punts them: the frame is peeled
//! to the DNS message (Ethernet, VLAN, IPv4/IPv6, UDP or TCP), the message decoded
//! with simple-dns, and every A/AAAA record paired with the names that lead to it
//! (its owner and every name whose CNAME chain ends there), so the catalog can
//! recognise `api.openai.com` even when the address record belongs to a CDN name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use simple_dns::rdata::RData;
use simple_dns::{Packet, PacketFlag};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    #[error("not an IPv4/IPv6 UDP or TCP frame from port 53")]
    NotDns,
    #[error("frame truncated")]
    Truncated,
    #[error("DNS message: {0}")]
    Message(String),
    #[error("a query, not a response")]
    NotResponse,
}

/// One address a client was told, with the names that led to it (owner first,
/// then the names that alias it, nearest first; the question name last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addr: IpAddr,
    pub ttl: u32,
    pub names: Vec<String>,
}

/// The DNS message inside a punted frame (from its Ethernet header).
pub fn message_of_frame(frame: &[u8]) -> Result<&[u8], DnsError> {
    let mut off = 12;
    let mut ethertype = u16::from_be_bytes(*frame.get(off..off + 2).and_then(|s| s.first_chunk()).ok_or(DnsError::Truncated)?);
    off += 2;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        ethertype = u16::from_be_bytes(*frame.get(off + 2..off + 4).and_then(|s| s.first_chunk()).ok_or(DnsError::Truncated)?);
        off += 4;
    }
    let (proto, l4) = match ethertype {
        0x0800 => {
            let ihl = (*frame.get(off).ok_or(DnsError::Truncated)? & 0x0f) as usize * 4;
            let frag = u16::from_be_bytes(*frame.get(off + 6..off + 8).and_then(|s| s.first_chunk()).ok_or(DnsError::Truncated)?);
            if frag & 0x1fff != 0 || ihl < 20 {
                return Err(DnsError::NotDns);
            }
            (*frame.get(off + 9).ok_or(DnsError::Truncated)?, off + ihl)
        }
        // The datapath punts IPv6 answers without extension headers in practice;
        // resolvers do not add them.
        0x86dd => (*frame.get(off + 6).ok_or(DnsError::Truncated)?, off + 40),
        _ => return Err(DnsError::NotDns),
    };
    let sport = u16::from_be_bytes(*frame.get(l4..l4 + 2).and_then(|s| s.first_chunk()).ok_or(DnsError::Truncated)?);
    if sport != 53 {
        return Err(DnsError::NotDns);
    }
    match proto {
        17 => frame.get(l4 + 8..).ok_or(DnsError::Truncated),
        6 => {
            let doff = (*frame.get(l4 + 12).ok_or(DnsError::Truncated)? >> 4) as usize * 4;
            // DNS over TCP: a two-byte length, then the message. Only messages that
            // start in this segment and fit it are read.
            let payload = frame.get(l4 + doff..).ok_or(DnsError::Truncated)?;
            let len = u16::from_be_bytes(*payload.first_chunk().ok_or(DnsError::NotDns)?) as usize;
            payload.get(2..2 + len).ok_or(DnsError::Truncated)
        }
        _ => Err(DnsError::NotDns),
    }
}

/// Every address in a response, with the names leading to it.
pub fn resolved(message: &[u8]) -> Result<Vec<Resolved>, DnsError> {
    let packet = Packet::parse(message).map_err(|e| DnsError::Message(e.to_string()))?;
    if !packet.has_flags(PacketFlag::RESPONSE) {
        return Err(DnsError::NotResponse);
    }
    // alias target -> the names pointing at it
    let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
    for rr in &packet.answers {
        if let RData::CNAME(target) = &rr.rdata {
            aliases.entry(lower(&target.0.to_string())).or_default().push(lower(&rr.name.to_string()));
        }
    }
    let mut out = Vec::new();
    for rr in &packet.answers {
        let addr = match &rr.rdata {
            RData::A(a) => IpAddr::V4(Ipv4Addr::from(a.address)),
            RData::AAAA(a) => IpAddr::V6(Ipv6Addr::from(a.address)),
            _ => continue,
        };
        let mut names = vec![lower(&rr.name.to_string())];
        // Walk the chain backwards, bounded: a CNAME loop must not spin.
        let mut i = 0;
        while i < names.len() && names.len() < 16 {
            if let Some(from) = aliases.get(&names[i]) {
                for n in from {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
            i += 1;
        }
        out.push(Resolved { addr, ttl: rr.ttl, names });
    }
    Ok(out)
}

fn lower(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use simple_dns::rdata::{A, AAAA, CNAME};
    use simple_dns::{Name, Question, ResourceRecord, CLASS, QTYPE, TYPE};

    fn response(records: Vec<ResourceRecord<'static>>) -> Vec<u8> {
        let mut p = Packet::new_reply(7);
        p.questions.push(Question::new(Name::new_unchecked("api.openai.com"), QTYPE::TYPE(TYPE::A), CLASS::IN.into(), false));
        p.answers = records;
        p.build_bytes_vec().unwrap()
    }

    #[test]
    fn cname_chains_lead_back_to_the_asked_name() {
        let msg = response(vec![
            ResourceRecord::new(Name::new_unchecked("API.openai.com"), CLASS::IN, 300, RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.example")))),
            ResourceRecord::new(Name::new_unchecked("edge.cdn.example"), CLASS::IN, 60, RData::CNAME(CNAME(Name::new_unchecked("x.cdn.example")))),
            ResourceRecord::new(Name::new_unchecked("x.cdn.example"), CLASS::IN, 30, RData::A(A { address: u32::from(Ipv4Addr::new(192, 0, 2, 10)) })),
            ResourceRecord::new(Name::new_unchecked("x.cdn.example"), CLASS::IN, 30, RData::AAAA(AAAA { address: u128::from("2001:db8::10".parse::<Ipv6Addr>().unwrap()) })),
        ]);
        let r = resolved(&msg).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].addr, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(r[0].ttl, 30);
        assert_eq!(r[0].names, vec!["x.cdn.example", "edge.cdn.example", "api.openai.com"]);
        assert_eq!(r[1].names, r[0].names);
    }

    #[test]
    fn cname_loops_terminate_and_queries_are_refused() {
        let msg = response(vec![
            ResourceRecord::new(Name::new_unchecked("a.example"), CLASS::IN, 5, RData::CNAME(CNAME(Name::new_unchecked("b.example")))),
            ResourceRecord::new(Name::new_unchecked("b.example"), CLASS::IN, 5, RData::CNAME(CNAME(Name::new_unchecked("a.example")))),
            ResourceRecord::new(Name::new_unchecked("a.example"), CLASS::IN, 5, RData::A(A { address: 1 })),
        ]);
        let r = resolved(&msg).unwrap();
        assert_eq!(r[0].names, vec!["a.example", "b.example"]);
        let mut q = Packet::new_query(1);
        q.questions.push(Question::new(Name::new_unchecked("a.example"), QTYPE::TYPE(TYPE::A), CLASS::IN.into(), false));
        assert_eq!(resolved(&q.build_bytes_vec().unwrap()), Err(DnsError::NotResponse));
        assert!(matches!(resolved(&[1, 2, 3]), Err(DnsError::Message(_))));
    }

    #[test]
    fn frames_are_peeled_to_the_message_for_udp_and_tcp_and_vlan() {
        let msg = response(vec![]);
        let mut udp4 = vec![0u8; 12];
        udp4.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00]); // one VLAN tag, then IPv4
        udp4.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 53, 10, 77, 0, 2]);
        udp4.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 0, 0, 0]);
        udp4.extend_from_slice(&msg);
        assert_eq!(message_of_frame(&udp4).unwrap(), &msg[..]);

        let mut tcp6 = vec![0u8; 12];
        tcp6.extend_from_slice(&[0x86, 0xdd]);
        let mut ip6 = [0u8; 40];
        ip6[0] = 0x60;
        ip6[6] = 6;
        tcp6.extend_from_slice(&ip6);
        let mut tcp = [0u8; 20];
        tcp[1] = 53;
        tcp[12] = 5 << 4;
        tcp6.extend_from_slice(&tcp);
        tcp6.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        tcp6.extend_from_slice(&msg);
        assert_eq!(message_of_frame(&tcp6).unwrap(), &msg[..]);

        for cut in 0..udp4.len() - msg.len() {
            assert!(message_of_frame(&udp4[..cut]).is_err(), "cut at {cut} accepted");
        }
        let mut not53 = udp4.clone();
        not53[4 + 14 + 20 + 1] = 54;
        assert_eq!(message_of_frame(&not53), Err(DnsError::NotDns));
    }
}
