//! BPF_PROG_TEST_RUN fixtures for the LAN datapath. Every fixture packet runs through
//! both programs: lan_ingress (XDP, counts the upload direction) and lan_egress (TC,
//! counts the download direction). Each run is checked for its verdict, for leaving
//! the packet byte for byte unchanged, and for the exact interface counter deltas in
//! the direction the program counts; the other direction must not move. A
//! deterministic fuzz run then checks the same on 100,000 generated packets against
//! an independent Rust model of the parsers in ebpf/pckt_parsing.h (L2/L3, and the
//! IP/transport checks whose failures also count as malformed).
//!
//! The datapath is loaded and never configured: observe mode, no rules, so neither
//! program may drop or rewrite anything. The flow table they fill is not checked here.
//!
//! Test runs come from no registered interface, so il_count (ebpf/inferlane_count.h)
//! falls back to the catch-all slot ifindex 0 that `Datapath::load` creates; that slot
//! is what these tests read. Every test loads its own `Datapath`, hence its own maps.
//!
//! Privileged: each test returns early (or fails, under INFERLANE_REQUIRE_PRIVILEGED=1)
//! when not run as root.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp};
use inferlane::bpf::abi::Counters;
use inferlane::bpf::{Datapath, IfCounters};
use inferlane::lab;
use pnet::packet::arp::{ArpHardwareTypes, ArpOperations, MutableArpPacket};
use pnet::packet::ethernet::{EtherType, EtherTypes, MutableEthernetPacket};
use pnet::packet::icmp::{self, IcmpCode, IcmpPacket, IcmpTypes};
use pnet::packet::icmpv6::{self, Icmpv6Code, Icmpv6Packet, Icmpv6Types};
use pnet::packet::ip::{IpNextHeaderProtocol, IpNextHeaderProtocols};
use pnet::packet::ipv4::{self, Ipv4Flags, Ipv4OptionNumbers, MutableIpv4Packet};
use pnet::packet::ipv6::{MutableExtensionPacket, MutableFragmentPacket, MutableIpv6Packet};
use pnet::packet::tcp::{self, MutableTcpPacket, TcpFlags, TcpOption};
use pnet::packet::udp::{self, MutableUdpPacket};
use pnet::packet::vlan::{ClassesOfService, MutableVlanPacket};
use pnet::packet::Packet;
use pnet::util::MacAddr;

const PROG_LAN_INGRESS: &str = "lan_ingress";
const PROG_LAN_EGRESS: &str = "lan_egress";

const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC is -1; the kernel reports the verdict as a u32.
const TC_ACT_UNSPEC: u32 = -1i32 as u32;

const ETH_HLEN: usize = 14;

/// The data_out buffer is this much longer than the packet, and prefilled, so that a
/// program growing the packet would show up in data_size_out.
const OUT_SLACK: usize = 64;
const OUT_FILL: u8 = 0xa5;

const CLIENT_MAC: MacAddr = MacAddr(0x02, 0x00, 0x00, 0x00, 0x00, 0x10);
const ROUTER_MAC: MacAddr = MacAddr(0x02, 0x00, 0x00, 0x00, 0x00, 0x01);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x10);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);

// ---------------------------------------------------------------------------------
// Running a program
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    LanIngress,
    LanEgress,
}

impl Hook {
    const BOTH: [Hook; 2] = [Hook::LanIngress, Hook::LanEgress];

    fn program(self) -> &'static str {
        match self {
            Hook::LanIngress => PROG_LAN_INGRESS,
            Hook::LanEgress => PROG_LAN_EGRESS,
        }
    }

    /// The verdict that lets the frame go on unchanged.
    fn pass(self) -> u32 {
        match self {
            Hook::LanIngress => XDP_PASS,
            Hook::LanEgress => TC_ACT_UNSPEC,
        }
    }

    fn pass_name(self) -> &'static str {
        match self {
            Hook::LanIngress => "XDP_PASS",
            Hook::LanEgress => "TC_ACT_UNSPEC",
        }
    }

    /// (the direction this program counts, the direction it must leave alone)
    fn split(self, c: &IfCounters) -> (&Counters, &Counters) {
        match self {
            Hook::LanIngress => (&c.upload, &c.download),
            Hook::LanEgress => (&c.download, &c.upload),
        }
    }

    fn directions(self) -> (&'static str, &'static str) {
        match self {
            Hook::LanIngress => ("upload", "download"),
            Hook::LanEgress => ("download", "upload"),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program())
    }
}

/// What one BPF_PROG_TEST_RUN gave back.
struct Ran {
    verdict: u32,
    data_size_out: usize,
    /// The data_out buffer, `OUT_SLACK` bytes longer than the packet.
    out: Vec<u8>,
}

struct Harness {
    dp: Datapath,
}

impl Harness {
    fn load() -> Self {
        let dp =
            Datapath::load().unwrap_or_else(|e| panic!("expected the datapath to load, got: {e}"));
        Harness { dp }
    }

    fn counters(&self) -> IfCounters {
        self.dp
            .counters_test_run()
            .unwrap_or_else(|e| panic!("expected the interface counters, got: {e}"))
    }

    fn run(&mut self, hook: Hook, packet: &[u8], repeat: u32) -> Result<Ran, ProgramError> {
        let mut out = vec![OUT_FILL; packet.len() + OUT_SLACK];
        let name = hook.program();
        let prog =
            self.dp.ebpf_mut().program(name).unwrap_or_else(|| {
                panic!("expected program {name} in the eBPF object, found none")
            });
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let res = match hook {
            Hook::LanIngress => {
                let p: &Xdp = prog
                    .try_into()
                    .unwrap_or_else(|_| panic!("expected {name} to be an XDP program"));
                p.test_run(opts)?
            }
            Hook::LanEgress => {
                let p: &SchedClassifier = prog
                    .try_into()
                    .unwrap_or_else(|_| panic!("expected {name} to be a TC classifier"));
                p.test_run(opts)?
            }
        };
        Ok(Ran {
            verdict: res.return_value,
            data_size_out: res.data_size_out as usize,
            out,
        })
    }
}

