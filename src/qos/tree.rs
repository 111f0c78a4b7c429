//! The desired HTB tree, computed from the config alone (pure; no kernel).
//!
//! One tree per shaped interface:
//!
//! ```text
//! 1a1:    htb root qdisc, default class 1a1:40
//! └─ 1a1:1    rate = ceil = the link rate
//!    ├─ 1a1:10  high     40 %  prio 0   leaf qdisc 1a10:
//!    ├─ 1a1:20  normal   30 %  prio 1   leaf qdisc 1a20:
//!    ├─ 1a1:40  default  20 %  prio 2   leaf qdisc 1a40:   (unclassified traffic)
//!    └─ 1a1:30  low      10 %  prio 3   leaf qdisc 1a30:
//! ```
//!
//! The minors 0x10/0x20/0x30 are the ones the eBPF programs put in skb->priority
//! (`TC_H_MAKE(0x1a1 << 16, minor)`, see `bpf::abi`), so HTB picks the class with no
//! filter at all. Unclassified traffic has priority 0, matches no class, and goes to
//! HTB's default class, 0x40: the next free code in the same `code << 4` pattern.
//!
//! Why these shares: every class may borrow up to the link rate (ceil = link), so
//! the guaranteed rate only matters when several classes are backlogged at once.
//! Then interactive inference (high) is promised the largest part, 40 %, far more
//! than request/response traffic needs, so it never waits on its own guarantee;
//! normal (30 %) and unclassified (20 %) traffic, which includes the office's web
//! browsing, keep a useful share; bulk (10 %) cannot be starved outright (TCP would
//! time out) but yields everything else. HTB lends spare capacity in `prio` order,
//! so the same ranking decides who borrows first: high, normal, default, low.
//! Shares add up to exactly 100 % so the guarantees never oversubscribe the link.

use crate::bpf::abi::{QDISC_MAJOR, QUEUE_HIGH, QUEUE_LOW, QUEUE_NORMAL};
use crate::config::{Config, Queue};
use crate::config::Rate;

/// Major of our root qdisc handle (`1a1:`), the same as skb->priority's major.
pub const ROOT_MAJOR: u16 = QDISC_MAJOR as u16;
/// The inner class holding the link rate.
pub const PARENT_MINOR: u16 = 0x1;
/// Leaf qdisc handles are `1a10:`, `1a20:`, `1a30:`, `1a40:` (base | class minor).
pub const LEAF_MAJOR_BASE: u16 = 0x1a00;
/// HTB's default class: where unclassified traffic (skb->priority 0) goes.
pub const DEFAULT_MINOR: u16 = 0x40;

/// Ethernet frame without FCS at a 1500-byte MTU: the smallest unit HTB must be
/// able to hand out in one round.
pub const MTU_FRAME: u64 = 1514;
/// The largest skb the stack hands a qdisc: a GSO/GRO super-packet (gso_max_size).
pub const MAX_GSO_SKB: u64 = 65_536;

/// Time worth of the class rate a token bucket may hold (burst, cburst).
const BURST_NS: u64 = 1_000_000;
/// What the high lane may send back to back after being idle, at any rate: a
/// streamed reply's chunk or a small JSON answer, so an interactive response on
/// an otherwise idle link is never throttled to the token rate (a throttled class
/// waits for HTB's watchdog timer, which a busy CPU delays by milliseconds).
pub const INTERACTIVE_BURST: u64 = 16 * 1024;
/// Time worth of the class ceiling a bfifo leaf may queue.
const FIFO_QUEUE_NS: u64 = 20_000_000;
/// Bounds of an explicit quantum. The kernel warns and clamps outside
/// [1000, 200000] when it derives the quantum itself (r2q); we always set it.
const QUANTUM_MAX: u64 = 200_000;

/// The four lanes of a tree, in HTB priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    High,
    Normal,
    Default,
    Low,
}

impl Lane {
    pub const ALL: [Lane; 4] = [Lane::High, Lane::Normal, Lane::Default, Lane::Low];

    /// The class minor; for high/normal/low the one skb->priority carries.
    pub fn minor(self) -> u16 {
        match self {
            Lane::High => QUEUE_HIGH as u16,
            Lane::Normal => QUEUE_NORMAL as u16,
            Lane::Low => QUEUE_LOW as u16,
            Lane::Default => DEFAULT_MINOR,
        }
    }

    /// Guaranteed share of the link, percent (see the module comment).
    pub fn share_percent(self) -> u64 {
        match self {
            Lane::High => 40,
            Lane::Normal => 30,
            Lane::Default => 20,
            Lane::Low => 10,
        }
    }

    /// HTB prio: lower borrows spare capacity first.
    pub fn prio(self) -> u32 {
        match self {
            Lane::High => 0,
            Lane::Normal => 1,
            Lane::Default => 2,
            Lane::Low => 3,
        }
    }

