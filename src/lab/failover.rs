//! Failover measurement in the lab: a LAN client sends one small UDP datagram every
//! 10 ms (one flow), a sink in `inet` records when each arrived and from which
//! address; the NAT source names the uplink it left through. Used by the uplink
//! tests and by the failover benchmark.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Lab, Role};

/// The interval between the stream's datagrams.
pub const STREAM_INTERVAL: Duration = Duration::from_millis(10);

/// One datagram as the sink saw it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub from: IpAddr,
    pub seq: u32,
}

/// Receive on `bind` in the inet namespace until `stop`.
pub fn sink(lab: &Lab, bind: SocketAddr, stop: &AtomicBool) -> std::io::Result<Vec<Arrival>> {
    lab.ns(Role::Inet)
        .run_in("udp sink", || {
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            let mut out = Vec::new();
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if n >= 4 {
                        let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        out.push(Arrival { at: Instant::now(), from: from.ip(), seq });
                    }
                }
            }
            Ok(out)
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// One datagram every [`STREAM_INTERVAL`] to `to`, from one socket (one flow), in
/// the LAN namespace, until `stop`. Returns how many were sent.
pub fn stream(lab: &Lab, to: SocketAddr, stop: &AtomicBool) -> std::io::Result<u32> {
    lab.ns(Role::Lan)
        .run_in("udp stream", || {
            let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            let s = UdpSocket::bind(any)?;
            let mut seq = 0u32;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // ICMP errors during a switch surface here: keep sending.
                let _ = s.send_to(&seq.to_be_bytes(), to);
                seq += 1;
                let next = start + STREAM_INTERVAL * seq;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(seq)
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// When the first datagram from `from` arrived at or after `after`.
pub fn first_from(arrivals: &[Arrival], from: IpAddr, after: Instant) -> Option<Instant> {
    arrivals.iter().find(|a| a.at >= after && a.from == from).map(|a| a.at)
}

/// The longest silence between datagrams arriving within [from, to].
pub fn largest_gap(arrivals: &[Arrival], from: Instant, to: Instant) -> Duration {
    let times: Vec<Instant> = arrivals.iter().map(|a| a.at).filter(|&t| t >= from && t <= to).collect();
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::MAX)
}

/// Sets the flag when dropped: a test that panics while a stream and a sink run
/// in scoped threads still stops them, so the scope ends and the lab's guard
/// removes its namespaces.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