fn errno(e: &ProgramError) -> Option<i32> {
    match e {
        ProgramError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

/// The error and its sources on one line (aya's own message omits the errno).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

// ---------------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Ipv4,
    Ipv6,
    Other,
    Malformed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The program runs, passes the frame and counts it once per run in this class;
    /// `vlan` when it carried one or two complete 802.1Q/802.1ad tags.
    Counted { class: Class, vlan: bool },
    /// The kernel refuses the test run with EINVAL before the program sees the frame.
    Rejected,
}

impl Expect {
    /// Expected change of the counted direction after `runs` runs of a `len`-byte frame.
    fn delta(self, len: usize, runs: u64) -> Counters {
        let Expect::Counted { class, vlan } = self else {
            return Counters::default();
        };
        let mut c = Counters {
            packets: runs,
            bytes: len as u64 * runs,
            ..Counters::default()
        };
        if vlan {
            c.vlan = runs;
        }
        match class {
            Class::Ipv4 => c.ipv4 = runs,
            Class::Ipv6 => c.ipv6 = runs,
            Class::Other => c.other = runs,
            Class::Malformed => c.malformed = runs,
        }
        c
    }
}

fn diff(after: &Counters, before: &Counters) -> Counters {
    Counters {
        packets: after.packets.wrapping_sub(before.packets),
        bytes: after.bytes.wrapping_sub(before.bytes),
        ipv4: after.ipv4.wrapping_sub(before.ipv4),
        ipv6: after.ipv6.wrapping_sub(before.ipv6),
        other: after.other.wrapping_sub(before.other),
        vlan: after.vlan.wrapping_sub(before.vlan),
        malformed: after.malformed.wrapping_sub(before.malformed),
    }
}

/// Checks one test run of `packet` (`repeat` runs in one syscall): verdict, output
/// bytes, and counter deltas in both directions. Says what was expected and seen.
fn check_run(
    hook: Hook,
    packet: &[u8],
    repeat: u32,
    expect: Expect,
    before: &IfCounters,
    after: &IfCounters,
    result: &Result<Ran, ProgramError>,
) -> Result<(), String> {
    let len = packet.len();
    match (expect, result) {
        (Expect::Rejected, Err(e)) if errno(e) == Some(libc::EINVAL) => {}
        (Expect::Rejected, Err(e)) => {
            return Err(format!(
                "expected the kernel to refuse the {len}-byte run with EINVAL, got: {}",
                describe(e)
            ));
        }
        (Expect::Rejected, Ok(ran)) => {
            return Err(format!(
                "expected the kernel to refuse the {len}-byte run with EINVAL, but it ran and returned {}",
                ran.verdict as i32
            ));
        }
        (Expect::Counted { .. }, Err(e)) => {
            return Err(format!(
                "expected the {len}-byte frame to run, the kernel refused: {}",
                describe(e)
            ));
        }
        (Expect::Counted { .. }, Ok(ran)) => {
            if ran.verdict != hook.pass() {
                return Err(format!(
                    "expected verdict {} ({}), saw {} ({})",
                    hook.pass(),
                    hook.pass_name(),
                    ran.verdict,
                    ran.verdict as i32
                ));
            }
            if ran.data_size_out != len {
                return Err(format!(
                    "expected data_size_out {len} (the input length), saw {}",
                    ran.data_size_out
                ));
            }
            if let Some(at) = (0..len).find(|&i| ran.out[i] != packet[i]) {
                return Err(format!(
                    "expected the output to equal the input, first difference at byte {at}: \
                     expected {:#04x}, saw {:#04x}",
                    packet[at], ran.out[at]
                ));
            }
            if let Some(at) = (len..ran.out.len()).find(|&i| ran.out[i] != OUT_FILL) {
                return Err(format!(
                    "expected nothing written past byte {len} of data_out, byte {at} is {:#04x}",
                    ran.out[at]
                ));
            }
        }
    }

    let (counted_before, untouched_before) = hook.split(before);
    let (counted_after, untouched_after) = hook.split(after);
    let (counted_dir, untouched_dir) = hook.directions();
    let want = expect.delta(len, u64::from(repeat));
    let seen = diff(counted_after, counted_before);
    if seen != want {
        return Err(format!(
            "expected {counted_dir} counters to change by {want:?} ({expect:?}, {len} bytes, {repeat} run(s)), \
             saw {seen:?}"
        ));
    }
    let seen = diff(untouched_after, untouched_before);
    if seen != Counters::default() {
        return Err(format!(
            "expected {untouched_dir} counters unchanged, saw them change by {seen:?}"
        ));
    }
    Ok(())
}

/// First `max` bytes in hex, for failure messages.
fn hex(p: &[u8], max: usize) -> String {
    let mut s: String = p.iter().take(max).map(|b| format!("{b:02x}")).collect();
    if p.len() > max {
        s.push_str(&format!("… ({} bytes)", p.len()));
    }
    s
}

// ---------------------------------------------------------------------------------
// Reference model of ebpf/pckt_parsing.h + il_count
// ---------------------------------------------------------------------------------

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const MAX_VLAN_DEPTH: usize = 2;

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// Whether BPF_PROG_TEST_RUN itself refuses `frame` with EINVAL, before `hook` runs
/// (net/bpf/test_run.c on this kernel):
/// - both program types: data_in shorter than an Ethernet header (bpf_test_init);
/// - TC (skb) only: an untagged frame whose ethertype is IPv4 or IPv6 but whose L3
///   header is shorter than struct iphdr (20) or struct ipv6hdr (40) bytes. This is
///   "bpf: reject short IPv4/IPv6 inputs in bpf_prog_test_run_skb" (upstream
///   12bec2bd4b76, in 6.18 stable). It looks at the ethertype eth_type_trans() returns,
///   i.e. the outer one, so the same truncations behind a VLAN tag do reach lan_egress.
///
/// Real traffic has no such limits: these frames reach the programs on the wire.
fn test_run_refuses(hook: Hook, frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    let l3_len = frame.len() - ETH_HLEN;
    hook == Hook::LanEgress
        && match be16(frame, 12) {
            ETH_P_IP => l3_len < 20,
            ETH_P_IPV6 => l3_len < 40,
            _ => false,
        }
}

/// What a test run of `hook` on `frame` should give: refused by the kernel, or the
/// parser model's verdict.
fn reference(hook: Hook, frame: &[u8]) -> Expect {
    if test_run_refuses(hook, frame) {
        Expect::Rejected
    } else {
        parse_model(frame)
    }
}

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers the parser walks before taking what follows as transport.
const MAX_IPV6_EXT: usize = 6;

/// What the programs should make of `frame`, written from the rules rather than from
/// the C.
///
/// L2/L3 (il_parse_l2_l3): Ethernet, at most two 802.1Q/802.1ad tags (a third tag is
/// an unknown ethertype: other); IPv4 needs version 4, IHL >= 5 and the whole IHL
/// header present; IPv6 needs version 6 and its 40-byte header. `vlan` counts
/// complete tags only, also on a malformed frame.
///
/// IP (il_parse_ip, run on every IPv4/IPv6 frame): a later fragment needs nothing
/// more; otherwise IPv6 walks up to six extension headers (hop-by-hop, routing,
/// destination options, fragment, AH), each needing 8 bytes present, and TCP needs
/// its 20-byte header with a data offset >= 5, UDP its 8 bytes, ICMP/ICMPv6 6 bytes
/// (type, code, checksum, identifier). Other transports need nothing.
///
/// Anything cut short or inconsistent on the way is malformed.
fn parse_model(frame: &[u8]) -> Expect {
    let len = frame.len();
    let malformed = |tags: usize| Expect::Counted {
        class: Class::Malformed,
        vlan: tags > 0,
    };
    if len < ETH_HLEN {
        return malformed(0);
    }
    let mut proto = be16(frame, 12);
    let mut off = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_DEPTH && (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
        if off + 4 > len {
            return malformed(tags);
        }
        proto = be16(frame, off + 2);
        off += 4;
        tags += 1;
    }
    let (class, transport) = match proto {
        ETH_P_IP => {
            if off + 20 > len {
                return malformed(tags);
            }
            let (version, ihl) = (frame[off] >> 4, usize::from(frame[off] & 0x0f));
            if version != 4 || ihl < 5 || off + ihl * 4 > len {
                return malformed(tags);
            }
            let later_fragment = be16(frame, off + 6) & 0x1fff != 0;
            (
                Class::Ipv4,
                (!later_fragment).then(|| (frame[off + 9], off + ihl * 4)),
            )
        }
        ETH_P_IPV6 => {
            if off + 40 > len || frame[off] >> 4 != 6 {
                return malformed(tags);
            }
            match ipv6_transport(frame, off) {
                Err(()) => return malformed(tags),
                Ok(transport) => (Class::Ipv6, transport),
            }
        }
        _ => {
            return Expect::Counted {
                class: Class::Other,
                vlan: tags > 0,
            }
        }
    };
    if let Some((proto, l4)) = transport {
        // Other transports are not looked at, wherever the extension headers led.
        let needed = match proto {
            IPPROTO_TCP => Some(20),
            IPPROTO_UDP => Some(8),
            IPPROTO_ICMP | IPPROTO_ICMPV6 => Some(6),
            _ => None,
        };
        if let Some(needed) = needed {
            if l4 + needed > len || (proto == IPPROTO_TCP && frame[l4 + 12] >> 4 < 5) {
                return malformed(tags);
            }
        }
    }
    Expect::Counted {
        class,
        vlan: tags > 0,
    }
}

/// The transport protocol and its offset after the extension headers of the IPv6
/// packet at `l3`; None for a later fragment (no transport header to check), Err when
/// an extension header is cut short.
fn ipv6_transport(frame: &[u8], l3: usize) -> Result<Option<(u8, usize)>, ()> {
    let mut next = frame[l3 + 6];
    let mut cur = l3 + 40;
    for _ in 0..MAX_IPV6_EXT {
        if ![
            IPPROTO_HOPOPTS,
            IPPROTO_ROUTING,
            IPPROTO_DSTOPTS,
            IPPROTO_FRAGMENT,
            IPPROTO_AH,
        ]
        .contains(&next)
        {
            break;
        }
        if cur + 8 > frame.len() {
            return Err(());
        }
        let this = next;
        next = frame[cur];
        match this {
            IPPROTO_FRAGMENT => {
                if be16(frame, cur + 2) & 0xfff8 != 0 {
                    return Ok(None);
                }
                cur += 8;
            }
            IPPROTO_AH => cur += (usize::from(frame[cur + 1]) + 2) * 4,
            _ => cur += (usize::from(frame[cur + 1]) + 1) * 8,
        }
    }
    Ok(Some((next, cur)))
}

// ---------------------------------------------------------------------------------
// Packets, built with pnet
// ---------------------------------------------------------------------------------

fn ethernet(ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    tagged(&[], ethertype, payload)
}

/// An Ethernet frame from the client to the router carrying `tags` (outermost first,
/// each a TPID and a VLAN id), then `ethertype` and `payload`.
fn tagged(tags: &[(EtherType, u16)], ethertype: EtherType, payload: &[u8]) -> Vec<u8> {
    // Built inside out: each tag names what follows it.
    let mut inner = payload.to_vec();
    let mut next = ethertype;
    for &(tpid, vid) in tags.iter().rev() {
        let mut buf = vec![0u8; 4 + inner.len()];
        {
            let mut tag = MutableVlanPacket::new(&mut buf).expect("VLAN tag buffer");
            tag.set_priority_code_point(ClassesOfService::BE);
            tag.set_drop_eligible_indicator(0);
            tag.set_vlan_identifier(vid);
            tag.set_ethertype(next);
            tag.set_payload(&inner);
        }
        inner = buf;
        next = tpid;
    }
    let mut buf = vec![0u8; ETH_HLEN + inner.len()];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).expect("Ethernet buffer");
        eth.set_destination(ROUTER_MAC);
        eth.set_source(CLIENT_MAC);
        eth.set_ethertype(next);
        eth.set_payload(&inner);
    }
    buf
}

