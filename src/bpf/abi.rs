//! Rust mirror of ebpf/inferlane_structs.h. Field order, widths and padding must
//! match the C header exactly; the size checks below catch a drift at compile time.

/// Upload: LAN client to router (the `lan_ingress` hook).
pub const DIR_UPLOAD: u32 = 0;
/// Download: router to LAN client (the `lan_egress` hook).
pub const DIR_DOWNLOAD: u32 = 1;

/// Interfaces with an ifindex below this count into the per-CPU array
/// `if_counters_array` (slot ifindex * 2 + direction); others into the hash
/// `if_counters` (IL_IF_ARRAY_IFINDEXES in ebpf/inferlane_maps.h).
pub const IF_ARRAY_IFINDEXES: u32 = 1024;

/// `struct il_if_key`
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfKey {
    pub ifindex: u32,
    pub direction: u32,
}

/// `struct il_counters`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub ipv4: u64,
    pub ipv6: u64,
    pub other: u64,
    pub vlan: u64,
    pub malformed: u64,
}

impl Counters {
    /// Sum of the per-CPU copies the kernel keeps.
    pub fn add(&mut self, other: &Counters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.ipv4 += other.ipv4;
        self.ipv6 += other.ipv6;
        self.other += other.other;
        self.vlan += other.vlan;
        self.malformed += other.malformed;
    }
}

/// `struct il_flow_key`: addresses IPv6 or IPv4-mapped, ports in network byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u8; 16],
    pub remote: [u8; 16],
    pub client_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}

pub const SRC_NONE: u8 = 0;
pub const SRC_STATIC: u8 = 1;
pub const SRC_DNS: u8 = 2;
pub const SRC_SNI: u8 = 3;
pub const SRC_QUIC: u8 = 4;
pub const SRC_HTTP: u8 = 5;

pub const VERDICT_PASS: u8 = 0;
pub const VERDICT_BLOCK: u8 = 1;

/// DSCP value meaning "leave the packet's DSCP as it is".
pub const DSCP_KEEP: u8 = 0xff;

pub const FLOW_F_FRAGMENTS: u8 = 0x01;
pub const FLOW_F_PENDING: u8 = 0x02;
pub const FLOW_F_ECH: u8 = 0x04;

/// `struct il_flow`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flow {
    pub first_ns: u64,
    pub last_ns: u64,
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    pub rule_id: u32,
    pub mark: u32,
    pub priority: u32,
    pub provider_id: u16,
    pub class_id: u8,
    pub verdict: u8,
    pub dscp: u8,
    pub source: u8,
    pub dscp_seen: u8,
    pub tcp_flags_up: u8,
    pub tcp_flags_down: u8,
    pub flags: u8,
    pub uplink: u8,
    /// Packets of this flow copied to userspace.
    pub punts: u8,
    pub ifindex: u32,
    /// Rate demotion window start (units of 2^20 ns, coarse clock; 0 none).
    pub rate_win_start: u32,
    /// The flow's total bytes at the window's start, KiB.
    pub rate_win_kib: u32,
    /// DSCP of the latest download packet (downloads are forwarded as they came).
    pub dscp_down: u8,
    pub pad1: [u8; 3],
    pub syn_ns: u64,
    pub synack_ns: u64,
    pub lan_ack_ns: u64,
    pub first_up_payload_ns: u64,
    pub first_down_payload_ns: u64,
}

/// `struct il_flow_stats` (per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowStats {
    pub created: u64,
    pub create_failed: u64,
    pub frag_first: u64,
    pub frag_nonfirst: u64,
    pub frag_orphan: u64,
    pub blocked: u64,
    pub dscp_rewritten: u64,
    pub download_unmatched: u64,
    pub punted: u64,
    pub punt_failed: u64,
    pub would_block: u64,
    pub no_uplink: u64,
    pub moved: u64,
    /// Flows moved to a lower class past their class's `demote.after`.
    #[serde(default)]
    pub demoted: u64,
}

impl FlowStats {
    pub fn add(&mut self, o: &FlowStats) {
        self.created += o.created;
        self.create_failed += o.create_failed;
        self.frag_first += o.frag_first;
        self.frag_nonfirst += o.frag_nonfirst;
        self.frag_orphan += o.frag_orphan;
        self.blocked += o.blocked;
        self.dscp_rewritten += o.dscp_rewritten;
        self.download_unmatched += o.download_unmatched;
        self.punted += o.punted;
        self.punt_failed += o.punt_failed;
        self.would_block += o.would_block;
        self.no_uplink += o.no_uplink;
        self.moved += o.moved;
        self.demoted += o.demoted;
    }
}

