//! Sending export messages over UDP without ever waiting.
//!
//! One non-blocking socket per collector, connected so that the kernel picks the
//! source address and reports a collector that is down (ICMP port unreachable comes
//! back as ECONNREFUSED on a later send). A message that cannot go out now (EAGAIN:
//! the socket buffer is full) or at all is dropped and counted: flow export must
//! never hold up the daemon, and a late flow record is worth little anyway.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use super::ExportError;

/// What one sender has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    pub messages_sent: u64,
    pub bytes_sent: u64,
    /// Messages not sent, for any reason.
    pub send_errors: u64,
    /// Of those, the collector refused (nothing listens at its port).
    pub refused: u64,
    /// Of those, the socket buffer was full.
    pub would_block: u64,
}

#[derive(Debug)]
pub struct UdpSender {
    collector: SocketAddr,
    socket: UdpSocket,
    stats: SendStats,
}

impl UdpSender {
    /// Binds an ephemeral port of the collector's family and connects it.
    pub fn new(collector: SocketAddr) -> Result<UdpSender, ExportError> {
        let err = |source| ExportError::Socket { collector, source };
        let local: SocketAddr = match collector {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local).map_err(err)?;
        socket.connect(collector).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        Ok(UdpSender { collector, socket, stats: SendStats::default() })
    }

    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    /// Sends each message as one datagram. Never blocks and never fails: what does not
    /// go out is counted.
    pub fn send(&mut self, messages: &[Vec<u8>]) {
        for m in messages {
            match self.socket.send(m) {
                Ok(n) => {
                    self.stats.messages_sent += 1;
                    self.stats.bytes_sent += n as u64;
                }
                Err(e) => {
                    self.stats.send_errors += 1;
                    match e.kind() {
                        io::ErrorKind::ConnectionRefused => self.stats.refused += 1,
                        io::ErrorKind::WouldBlock => self.stats.would_block += 1,
                        _ => {}
                    }
                    tracing::trace!(collector = %self.collector, "export send: {e}");
                }
            }
        }
    }

    pub fn stats(&self) -> SendStats {
        self.stats
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
        let mut s = UdpSender::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
        let msgs = vec![vec![0u8; 100]; 5];
        for _ in 0..3 {
            s.send(&msgs);
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
        let mut s = UdpSender::new(rx.local_addr().unwrap()).unwrap();
        s.send(&[vec![1, 2, 3], vec![4; 1472]]);
        let mut buf = [0u8; 2000];
        rx.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let n1 = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n1], &[1, 2, 3]);
        let n2 = rx.recv(&mut buf).unwrap();
        assert_eq!(n2, 1472, "expected a 1472-byte datagram, saw {n2}");
        assert_eq!(s.stats(), SendStats { messages_sent: 2, bytes_sent: 1475, ..SendStats::default() });
    }
}