/// IPv4 header fields the fixtures vary.
#[derive(Clone, Copy)]
struct V4 {
    /// Option bytes, a multiple of 4: IHL = 5 + options.len() / 4.
    options: &'static [u8],
    flags: u8,
    /// In 8-byte units.
    fragment_offset: u16,
}

const V4_PLAIN: V4 = V4 {
    options: &[],
    flags: Ipv4Flags::DontFragment,
    fragment_offset: 0,
};

/// IP Router Alert (RFC 2113): copied flag, option 20, length 4, value 0. One word.
const ROUTER_ALERT: [u8; 4] = [0x80 | Ipv4OptionNumbers::RTRALT.0, 4, 0, 0];

fn ipv4(proto: IpNextHeaderProtocol, v4: V4, payload: &[u8]) -> Vec<u8> {
    assert_eq!(
        v4.options.len() % 4,
        0,
        "IPv4 options must fill whole words"
    );
    let header = 20 + v4.options.len();
    let total = header + payload.len();
    let mut buf = vec![0u8; total];
    let mut ip = MutableIpv4Packet::new(&mut buf).expect("IPv4 buffer");
    ip.set_version(4);
    ip.set_header_length((header / 4) as u8);
    ip.set_total_length(total as u16);
    ip.set_identification(0x4c1f);
    ip.set_flags(v4.flags);
    ip.set_fragment_offset(v4.fragment_offset);
    ip.set_ttl(64);
    ip.set_next_level_protocol(proto);
    ip.set_source(CLIENT_V4);
    ip.set_destination(SERVER_V4);
    ip.get_options_raw_mut().copy_from_slice(v4.options);
    ip.set_payload(payload);
    let sum = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(sum);
    buf
}

fn ipv6(next: IpNextHeaderProtocol, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 40 + payload.len()];
    let mut ip = MutableIpv6Packet::new(&mut buf).expect("IPv6 buffer");
    ip.set_version(6);
    ip.set_traffic_class(0);
    ip.set_flow_label(0x1f2e3);
    ip.set_payload_length(payload.len() as u16);
    ip.set_next_header(next);
    ip.set_hop_limit(64);
    ip.set_source(CLIENT_V6);
    ip.set_destination(SERVER_V6);
    ip.set_payload(payload);
    buf
}

