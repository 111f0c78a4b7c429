//! BPF_PROG_TEST_RUN fixtures for bulk demotion: a class with
//! `demote = { after, min_age, to }` is compiled and installed, then TCP flows run
//! through lan_egress (download) and XDP lan_ingress (upload). The tests check,
//! packet by packet against the flow's own byte counters, that a flow keeps its
//! class's queue below the threshold and takes the target class's queue, DSCP,
//! mark bits and class id at the packet that crosses it, keeping its uplink bits;
//! that this happens once (FlowStats.demoted counts 1); that short flows and flows
//! younger than `min_age` are never demoted; that a class with a rate threshold
//! demotes a flow that keeps the rate for a whole window (on the datapath's real
//! clock) and never one below it; and that observe mode changes nothing.
//!
//! Privileged: each test returns early (or fails, under INFERLANE_REQUIRE_PRIVILEGED=1)
//! when not run as root.

use std::net::Ipv4Addr;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use inferlane::bpf::abi::{self, Flow, FlowStats, FLOW_F_DEMOTED};
use inferlane::bpf::Datapath;
use inferlane::classify::compile::compile;
use inferlane::config::{self, Config};
use inferlane::lab;
use inferlane::uplink::steer::steering;
use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::{self, Ipv4Flags, MutableIpv4Packet};
use pnet::packet::tcp::{self, MutableTcpPacket, TcpFlags};
use pnet::util::MacAddr;

/// `interactive` prefers the lte, which bulk may not use: a demoted flow staying
/// on the lte shows that demotion keeps the uplink (it never re-steers).
const CONFIG: &str = r#"
[lan]
interfaces = ["lan0"]

[[uplinks]]
name = "fiber"
interface = "wan0"

[[uplinks]]
name = "lte"
interface = "wwan0"
priority = 20

[[classes]]
name = "interactive"
dscp = "AF41"
queue = "high"
uplinks = ["lte", "fiber"]
demote = { after = "100KB", to = "bulk" }

[[classes]]
name = "bulk"
dscp = "LE"
queue = "low"
uplinks = ["fiber"]

[[classes]]
name = "patient"
dscp = "AF21"
queue = "normal"
demote = { after = "100KB", min_age = "1h", to = "bulk" }

[[classes]]
name = "streaming"
dscp = "AF41"
queue = "high"
demote = { rate = "8mbit", for = "200ms", to = "bulk" }

[[rules]]
class = "interactive"
ports = ["tcp:8443"]

[[rules]]
class = "streaming"
ports = ["tcp:7443"]

[[rules]]
class = "patient"
ports = ["tcp:9443"]
"#;

const THRESHOLD: u64 = 100_000;
const INTERACTIVE: u8 = 1;
const BULK: u8 = 2;
const PATIENT: u8 = 3;
const STREAMING: u8 = 4;
/// streaming's rate window: 8 mbit/s for 200 ms is 200,000 bytes.
const WINDOW: std::time::Duration = std::time::Duration::from_millis(200);
const WINDOW_BYTES: u64 = 200_000;
const LTE: u8 = 2;
const DSCP_AF41: u8 = 34;
const DSCP_LE: u8 = 1;
const PRIO_HIGH: u32 = 0x01a1_0010;
const PRIO_NORMAL: u32 = 0x01a1_0020;
const PRIO_LOW: u32 = 0x01a1_0030;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

const XDP_PASS: u32 = 2;
const META_MAGIC: u32 = 0x494c_4d31;
/// struct __sk_buff in ctx_in/ctx_out: priority at offset 32.
const SKB_LEN: usize = 192;
const SKB_PRIORITY: usize = 32;
const PRIORITY_IN: u32 = 7;

struct Harness {
    dp: Datapath,
    ifindex: u32,
}

