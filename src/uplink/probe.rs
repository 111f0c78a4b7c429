//! Active probes that leave only through one uplink: ICMP echo (IPv4, IPv6), TCP
//! connect, DNS query over UDP.
//!
//! # Leaving through the right uplink
//! Every probe socket gets `SO_BINDTODEVICE` (the uplink interface: sent out of it,
//! and only replies that arrive on it are seen) and `SO_MARK` (the uplink's fwmark: the
//! policy-routing rules pick the uplink's table by mark, so the route lookup uses the
//! uplink's gateway even when the main table prefers another uplink), and optionally an
//! explicit source address. Both are set with socket2 before the first packet, then the
//! socket is handed to tokio.
//!
//! # ICMP: raw sockets, not ping sockets
//! Ping sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`) are only allowed to groups inside
//! `net.ipv4.ping_group_range`, which is per network namespace and denies everyone,
//! root included, by default ("1 0"); the daemon would depend on a sysctl it does not
//! own. We run as root (CAP_NET_RAW), so we use `SOCK_RAW`: it works everywhere, lets us
//! pick the echo identifier and payload (a per-prober random id and nonce, so replies
//! are matched by id, sequence, nonce and source, and late replies are recognised), and
//! shows the real IP length of each reply for byte counting. The cost of raw sockets —
//! seeing every ICMP packet — is cut by `SO_BINDTODEVICE` (only this uplink) and the
//! kernel's `ICMP_FILTER` / `ICMP6_FILTER` (only echo replies reach us).
//!
//! # TCP: a RST is an answer
//! A completed handshake or a RST from the target both prove the path works in both
//! directions (the SYN reached the target and its answer came back over this uplink),
//! so both count as answered (`Refused` is reported separately). An ICMP unreachable or
//! no answer counts as lost. The connection is closed with `SO_LINGER` 0, i.e. a RST,
//! so no FIN exchange and no TIME_WAIT.
//!
//! # Bytes (IP level: IP header + ICMP/UDP/TCP)
//! ICMP and DNS bytes are exact: what we send is known, and received lengths are read
//! from the socket (IPv4 raw sockets return the IP header; for IPv6 the fixed 40-byte
//! header is added, extension headers are not seen). TCP handshake bytes are not visible
//! to a stream socket, so they are counted from the packets Linux sends: SYN and SYN-ACK
//! with MSS, SACK-permitted, timestamps and window scale (20 option bytes), the final
//! ACK with timestamps (12), our RST without options; a refused probe is SYN + RST/ACK;
//! an unanswered one is its SYNs, the kernel retransmitting at 1 s, 3 s, 7 s.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, TYPE};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::health::RoundOutcome;
use crate::config::Probe;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Echo payload: the prober's 4-byte nonce and a 4-byte round number.
const ICMP_PAYLOAD_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
const IPV4_HEADER: u64 = 20;
const IPV6_HEADER: u64 = 40;
const UDP_HEADER: u64 = 8;
const TCP_HEADER: u64 = 20;
/// Options on a Linux SYN / SYN-ACK (MSS 4, SACK-permitted 2, timestamps 10, NOP 1,
/// window scale 3) and on the ACK (NOP NOP timestamps).
const TCP_SYN_OPTIONS: u64 = 20;
const TCP_ACK_OPTIONS: u64 = 12;
/// How long replies are still recognised (and TCP connects kept) after sending.
pub const DEFAULT_LATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("open {kind} probe socket for uplink {uplink} ({interface}): {source}")]
    Socket {
        kind: &'static str,
        uplink: String,
        interface: String,
        source: io::Error,
    },
    #[error("{option} on {kind} probe socket for uplink {uplink} ({interface}): {source}")]
    Option {
        option: &'static str,
        kind: &'static str,
        uplink: String,
        interface: String,
        source: io::Error,
    },
    #[error("uplink {uplink}: no probe targets")]
    NoTargets { uplink: String },
}