/// An 8-byte hop-by-hop or destination options header (they share a layout) holding
/// one PadN option, followed by `inner`.
fn ipv6_options_header(next: IpNextHeaderProtocol, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + inner.len()];
    {
        let mut ext = MutableExtensionPacket::new(&mut buf[..8]).expect("extension header buffer");
        ext.set_next_header(next);
        ext.set_hdr_ext_len(0);
        ext.set_options(&[1, 4, 0, 0, 0, 0]); // PadN, 4 bytes of padding
    }
    buf[8..].copy_from_slice(inner);
    buf
}

/// An IPv6 fragment header (offset in 8-byte units, M flag), followed by `inner`.
fn ipv6_fragment_header(
    next: IpNextHeaderProtocol,
    offset_units: u16,
    more: bool,
    inner: &[u8],
) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + inner.len()];
    {
        let mut frag = MutableFragmentPacket::new(&mut buf[..8]).expect("fragment header buffer");
        frag.set_next_header(next);
        frag.set_fragment_offset_with_flags(offset_units << 3 | u16::from(more));
        frag.set_id(0x1f2e_3d4c);
    }
    buf[8..].copy_from_slice(inner);
    buf
}

fn udp(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let len = buf.len() as u16;
    let mut u = MutableUdpPacket::new(&mut buf).expect("UDP buffer");
    u.set_source(50_000);
    u.set_destination(443);
    u.set_length(len);
    u.set_payload(payload);
    let sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp::ipv4_checksum(&u.to_immutable(), &s, &d),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp::ipv6_checksum(&u.to_immutable(), &s, &d),
        _ => panic!("UDP between {src} and {dst}: mixed families"),
    };
    u.set_checksum(sum);
    buf
}

/// A SYN with the usual options: MSS, SACK permitted, timestamps, window scale.
fn tcp_syn(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let options = [
        TcpOption::mss(1460),
        TcpOption::sack_perm(),
        TcpOption::timestamp(0x1234_5678, 0),
        TcpOption::nop(),
        TcpOption::wscale(7),
    ];
    let options_len = 4 + 2 + 10 + 1 + 3;
    let mut buf = vec![0u8; 20 + options_len + payload.len()];
    let mut t = MutableTcpPacket::new(&mut buf).expect("TCP buffer");
    t.set_source(50_001);
    t.set_destination(443);
    t.set_sequence(0x0bad_cafe);
    t.set_data_offset(((20 + options_len) / 4) as u8);
    t.set_flags(TcpFlags::SYN);
    t.set_window(64_240);
    t.set_options(&options);
    t.set_payload(payload);
    let sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp::ipv4_checksum(&t.to_immutable(), &s, &d),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp::ipv6_checksum(&t.to_immutable(), &s, &d),
        _ => panic!("TCP between {src} and {dst}: mixed families"),
    };
    t.set_checksum(sum);
    buf
}

fn icmp_echo(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut e = icmp::echo_request::MutableEchoRequestPacket::new(&mut buf).expect("ICMP buffer");
    e.set_icmp_type(IcmpTypes::EchoRequest);
    e.set_icmp_code(IcmpCode::new(0));
    e.set_identifier(0x77);
    e.set_sequence_number(1);
    e.set_payload(payload);
    let sum = icmp::checksum(&IcmpPacket::new(e.packet()).expect("ICMP packet"));
    e.set_checksum(sum);
    buf
}

fn icmpv6_echo(payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 8 + payload.len()];
    let mut e =
        icmpv6::echo_request::MutableEchoRequestPacket::new(&mut buf).expect("ICMPv6 buffer");
    e.set_icmpv6_type(Icmpv6Types::EchoRequest);
    e.set_icmpv6_code(Icmpv6Code::new(0));
    e.set_identifier(0x77);
    e.set_sequence_number(1);
    e.set_payload(payload);
    let sum = icmpv6::checksum(
        &Icmpv6Packet::new(e.packet()).expect("ICMPv6 packet"),
        &CLIENT_V6,
        &SERVER_V6,
    );
    e.set_checksum(sum);
    buf
}

fn arp_request() -> Vec<u8> {
    let mut arp = vec![0u8; 28];
    {
        let mut a = MutableArpPacket::new(&mut arp).expect("ARP buffer");
        a.set_hardware_type(ArpHardwareTypes::Ethernet);
        a.set_protocol_type(EtherTypes::Ipv4);
        a.set_hw_addr_len(6);
        a.set_proto_addr_len(4);
        a.set_operation(ArpOperations::Request);
        a.set_sender_hw_addr(CLIENT_MAC);
        a.set_sender_proto_addr(CLIENT_V4);
        a.set_target_hw_addr(MacAddr::zero());
        a.set_target_proto_addr(Ipv4Addr::new(192, 168, 1, 1));
    }
    let mut frame = ethernet(EtherTypes::Arp, &arp);
    MutableEthernetPacket::new(&mut frame)
        .expect("Ethernet")
        .set_destination(MacAddr::broadcast());
    frame
}

const V4_SRC: IpAddr = IpAddr::V4(CLIENT_V4);
const V4_DST: IpAddr = IpAddr::V4(SERVER_V4);
const V6_SRC: IpAddr = IpAddr::V6(CLIENT_V6);
const V6_DST: IpAddr = IpAddr::V6(SERVER_V6);

/// Some application bytes.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"inferlane fixture "[i % 18]).collect()
}

fn ipv4_udp_l3(payload_len: usize) -> Vec<u8> {
    ipv4(
        IpNextHeaderProtocols::Udp,
        V4_PLAIN,
        &udp(V4_SRC, V4_DST, &payload(payload_len)),
    )
}

fn ipv6_udp_l3(payload_len: usize) -> Vec<u8> {
    ipv6(
        IpNextHeaderProtocols::Udp,
        &udp(V6_SRC, V6_DST, &payload(payload_len)),
    )
}

fn ipv4_udp_frame() -> Vec<u8> {
    ethernet(EtherTypes::Ipv4, &ipv4_udp_l3(32))
}

fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(
        len < frame.len(),
        "truncating a {}-byte frame to {len} bytes",
        frame.len()
    );
    frame.truncate(len);
    frame
}

// ---------------------------------------------------------------------------------
// The fixture table
// ---------------------------------------------------------------------------------

struct Fixture {
    name: &'static str,
    packet: Vec<u8>,
    /// lan_ingress (XDP)
    ingress: Expect,
    /// lan_egress (TC)
    egress: Expect,
}