pub const FLOW_F_NO_UPLINK: u8 = 0x08;
pub const FLOW_F_DEMOTED: u8 = 0x10;

/// `struct il_demote`: bulk demotion of one class (key: class id). `after_bytes`
/// 0: no byte threshold; `window_units` 0: no rate threshold; both: never demoted.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demote {
    pub after_bytes: u64,
    pub min_age_ns: u64,
    /// Target class and queue bits with MARK_CLASSIFIED; no uplink bits.
    pub mark: u32,
    pub priority: u32,
    pub class_id: u8,
    pub dscp: u8,
    pub pad: [u8; 6],
    /// Bytes a rate window must see: the rate times `for`.
    pub window_bytes: u64,
    /// The window, `for`, in units of 2^20 ns (the datapath's coarse unit).
    pub window_units: u32,
    pub pad2: u32,
}

/// The datapath measures rate windows in units of 2^20 ns (about 1.05 ms).
pub const RATE_WINDOW_UNIT_NS: u64 = 1 << 20;

// SAFETY: repr(C), integers only, padding written out.
unsafe impl aya::Pod for Demote {}

pub const MAX_UPLINKS: usize = 15;
pub const STEER_SLOTS: usize = 16;

/// `struct il_steer`: where new flows of one class go (key: class id, 0 = unclassified).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Steer {
    pub n: u8,
    pub deny: u8,
    /// Bit (index + 1) per uplink the class may use at all.
    pub allowed: u16,
    /// Uplink index + 1 per slot; all filled when `n > 0`.
    pub slot: [u8; STEER_SLOTS],
}

/// `struct il_uplink_state` (key: uplink index + 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UplinkState {
    pub usable: u32,
    pub pad: u32,
}

/// `struct il_uplink_counters` (per CPU, key: uplink index + 1).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UplinkCounters {
    pub up_packets: u64,
    pub up_bytes: u64,
    pub down_packets: u64,
    pub down_bytes: u64,
    pub steered: u64,
    pub moved: u64,
}

impl UplinkCounters {
    pub fn add(&mut self, o: &UplinkCounters) {
        self.up_packets += o.up_packets;
        self.up_bytes += o.up_bytes;
        self.down_packets += o.down_packets;
        self.down_bytes += o.down_bytes;
        self.steered += o.steered;
        self.moved += o.moved;
    }
}

// skb->mark layout: see ebpf/inferlane_structs.h, the one place it is defined.
pub const MARK_MASK: u32 = 0x7fff_0000;
pub const MARK_CLASSIFIED: u32 = 0x1000_0000;
pub const MARK_QUEUE_SHIFT: u32 = 29;
pub const MARK_QUEUE_MASK: u32 = 0x6000_0000;
pub const MARK_UPLINK_SHIFT: u32 = 24;
pub const MARK_UPLINK_MASK: u32 = 0x0f00_0000;
pub const MARK_CLASS_SHIFT: u32 = 16;
pub const MARK_CLASS_MASK: u32 = 0x00ff_0000;

/// skb->priority major: the handle of inferlane's uplink root qdiscs.
pub const QDISC_MAJOR: u32 = 0x1a1;
pub const QUEUE_HIGH: u32 = 0x10;
pub const QUEUE_NORMAL: u32 = 0x20;
pub const QUEUE_LOW: u32 = 0x30;

pub const MAX_PORT_RANGES: usize = 8;
pub const MAX_CANDIDATES: usize = 16;

/// `struct il_port_range`: ports in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

pub const RULE_F_CLIENTS: u32 = 0x1;
pub const RULE_F_PORTS: u32 = 0x2;
pub const RULE_F_PROVIDERS: u32 = 0x4;
pub const RULE_F_ANY_PROVIDER: u32 = 0x8;

/// `struct il_rule_provider_key`
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleProviderKey {
    pub rule: u32,
    pub provider: u16,
    pub pad: u16,
}

/// IL_MAX_PROVIDERS: provider ids below this fit the provider_defaults arrays.
pub const MAX_PROVIDERS: usize = 1024;

/// `struct il_addr_info`: value of addr_providers.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddrInfo {
    pub provider_id: u16,
    pub pad: u16,
    pub pad2: u32,
}

/// `struct il_dns_name`: value of dns_names, the provider names lan_egress
/// recognises in DNS answers itself. Key: [`dns_suffix_hash`] of the name.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsName {
    /// The provider of exactly this name (0: none).
    pub exact: u16,
    /// The provider of the names strictly below it (0: none).
    pub wildcard: u16,
    pub pad: u32,
}

