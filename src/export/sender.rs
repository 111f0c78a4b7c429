//! Sending export messages over UDP, paced, without ever waiting.
//!
//! One non-blocking socket per collector, connected so that the kernel picks the
//! source address and reports a collector that is down (ICMP port unreachable comes
//! back as ECONNREFUSED on a later send).
//!
//! Pacing: flows end in bursts (a scan that finds thousands idle at once, a stop
//! that exports everything), and a burst of datagrams overflows the collector's
//! receive buffer (nfcapd's is the kernel default, about 200 KiB, ~150 messages),
//! where the loss is silent. So messages go into a bounded backlog, and a token
//! bucket (`rate` messages a second, `BURST` at once) lets them out; the daemon calls
//! [`UdpSender::pump`] every few milliseconds while a backlog remains. A message
//! that meets a full socket buffer (EAGAIN) waits in the backlog too. Only a backlog
//! past `MAX_BACKLOG_BYTES` drops (counted): flow export must never hold up the
//! daemon or grow without bound.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use super::ExportError;

/// Messages the bucket holds: what may leave back to back. 32 full messages take
/// about 74 KiB of a receive buffer (2.3 KiB of kernel memory each); the default
/// 208 KiB holds about 90. The daemon pumps every 2 ms, so the bucket refills
/// before it runs dry at any pace up to 16,000 messages a second.
pub const BURST: f64 = 32.0;
/// Bytes of messages waiting before new ones are dropped: about 11,000 full
/// messages, 300,000 flows, the export of a full default flow table.
pub const MAX_BACKLOG_BYTES: usize = 16 * 1024 * 1024;

/// What one sender has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    /// Messages not sent, for any reason.
    pub send_errors: u64,
    /// Of those, the collector refused (nothing listens at its port).
    pub refused: u64,
    /// Sends that met a full socket buffer (the message stayed in the backlog).
    pub would_block: u64,
    /// Of the errors, messages dropped because the backlog was full.
    pub backlog_dropped: u64,
    /// Messages waiting now.
    pub backlog: u64,
}

#[derive(Debug)]
pub struct UdpSender {
    collector: SocketAddr,
    socket: UdpSocket,
    stats: SendStats,
    backlog: VecDeque<Vec<u8>>,
    backlog_bytes: usize,
    /// Messages per second.
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl UdpSender {
    /// Binds an ephemeral port of the collector's family and connects it; sends at
    /// most `rate` messages a second.
    pub fn new(collector: SocketAddr, rate: u32) -> Result<UdpSender, ExportError> {
        let err = |source| ExportError::Socket { collector, source };
        let local: SocketAddr = match collector {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(err)?;
        socket.connect(collector).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        Ok(UdpSender {
            collector,
            socket,
            stats: SendStats::default(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            rate: f64::from(rate.max(1)),
            tokens: BURST,
            refilled: Instant::now(),
        })
    }

    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    /// Queues each message as one datagram and sends what the pace allows now.
    /// Never blocks and never fails: what is dropped is counted.
    pub fn send(&mut self, messages: Vec<Vec<u8>>) {
        for m in messages {
            if self.backlog_bytes + m.len() > MAX_BACKLOG_BYTES {
                self.stats.send_errors += 1;
                self.stats.backlog_dropped += 1;
                continue;
            }
            self.backlog_bytes += m.len();
            self.backlog.push_back(m);
        }
        self.pump(Instant::now());
    }

    /// Sends what the token bucket allows at `now`; returns the messages still
    /// waiting.
    pub fn pump(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(BURST);
        self.refilled = now;
        while self.tokens >= 1.0 {
            let Some(m) = self.backlog.front() else { break };
            match self.socket.send(m) {
                Ok(n) => {
                    self.stats.messages_sent += 1;
                    self.stats.bytes_sent += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket buffer is full: the message waits for the next pump.
                    self.stats.would_block += 1;
                    break;
                }
                Err(e) => {
                    self.stats.send_errors += 1;
                    if e.kind() == io::ErrorKind::ConnectionRefused {
                        self.stats.refused += 1;
                    }
                    tracing::trace!(collector = %self.collector, "export send: {e}");
                }
            }
            self.tokens -= 1.0;
            if let Some(m) = self.backlog.pop_front() {
                self.backlog_bytes -= m.len();
            }
        }
        self.backlog.len()
    }

    pub fn stats(&self) -> SendStats {
        SendStats { backlog: self.backlog.len() as u64, ..self.stats }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback only, and a port nothing listens on: the kernel answers with port
    /// unreachable, which must cost a counter and nothing else.
    #[test]
    fn a_collector_that_is_down_costs_only_counters() {
        // Bind then drop a socket to get a port that was free a moment ago.
        let port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut s = UdpSender::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), 10_000).unwrap();
        let msgs = vec![vec![0u8; 100]; 5];
        for _ in 0..3 {
            s.send(msgs.clone());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let st = s.stats();
        assert_eq!(st.messages_sent + st.send_errors, 15, "expected every message counted once, saw {st:?}");
        assert!(st.refused >= 1, "expected ECONNREFUSED to be seen and counted, saw {st:?}");
        assert_eq!(st.bytes_sent, st.messages_sent * 100);
    }

    #[test]
    fn messages_arrive_whole() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = UdpSender::new(rx.local_addr().unwrap(), 10_000).unwrap();
        s.send(vec![vec![1, 2, 3], vec![4; 1472]]);
        let mut buf = [0u8; 2000];
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let n1 = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n1], &[1, 2, 3]);
        let n2 = rx.recv(&mut buf).unwrap();
        assert_eq!(n2, 1472, "expected a 1472-byte datagram, saw {n2}");
        assert_eq!(s.stats(), SendStats { messages_sent: 2, bytes_sent: 1475, ..SendStats::default() });
    }