impl Fixture {
    fn expect(&self, hook: Hook) -> Expect {
        match hook {
            Hook::LanIngress => self.ingress,
            Hook::LanEgress => self.egress,
        }
    }
}

/// A fixture both programs treat alike.
fn fx(name: &'static str, packet: Vec<u8>, expect: Expect) -> Fixture {
    Fixture {
        name,
        packet,
        ingress: expect,
        egress: expect,
    }
}

/// A fixture that only lan_ingress gets to see: the skb test run refuses it (see
/// `test_run_refuses`).
fn fx_xdp_only(name: &'static str, packet: Vec<u8>, ingress: Expect) -> Fixture {
    Fixture {
        name,
        packet,
        ingress,
        egress: Expect::Rejected,
    }
}

const fn counted(class: Class, vlan: bool) -> Expect {
    Expect::Counted { class, vlan }
}

const TAGGED: bool = true;
const UNTAGGED: bool = false;

fn fixtures() -> Vec<Fixture> {
    use Class::*;
    let dot1q = |vid| (EtherTypes::Vlan, vid);
    let dot1ad = |vid| (EtherTypes::PBridge, vid);

    let ipv4_tcp_opts = ipv4(
        IpNextHeaderProtocols::Tcp,
        V4 {
            options: &ROUTER_ALERT,
            ..V4_PLAIN
        },
        &tcp_syn(V4_SRC, V4_DST, &[]),
    );
    assert_eq!(
        ipv4_tcp_opts[0] & 0x0f,
        6,
        "the IPv4/TCP fixture must have IHL 6"
    );

    // IHL 15: 40 bytes of options (NOPs, then End of Options List).
    let mut nops = [Ipv4OptionNumbers::NOP.0; 40];
    nops[39] = Ipv4OptionNumbers::EOL.0;
    let nops: &'static [u8] = Box::leak(Box::new(nops));
    let ipv4_ihl15 = ipv4(
        IpNextHeaderProtocols::Udp,
        V4 {
            options: nops,
            ..V4_PLAIN
        },
        &udp(V4_SRC, V4_DST, &payload(8)),
    );

    let ipv6_ext_chain = ipv6(
        IpNextHeaderProtocols::Hopopt,
        &ipv6_options_header(
            IpNextHeaderProtocols::Ipv6Opts,
            &ipv6_options_header(
                IpNextHeaderProtocols::Udp,
                &udp(V6_SRC, V6_DST, &payload(24)),
            ),
        ),
    );

    // One UDP datagram split in two IPv4 fragments: 24 bytes (3 units), then the rest.
    let datagram = udp(V4_SRC, V4_DST, &payload(64));
    let first_fragment = ipv4(
        IpNextHeaderProtocols::Udp,
        V4 {
            flags: Ipv4Flags::MoreFragments,
            ..V4_PLAIN
        },
        &datagram[..24],
    );
    let later_fragment = ipv4(
        IpNextHeaderProtocols::Udp,
        V4 {
            flags: 0,
            fragment_offset: 3,
            ..V4_PLAIN
        },
        &datagram[24..],
    );

    let mut ihl4 = ipv4_udp_frame();
    MutableIpv4Packet::new(&mut ihl4[ETH_HLEN..])
        .expect("IPv4")
        .set_header_length(4);

    let ipv4_ihl6_header = ipv4(
        IpNextHeaderProtocols::Udp,
        V4 {
            options: &ROUTER_ALERT,
            ..V4_PLAIN
        },
        &[],
    );

    let ipv4_tcp = ethernet(
        EtherTypes::Ipv4,
        &ipv4(
            IpNextHeaderProtocols::Tcp,
            V4_PLAIN,
            &tcp_syn(V4_SRC, V4_DST, &[]),
        ),
    );
    let mut tcp_doff4 = ipv4_tcp.clone();
    MutableTcpPacket::new(&mut tcp_doff4[ETH_HLEN + 20..])
        .expect("TCP")
        .set_data_offset(4);
    let ipv4_icmp = ethernet(
        EtherTypes::Ipv4,
        &ipv4(
            IpNextHeaderProtocols::Icmp,
            V4_PLAIN,
            &icmp_echo(&payload(56)),
        ),
    );

    // IPv6 fragments of one UDP datagram: the first carries the UDP header, a later
    // one only data.
    let datagram6 = udp(V6_SRC, V6_DST, &payload(64));
    let ipv6_first_fragment = ipv6(
        IpNextHeaderProtocols::Ipv6Frag,
        &ipv6_fragment_header(IpNextHeaderProtocols::Udp, 0, true, &datagram6[..24]),
    );
    let ipv6_later_fragment = ipv6(
        IpNextHeaderProtocols::Ipv6Frag,
        &ipv6_fragment_header(IpNextHeaderProtocols::Udp, 3, false, &datagram6[24..28]),
    );
    // Seven destination options headers: the parser walks six, then takes the seventh
    // as a transport without ports.
    let mut seven_ext = udp(V6_SRC, V6_DST, &payload(8));
    let mut next = IpNextHeaderProtocols::Udp;
    for _ in 0..7 {
        seven_ext = ipv6_options_header(next, &seven_ext);
        next = IpNextHeaderProtocols::Ipv6Opts;
    }
    let ipv6_seven_ext = ipv6(next, &seven_ext);
    let ipv6_icmpv6 = ethernet(
        EtherTypes::Ipv6,
        &ipv6(IpNextHeaderProtocols::Icmpv6, &icmpv6_echo(&payload(56))),
    );

    // 1500 bytes of IPv4 (a full standard MTU) in a 1514-byte frame.
    let mtu_frame = ethernet(EtherTypes::Ipv4, &ipv4_udp_l3(1500 - 20 - 8));
    assert_eq!(
        mtu_frame.len(),
        1514,
        "the MTU fixture must be a 1514-byte frame"
    );

    let ipv6_udp = ethernet(EtherTypes::Ipv6, &ipv6_udp_l3(32));

    vec![
        // Well-formed traffic.
        fx("ipv4_udp", ipv4_udp_frame(), counted(Ipv4, UNTAGGED)),
        fx(
            "ipv4_tcp_syn_ihl6_router_alert_tcp_options",
            ethernet(EtherTypes::Ipv4, &ipv4_tcp_opts),
            counted(Ipv4, UNTAGGED),
        ),
        fx(
            "ipv4_udp_ihl15_max_options",
            ethernet(EtherTypes::Ipv4, &ipv4_ihl15),
            counted(Ipv4, UNTAGGED),
        ),
        fx("ipv4_tcp_syn", ipv4_tcp.clone(), counted(Ipv4, UNTAGGED)),
        fx("ipv4_icmp_echo", ipv4_icmp.clone(), counted(Ipv4, UNTAGGED)),
        // GRE has no ports: nothing to read past the IP header.
        fx(
            "ipv4_gre_header_only_20_bytes",
            ethernet(
                EtherTypes::Ipv4,
                &ipv4(IpNextHeaderProtocols::Gre, V4_PLAIN, &[]),
            ),
            counted(Ipv4, UNTAGGED),
        ),
        fx(
            "ipv4_first_fragment",
            ethernet(EtherTypes::Ipv4, &first_fragment),
            counted(Ipv4, UNTAGGED),
        ),
        fx(
            "ipv4_non_first_fragment",
            ethernet(EtherTypes::Ipv4, &later_fragment),
            counted(Ipv4, UNTAGGED),
        ),
        // A later fragment has no transport header: 4 bytes of data are enough.
        fx(
            "ipv4_non_first_fragment_4_bytes",
            ethernet(
                EtherTypes::Ipv4,
                &ipv4(
                    IpNextHeaderProtocols::Udp,
                    V4 {
                        flags: 0,
                        fragment_offset: 3,
                        ..V4_PLAIN
                    },
                    &datagram[24..28],
                ),
            ),
            counted(Ipv4, UNTAGGED),
        ),
        fx(
            "ipv4_udp_1500_byte_packet_1514_byte_frame",
            mtu_frame,
            counted(Ipv4, UNTAGGED),
        ),
        fx(
            "ipv6_tcp_syn",
            ethernet(
                EtherTypes::Ipv6,
                &ipv6(IpNextHeaderProtocols::Tcp, &tcp_syn(V6_SRC, V6_DST, &[])),
            ),
            counted(Ipv6, UNTAGGED),
        ),
        fx("ipv6_udp", ipv6_udp.clone(), counted(Ipv6, UNTAGGED)),
        fx(
            "ipv6_hop_by_hop_dest_opts_udp",
            ethernet(EtherTypes::Ipv6, &ipv6_ext_chain),
            counted(Ipv6, UNTAGGED),
        ),
        fx(
            "ipv6_seven_dest_opts_headers_udp",
            ethernet(EtherTypes::Ipv6, &ipv6_seven_ext),
            counted(Ipv6, UNTAGGED),
        ),
        fx(
            "ipv6_first_fragment_udp",
            ethernet(EtherTypes::Ipv6, &ipv6_first_fragment),
            counted(Ipv6, UNTAGGED),
        ),
        fx(
            "ipv6_non_first_fragment_4_bytes",
            ethernet(EtherTypes::Ipv6, &ipv6_later_fragment),
            counted(Ipv6, UNTAGGED),
        ),
        fx(
            "ipv6_icmpv6_echo",
            ipv6_icmpv6.clone(),
            counted(Ipv6, UNTAGGED),
        ),
        fx(
            "ipv6_header_only_40_bytes",
            ethernet(
                EtherTypes::Ipv6,
                &ipv6(IpNextHeaderProtocols::Ipv6NoNxt, &[]),
            ),
            counted(Ipv6, UNTAGGED),
        ),
        fx("arp_request", arp_request(), counted(Other, UNTAGGED)),
        fx("all_zero_60_bytes", vec![0u8; 60], counted(Other, UNTAGGED)),
        // VLAN tags.
        fx(
            "dot1q_ipv4_udp",
            tagged(&[dot1q(10)], EtherTypes::Ipv4, &ipv4_udp_l3(32)),
            counted(Ipv4, TAGGED),
        ),
        fx(
            "qinq_dot1ad_dot1q_ipv6_udp",
            tagged(
                &[dot1ad(100), dot1q(10)],
                EtherTypes::Ipv6,
                &ipv6_udp_l3(32),
            ),
            counted(Ipv6, TAGGED),
        ),
        fx(
            "dot1q_arp",
            tagged(&[dot1q(10)], EtherTypes::Arp, &arp_request()[ETH_HLEN..]),
            counted(Other, TAGGED),
        ),
        // The parser reads two tags; what follows the second is an unknown ethertype.
        fx(
            "three_tags_ipv4_is_other",
            tagged(
                &[dot1ad(100), dot1q(10), dot1q(20)],
                EtherTypes::Ipv4,
                &ipv4_udp_l3(32),
            ),
            counted(Other, TAGGED),
        ),
        // Only 0x8100 and 0x88a8 are tags; the old 0x9100 QinQ TPID is an unknown ethertype.
        fx(
            "tpid_0x9100_is_other",
            tagged(
                &[(EtherTypes::QinQ, 100)],
                EtherTypes::Ipv4,
                &ipv4_udp_l3(32),
            ),
            counted(Other, UNTAGGED),
        ),
        // Truncated at every layer. Under 14 bytes the kernel refuses the test run of
        // either program (EINVAL from bpf_test_init), so the parser's own Ethernet
        // length check cannot be reached through BPF_PROG_TEST_RUN.
        fx(
            "ethernet_13_bytes",
            truncated(ipv4_udp_frame(), 13),
            Expect::Rejected,
        ),
        // The skb test run refuses an untagged IPv4/IPv6 ethertype with a short L3
        // header; the tagged variants below take the same parser paths in lan_egress.
        fx_xdp_only(
            "ethernet_header_only_ethertype_ipv4",
            truncated(ipv4_udp_frame(), 14),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "dot1q_tag_then_nothing_ethertype_ipv4",
            truncated(
                tagged(&[dot1q(10)], EtherTypes::Ipv4, &ipv4_udp_l3(32)),
                ETH_HLEN + 4,
            ),
            counted(Malformed, TAGGED),
        ),
        fx(
            "ethernet_header_only_ethertype_arp",
            truncated(arp_request(), 14),
            counted(Other, UNTAGGED),
        ),
        fx(
            "dot1q_tag_cut_at_2_bytes",
            truncated(
                tagged(&[dot1q(10)], EtherTypes::Ipv4, &ipv4_udp_l3(32)),
                ETH_HLEN + 2,
            ),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "qinq_inner_tag_cut_at_2_bytes",
            truncated(
                tagged(
                    &[dot1ad(100), dot1q(10)],
                    EtherTypes::Ipv6,
                    &ipv6_udp_l3(32),
                ),
                ETH_HLEN + 4 + 2,
            ),
            counted(Malformed, TAGGED),
        ),
        fx(
            "dot1q_ipv4_cut_at_19_bytes",
            truncated(
                tagged(&[dot1q(10)], EtherTypes::Ipv4, &ipv4_udp_l3(32)),
                ETH_HLEN + 4 + 19,
            ),
            counted(Malformed, TAGGED),
        ),
        fx_xdp_only(
            "ipv4_header_cut_at_19_bytes",
            truncated(ipv4_udp_frame(), ETH_HLEN + 19),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv4_ihl6_only_20_bytes_present",
            truncated(ethernet(EtherTypes::Ipv4, &ipv4_ihl6_header), ETH_HLEN + 20),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv4_ihl15_cut_at_59_bytes",
            truncated(ethernet(EtherTypes::Ipv4, &ipv4_ihl15), ETH_HLEN + 59),
            counted(Malformed, UNTAGGED),
        ),
        fx_xdp_only(
            "ipv6_header_cut_at_39_bytes",
            truncated(ipv6_udp, ETH_HLEN + 39),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "dot1q_ipv6_cut_at_39_bytes",
            truncated(
                tagged(&[dot1q(10)], EtherTypes::Ipv6, &ipv6_udp_l3(32)),
                ETH_HLEN + 4 + 39,
            ),
            counted(Malformed, TAGGED),
        ),
        // Transport headers cut short (il_parse_ip): malformed too.
        fx(
            "ipv4_udp_cut_at_7_bytes_of_udp",
            truncated(ipv4_udp_frame(), ETH_HLEN + 20 + 7),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv4_udp_header_missing",
            ethernet(
                EtherTypes::Ipv4,
                &ipv4(IpNextHeaderProtocols::Udp, V4_PLAIN, &[]),
            ),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv4_tcp_cut_at_19_bytes_of_tcp",
            truncated(ipv4_tcp, ETH_HLEN + 20 + 19),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv4_icmp_cut_at_5_bytes_of_icmp",
            truncated(ipv4_icmp, ETH_HLEN + 20 + 5),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv6_hop_by_hop_cut_at_7_bytes",
            truncated(
                ethernet(EtherTypes::Ipv6, &ipv6_ext_chain),
                ETH_HLEN + 40 + 7,
            ),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv6_udp_after_ext_chain_cut_at_4_bytes",
            truncated(
                ethernet(EtherTypes::Ipv6, &ipv6_ext_chain),
                ETH_HLEN + 40 + 16 + 4,
            ),
            counted(Malformed, UNTAGGED),
        ),
        fx(
            "ipv6_icmpv6_cut_at_5_bytes_of_icmpv6",
            truncated(ipv6_icmpv6, ETH_HLEN + 40 + 5),
            counted(Malformed, UNTAGGED),
        ),
        // Inconsistent headers.
        fx(
            "ipv4_tcp_data_offset_4",
            tcp_doff4,
            counted(Malformed, UNTAGGED),
        ),
        fx("ipv4_ihl_4", ihl4, counted(Malformed, UNTAGGED)),
        fx(
            "ethertype_ipv4_carrying_version_6",
            ethernet(EtherTypes::Ipv4, &ipv6_udp_l3(32)),
            counted(Malformed, UNTAGGED),
        ),
        // 60 bytes of IPv4, so the IPv6 length check passes and the version check decides.
        fx(
            "ethertype_ipv6_carrying_version_4",
            ethernet(EtherTypes::Ipv6, &ipv4_udp_l3(32)),
            counted(Malformed, UNTAGGED),
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------

#[test]
fn every_fixture_through_both_programs() {
    if !lab::require_root_or_skip("every_fixture_through_both_programs") {
        return;
    }
    let fixtures = fixtures();
    let mut names: Vec<&str> = fixtures.iter().map(|f| f.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), fixtures.len(), "expected unique fixture names");

    let mut h = Harness::load();
    let mut failures = Vec::new();
    for f in &fixtures {
        for hook in Hook::BOTH {
            // The fuzz test trusts the reference model; it must agree with the table.
            let model = reference(hook, &f.packet);
            if model != f.expect(hook) {
                failures.push(format!(
                    "{} via {hook}: the table expects {:?}, the reference model says {model:?}",
                    f.name,
                    f.expect(hook)
                ));
            }
            let before = h.counters();
            let result = h.run(hook, &f.packet, 1);
            let after = h.counters();
            if let Err(e) = check_run(hook, &f.packet, 1, f.expect(hook), &before, &after, &result)
            {
                failures.push(format!(
                    "{} via {hook}: {e}\n    packet {}",
                    f.name,
                    hex(&f.packet, 96)
                ));
            }
        }
    }
    eprintln!(
        "{} fixtures, each through {} programs",
        fixtures.len(),
        Hook::BOTH.len()
    );
    assert!(
        failures.is_empty(),
        "{} fixture check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[test]
fn repeat_counts_every_run() {
    if !lab::require_root_or_skip("repeat_counts_every_run") {
        return;
    }
    const REPEAT: u32 = 1000;
    let packet = ipv4_udp_frame();
    let expect = counted(Class::Ipv4, UNTAGGED);
    let mut h = Harness::load();
    for hook in Hook::BOTH {
        let before = h.counters();
        let result = h.run(hook, &packet, REPEAT);
        let after = h.counters();
        let packets = diff(hook.split(&after).0, hook.split(&before).0).packets;
        assert_eq!(
            packets,
            u64::from(REPEAT),
            "{hook}: expected the packet counter to rise by {REPEAT}, saw {packets}"
        );
        if let Err(e) = check_run(hook, &packet, REPEAT, expect, &before, &after, &result) {
            panic!("{hook} with repeat {REPEAT}: {e}");
        }
    }
}

/// xorshift64: small, deterministic, good enough to pick bytes and branches.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in 0..n (n small).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const FUZZ_SEED: u64 = 0x1f3a_c0de_5eed_2026;
const FUZZ_PACKETS: usize = 100_000;
const FUZZ_MAX_LEN: usize = 1600;
const FUZZ_REPEAT_ONE_IN: usize = 2000;
/// Ethertypes worth aiming at: the parser's branches, plus ARP and a random one.
const INTERESTING_ETHERTYPES: [u16; 5] = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, 0x0806];

fn ethertype_pick(rng: &mut XorShift) -> u16 {
    match rng.below(INTERESTING_ETHERTYPES.len() + 1) {
        i if i < INTERESTING_ETHERTYPES.len() => INTERESTING_ETHERTYPES[i],
        _ => rng.next() as u16,
    }
}

/// Where an L3 header would start under 0..=3 tags.
fn l3_offset(rng: &mut XorShift) -> usize {
    ETH_HLEN + 4 * rng.below(4)
}

/// One to three edits of `base`: bit flips (mostly in the headers), truncation,
/// ethertype/TPID rewrites, version and IHL nibbles, appended garbage.
fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut p = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = p.len();
        match rng.below(6) {
            0 if len > 0 => {
                for _ in 0..1 + rng.below(8) {
                    let at = if rng.below(2) == 0 {
                        rng.below(len.min(80))
                    } else {
                        rng.below(len)
                    };
                    p[at] ^= 1 << rng.below(8);
                }
            }
            1 => p.truncate(rng.below(len + 1)),
            2 => {
                let at = 12 + 4 * rng.below(4);
                if at + 2 <= len {
                    p[at..at + 2].copy_from_slice(&ethertype_pick(rng).to_be_bytes());
                }
            }
            3 => {
                let at = l3_offset(rng);
                if at < len {
                    p[at] = (p[at] & 0x0f) | ((rng.below(16) as u8) << 4);
                }
            }
            4 => {
                let at = l3_offset(rng);
                if at < len {
                    p[at] = (p[at] & 0xf0) | rng.below(16) as u8;
                }
            }
            _ => {
                let n = 1 + rng.below(64);
                let extra = rng.bytes(n);
                p.extend_from_slice(&extra);
                p.truncate(FUZZ_MAX_LEN);
            }
        }
    }
    p
}

/// Random bytes shaped just enough to reach the parser's deeper branches: chosen
/// ethertypes and TPIDs, and a version nibble of 4 or 6 where an IP header may start.
fn random_shaped(rng: &mut XorShift) -> Vec<u8> {
    let len = ETH_HLEN + rng.below(100);
    let mut p = rng.bytes(len);
    for at in [12, 16, 20] {
        if at + 2 <= len && (at == 12 || rng.below(2) == 0) {
            p[at..at + 2].copy_from_slice(&ethertype_pick(rng).to_be_bytes());
        }
    }
    let at = l3_offset(rng);
    if at < len {
        let version = if rng.below(2) == 0 { 4 } else { 6 };
        p[at] = (version << 4) | (p[at] & 0x0f);
    }
    p
}

#[derive(Clone, Copy)]
enum Origin {
    Random,
    Shaped,
    Mutated(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Random => f.write_str("random bytes"),
            Origin::Shaped => f.write_str("shaped random bytes"),
            Origin::Mutated(base) => write!(f, "mutated {base}"),
        }
    }
}

