//! A DNS server for lab scenery: answers A and AAAA queries for a fixed zone over
//! UDP on [`addr::DNS_V4`] and [`addr::DNS_V6`] in `inet`, and a client that asks
//! it from the LAN. Real DNS messages (simple-dns) through the router, so the
//! datapath sees and punts the answers as it does any resolver's.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use simple_dns::rdata::{RData, A, AAAA};
use simple_dns::{Name, Packet, Question, ResourceRecord, CLASS, QTYPE, TYPE};

use super::{addr, Lab, LabError, Role};

/// TTL of every answer.
const TTL: u32 = 30;

/// Answers for `zone` until dropped.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serve `zone` (name → addresses, both families mixed) in `inet`.
    pub fn start(lab: &Lab, zone: &[(&str, IpAddr)]) -> Result<DnsServer, LabError> {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in zone {
            map.entry(name.trim_end_matches('.').to_ascii_lowercase()).or_default().push(*ip);
        }
        let map = Arc::new(map);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ip in [IpAddr::V4(addr::DNS_V4), IpAddr::V6(addr::DNS_V6)] {
            let sock = lab.ns(Role::Inet).run_in("bind the lab DNS server", || {
                let s = UdpSocket::bind(SocketAddr::new(ip, 53))?;
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            })?;
            let (map, stop) = (map.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                    if let Some(reply) = answer(&map, &buf[..n]) {
                        let _ = sock.send_to(&reply, from);
                    }
                }
            }));
        }
        Ok(DnsServer { stop, threads })
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The reply to one query; None for what is not a parsable query.
fn answer(zone: &HashMap<String, Vec<IpAddr>>, query: &[u8]) -> Option<Vec<u8>> {
    let q = Packet::parse(query).ok()?;
    let question = q.questions.first()?.clone().into_owned();
    let name = question.qname.to_string().trim_end_matches('.').to_ascii_lowercase();
    let qtype = question.qtype;
    let mut reply = Packet::new_reply(q.id());
    reply.questions.push(question);
    for ip in zone.get(&name).into_iter().flatten() {
        let data = match ip {
            IpAddr::V4(a) if qtype == QTYPE::TYPE(TYPE::A) => RData::A(A { address: u32::from(*a) }),
            IpAddr::V6(a) if qtype == QTYPE::TYPE(TYPE::AAAA) => RData::AAAA(AAAA { address: u128::from(*a) }),
            _ => continue,
        };
        reply
            .answers
            .push(ResourceRecord::new(Name::new_unchecked(&name).into_owned(), CLASS::IN, TTL, data));
    }
    reply.build_bytes_vec().ok()
}

/// Ask the lab DNS server (over IPv4) from a socket the caller bound, as a stub
/// resolver does: one query, the answer's addresses of the asked family.
pub fn lookup(sock: &UdpSocket, id: u16, name: &str, v6: bool) -> io::Result<Vec<IpAddr>> {
    let mut q = Packet::new_query(id);
    let qtype = if v6 { TYPE::AAAA } else { TYPE::A };
    q.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(qtype), CLASS::IN.into(), false));
    let query = q.build_bytes_vec().map_err(io::Error::other)?;
    sock.send_to(&query, (addr::DNS_V4, 53))?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = sock.recv_from(&mut buf)?;
        let Ok(p) = Packet::parse(&buf[..n]) else { continue };
        if p.id() != id {
            continue; // a late answer to an earlier query
        }
        return Ok(p
            .answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(IpAddr::V4(a.address.into())),
                RData::AAAA(a) => Some(IpAddr::V6(a.address.into())),
                _ => None,
            })
            .collect());
    }
}