impl Harness {
    fn load(enforce: bool) -> Harness {
        let config: Config =
            config::parse(CONFIG, "demote.toml").unwrap_or_else(|e| panic!("expected the test config to be valid:\n{e}"));
        let compiled = compile(&config).unwrap_or_else(|e| panic!("expected the test config to compile: {e:?}"));
        let mut dp = Datapath::load().unwrap_or_else(|e| panic!("expected the datapath to load: {e}"));
        dp.install(&compiled.maps(), enforce).unwrap_or_else(|e| panic!("expected the rules to install: {e}"));
        let usable = vec![true; config.uplinks.len()];
        for i in 0..usable.len() {
            dp.set_uplink_usable(i, true).unwrap_or_else(|e| panic!("uplink {i} usable: {e}"));
        }
        dp.set_steering(&steering(&config, &usable)).unwrap_or_else(|e| panic!("steering: {e}"));
        let ifindex = nix::net::if_::if_nametoindex("lo").unwrap_or_else(|e| panic!("ifindex of lo: {e}"));
        Harness { dp, ifindex }
    }

    /// An upload packet through XDP lan_ingress: (verdict, output frame, metadata mark, priority).
    fn upload(&mut self, frame: &[u8]) -> (u32, Vec<u8>, Option<(u32, u32)>) {
        let mut out = vec![0u8; frame.len() + 64];
        let mut ctx_in = [0u8; 24];
        ctx_in[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx_in[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; 24];
        let prog: &Xdp = self
            .dp
            .ebpf_mut()
            .program("lan_ingress")
            .expect("lan_ingress in the object")
            .try_into()
            .expect("lan_ingress is XDP");
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("expected the lan_ingress test run to run: {e:?}"));
        // data_out starts at data_meta; ctx_out.data is the metadata's length.
        let meta_len = u32::from_ne_bytes(ctx_out[0..4].try_into().unwrap()) as usize;
        let word = |at: usize| u32::from_ne_bytes(out[at..at + 4].try_into().unwrap());
        let meta = (meta_len == 16 && word(0) == META_MAGIC).then(|| (word(4), word(8)));
        let packet = out[meta_len..res.data_size_out as usize].to_vec();
        (res.return_value, packet, meta)
    }

    /// A download packet through TC lan_egress: skb->priority after the run.
    fn download(&mut self, frame: &[u8]) -> u32 {
        let mut out = vec![0u8; frame.len() + 64];
        let prog: &SchedClassifier = self
            .dp
            .ebpf_mut()
            .program("lan_egress")
            .expect("lan_egress in the object")
            .try_into()
            .expect("lan_egress is a TC classifier");
        let mut ctx_in = [0u8; SKB_LEN];
        ctx_in[SKB_PRIORITY..SKB_PRIORITY + 4].copy_from_slice(&PRIORITY_IN.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_LEN];
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..TestRunOptions::default()
        })
        .unwrap_or_else(|e| panic!("expected the lan_egress test run to run: {e:?}"));
        u32::from_ne_bytes(ctx_out[SKB_PRIORITY..SKB_PRIORITY + 4].try_into().unwrap())
    }

    fn flow(&self, client_port: u16) -> Flow {
        let flows = self.dp.flows().unwrap_or_else(|e| panic!("read the flow table: {e}"));
        flows
            .into_iter()
            .find(|(k, _)| u16::from_be(k.client_port) == client_port)
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("expected a flow from client port {client_port}"))
    }

    fn stats(&self) -> FlowStats {
        self.dp.flow_stats().unwrap_or_else(|e| panic!("flow statistics: {e}"))
    }
}

/// An Ethernet/IPv4/TCP frame with `payload` bytes of data.
fn frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut seg = vec![0u8; 20 + payload];
    {
        let mut t = MutableTcpPacket::new(&mut seg).expect("TCP buffer");
        t.set_source(sport);
        t.set_destination(dport);
        t.set_sequence(1);
        t.set_acknowledgement(if flags & TcpFlags::ACK != 0 { 1 } else { 0 });
        t.set_data_offset(5);
        t.set_flags(flags);
        t.set_window(65535);
        let sum = tcp::ipv4_checksum(&t.to_immutable(), &src, &dst);
        t.set_checksum(sum);
    }
    let total = 20 + seg.len();
    let mut ip_buf = vec![0u8; total];
    {
        let mut ip = MutableIpv4Packet::new(&mut ip_buf).expect("IPv4 buffer");
        ip.set_version(4);
        ip.set_header_length(5);
        ip.set_total_length(total as u16);
        ip.set_flags(Ipv4Flags::DontFragment);
        ip.set_ttl(64);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        ip.set_source(src);
        ip.set_destination(dst);
        ip.set_payload(&seg);
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
    }
    let mut buf = vec![0u8; 14 + total];
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("Ethernet buffer");
    eth.set_destination(MacAddr(2, 0, 0, 0, 0, 1));
    eth.set_source(MacAddr(2, 0, 0, 0, 0, 0x10));
    eth.set_ethertype(EtherTypes::Ipv4);
    eth.set_payload(&ip_buf);
    buf
}