#[test]
fn fuzzed_packets_pass_unchanged_and_match_the_reference_parser() {
    if !lab::require_root_or_skip("fuzzed_packets_pass_unchanged_and_match_the_reference_parser") {
        return;
    }
    let seed = std::env::var("INFERLANE_FUZZ_SEED")
        .ok()
        .map(|s| {
            let s = s.trim_start_matches("0x");
            u64::from_str_radix(s, 16)
                .unwrap_or_else(|e| panic!("INFERLANE_FUZZ_SEED {s:?}: expected hex, {e}"))
        })
        .unwrap_or(FUZZ_SEED);
    assert_ne!(seed, 0, "xorshift needs a non-zero seed");
    eprintln!("fuzz seed {seed:#x} (override with INFERLANE_FUZZ_SEED=<hex>)");

    let bases: Vec<Fixture> = fixtures()
        .into_iter()
        .filter(|f| f.ingress != Expect::Rejected)
        .collect();
    let mut rng = XorShift(seed);
    let mut h = Harness::load();
    let start_counters = h.counters();
    let mut prev = start_counters.clone();

    // Per hook: what the reference model expects in total, and the bytes fed in
    // accepted runs (from the kernel's own accept/refuse, not from the model).
    let mut want_total = [Counters::default(), Counters::default()];
    let mut fed_bytes = [0u64; 2];
    let mut rejected = [0usize; 2];
    let started = Instant::now();

    for i in 0..FUZZ_PACKETS {
        let (origin, packet) = match rng.below(10) {
            0 | 1 => {
                let len = rng.below(FUZZ_MAX_LEN + 1);
                (Origin::Random, rng.bytes(len))
            }
            2 | 3 => (Origin::Shaped, random_shaped(&mut rng)),
            _ => {
                let base = &bases[rng.below(bases.len())];
                (Origin::Mutated(base.name), mutate(&mut rng, &base.packet))
            }
        };
        // Now and then run it 2 or 3 times in one syscall: the counters must scale, the
        // output must not change. Rarely, because an XDP test run with repeat > 1
        // switches the XDP dispatcher in and out (two synchronize_rcu, ~17 ms here).
        let repeat = if rng.below(FUZZ_REPEAT_ONE_IN) == 0 {
            2 + rng.below(2) as u32
        } else {
            1
        };
        for (k, hook) in Hook::BOTH.into_iter().enumerate() {
            let expect = reference(hook, &packet);
            if expect == Expect::Rejected {
                rejected[k] += 1;
            }
            let result = h.run(hook, &packet, repeat);
            let after = h.counters();
            if let Err(e) = check_run(hook, &packet, repeat, expect, &prev, &after, &result) {
                panic!(
                    "fuzz seed {seed:#x}, packet {i} ({origin}, {} bytes, repeat {repeat}) via {hook}: {e}\n  packet {}",
                    packet.len(),
                    hex(&packet, 128)
                );
            }
            if result.is_ok() {
                fed_bytes[k] += packet.len() as u64 * u64::from(repeat);
            }
            want_total[k].add(&expect.delta(packet.len(), u64::from(repeat)));
            prev = after;
        }
    }
    let elapsed = started.elapsed();

    let end = h.counters();
    for (k, hook) in Hook::BOTH.into_iter().enumerate() {
        let seen = diff(hook.split(&end).0, hook.split(&start_counters).0);
        let categories = seen.ipv4 + seen.ipv6 + seen.other + seen.malformed;
        assert_eq!(
            seen.packets, categories,
            "fuzz seed {seed:#x}, {hook}: expected packets == ipv4 + ipv6 + other + malformed, saw {seen:?}"
        );
        assert_eq!(
            seen.bytes, fed_bytes[k],
            "fuzz seed {seed:#x}, {hook}: expected counted bytes == bytes of accepted runs ({}), saw {}",
            fed_bytes[k], seen.bytes
        );
        assert_eq!(
            seen, want_total[k],
            "fuzz seed {seed:#x}, {hook}: expected the totals of the reference parser, saw the kernel's"
        );
        eprintln!("{hook}: {seen:?}");
    }
    // The generator must keep reaching every branch, or a passing run proves little.
    let t = &want_total[0];
    let floor = (FUZZ_PACKETS / 50) as u64;
    for (what, n) in [
        ("ipv4", t.ipv4),
        ("ipv6", t.ipv6),
        ("other", t.other),
        ("malformed", t.malformed),
        ("vlan", t.vlan),
    ] {
        assert!(
            n >= floor,
            "fuzz seed {seed:#x}: expected at least {floor} {what} runs in the corpus, saw {n}"
        );
    }
    assert!(
        rejected[0] >= 100,
        "fuzz seed {seed:#x}: expected at least 100 frames the kernel refuses (under {ETH_HLEN} bytes), saw {}",
        rejected[0]
    );
    eprintln!(
        "fuzz seed {seed:#x}: {FUZZ_PACKETS} packets through both programs in {elapsed:?}; \
         refused by the test run: {} for lan_ingress, {} for lan_egress",
        rejected[0], rejected[1]
    );
}