    /// Major of the leaf qdisc's handle: `1a10:` under class `1a1:10`, and so on,
    /// so `tc qdisc show` reads like the tree.
    pub fn leaf_major(self) -> u16 {
        LEAF_MAJOR_BASE | self.minor()
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::High => "high",
            Lane::Normal => "normal",
            Lane::Default => "default",
            Lane::Low => "low",
        }
    }

    pub fn from_queue(queue: Queue) -> Lane {
        match queue {
            Queue::High => Lane::High,
            Queue::Normal => Lane::Normal,
            Queue::Low => Lane::Low,
        }
    }
}

/// One HTB class as the kernel takes it (TCA_HTB_PARMS and the 64-bit rates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HtbClass {
    pub minor: u16,
    /// Minor of the parent class; `None`: directly under the qdisc.
    pub parent_minor: Option<u16>,
    /// Guaranteed rate, bytes per second (never zero: the kernel refuses 0).
    pub rate: u64,
    /// Ceiling, bytes per second.
    pub ceil: u64,
    /// Bucket sizes in bytes; converted to scheduler ticks on the wire.
    pub burst: u64,
    pub cburst: u64,
    /// Bytes a class may send per deficit round while borrowing.
    pub quantum: u32,
    pub prio: u32,
}

/// A leaf class, its lane and the bound of its fifo (when the leaf is a bfifo).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub lane: Lane,
    pub class: HtbClass,
    /// bfifo limit in bytes.
    pub fifo_limit: u32,
}

/// The whole tree for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtbTree {
    pub link: Rate,
    pub parent: HtbClass,
    /// In [`Lane::ALL`] order.
    pub leaves: Vec<Leaf>,
}

impl HtbTree {
    pub fn new(link: Rate) -> HtbTree {
        let link_bytes = link.bytes_per_sec();
        let parent = HtbClass {
            minor: PARENT_MINOR,
            parent_minor: None,
            rate: link_bytes,
            ceil: link_bytes,
            burst: burst(link_bytes),
            cburst: burst(link_bytes),
            quantum: quantum(link_bytes),
            prio: 0,
        };
        let leaves = Lane::ALL
            .iter()
            .map(|&lane| {
                // Rounded down, so the guarantees never add up to more than the link.
                let rate = (u128::from(link_bytes) * u128::from(lane.share_percent()) / 100).max(1) as u64;
                let (burst, cburst) = match lane {
                    Lane::High => (burst(rate).max(INTERACTIVE_BURST), burst(link_bytes).max(INTERACTIVE_BURST)),
                    _ => (burst(rate), burst(link_bytes)),
                };
                Leaf {
                    lane,
                    class: HtbClass {
                        minor: lane.minor(),
                        parent_minor: Some(PARENT_MINOR),
                        rate,
                        ceil: link_bytes,
                        burst,
                        cburst,
                        quantum: quantum(rate),
                        prio: lane.prio(),
                    },
                    fifo_limit: fifo_limit(link_bytes),
                }
            })
            .collect();
        HtbTree { link, parent, leaves }
    }

    pub fn leaf(&self, lane: Lane) -> &Leaf {
        self.leaves.iter().find(|l| l.lane == lane).expect("every lane has a leaf")
    }

    /// Every class, parent first (the order they must be created in).
    pub fn classes(&self) -> impl Iterator<Item = &HtbClass> {
        std::iter::once(&self.parent).chain(self.leaves.iter().map(|l| &l.class))
    }
}

/// Bucket size: 1 ms of the rate, at least two full frames. A bucket is what a
/// class may send back to back after being idle; 1 ms keeps that burst short
/// against a 5 ms latency budget, while two frames keep slow links (where 1 ms is
/// less than a packet) from needing a timer per packet. The high lane's buckets
/// are at least [`INTERACTIVE_BURST`] (see there; measured in BENCHMARKS.md).
pub fn burst(rate_bytes: u64) -> u64 {
    bytes_in(rate_bytes, BURST_NS).max(2 * MTU_FRAME)
}

/// Quantum: 1 ms of the class rate, at least one full frame (a smaller quantum
/// lets a class send less than one packet per round, the r2q warning's cause) and
/// at most the kernel's own upper bound.
pub fn quantum(rate_bytes: u64) -> u32 {
    bytes_in(rate_bytes, BURST_NS).clamp(MTU_FRAME, QUANTUM_MAX) as u32
}

/// bfifo limit: 20 ms at the class ceiling (the link rate, which a class reaches
/// when it borrows), enough for TCP to keep the link busy while bounding the
/// delay a full queue adds; but never below two GSO super-packets, because bfifo
/// drops an skb that does not fit whole and a forwarded GRO packet can be 64 KiB:
/// a smaller limit would drop such packets even from an empty queue. The floor
/// only applies below about 52 Mbit/s.
pub fn fifo_limit(ceil_bytes: u64) -> u32 {
    bytes_in(ceil_bytes, FIFO_QUEUE_NS)
        .max(2 * MAX_GSO_SKB)
        .min(u32::MAX as u64) as u32
}