fn dscp_of(frame: &[u8]) -> u8 {
    frame[14 + 1] >> 2
}

fn queue_bits(mark: u32) -> u32 {
    (mark & abi::MARK_QUEUE_MASK) >> abi::MARK_QUEUE_SHIFT
}

fn uplink_bits(mark: u32) -> u8 {
    ((mark & abi::MARK_UPLINK_MASK) >> abi::MARK_UPLINK_SHIFT) as u8
}

fn class_bits(mark: u32) -> u8 {
    ((mark & abi::MARK_CLASS_MASK) >> abi::MARK_CLASS_SHIFT) as u8
}

/// Opens a flow with a SYN from the client and checks its starting treatment.
fn open(h: &mut Harness, sport: u16, dport: u16, class: u8, prio: u32) -> Flow {
    let (verdict, _, meta) = h.upload(&frame(CLIENT, SERVER, sport, dport, TcpFlags::SYN, 0));
    assert_eq!(verdict, XDP_PASS, "expected the SYN to pass");
    let f = h.flow(sport);
    assert_eq!((f.class_id, f.priority), (class, prio), "expected the new flow's class and queue, saw {f:?}");
    if let Some((mark, _)) = meta {
        assert_eq!(mark, f.mark, "expected the metadata to carry the flow's mark");
    }
    f
}

#[test]
fn download_demotes_at_the_threshold_once_and_keeps_the_uplink() {
    if !lab::require_root_or_skip("download_demotes_at_the_threshold_once_and_keeps_the_uplink") {
        return;
    }
    let mut h = Harness::load(true);
    let before = h.stats();
    let start = open(&mut h, 40001, 8443, INTERACTIVE, PRIO_HIGH);
    assert_eq!(start.uplink, LTE, "expected interactive to be steered to the lte first: {start:?}");

    // Download 1400-byte segments; each run is checked against the flow's bytes.
    let reply = frame(SERVER, CLIENT, 8443, 40001, TcpFlags::ACK | TcpFlags::PSH, 1400);
    let mut crossed_at = None;
    for i in 0..200 {
        let prio = h.download(&reply);
        let f = h.flow(40001);
        let total = f.up_bytes + f.down_bytes;
        let demoted = f.flags & FLOW_F_DEMOTED != 0;
        if total < THRESHOLD {
            assert!(!demoted && prio == PRIO_HIGH, "packet {i}: {total} bytes < {THRESHOLD}: expected high (0x{PRIO_HIGH:x}), not demoted; saw priority 0x{prio:x}, {f:?}");
        } else {
            assert!(demoted && prio == PRIO_LOW, "packet {i}: {total} bytes >= {THRESHOLD}: expected low (0x{PRIO_LOW:x}) and demoted; saw priority 0x{prio:x}, {f:?}");
            crossed_at.get_or_insert((i, total));
        }
    }
    let (i, total) = crossed_at.expect("expected the flow to cross the threshold within 200 packets");
    assert!(total - THRESHOLD < 1500, "expected demotion at the packet that crossed, saw it at {total} bytes");
    eprintln!("demoted at download packet {i}, {total} bytes");

    let f = h.flow(40001);
    assert_eq!((f.class_id, f.dscp, f.priority), (BULK, DSCP_LE, PRIO_LOW), "expected bulk's treatment: {f:?}");
    assert_eq!(uplink_bits(f.mark), LTE, "expected the uplink bits kept (lte), saw mark 0x{:x}", f.mark);
    assert_eq!(f.uplink, LTE, "expected the flow to stay on the lte: {f:?}");
    assert_eq!((class_bits(f.mark), queue_bits(f.mark)), (BULK, 3), "expected bulk's class and low-queue bits: 0x{:x}", f.mark);
    assert!(f.mark & abi::MARK_CLASSIFIED != 0);
    assert_eq!(h.stats().demoted - before.demoted, 1, "expected exactly one demotion counted");

    // Its next upload packet leaves with bulk's DSCP and mark, still for the lte.
    let (verdict, out, meta) = h.upload(&frame(CLIENT, SERVER, 40001, 8443, TcpFlags::ACK, 100));
    assert_eq!(verdict, XDP_PASS);
    assert_eq!(dscp_of(&out), DSCP_LE, "expected the upload packet re-marked LE");
    let (mark, prio) = meta.expect("expected XDP metadata on a classified flow's packet");
    assert_eq!((uplink_bits(mark), queue_bits(mark), prio), (LTE, 3, PRIO_LOW), "mark 0x{mark:x} priority 0x{prio:x}");
    assert_eq!(h.stats().demoted - before.demoted, 1, "expected no second demotion");
}