    /// A burst far larger than the bucket leaves at the configured pace, whole and
    /// in order, and nothing is lost although the receiver's buffer is small.
    #[test]
    fn a_burst_leaves_at_the_pace_and_arrives_whole() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The default receive buffer (about 90 messages): an unpaced burst of 600
        // would overflow it.
        socket2::SockRef::from(&rx).set_recv_buffer_size(200 * 1024).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
        let rate = 2_000;
        let mut s = UdpSender::new(rx.local_addr().unwrap(), rate).unwrap();
        let msgs: Vec<Vec<u8>> = (0..600u32).map(|i| { let mut m = i.to_be_bytes().to_vec(); m.resize(1400, 0); m }).collect();
        let start = Instant::now();
        s.send(msgs);
        assert_eq!(s.stats().messages_sent, BURST as u64, "expected one bucket's worth at once");
        let mut got = Vec::new();
        let mut buf = [0u8; 2000];
        while got.len() < 600 && start.elapsed() < std::time::Duration::from_secs(5) {
            s.pump(Instant::now());
            // Drain what arrived; the receiver is slower than an unpaced sender.
            while let Ok(n) = { rx.set_nonblocking(true).unwrap(); rx.recv(&mut buf) } {
                assert_eq!(n, 1400);
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let took = start.elapsed().as_secs_f64();
        assert_eq!(got, (0..600).collect::<Vec<_>>(), "expected every message, in order");
        // 568 messages past the bucket at 2,000 a second: at least 0.28 s.
        assert!(took >= (600.0 - BURST) / f64::from(rate) * 0.95, "expected the pace kept, took {took:.3} s");
        let st = s.stats();
        assert_eq!((st.messages_sent, st.send_errors, st.backlog), (600, 0, 0), "{st:?}");
    }

    #[test]
    fn a_full_backlog_drops_and_counts() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut s = UdpSender::new(rx.local_addr().unwrap(), 1).unwrap();
        let fits = MAX_BACKLOG_BYTES / 1400;
        s.send(vec![vec![0u8; 1400]; fits + 1000]);
        let st = s.stats();
        // All but 1000 are queued; the bucket lets BURST out; the rest wait.
        assert_eq!(st.backlog_dropped, 1000, "{st:?}");
        assert_eq!(st.messages_sent, BURST as u64, "{st:?}");
        assert_eq!(st.backlog, (fits - BURST as usize) as u64, "{st:?}");
        assert_eq!(st.messages_sent + st.send_errors + st.backlog, (fits + 1000) as u64, "every message accounted once: {st:?}");
    }
}