/// Bytes sent at `rate_bytes` per second in `ns` nanoseconds (no overflow at any rate).
fn bytes_in(rate_bytes: u64, ns: u64) -> u64 {
    (u128::from(rate_bytes) * u128::from(ns) / 1_000_000_000).min(u128::from(u64::MAX)) as u64
}

/// What the config asks of the queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// (uplink name, interface, tree) for each uplink with an `egress_rate`.
    pub egress: Vec<(String, String, HtbTree)>,
    /// The LAN interfaces' tree rate at start: see [`initial_download_rate`].
    pub download: Option<Rate>,
    pub lan_interfaces: Vec<String>,
}

impl Plan {
    pub fn from_config(config: &Config) -> Plan {
        let egress = config
            .uplinks
            .iter()
            .filter_map(|u| Some((u.name.clone(), u.interface.clone(), HtbTree::new(u.egress_rate?))))
            .collect();
        Plan {
            egress,
            download: initial_download_rate(config),
            lan_interfaces: config.lan.interfaces.clone(),
        }
    }
}

/// The download rate before the uplink module reports anything: the uplinks with
/// the best (lowest) priority are the active set (equal priorities share load), so
/// the download capacity is the sum of their `ingress_rate`s. If one of them has no
/// `ingress_rate` the capacity is unknown and the download is not shaped: a guessed
/// rate would either waste the link or not shape at all.
pub fn initial_download_rate(config: &Config) -> Option<Rate> {
    let best = config.uplinks.iter().map(|u| u.priority).min()?;
    let mut total: u64 = 0;
    for uplink in config.uplinks.iter().filter(|u| u.priority == best) {
        total = total.saturating_add(uplink.ingress_rate?.bits_per_sec());
    }
    Rate::from_bits_per_sec(total)
}