#[test]
fn short_flows_and_young_flows_stay_and_uploads_demote_too() {
    if !lab::require_root_or_skip("short_flows_and_young_flows_stay_and_uploads_demote_too") {
        return;
    }
    let mut h = Harness::load(true);
    let before = h.stats();

    // A short interactive exchange: a request, a streamed reply of 40 KB.
    open(&mut h, 40002, 8443, INTERACTIVE, PRIO_HIGH);
    let (_, out, _) = h.upload(&frame(CLIENT, SERVER, 40002, 8443, TcpFlags::ACK | TcpFlags::PSH, 300));
    assert_eq!(dscp_of(&out), DSCP_AF41, "expected the request marked AF41");
    let reply = frame(SERVER, CLIENT, 8443, 40002, TcpFlags::ACK | TcpFlags::PSH, 1400);
    for i in 0..28 {
        let prio = h.download(&reply);
        assert_eq!(prio, PRIO_HIGH, "short flow packet {i}: expected high, saw 0x{prio:x}");
    }
    let f = h.flow(40002);
    assert!(f.flags & FLOW_F_DEMOTED == 0 && f.class_id == INTERACTIVE, "expected the short flow to stay interactive: {f:?}");

    // Past the bytes but younger than min_age (1h): stays.
    open(&mut h, 40003, 9443, PATIENT, PRIO_NORMAL);
    let reply = frame(SERVER, CLIENT, 9443, 40003, TcpFlags::ACK | TcpFlags::PSH, 1400);
    for _ in 0..120 {
        assert_eq!(h.download(&reply), PRIO_NORMAL, "expected a young flow to keep its queue");
    }
    let f = h.flow(40003);
    assert!(f.up_bytes + f.down_bytes > THRESHOLD && f.flags & FLOW_F_DEMOTED == 0 && f.class_id == PATIENT, "expected no demotion before min_age: {f:?}");

    // A bulk upload crosses the threshold in lan_ingress.
    open(&mut h, 40004, 8443, INTERACTIVE, PRIO_HIGH);
    let seg = frame(CLIENT, SERVER, 40004, 8443, TcpFlags::ACK | TcpFlags::PSH, 1400);
    let mut crossed = false;
    for i in 0..120 {
        let (_, out, meta) = h.upload(&seg);
        let f = h.flow(40004);
        let (mark, prio) = meta.expect("metadata on a classified flow's packet");
        if f.up_bytes + f.down_bytes < THRESHOLD {
            assert!(dscp_of(&out) == DSCP_AF41 && prio == PRIO_HIGH, "upload {i} below the threshold: expected AF41/high, saw DSCP {} 0x{prio:x}", dscp_of(&out));
        } else {
            assert!(dscp_of(&out) == DSCP_LE && prio == PRIO_LOW && uplink_bits(mark) == LTE, "upload {i} past the threshold: expected LE/low on the lte, saw DSCP {} 0x{prio:x} mark 0x{mark:x}", dscp_of(&out));
            crossed = true;
        }
    }
    assert!(crossed, "expected the upload to cross the threshold");
    assert_eq!(h.stats().demoted - before.demoted, 1, "expected exactly one demotion (the upload)");
}