/// What the prober of one uplink needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProberConfig {
    /// For errors and logs.
    pub uplink: String,
    pub interface: String,
    /// fwmark the policy-routing rules map to this uplink's table.
    pub mark: u32,
    pub source_v4: Option<Ipv4Addr>,
    pub source_v6: Option<Ipv6Addr>,
    pub targets: Vec<Probe>,
    pub late_window: Duration,
}

impl ProberConfig {
    pub fn new(uplink: &str, interface: &str, mark: u32, targets: Vec<Probe>) -> ProberConfig {
        ProberConfig {
            uplink: uplink.to_owned(),
            interface: interface.to_owned(),
            mark,
            source_v4: None,
            source_v6: None,
            targets,
            late_window: DEFAULT_LATE_WINDOW,
        }
    }
}

/// What happened to one target's probe in one round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetStatus {
    /// Echo reply, DNS response, or TCP handshake completed.
    Answered,
    /// TCP RST from the target: reachable, counts as answered.
    Refused,
    /// No answer within the round's timeout (or an ICMP error for TCP).
    Lost,
    /// The probe could not be sent (e.g. no route): counts as lost.
    SendFailed(io::ErrorKind),
    /// Still waiting (only inside the prober).
    Pending,
}

impl TargetStatus {
    pub fn answered(self) -> bool {
        matches!(self, TargetStatus::Answered | TargetStatus::Refused)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetResult {
    pub probe: Probe,
    pub status: TargetStatus,
    pub rtt: Option<Duration>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A reply that came after its round was closed as lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateReply {
    pub round: u64,
    pub target: usize,
    pub probe: Probe,
    pub status: TargetStatus,
    pub rtt: Duration,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One round: one probe to each target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundResult {
    pub round: u64,
    pub started: Instant,
    pub timeout: Duration,
    /// Any target answered within the timeout.
    pub answered: bool,
    pub targets: Vec<TargetResult>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Late replies to earlier rounds that arrived while this round ran (only filled by
    /// [`Prober::round`]; [`Prober::next_event`] reports them as they come).
    pub late: Vec<LateReply>,
}

impl RoundResult {
    /// What the health state machine needs.
    pub fn outcome(&self) -> RoundOutcome {
        RoundOutcome {
            started: Some(self.started),
            answered: self.answered,
            rtts: self
                .targets
                .iter()
                .filter(|t| t.status.answered())
                .filter_map(|t| t.rtt)
                .collect(),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    Round(RoundResult),
    Late(LateReply),
}

/// Totals since the prober started, including late and abandoned probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    pub probes: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// IP-level bytes of one echo request to `target` (the reply is the same size).
pub fn icmp_echo_ip_bytes(target: IpAddr) -> u64 {
    let icmp = echo_request(target.is_ipv6(), 0, 0, 0, 0).len() as u64;
    ip_header(target) + icmp
}

fn ip_header(addr: IpAddr) -> u64 {
    if addr.is_ipv4() {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    }
}

/// IP-level bytes of a TCP probe: (sent, received) for the given status, and for a lost
/// one after `elapsed`.
pub fn tcp_probe_bytes(target: IpAddr, status: TargetStatus, elapsed: Duration) -> (u64, u64) {
    let ip = ip_header(target);
    let syn = ip + TCP_HEADER + TCP_SYN_OPTIONS;
    let ack = ip + TCP_HEADER + TCP_ACK_OPTIONS;
    let rst = ip + TCP_HEADER;
    match status {
        // SYN, ACK, RST out; SYN-ACK in.
        TargetStatus::Answered => (syn + ack + rst, syn),
        // SYN out; RST/ACK in.
        TargetStatus::Refused => (syn, rst),
        _ => {
            // Initial RTO 1 s, doubling: SYNs at 0, 1, 3, 7 s ...
            let s = elapsed.as_secs();
            let syns = 1 + [1u64, 3, 7, 15, 31].iter().filter(|&&t| s >= t).count() as u64;
            (syns * syn, 0)
        }
    }
}

/// Upper bound of the IP-level bytes (both directions) of one round to `targets`, for
/// byte budgets: ICMP exact, TCP a completed handshake with our RST, DNS the query plus a
/// 512-byte response (the most a server may send over UDP to a query without EDNS, which
/// ours is).
pub fn round_bytes_upper_bound(targets: &[Probe]) -> u64 {
    targets
        .iter()
        .map(|probe| match *probe {
            Probe::Icmp(addr) => 2 * icmp_echo_ip_bytes(addr),
            Probe::Tcp(addr) => {
                let (s, r) = tcp_probe_bytes(addr.ip(), TargetStatus::Answered, Duration::ZERO);
                s + r
            }
            Probe::Dns(addr) => {
                let ip = ip_header(addr.ip()) + UDP_HEADER;
                ip + dns_query(0).len() as u64 + ip + 512
            }
        })
        .sum()
}

/// An echo request: type, code, checksum (IPv4 only; the kernel fills it for ICMPv6),
/// identifier, sequence, then nonce and round number.
fn echo_request(v6: bool, id: u16, seq: u16, nonce: u32, round: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(ICMP_HEADER_LEN + ICMP_PAYLOAD_LEN);
    p.push(if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMP_ECHO_REQUEST
    });
    p.extend_from_slice(&[0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&nonce.to_be_bytes());
    p.extend_from_slice(&round.to_be_bytes());
    if !v6 {
        let sum = inet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Parses an echo reply (for IPv4 starting at the IP header): (id, seq, nonce, source
/// if in the packet).
fn parse_echo_reply(v6: bool, data: &[u8]) -> Option<(u16, u16, u32)> {
    let icmp = if v6 {
        data
    } else {
        let ihl = usize::from(*data.first()? & 0x0f) * 4;
        data.get(ihl..)?
    };
    let want = if v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    if icmp.len() < ICMP_HEADER_LEN + ICMP_PAYLOAD_LEN || icmp[0] != want || icmp[1] != 0 {
        return None;
    }
    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
    let nonce = u32::from_be_bytes([icmp[8], icmp[9], icmp[10], icmp[11]]);
    Some((id, seq, nonce))
}

/// A DNS query for the root SOA (small, answered by every resolver and every root or
/// authoritative server with at least a referral or an error — all of which count).
pub fn dns_query(id: u16) -> Vec<u8> {
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        Name::new_unchecked(""),
        QTYPE::TYPE(TYPE::SOA),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet
        .build_bytes_vec()
        .expect("a one-question query always builds")
}

/// The id of a well-formed DNS response, or None.
fn dns_response_id(data: &[u8]) -> Option<u16> {
    let packet = Packet::parse(data).ok()?;
    packet.has_flags(PacketFlag::RESPONSE).then(|| packet.id())
}

fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for writes of 8 bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        // Uniqueness, not secrecy, is what matters here.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(buf)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Icmp(u16),
    Dns(u16),
    Tcp(u64),
}

/// What the receive tasks report.
#[derive(Debug)]
struct Reply {
    key: Key,
    at: Instant,
    from: Option<IpAddr>,
    status: TargetStatus,
    bytes_sent: u64,
    bytes_received: u64,
}

#[derive(Debug)]
struct Outstanding {
    round: u64,
    target: usize,
    sent_at: Instant,
    expires: Instant,
}

#[derive(Debug)]
struct PendingRound {
    result: RoundResult,
    deadline: Instant,
    unresolved: usize,
}

/// Probes of one uplink. Create inside a tokio runtime; dropping it stops its tasks.
pub struct Prober {
    cfg: ProberConfig,
    icmp_id: u16,
    nonce: u32,
    seq: u16,
    dns_id: u16,
    tcp_token: u64,
    next_round: u64,
    icmp_v4: Option<Arc<AsyncFd<Socket>>>,
    icmp_v6: Option<Arc<AsyncFd<Socket>>>,
    /// One connected UDP socket per DNS target (index = target index).
    dns: HashMap<usize, Arc<tokio::net::UdpSocket>>,
    tx: mpsc::UnboundedSender<Reply>,
    rx: mpsc::UnboundedReceiver<Reply>,
    tasks: JoinSet<()>,
    outstanding: HashMap<Key, Outstanding>,
    pending: BTreeMap<u64, PendingRound>,
    events: VecDeque<ProbeEvent>,
    counters: ProbeCounters,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("cfg", &self.cfg)
            .field("pending_rounds", &self.pending.len())
            .field("counters", &self.counters)
            .finish()
    }
}

impl Prober {
    /// Opens the sockets (ICMP per family in use, one UDP socket per DNS target) and
    /// starts their receive tasks. TCP sockets are opened per probe.
    pub fn new(cfg: ProberConfig) -> Result<Prober, ProbeError> {
        if cfg.targets.is_empty() {
            return Err(ProbeError::NoTargets {
                uplink: cfg.uplink.clone(),
            });
        }
        let r = random_u64();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut prober = Prober {
            icmp_id: r as u16,
            nonce: (r >> 16) as u32,
            seq: (r >> 48) as u16,
            dns_id: random_u64() as u16,
            tcp_token: 0,
            next_round: 0,
            icmp_v4: None,
            icmp_v6: None,
            dns: HashMap::new(),
            tx,
            rx,
            tasks: JoinSet::new(),
            outstanding: HashMap::new(),
            pending: BTreeMap::new(),
            events: VecDeque::new(),
            counters: ProbeCounters::default(),
            cfg,
        };
        let targets = prober.cfg.targets.clone();
        for (i, probe) in targets.iter().enumerate() {
            match *probe {
                Probe::Icmp(IpAddr::V4(_)) if prober.icmp_v4.is_none() => {
                    let sock = Arc::new(prober.open_icmp(false)?);
                    prober.icmp_v4 = Some(sock.clone());
                    prober.tasks.spawn(icmp_receiver(
                        sock,
                        false,
                        prober.icmp_id,
                        prober.nonce,
                        prober.tx.clone(),
                    ));
                }
                Probe::Icmp(IpAddr::V6(_)) if prober.icmp_v6.is_none() => {
                    let sock = Arc::new(prober.open_icmp(true)?);
                    prober.icmp_v6 = Some(sock.clone());
                    prober.tasks.spawn(icmp_receiver(
                        sock,
                        true,
                        prober.icmp_id,
                        prober.nonce,
                        prober.tx.clone(),
                    ));
                }
                Probe::Dns(addr) => {
                    let sock = Arc::new(prober.open_dns(addr)?);
                    prober.dns.insert(i, sock.clone());
                    prober
                        .tasks
                        .spawn(dns_receiver(sock, addr.ip(), prober.tx.clone()));
                }
                _ => {}
            }
        }
        Ok(prober)
    }

    pub fn config(&self) -> &ProberConfig {
        &self.cfg
    }

    pub fn counters(&self) -> ProbeCounters {
        self.counters
    }

    /// A socket with the device, mark and source set: the common part of every probe.
    fn base_socket(
        &self,
        kind: &'static str,
        domain: Domain,
        ty: Type,
        proto: Protocol,
        v6: bool,
    ) -> Result<Socket, ProbeError> {
        let sock = Socket::new(domain, ty.cloexec(), Some(proto)).map_err(|source| {
            ProbeError::Socket {
                kind,
                uplink: self.cfg.uplink.clone(),
                interface: self.cfg.interface.clone(),
                source,
            }
        })?;
        let opt = |option: &'static str| {
            let cfg = &self.cfg;
            move |source| ProbeError::Option {
                option,
                kind,
                uplink: cfg.uplink.clone(),
                interface: cfg.interface.clone(),
                source,
            }
        };
        sock.bind_device(Some(self.cfg.interface.as_bytes()))
            .map_err(opt("SO_BINDTODEVICE"))?;
        sock.set_mark(self.cfg.mark).map_err(opt("SO_MARK"))?;
        sock.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
        let source: Option<IpAddr> = if v6 {
            self.cfg.source_v6.map(IpAddr::V6)
        } else {
            self.cfg.source_v4.map(IpAddr::V4)
        };
        if let Some(src) = source {
            sock.bind(&SockAddr::from(SocketAddr::new(src, 0)))
                .map_err(opt("bind source address"))?;
        }
        Ok(sock)
    }

    fn open_icmp(&self, v6: bool) -> Result<AsyncFd<Socket>, ProbeError> {
        let (kind, domain, proto) = if v6 {
            ("ICMPv6", Domain::IPV6, Protocol::ICMPV6)
        } else {
            ("ICMP", Domain::IPV4, Protocol::ICMPV4)
        };
        let sock = self.base_socket(kind, domain, Type::RAW, proto, v6)?;
        set_echo_reply_filter(&sock, v6).map_err(|source| ProbeError::Option {
            option: if v6 { "ICMP6_FILTER" } else { "ICMP_FILTER" },
            kind,
            uplink: self.cfg.uplink.clone(),
            interface: self.cfg.interface.clone(),
            source,
        })?;
        // SAFETY: the Socket owns its descriptor, which stays open and unchanged until
        // the AsyncFd (its only owner) is dropped.
        unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE) }.map_err(|e| {
            ProbeError::Socket {
                kind,
                uplink: self.cfg.uplink.clone(),
                interface: self.cfg.interface.clone(),
                source: e.into(),
            }
        })
    }

    fn open_dns(&self, target: SocketAddr) -> Result<tokio::net::UdpSocket, ProbeError> {
        let v6 = target.is_ipv6();
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let sock = self.base_socket("DNS", domain, Type::DGRAM, Protocol::UDP, v6)?;
        let err = |source| ProbeError::Socket {
            kind: "DNS",
            uplink: self.cfg.uplink.clone(),
            interface: self.cfg.interface.clone(),
            source,
        };
        // Connected: only the target's datagrams reach this socket.
        sock.connect(&SockAddr::from(target)).map_err(err)?;
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(sock)).map_err(err)
    }

    /// Sends one probe to every target, now. The round's result comes from
    /// [`Prober::next_event`] once every target answered or `timeout` passed. Returns the
    /// round number.
    pub fn start_round(&mut self, timeout: Duration) -> u64 {
        let now = Instant::now();
        let round = self.next_round;
        self.next_round += 1;
        let targets = self.cfg.targets.clone();
        let mut result = RoundResult {
            round,
            started: now,
            timeout,
            answered: false,
            targets: Vec::with_capacity(targets.len()),
            bytes_sent: 0,
            bytes_received: 0,
            late: Vec::new(),
        };
        let mut unresolved = 0;
        for (i, &probe) in targets.iter().enumerate() {
            self.counters.probes += 1;
            let (status, sent) = match self.send_probe(round, i, probe, now) {
                Ok(sent) => {
                    unresolved += 1;
                    (TargetStatus::Pending, sent)
                }
                Err(e) => (TargetStatus::SendFailed(e.kind()), 0),
            };
            self.counters.bytes_sent += sent;
            result.bytes_sent += sent;
            result.targets.push(TargetResult {
                probe,
                status,
                rtt: None,
                bytes_sent: sent,
                bytes_received: 0,
            });
        }
        self.pending.insert(
            round,
            PendingRound {
                result,
                deadline: now + timeout,
                unresolved,
            },
        );
        round
    }

    /// Sends one probe; returns the bytes sent now (TCP reports its bytes at the end).
    fn send_probe(
        &mut self,
        round: u64,
        target: usize,
        probe: Probe,
        now: Instant,
    ) -> io::Result<u64> {
        let expires = now + self.cfg.late_window;
        let (key, sent) = match probe {
            Probe::Icmp(addr) => {
                let seq = self.seq;
                self.seq = self.seq.wrapping_add(1);
                let sock = match addr {
                    IpAddr::V4(_) => self.icmp_v4.as_ref(),
                    IpAddr::V6(_) => self.icmp_v6.as_ref(),
                }
                .expect("ICMP socket opened for every family in use");
                let packet =
                    echo_request(addr.is_ipv6(), self.icmp_id, seq, self.nonce, round as u32);
                sock.get_ref()
                    .send_to(&packet, &SockAddr::from(SocketAddr::new(addr, 0)))?;
                (Key::Icmp(seq), ip_header(addr) + packet.len() as u64)
            }
            Probe::Dns(addr) => {
                let id = self.dns_id;
                self.dns_id = self.dns_id.wrapping_add(1);
                let query = dns_query(id);
                self.dns[&target].try_send(&query)?;
                (
                    Key::Dns(id),
                    ip_header(addr.ip()) + UDP_HEADER + query.len() as u64,
                )
            }
            Probe::Tcp(addr) => {
                let token = self.tcp_token;
                self.tcp_token += 1;
                let domain = if addr.is_ipv6() {
                    Domain::IPV6
                } else {
                    Domain::IPV4
                };
                let sock =
                    self.base_socket("TCP", domain, Type::STREAM, Protocol::TCP, addr.is_ipv6())
                        .map_err(|e| match e {
                            ProbeError::Socket { source, .. }
                            | ProbeError::Option { source, .. } => source,
                            other => io::Error::other(other.to_string()),
                        })?;
                sock.set_linger(Some(Duration::ZERO))?;
                let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
                let tx = self.tx.clone();
                let window = self.cfg.late_window;
                self.tasks.spawn(async move {
                    let outcome = tokio::time::timeout(window, sock.connect(addr)).await;
                    let at = Instant::now();
                    let status = match outcome {
                        Ok(Ok(_stream)) => TargetStatus::Answered,
                        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                            TargetStatus::Refused
                        }
                        Ok(Err(_)) | Err(_) => TargetStatus::Lost,
                    };
                    let (bytes_sent, bytes_received) =
                        tcp_probe_bytes(addr.ip(), status, at.duration_since(now));
                    let _ = tx.send(Reply {
                        key: Key::Tcp(token),
                        at,
                        from: Some(addr.ip()),
                        status,
                        bytes_sent,
                        bytes_received,
                    });
                });
                (Key::Tcp(token), 0)
            }
        };
        self.outstanding.insert(
            key,
            Outstanding {
                round,
                target,
                sent_at: now,
                expires,
            },
        );
        Ok(sent)
    }

    fn handle(&mut self, reply: Reply) {
        self.counters.bytes_sent += reply.bytes_sent;
        self.counters.bytes_received += reply.bytes_received;
        let Some(out) = self.outstanding.remove(&reply.key) else {
            return; // Not ours, a duplicate, or older than the late window.
        };
        let probe = self.cfg.targets[out.target];
        if reply.from.is_some_and(|from| from != probe.target()) {
            // Same id from another host: not our answer. Keep waiting for the real one.
            self.outstanding.insert(reply.key, out);
            return;
        }
        let rtt = reply.at.saturating_duration_since(out.sent_at);
        if let Some(p) = self.pending.get_mut(&out.round) {
            if reply.at <= p.deadline {
                let t = &mut p.result.targets[out.target];
                if t.status == TargetStatus::Pending {
                    p.unresolved -= 1;
                }
                t.status = if reply.status == TargetStatus::Lost {
                    TargetStatus::Lost
                } else {
                    reply.status
                };
                t.rtt = reply.status.answered().then_some(rtt);
                t.bytes_sent += reply.bytes_sent;
                t.bytes_received += reply.bytes_received;
                p.result.bytes_sent += reply.bytes_sent;
                p.result.bytes_received += reply.bytes_received;
                p.result.answered |= reply.status.answered();
                return;
            }
        }
        if reply.status.answered() {
            self.events.push_back(ProbeEvent::Late(LateReply {
                round: out.round,
                target: out.target,
                probe,
                status: reply.status,
                rtt,
                bytes_sent: reply.bytes_sent,
                bytes_received: reply.bytes_received,
            }));
        }
    }

    /// Closes rounds whose deadline passed and emits finished rounds in order; forgets
    /// probes older than the late window.
    fn settle(&mut self, now: Instant) {
        while let Some(mut entry) = self.pending.first_entry() {
            let p = entry.get_mut();
            if p.unresolved > 0 && now < p.deadline {
                break;
            }
            let mut p = entry.remove();
            for t in &mut p.result.targets {
                if t.status == TargetStatus::Pending {
                    t.status = TargetStatus::Lost;
                    // A TCP probe still connecting has sent its SYN(s) so far; the final
                    // figure comes with its completion.
                    if let Probe::Tcp(addr) = t.probe {
                        let (s, _) =
                            tcp_probe_bytes(addr.ip(), TargetStatus::Lost, p.result.timeout);
                        t.bytes_sent = s;
                        p.result.bytes_sent += s;
                    }
                }
            }
            self.events.push_back(ProbeEvent::Round(p.result));
        }
        self.outstanding.retain(|_, o| o.expires > now);
        while self.tasks.try_join_next().is_some() {}
    }

    /// The next finished round or late reply. Cancel-safe: usable in `select!`.
    pub async fn next_event(&mut self) -> ProbeEvent {
        loop {
            self.settle(Instant::now());
            if let Some(ev) = self.events.pop_front() {
                return ev;
            }
            let deadline = self.pending.values().map(|p| p.deadline).min();
            tokio::select! {
                reply = self.rx.recv() => {
                    // The prober holds a sender itself, so the channel never closes.
                    if let Some(reply) = reply {
                        self.handle(reply);
                        while let Ok(more) = self.rx.try_recv() {
                            self.handle(more);
                        }
                    }
                }
                _ = sleep_until_opt(deadline) => {}
            }
        }
    }

    /// One round, start to finish: sends, waits for every answer or the timeout, and
    /// returns it with the late replies to earlier rounds that came meanwhile.
    pub async fn round(&mut self, timeout: Duration) -> RoundResult {
        let id = self.start_round(timeout);
        let mut late = Vec::new();
        let mut earlier = Vec::new();
        loop {
            match self.next_event().await {
                ProbeEvent::Late(l) => late.push(l),
                ProbeEvent::Round(r) if r.round == id => {
                    // Put back what belongs to the caller's own pipeline, if any.
                    for ev in earlier.into_iter().rev() {
                        self.events.push_front(ev);
                    }
                    let mut r = r;
                    r.late = late;
                    return r;
                }
                ProbeEvent::Round(r) => earlier.push(ProbeEvent::Round(r)),
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Only echo replies reach the raw socket: `ICMP_FILTER` (a bit set = type blocked) and
/// `ICMP6_FILTER` (same sense, 256 bits).
fn set_echo_reply_filter(sock: &Socket, v6: bool) -> io::Result<()> {
    const SOL_RAW: libc::c_int = 255;
    const ICMP_FILTER: libc::c_int = 1;
    const ICMP6_FILTER: libc::c_int = 1;
    let rc = if v6 {
        let mut filter = [u32::MAX; 8];
        let t = usize::from(ICMPV6_ECHO_REPLY);
        filter[t >> 5] &= !(1u32 << (t & 31));
        // SAFETY: filter is a valid 32-byte struct icmp6_filter for the duration.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_ICMPV6,
                ICMP6_FILTER,
                filter.as_ptr().cast(),
                std::mem::size_of_val(&filter) as libc::socklen_t,
            )
        }
    } else {
        let mask: u32 = !(1u32 << ICMP_ECHO_REPLY);
        // SAFETY: mask is a valid u32 (struct icmp_filter) for the duration.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                SOL_RAW,
                ICMP_FILTER,
                (&mask as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

async fn icmp_receiver(
    sock: Arc<AsyncFd<Socket>>,
    v6: bool,
    want_id: u16,
    want_nonce: u32,
    tx: mpsc::UnboundedSender<Reply>,
) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let Ok(mut guard) = sock.readable().await else {
            return;
        };
        let got = guard.try_io(|s| s.get_ref().recv_from(&mut buf));
        let (n, from) = match got {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
            Ok(Err(e)) => {
                tracing::debug!("ICMP probe receive: {e}");
                continue;
            }
            Err(_would_block) => continue,
        };
        let at = Instant::now();
        // SAFETY: recv_from initialised the first n bytes.
        let data = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        let Some((id, seq, nonce)) = parse_echo_reply(v6, data) else {
            continue;
        };
        // Every raw socket on this device sees every echo reply: keep ours only.
        if id != want_id || nonce != want_nonce {
            continue;
        }
        let Some(from) = from.as_socket().map(|a| a.ip()) else {
            continue;
        };
        let _ = tx.send(Reply {
            key: Key::Icmp(seq),
            at,
            from: Some(from),
            status: TargetStatus::Answered,
            bytes_sent: 0,
            bytes_received: if v6 { n as u64 + IPV6_HEADER } else { n as u64 },
        });
    }
}

async fn dns_receiver(
    sock: Arc<tokio::net::UdpSocket>,
    from: IpAddr,
    tx: mpsc::UnboundedSender<Reply>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP port unreachable and the like surface here; the probe stays lost.
            Err(_) => continue,
        };
        let at = Instant::now();
        let Some(id) = dns_response_id(&buf[..n]) else {
            continue;
        };
        let _ = tx.send(Reply {
            key: Key::Dns(id),
            at,
            from: Some(from),
            status: TargetStatus::Answered,
            bytes_sent: 0,
            bytes_received: ip_header(from) + UDP_HEADER + n as u64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let p = echo_request(false, 0x1234, 7, 0xdead_beef, 3);
        assert_eq!(p.len(), ICMP_HEADER_LEN + ICMP_PAYLOAD_LEN);
        assert_eq!(
            inet_checksum(&p),
            0,
            "a packet with its checksum sums to zero"
        );
    }

    #[test]
    fn echo_sizes_are_ip_header_plus_16() {
        assert_eq!(icmp_echo_ip_bytes(Ipv4Addr::LOCALHOST.into()), 36);
        assert_eq!(icmp_echo_ip_bytes(Ipv6Addr::LOCALHOST.into()), 56);
    }

    #[test]
    fn echo_reply_parses_from_ip_packet() {
        let mut reply = echo_request(false, 9, 10, 11, 12);
        reply[0] = ICMP_ECHO_REPLY;
        let mut ip = vec![0x45u8];
        ip.extend_from_slice(&[0; 19]);
        ip.extend_from_slice(&reply);
        assert_eq!(parse_echo_reply(false, &ip), Some((9, 10, 11)));
        let mut req = echo_request(true, 1, 2, 3, 4);
        assert_eq!(
            parse_echo_reply(true, &req),
            None,
            "a request is not a reply"
        );
        req[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(parse_echo_reply(true, &req), Some((1, 2, 3)));
    }

    #[test]
    fn dns_query_round_trips() {
        let q = dns_query(0xbeef);
        let parsed = Packet::parse(&q).expect("query parses");
        assert_eq!(parsed.id(), 0xbeef);
        assert_eq!(dns_response_id(&q), None, "a query is not a response");
        let mut reply = Packet::new_reply(0xbeef);
        reply.questions = parsed.questions.clone();
        let bytes = reply.build_bytes_vec().unwrap();
        assert_eq!(dns_response_id(&bytes), Some(0xbeef));
    }

    #[test]
    fn tcp_bytes_follow_the_handshake() {
        let v4: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(
            tcp_probe_bytes(v4, TargetStatus::Answered, Duration::ZERO),
            (60 + 52 + 40, 60)
        );
        assert_eq!(
            tcp_probe_bytes(v4, TargetStatus::Refused, Duration::ZERO),
            (60, 40)
        );
        assert_eq!(
            tcp_probe_bytes(v4, TargetStatus::Lost, Duration::from_millis(300)),
            (60, 0)
        );
        assert_eq!(
            tcp_probe_bytes(v4, TargetStatus::Lost, Duration::from_secs(4)),
            (180, 0)
        );
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        assert_eq!(
            tcp_probe_bytes(v6, TargetStatus::Refused, Duration::ZERO),
            (80, 60)
        );
    }
}