/// The download rate when `active` (uplink names) carry the traffic: the sum of
/// their `ingress_rate`s, `None` if any has none or the set is empty.
pub fn download_rate_for(config: &Config, active: &[&str]) -> Option<Rate> {
    let mut total: u64 = 0;
    for name in active {
        total = total.saturating_add(config.uplink(name)?.ingress_rate?.bits_per_sec());
    }
    Rate::from_bits_per_sec(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Uplink;

    fn rate(s: &str) -> Rate {
        s.parse().unwrap()
    }

    fn uplink(name: &str, priority: u32, egress: Option<&str>, ingress: Option<&str>) -> Uplink {
        Uplink {
            name: name.into(),
            interface: format!("{name}0"),
            priority,
            metered: false,
            weight: 1,
            gateways: Vec::new(),
            egress_rate: egress.map(rate),
            ingress_rate: ingress.map(rate),
            health: None,
        }
    }

    #[test]
    fn minors_match_the_priorities_the_ebpf_programs_set() {
        for (lane, prio_minor) in [(Lane::High, QUEUE_HIGH), (Lane::Normal, QUEUE_NORMAL), (Lane::Low, QUEUE_LOW)] {
            assert_eq!(u32::from(lane.minor()), prio_minor, "{lane:?}");
        }
        let minors: std::collections::HashSet<_> = Lane::ALL.iter().map(|l| l.minor()).collect();
        assert_eq!(minors.len(), 4, "minors must be distinct");
        assert!(!minors.contains(&PARENT_MINOR));
        assert_eq!(Lane::High.leaf_major(), 0x1a10);
        assert_eq!(Lane::Default.leaf_major(), 0x1a40);
    }

    #[test]
    fn shares_add_up_to_the_link_and_never_exceed_it() {
        let total: u64 = Lane::ALL.iter().map(|l| l.share_percent()).sum();
        assert_eq!(total, 100);
        for r in ["1mbit", "7mbit", "100mbit", "333mbit", "1gbit", "40gbit", "123456bit"] {
            let tree = HtbTree::new(rate(r));
            let link = rate(r).bytes_per_sec();
            let sum: u64 = tree.leaves.iter().map(|l| l.class.rate).sum();
            assert!(sum <= link, "{r}: leaf rates {sum} exceed the link {link}");
            assert!(sum + 4 > link, "{r}: rounding lost more than a byte per class ({sum} of {link})");
            assert_eq!(tree.parent.rate, link);
            for leaf in &tree.leaves {
                assert_eq!(leaf.class.ceil, link, "{r} {:?}: ceil is the link", leaf.lane);
                assert_eq!(leaf.class.parent_minor, Some(PARENT_MINOR));
            }
        }
    }

    #[test]
    fn a_100mbit_tree_has_the_documented_rates() {
        let tree = HtbTree::new(rate("100mbit"));
        let mbit = 1_000_000 / 8;
        assert_eq!(tree.leaf(Lane::High).class.rate, 40 * mbit);
        assert_eq!(tree.leaf(Lane::Normal).class.rate, 30 * mbit);
        assert_eq!(tree.leaf(Lane::Default).class.rate, 20 * mbit);
        assert_eq!(tree.leaf(Lane::Low).class.rate, 10 * mbit);
        // 1 ms of 40 Mbit/s is 5000 bytes.
        assert_eq!(tree.leaf(Lane::High).class.quantum, 5000);
        // The high lane's buckets hold at least an interactive burst; the others 1 ms.
        assert_eq!(tree.leaf(Lane::High).class.burst, INTERACTIVE_BURST);
        assert_eq!(tree.leaf(Lane::High).class.cburst, INTERACTIVE_BURST);
        assert_eq!(tree.leaf(Lane::Normal).class.burst, 3750);
        assert_eq!(tree.leaf(Lane::Normal).class.cburst, 12_500);
        // At 1 Gbit/s, 1 ms of the link is more than the interactive floor.
        let fast = HtbTree::new(rate("1gbit"));
        assert_eq!(fast.leaf(Lane::High).class.cburst, 125_000);
        // 20 ms of 100 Mbit/s.
        assert_eq!(tree.leaf(Lane::Low).fifo_limit, 250_000);
    }

    #[test]
    fn priorities_put_high_first_and_low_last() {
        let tree = HtbTree::new(rate("10mbit"));
        let mut by_prio: Vec<_> = tree.leaves.iter().map(|l| (l.class.prio, l.lane)).collect();
        by_prio.sort();
        let order: Vec<_> = by_prio.into_iter().map(|(_, l)| l).collect();
        assert_eq!(order, vec![Lane::High, Lane::Normal, Lane::Default, Lane::Low]);
    }

    #[test]
    fn quantum_and_burst_stay_within_bounds_at_any_rate() {
        for bits in [u64::MAX, 8u64, 64_000, 1_000_000, 100_000_000, 10_000_000_000, 400_000_000_000] {
            let tree = HtbTree::new(Rate::from_bits_per_sec(bits).unwrap());
            for class in tree.classes() {
                assert!(class.rate > 0, "{bits}: a zero rate is refused by the kernel");
                assert!(
                    (MTU_FRAME..=QUANTUM_MAX).contains(&u64::from(class.quantum)),
                    "{bits}: quantum {} outside [{MTU_FRAME}, {QUANTUM_MAX}]",
                    class.quantum
                );
                assert!(class.burst >= 2 * MTU_FRAME && class.cburst >= 2 * MTU_FRAME);
            }
            for leaf in &tree.leaves {
                assert!(u64::from(leaf.fifo_limit) >= 2 * MAX_GSO_SKB, "{bits}: fifo below two GSO packets");
            }
        }
    }

    #[test]
    fn plan_shapes_only_uplinks_with_an_egress_rate() {
        let config = Config {
            uplinks: vec![
                uplink("fiber", 10, Some("100mbit"), Some("300mbit")),
                uplink("lte", 20, None, Some("50mbit")),
            ],
            ..Config::default()
        };
        let plan = Plan::from_config(&config);
        assert_eq!(plan.egress.len(), 1);
        assert_eq!(plan.egress[0].0, "fiber");
        assert_eq!(plan.egress[0].1, "fiber0");
        assert_eq!(plan.egress[0].2.link, rate("100mbit"));
        assert_eq!(plan.download, Some(rate("300mbit")));
        assert_eq!(download_rate_for(&config, &["lte"]), Some(rate("50mbit")));
        assert_eq!(download_rate_for(&config, &["fiber", "lte"]), Some(rate("350mbit")));
        assert_eq!(download_rate_for(&config, &["nosuch"]), None);
        assert_eq!(download_rate_for(&config, &[]), None);
    }

    #[test]
    fn download_rate_sums_equal_priority_uplinks_and_gives_up_when_one_is_unknown() {
        let both = Config {
            uplinks: vec![
                uplink("a", 10, None, Some("100mbit")),
                uplink("b", 10, None, Some("50mbit")),
                uplink("c", 20, None, Some("1gbit")),
            ],
            ..Config::default()
        };
        assert_eq!(initial_download_rate(&both), Some(rate("150mbit")));
        let unknown = Config {
            uplinks: vec![uplink("a", 10, None, Some("100mbit")), uplink("b", 10, None, None)],
            ..Config::default()
        };
        assert_eq!(initial_download_rate(&unknown), None);
        assert_eq!(initial_download_rate(&Config::default()), None);
    }
}
