//! Packet captures for lab tests: tcpdump in one of the lab's namespaces, its
//! `-v` text read into memory as it comes, and parsed into what the tests check
//! on the wire (addresses, ports, DSCP, TCP flags, payload length).

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Lab, LabError, Role};

/// One captured IP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// DSCP (TOS or traffic class >> 2).
    pub dscp: u8,
    /// TCP flags as tcpdump prints them ("S", "S.", "P.", ...); None for UDP.
    pub tcp_flags: Option<String>,
    /// Transport payload bytes.
    pub payload: usize,
}

impl Packet {
    pub fn is_v6(&self) -> bool {
        self.src.is_ipv6()
    }

    /// A TCP SYN without ACK: the first packet of a connection.
    pub fn is_syn(&self) -> bool {
        self.tcp_flags.as_deref() == Some("S")
    }
}

/// Parses `tcpdump -v -nn -t` text. IPv4: the header line ("IP (tos 0x.., ...,
/// length N)") then the addresses on the next line; IPv6: one line ("IP6 (class
/// 0x.., ... payload length: N) addresses"), with the class left out when 0.
/// Lines that are not TCP or UDP over IP are skipped.
pub fn parse(text: &str) -> Vec<Packet> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let v6 = l.starts_with("IP6 ");
        if !v6 && !l.starts_with("IP ") {
            continue;
        }
        let field = |name: &str| -> Option<&str> {
            let at = l.find(name)? + name.len();
            let end = l[at..].find(|c: char| !c.is_ascii_alphanumeric()).map_or(l.len(), |e| at + e);
            Some(&l[at..end])
        };
        let tos = if v6 { field("class 0x").unwrap_or("0") } else { field("tos 0x").unwrap_or("0") };
        let Ok(tos) = u8::from_str_radix(tos, 16) else { continue };
        let ip_len: Option<usize> =
            if v6 { field("payload length: ").and_then(|s| s.parse().ok()) } else { field(", length ").and_then(|s| s.parse().ok()) };
        let addrs = if v6 { *l } else { lines.get(i + 1).copied().unwrap_or("") };
        let Some(gt) = addrs.find(" > ") else { continue };
        let (Some(src), Some(dst)) = (
            addrs[..gt].split_whitespace().last().and_then(endpoint),
            addrs[gt + 3..].split(": ").next().and_then(endpoint),
        ) else {
            continue;
        };
        let rest = addrs[gt + 3..].split_once(": ").map_or("", |(_, r)| r);
        let (tcp_flags, payload) = if let Some(flags) = rest.strip_prefix("Flags [") {
            let flags = flags.split(']').next().unwrap_or("").to_string();
            let len = rest.rsplit("length ").next().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            (Some(flags), len)
        } else {
            // UDP: the IP length minus the headers (tcpdump may dissect the payload).
            let udp = if v6 { ip_len.map(|n| n.saturating_sub(8)) } else { ip_len.map(|n| n.saturating_sub(28)) };
            (None, udp.unwrap_or(0))
        };
        out.push(Packet { src, dst, dscp: tos >> 2, tcp_flags, payload });
    }
    out
}

/// "192.0.2.10.443" or "2001:db8::10.443".
fn endpoint(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.trim().trim_end_matches(':').rsplit_once('.')?;
    Some(SocketAddr::new(ip.parse::<IpAddr>().ok()?, port.parse().ok()?))
}

/// tcpdump running in a lab namespace; stopped by [`Capture::stop`] or with the lab.
pub struct Capture {
    pid: u32,
    text: Arc<Mutex<String>>,
    reader: JoinHandle<()>,
}

impl Capture {
    /// Capture on `iface` in `role`'s namespace with a pcap `filter`; returns once
    /// tcpdump is listening.
    pub fn start(lab: &mut Lab, role: Role, iface: &str, filter: &str) -> Result<Capture, LabError> {
        let child = lab.spawn_piped(role, "tcpdump", &["-i", iface, "-l", "-t", "-nn", "-v", filter])?;
        let mut err = BufReader::new(child.stderr);
        let mut line = String::new();
        // "listening on IFACE ...": capturing from here.
        let _ = err.read_line(&mut line);
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        let text = Arc::new(Mutex::new(String::new()));
        let reader = {
            let (text, mut stdout) = (text.clone(), child.stdout);
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    text.lock().unwrap_or_else(|p| p.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        Ok(Capture { pid: child.pid, text, reader })
    }

    /// The packets captured so far.
    pub fn packets(&self) -> Vec<Packet> {
        parse(&self.text.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The packets once the capture stopped growing for `quiet` (at most `limit`).
    pub fn settled(&self, quiet: Duration, limit: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + limit;
        let mut last = self.packets();
        loop {
            std::thread::sleep(quiet);
            let now = self.packets();
            if now.len() == last.len() || Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// Stop tcpdump; the text captured.
    pub fn stop(self, lab: &mut Lab) -> Result<String, LabError> {
        lab.stop(self.pid)?;
        let _ = self.reader.join();
        let text = self.text.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_udp_of_both_families() {
        let text = "\
IP (tos 0xb8, ttl 63, id 0, offset 0, flags [DF], proto TCP (6), length 60)
    198.51.100.2.41112 > 192.0.2.10.443: Flags [S], cksum 0x1 (incorrect -> 0x2), seq 1, win 64240, options [mss 1460], length 0
IP6 (flowlabel 0x7ffd9, hlim 63, next-header TCP (6) payload length: 260) 2001:db8:1::2.50926 > 2001:db8:100::10.8000: Flags [P.], cksum 0x5d8f, seq 1:229, ack 1, win 64, length 228
IP (tos 0xba,ECT(0), ttl 63, id 1, offset 0, flags [DF], proto UDP (17), length 1228)
    198.51.100.2.5000 > 192.0.2.10.443: quic, initial, dcid 11
IP6 (class 0xb8, flowlabel 0x1, hlim 63, next-header UDP (17) payload length: 68) 2001:db8:1::2.5000 > 2001:db8:100::10.443: UDP, length 60
arp who-has 10.0.0.1
";
        let p = parse(text);
        assert_eq!(p.len(), 4, "{p:#?}");
        assert_eq!(p[0].src, "198.51.100.2:41112".parse().unwrap());
        assert_eq!(p[0].dst, "192.0.2.10:443".parse().unwrap());
        assert_eq!((p[0].dscp, p[0].is_syn(), p[0].payload), (46, true, 0));
        assert_eq!((p[1].dscp, p[1].tcp_flags.as_deref(), p[1].payload, p[1].is_v6()), (0, Some("P."), 228, true));
        assert_eq!(p[1].dst, "[2001:db8:100::10]:8000".parse().unwrap());
        assert_eq!((p[2].dscp, p[2].tcp_flags.clone(), p[2].payload), (46, None, 1200));
        assert_eq!((p[3].dscp, p[3].payload), (46, 60));
    }
}