#[test]
fn observe_mode_demotes_nothing() {
    if !lab::require_root_or_skip("observe_mode_demotes_nothing") {
        return;
    }
    let mut h = Harness::load(false);
    h.upload(&frame(CLIENT, SERVER, 40005, 8443, TcpFlags::SYN, 0));
    let reply = frame(SERVER, CLIENT, 8443, 40005, TcpFlags::ACK | TcpFlags::PSH, 1400);
    for _ in 0..100 {
        assert_eq!(h.download(&reply), PRIORITY_IN, "expected observe mode to leave skb->priority alone");
    }
    let f = h.flow(40005);
    assert!(f.up_bytes + f.down_bytes > THRESHOLD && f.flags & FLOW_F_DEMOTED == 0 && f.class_id == INTERACTIVE, "expected no demotion in observe mode: {f:?}");
    assert_eq!(h.stats().demoted, 0);
}

/// Sends 1400-byte download segments on `port`'s flow at `per_ms` packets a
/// millisecond until it is demoted or `limit` passes; returns the time from the
/// first segment to the demotion, if any, and the flow.
fn stream(h: &mut Harness, port: u16, per_ms: f64, limit: std::time::Duration) -> (Option<std::time::Duration>, Flow) {
    use std::time::Instant;
    let reply = frame(SERVER, CLIENT, 7443, port, TcpFlags::ACK | TcpFlags::PSH, 1400);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < limit {
        let due = (start.elapsed().as_secs_f64() * 1000.0 * per_ms) as u64 + 1;
        while sent < due {
            if h.download(&reply) == PRIO_LOW {
                return (Some(start.elapsed()), h.flow(port));
            }
            sent += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    (None, h.flow(port))
}

#[test]
fn rate_threshold_demotes_a_sustained_flow_after_its_window_only() {
    if !lab::require_root_or_skip("rate_threshold_demotes_a_sustained_flow_after_its_window_only") {
        return;
    }
    let mut h = Harness::load(true);
    let before = h.stats();

    // About 2.9 MB/s, above 8 mbit/s (1 MB/s): demoted once a whole window has
    // passed (not before 200 ms, give or take the 4 ms coarse clock tick), and
    // within two windows plus scheduling slack.
    open(&mut h, 40010, 7443, STREAMING, PRIO_HIGH);
    let (at, f) = stream(&mut h, 40010, 2.0, std::time::Duration::from_secs(3));
    let at = at.unwrap_or_else(|| panic!("expected a flow above the rate to be demoted within 3 s: {f:?}"));
    eprintln!("rate demotion after {at:?}, {} bytes", f.up_bytes + f.down_bytes);
    assert!(at >= WINDOW - std::time::Duration::from_millis(10), "expected no demotion before a whole window ({WINDOW:?}), saw it after {at:?}");
    assert!(at <= 2 * WINDOW + std::time::Duration::from_millis(300), "expected demotion within two windows, took {at:?}");
    assert!(f.up_bytes + f.down_bytes >= WINDOW_BYTES, "expected at least a window's bytes before demotion: {f:?}");
    assert_eq!((f.class_id, f.dscp, f.priority), (BULK, DSCP_LE, PRIO_LOW), "expected bulk's treatment: {f:?}");
    assert_eq!(h.stats().demoted - before.demoted, 1, "expected exactly one demotion");

    // About 0.3 MB/s for 1 s (5 windows, 300 KB in all: more than one window's
    // bytes, but never within one window): stays.
    open(&mut h, 40011, 7443, STREAMING, PRIO_HIGH);
    let (at, f) = stream(&mut h, 40011, 0.2, std::time::Duration::from_secs(1));
    assert_eq!(at, None, "expected a flow below the rate never demoted: {f:?}");
    assert!(f.down_bytes > WINDOW_BYTES && f.class_id == STREAMING && f.flags & FLOW_F_DEMOTED == 0, "expected the slow flow to keep its class with {} bytes: {f:?}", f.down_bytes);
    assert_eq!(h.stats().demoted - before.demoted, 1, "expected no second demotion");
}