/// The key of dns_names: 64-bit FNV-1a over the lowercase dotted name read from
/// its last character to its first (the datapath hashes every suffix of a name
/// in one pass that way).
pub fn dns_suffix_hash(name: &str) -> u64 {
    name.bytes().rev().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub const PUNT_DNS: u32 = 1;
pub const PUNT_TLS: u32 = 2;
pub const PUNT_QUIC: u32 = 3;
pub const PUNT_HTTP: u32 = 4;

/// `struct il_verdict`: a userspace verdict for a pending flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub provider_id: u16,
    pub source: u8,
    pub flags: u8,
    pub pad: u32,
}
pub const PUNT_MAX_DATA: usize = 1536;

/// `struct il_punt`: one ring buffer record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Punt {
    pub kind: u32,
    pub ifindex: u32,
    pub len: u32,
    pub orig_len: u32,
    pub data: [u8; PUNT_MAX_DATA],
}

pub const ACTION_CLASSIFY: u8 = 0;
pub const ACTION_BLOCK: u8 = 1;

/// `struct il_rule`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    pub flags: u32,
    pub mark: u32,
    pub priority: u32,
    pub action: u8,
    pub class_id: u8,
    pub dscp: u8,
    pub uplink: u8,
    pub n_ports: u8,
    pub pad: [u8; 3],
    pub ports: [PortRange; MAX_PORT_RANGES],
}

/// `struct il_candidates`: rule indexes in config order.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidates {
    pub n: u32,
    pub rule: [u32; MAX_CANDIDATES],
}

/// Data part of `struct il_client_key` (after prefixlen): rule index (big endian), address.
pub type ClientKeyData = [u8; 20];

/// `struct il_settings`
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    pub rule_set: u32,
    pub enforce: u32,
    pub n_rules: u32,
    pub block_ai_quic: u32,
}

/// `struct il_frag_key`
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub pad: [u8; 3],
}

const _: () = assert!(std::mem::size_of::<IfKey>() == 8);
const _: () = assert!(std::mem::size_of::<Counters>() == 56);
const _: () = assert!(std::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(std::mem::size_of::<Flow>() == 128);
const _: () = assert!(std::mem::size_of::<FlowStats>() == 112);
const _: () = assert!(std::mem::size_of::<Demote>() == 48);
const _: () = assert!(std::mem::size_of::<Steer>() == 4 + STEER_SLOTS);
const _: () = assert!(std::mem::size_of::<UplinkState>() == 8);
const _: () = assert!(std::mem::size_of::<UplinkCounters>() == 48);
const _: () = assert!(std::mem::size_of::<RuleProviderKey>() == 8);
const _: () = assert!(std::mem::size_of::<AddrInfo>() == 8);
const _: () = assert!(std::mem::size_of::<DnsName>() == 8);
const _: () = assert!(std::mem::size_of::<Verdict>() == 8);
const _: () = assert!(std::mem::size_of::<Punt>() == 16 + PUNT_MAX_DATA);
const _: () = assert!(std::mem::size_of::<PortRange>() == 8);
const _: () = assert!(std::mem::size_of::<Rule>() == 20 + 8 * MAX_PORT_RANGES);
const _: () = assert!(std::mem::size_of::<Candidates>() == 4 + 4 * MAX_CANDIDATES);
const _: () = assert!(std::mem::size_of::<Settings>() == 16);
const _: () = assert!(std::mem::size_of::<FragKey>() == 40);

// SAFETY (all below): plain old data, every bit pattern valid, padding written out
// as named fields (checked by the size assertions above).
unsafe impl aya::Pod for IfKey {}
unsafe impl aya::Pod for Counters {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for Flow {}
unsafe impl aya::Pod for FlowStats {}
unsafe impl aya::Pod for Steer {}
unsafe impl aya::Pod for UplinkState {}
unsafe impl aya::Pod for UplinkCounters {}
unsafe impl aya::Pod for Rule {}
unsafe impl aya::Pod for Candidates {}
unsafe impl aya::Pod for Settings {}
unsafe impl aya::Pod for FragKey {}
unsafe impl aya::Pod for RuleProviderKey {}
unsafe impl aya::Pod for AddrInfo {}
unsafe impl aya::Pod for DnsName {}
unsafe impl aya::Pod for Verdict {}

/// An address as the datapath keys it: IPv6, or IPv4 mapped to ::ffff:a.b.c.d.
pub fn addr_bytes(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr_bytes`], using the key's family to tell them apart.
pub fn addr_from_bytes(bytes: [u8; 16], family: u8) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(bytes);
    match (family, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => std::net::IpAddr::V4(v4),
        _ => std::net::IpAddr::V6(v6),
    }
}
