//! The rule compiler: the config's `[[rules]]` become the datapath's rule maps (the
//! "Rules" section of ebpf/inferlane_structs.h).
//!
//! The datapath classifies a new flow with two lookups and a short scan:
//! 1. longest-prefix match of the remote address in the destination trie, whose value
//!    lists the *candidate* rules for that address, in config order;
//! 2. for each candidate in turn: the client check (a second trie keyed by rule index
//!    and client address) and the port check (`ports[]` of the rule); the first
//!    candidate that passes wins, which is the config's first-match order.
//!
//! For that to equal first match over all rules, the trie entry for a prefix `P` must
//! list every rule that can match an address whose longest matching prefix is `P`:
//! the rules with a destination equal to `P` or containing it (the prefixes that
//! contain one address form a chain, so these are `P`'s ancestors), plus every rule
//! without destinations. `::/0` is always present and lists only the latter, so the
//! lookup always hits.
//!
//! # Addresses, and why IPv6 prefixes are cut around IPv4
//!
//! Keys are 128-bit: IPv6 as is, IPv4 mapped to `::ffff:a.b.c.d`, so an IPv4 `/L` is a
//! `/(96 + L)` and containment is plain bit-prefix containment. In that space an IPv6
//! prefix shorter than /96 can contain `::ffff:0:0/96`, the whole of IPv4: `::/0`
//! would match every IPv4 flow. Nobody writing `destinations = ["::/0"]` means "and
//! all of IPv4 too" (0.0.0.0/0 is the way to say that), so such a prefix is compiled
//! as the prefixes that cover it *minus* `::ffff:0:0/96`: one sibling per bit on the
//! way down to /96, at most 96 entries (`::/0` becomes `8000::/1`, `4000::/2`, ...,
//! `::/81`, `::8000:0:0/82`, ... `::fffe:0:0/96`). Only prefixes in `::/80` and the
//! few between /81 and /95 on the way to `::ffff:0:0/96` are affected; real IPv6
//! space (`2000::/3`, `fc00::/7`, ...) never is. The same applies to client prefixes.
//! The other direction needs no care: an IPv6 prefix written *inside*
//! `::ffff:0:0/96` (`::ffff:192.0.2.0/120`) is an IPv4-mapped prefix and matches the
//! IPv4 addresses it maps, exactly like `192.0.2.0/24`, because the datapath cannot
//! tell them apart (and IPv4-mapped addresses never appear on the wire as IPv6).
//!
//! # Limits
//!
//! The datapath checks at most [`abi::MAX_CANDIDATES`] rules per destination and
//! [`abi::MAX_PORT_RANGES`] port ranges per rule, and its maps have fixed sizes. A
//! config that does not fit is refused whole, with one error per offending rule, so
//! the running rule set is never a silently truncated version of the file.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use thiserror::Error;

use crate::bpf::abi;
use crate::config::{Action, Config, Queue, Rule};

/// Rules in the rules array (`IL_MAX_RULES` in ebpf/inferlane_maps.h).
pub const MAX_RULES: usize = 16384;
/// Entries of the destination trie (`IL_MAX_DEST_PREFIXES`), `::/0` included.
pub const MAX_DEST_PREFIXES: usize = 131_072;
/// Entries of the client trie (`IL_MAX_CLIENT_PREFIXES`).
pub const MAX_CLIENT_PREFIXES: usize = 65_536;
/// Classes the mark can carry: class index + 1 in 8 bits.
const MAX_CLASSES: usize = (abi::MARK_CLASS_MASK >> abi::MARK_CLASS_SHIFT) as usize;
/// Uplinks the mark can carry: uplink index + 1 in 4 bits.
const MAX_UPLINKS: usize = (abi::MARK_UPLINK_MASK >> abi::MARK_UPLINK_SHIFT) as usize;

/// The rule maps for one config, ready to be written into the idle rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRules {
    /// Index `i` is config rule `i`: every rule, in config order.
    pub rules: Vec<abi::Rule>,
    /// Destination trie entries: (prefix length in the 128-bit space, address,
    /// candidate rules). Sorted by address then length; `::/0` comes first.
    pub destinations: Vec<(u32, [u8; 16], abi::Candidates)>,
    /// Client trie entries: (32 + prefix length in the 128-bit space, rule index big
    /// endian followed by the address). The value written for each is `1u8`.
    pub clients: Vec<(u32, abi::ClientKeyData)>,
    /// (rule index, provider id) for every provider a rule names.
    pub rule_providers: Vec<(u32, u16)>,
    /// By provider id: what a flow to that provider gets when no rule matches.
    pub provider_defaults: Vec<(u16, abi::Rule)>,
    /// Index `i` is class id `i + 1`: its bulk demotion (zero: none).
    pub demotions: Vec<abi::Demote>,
    pub summary: Summary,
}

impl CompiledRules {
    /// The map contents, as the loader installs them.
    pub fn maps(&self) -> crate::bpf::maps::RuleMaps<'_> {
        crate::bpf::maps::RuleMaps {
            rules: &self.rules,
            destinations: &self.destinations,
            clients: &self.clients,
            rule_providers: &self.rule_providers,
            provider_defaults: &self.provider_defaults,
            demotions: &self.demotions,
        }
    }
}

/// What was compiled, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Summary {
    pub rules: usize,
    /// Destination trie entries, `::/0` included.
    pub destination_prefixes: usize,
    /// Client trie entries.
    pub client_prefixes: usize,
    /// Rules that name providers: compiled, but matched only once a provider verdict
    /// (DNS/SNI learning) exists for the flow.
    pub provider_rules: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rules ({} by provider), {} destination prefixes, {} client prefixes",
            self.rules, self.provider_rules, self.destination_prefixes, self.client_prefixes
        )
    }
}

/// A rule the datapath cannot hold. Displays as "rule 3: message" (1-based, the
/// rule's place among the file's `[[rules]]`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("rule {}: {message}", .rule + 1)]
pub struct CompileError {
    /// 0-based index into `Config::rules`.
    pub rule: usize,
    /// The rule's key at fault: "destinations", "clients", "ports" or "class"; `None`
    /// for the rule as a whole.
    pub field: Option<&'static str>,
    /// 0-based index into that field's list, when one entry is at fault.
    pub item: Option<usize>,
    pub message: String,
}

/// skb->mark bits for a class: `class_index` is the 0-based index in `Config::classes`
/// (the mark carries index + 1), `uplink` is uplink index + 1 or 0 for the main table.
/// Values too large for their field are cut to it; [`compile`] refuses configs with
/// more classes or uplinks than the mark can carry.
pub fn class_mark(class_index: usize, uplink: u8, queue: Queue) -> u32 {
    let class_id = (class_index as u32).wrapping_add(1);
    abi::MARK_CLASSIFIED
        | ((queue_code(queue) << abi::MARK_QUEUE_SHIFT) & abi::MARK_QUEUE_MASK)
        | ((u32::from(uplink) << abi::MARK_UPLINK_SHIFT) & abi::MARK_UPLINK_MASK)
        | ((class_id << abi::MARK_CLASS_SHIFT) & abi::MARK_CLASS_MASK)
}

/// The queue as the mark carries it (1 high, 2 normal, 3 low): IPv4 forwarding
/// resets skb->priority, so wan_egress rebuilds it from these bits.
fn queue_code(queue: Queue) -> u32 {
    match queue {
        Queue::High => 1,
        Queue::Normal => 2,
        Queue::Low => 3,
    }
}

/// skb->priority for a queue: the HTB class `QDISC_MAJOR:queue`.
pub fn queue_priority(queue: Queue) -> u32 {
    let minor = match queue {
        Queue::High => abi::QUEUE_HIGH,
        Queue::Normal => abi::QUEUE_NORMAL,
        Queue::Low => abi::QUEUE_LOW,
    };
    (abi::QDISC_MAJOR << 16) | minor
}

/// Compiles every rule of `config`. All problems are reported, not just the first.
pub fn compile(config: &Config) -> Result<CompiledRules, Vec<CompileError>> {
    if config.rules.len() > MAX_RULES {
        return Err(vec![CompileError {
            rule: MAX_RULES,
            field: None,
            item: None,
            message: format!(
                "too many rules: {} are configured, the datapath holds at most {MAX_RULES}",
                config.rules.len()
            ),
        }]);
    }
    let mut errors = Vec::new();
    let rules: Vec<abi::Rule> = config
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| compile_rule(config, index, rule, &mut errors))
        .collect();
    let mut rules = rules;
    let destinations = destination_entries(&config.rules, &mut errors);
    let clients = client_entries(&config.rules, &mut errors);
    let (rule_providers, provider_defaults) = provider_entries(config, &mut rules, &mut errors);
    if !errors.is_empty() {
        // Stable: one rule's problems keep the order in which they were found.
        errors.sort_by_key(|e| e.rule);
        return Err(errors);
    }
    let summary = Summary {
        rules: rules.len(),
        destination_prefixes: destinations.len(),
        client_prefixes: clients.len(),
        provider_rules: config
            .rules
            .iter()
            .filter(|r| !r.providers.is_empty())
            .count(),
    };
    Ok(CompiledRules {
        rules,
        destinations,
        clients,
        rule_providers,
        provider_defaults,
        demotions: demotions(config),
        summary,
    })
}

/// Each class's bulk demotion: thresholds (bytes with a minimum age, rate over a
/// window), and the target class's
/// treatment (class id, DSCP, queue mark bits, priority; no uplink bits, the
/// flow keeps its own). Validation made sure the targets exist.
pub fn demotions(config: &Config) -> Vec<abi::Demote> {
    config
        .classes
        .iter()
        .map(|class| {
            let Some(d) = &class.demote else { return abi::Demote::default() };
            let target = config.classes.iter().position(|c| c.name == d.to);
            let Some(t) = target.and_then(|j| class_treatment(config, j).ok()) else {
                return abi::Demote::default();
            };
            let (window_bytes, window_units) = match d.rate {
                // The window in the datapath's units (rounded up, at least one),
                // the bytes it must see from the window actually used.
                Some(rate) => {
                    let ns = u64::try_from(d.window.as_nanos()).unwrap_or(u64::MAX);
                    let units = ns.div_ceil(abi::RATE_WINDOW_UNIT_NS).clamp(1, u64::from(u32::MAX));
                    let bytes = u128::from(rate.bytes_per_sec()) * d.window.as_nanos() / 1_000_000_000;
                    (u64::try_from(bytes).unwrap_or(u64::MAX).max(1), units as u32)
                }
                None => (0, 0),
            };
            abi::Demote {
                after_bytes: d.after.map_or(0, |a| a.bytes()),
                min_age_ns: u64::try_from(d.min_age.as_nanos()).unwrap_or(u64::MAX),
                mark: t.mark,
                priority: t.priority,
                class_id: t.class_id,
                dscp: t.dscp,
                pad: [0; 6],
                window_bytes,
                window_units,
                pad2: 0,
            }
        })
        .collect()
}

/// The provider side of the rule set: (rule, provider id) pairs for rules naming
/// providers ("*" sets RULE_F_ANY_PROVIDER instead), and for each provider whose
/// catalog class ("interactive", "chat", "bulk") is also a configured class name,
/// that class's treatment, for its flows that no rule matches.
#[allow(clippy::type_complexity)]
fn provider_entries(
    config: &Config,
    rules: &mut [abi::Rule],
    errors: &mut Vec<CompileError>,
) -> (Vec<(u32, u16)>, Vec<(u16, abi::Rule)>) {
    let catalog = match crate::classify::catalog::Catalog::from_config(config) {
        Ok(c) => c,
        Err(es) => {
            // Validation reports these with positions first; this is a backstop.
            errors.extend(es.into_iter().map(|e| CompileError { rule: 0, field: None, item: None, message: e.to_string() }));
            return (Vec::new(), Vec::new());
        }
    };
    let mut pairs = Vec::new();
    for (i, rule) in config.rules.iter().enumerate() {
        if rule.providers.iter().any(|p| p == "*") {
            rules[i].flags |= abi::RULE_F_ANY_PROVIDER;
            continue;
        }
        for (j, name) in rule.providers.iter().enumerate() {
            match catalog.by_name(name) {
                Some(p) => pairs.push((i as u32, p.id)),
                None => errors.push(CompileError {
                    rule: i,
                    field: Some("providers"),
                    item: Some(j),
                    message: format!("unknown provider {name:?}"),
                }),
            }
        }
    }
    let mut defaults = Vec::new();
    for p in catalog.providers() {
        let Some(ci) = config.classes.iter().position(|c| c.name == p.class) else { continue };
        if (p.id as usize) >= abi::MAX_PROVIDERS {
            continue;
        }
        // A class beyond the mark's limits is reported where a rule uses it; a
        // provider default just goes without.
        if let Ok(t) = class_treatment(config, ci) {
            defaults.push((p.id, t));
        }
    }
    (pairs, defaults)
}

fn compile_rule(
    config: &Config,
    index: usize,
    rule: &Rule,
    errors: &mut Vec<CompileError>,
) -> abi::Rule {
    let mut error = |field: &'static str, item: Option<usize>, message: String| {
        errors.push(CompileError {
            rule: index,
            field: Some(field),
            item,
            message,
        })
    };
    let mut out = abi::Rule::default();
    if !rule.clients.is_empty() {
        out.flags |= abi::RULE_F_CLIENTS;
    }
    if !rule.ports.is_empty() {
        out.flags |= abi::RULE_F_PORTS;
    }
    if !rule.providers.is_empty() {
        out.flags |= abi::RULE_F_PROVIDERS;
    }

    if rule.ports.len() > abi::MAX_PORT_RANGES {
        error(
            "ports",
            Some(abi::MAX_PORT_RANGES),
            format!(
                "{} port ranges, the datapath checks at most {} per rule; merge adjacent ranges or split the rule",
                rule.ports.len(),
                abi::MAX_PORT_RANGES
            ),
        );
    }
    for (slot, spec) in out.ports.iter_mut().zip(&rule.ports) {
        *slot = abi::PortRange {
            first: spec.first,
            last: spec.last,
            proto: spec.proto.number(),
            pad: [0; 3],
        };
    }
    out.n_ports = rule.ports.len().min(abi::MAX_PORT_RANGES) as u8;

    match rule.action {
        Action::Block => {
            out.action = abi::ACTION_BLOCK;
            out.dscp = abi::DSCP_KEEP;
        }
        Action::Classify => {
            out.action = abi::ACTION_CLASSIFY;
            let Some(name) = &rule.class else {
                error("class", None, "rule has no class".into());
                return out;
            };
            let Some(class_index) = config.classes.iter().position(|c| &c.name == name) else {
                error("class", None, format!("class {name:?} is not defined"));
                return out;
            };
            match class_treatment(config, class_index) {
                Ok(t) => {
                    out.class_id = t.class_id;
                    out.dscp = t.dscp;
                    out.uplink = t.uplink;
                    out.mark = t.mark;
                    out.priority = t.priority;
                }
                Err(message) => error("class", None, message),
            }
        }
    }
    out
}

/// What a flow of class `class_index` gets: class id, DSCP, first uplink, mark and
/// priority, as a classify rule without matchers. Shared by rules and provider
/// default classes; the errors are the mark's limits.
fn class_treatment(config: &Config, class_index: usize) -> Result<abi::Rule, String> {
    let class = &config.classes[class_index];
    let name = &class.name;
    if class_index >= MAX_CLASSES {
        return Err(format!(
            "class {name:?} is class number {}; the flow mark has room for {MAX_CLASSES} classes",
            class_index + 1
        ));
    }
    let uplink = match class.uplinks.first() {
        None => 0,
        Some(uplink) => match config.uplinks.iter().position(|u| &u.name == uplink) {
            None => return Err(format!("class {name:?} names uplink {uplink:?}, which is not defined")),
            Some(i) if i >= MAX_UPLINKS => {
                return Err(format!(
                    "class {name:?} uses uplink {uplink:?}, uplink number {}; the flow mark has room for {MAX_UPLINKS} uplinks",
                    i + 1
                ))
            }
            Some(i) => i as u8 + 1,
        },
    };
    Ok(abi::Rule {
        action: abi::ACTION_CLASSIFY,
        class_id: class_index as u8 + 1,
        dscp: class.dscp.value(),
        uplink,
        // No uplink bits: the datapath steers each flow when it starts (see
        // uplink::steer), by health and weight, and writes them then.
        mark: class_mark(class_index, 0, class.queue),
        priority: queue_priority(class.queue),
        ..abi::Rule::default()
    })
}

// ---------------------------------------------------------------------------------
// Prefixes in the 128-bit space

/// A prefix of the datapath's 128-bit address space; host bits are always zero.
/// Ordered by address, then length: an ancestor sorts before its descendants, and a
/// prefix's descendants follow it contiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Prefix {
    bits: u128,
    len: u8,
}

impl Prefix {
    const ROOT: Prefix = Prefix { bits: 0, len: 0 };
    /// `::ffff:0:0/96`: where IPv4 lives.
    const IPV4: Prefix = Prefix {
        bits: 0xffff << 32,
        len: 96,
    };

    fn new(bits: u128, len: u8) -> Prefix {
        Prefix {
            bits: bits & mask(len),
            len,
        }
    }

    fn from_net(net: &IpNet) -> Prefix {
        match net {
            IpNet::V4(v4) => {
                Prefix::new(u128::from(v4.addr().to_ipv6_mapped()), 96 + v4.prefix_len())
            }
            IpNet::V6(v6) => Prefix::new(u128::from(v6.addr()), v6.prefix_len()),
        }
    }

    fn contains(self, other: Prefix) -> bool {
        self.len <= other.len && other.bits & mask(self.len) == self.bits
    }

    fn addr(self) -> [u8; 16] {
        self.bits.to_be_bytes()
    }

    /// The prefix as the datapath should see it: itself, or, when it is an IPv6
    /// prefix strictly containing all of IPv4, the siblings of IPv4's ancestors below
    /// it, which together cover it minus `::ffff:0:0/96` (see the module docs).
    fn without_ipv4(self) -> impl Iterator<Item = Prefix> {
        let split = self.len < Prefix::IPV4.len && self.contains(Prefix::IPV4);
        let (whole, depths) = if split {
            (None, self.len..Prefix::IPV4.len)
        } else {
            (Some(self), 0..0)
        };
        whole.into_iter().chain(depths.map(|depth| {
            // IPv4's ancestor of length depth + 1, with its last bit flipped.
            let bit = 1u128 << (127 - depth);
            Prefix::new(Prefix::IPV4.bits ^ bit, depth + 1)
        }))
    }
}

/// The network part of a 128-bit address for a prefix length.
fn mask(len: u8) -> u128 {
    match len {
        0 => 0,
        len => u128::MAX << (128 - u32::from(len.min(128))),
    }
}

/// IPv4 prefixes as IPv4 ("192.0.2.0/24"), the rest as IPv6.
impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if Prefix::IPV4.contains(*self) {
            write!(f, "{}/{}", Ipv4Addr::from(self.bits as u32), self.len - 96)
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.len)
        }
    }
}

// ---------------------------------------------------------------------------------
// The destination trie

/// Up to `LIMIT` rule indexes, ascending, no duplicates: enough to tell whether a
/// candidate list exceeds `MAX_CANDIDATES`, and which rule is the first too many.
#[derive(Clone, Copy)]
struct RuleSet {
    n: usize,
    rule: [u32; LIMIT],
}

const LIMIT: usize = abi::MAX_CANDIDATES + 1;

impl RuleSet {
    const EMPTY: RuleSet = RuleSet {
        n: 0,
        rule: [0; LIMIT],
    };

    fn as_slice(&self) -> &[u32] {
        &self.rule[..self.n]
    }

    /// Appends `rule`, which must not be below the last one; repeats are dropped.
    fn push(&mut self, rule: u32) {
        if self.n < LIMIT && self.as_slice().last() != Some(&rule) {
            self.rule[self.n] = rule;
            self.n += 1;
        }
    }

    /// The sorted union, cut at `LIMIT` (the first `LIMIT` of the union are the first
    /// `LIMIT` of the union of the cut lists, so nothing is lost by cutting earlier).
    fn union(&self, other: &RuleSet) -> RuleSet {
        let (a, b) = (self.as_slice(), other.as_slice());
        let (mut i, mut j) = (0, 0);
        let mut out = RuleSet::EMPTY;
        while out.n < LIMIT && (i < a.len() || j < b.len()) {
            let next = if j == b.len() || (i < a.len() && a[i] <= b[j]) {
                i += 1;
                a[i - 1]
            } else {
                j += 1;
                b[j - 1]
            };
            out.push(next);
        }
        out
    }

    fn overflows(&self) -> bool {
        self.n > abi::MAX_CANDIDATES
    }

    fn candidates(&self) -> abi::Candidates {
        let mut out = abi::Candidates::default();
        let n = self.n.min(abi::MAX_CANDIDATES);
        out.n = n as u32;
        out.rule[..n].copy_from_slice(&self.rule[..n]);
        out
    }
}

/// The destination trie: one entry per distinct prefix (after the IPv4 cut), plus
/// `::/0`, each with its candidates.
///
/// The prefixes are sorted so that each one's ancestors come before it and its
/// descendants right after it; a stack then holds the chain of ancestors of the
/// current prefix with the rules accumulated along it. O(n log n) for the sort, then
/// O(`MAX_CANDIDATES`) per prefix.
fn destination_entries(
    rules: &[Rule],
    errors: &mut Vec<CompileError>,
) -> Vec<(u32, [u8; 16], abi::Candidates)> {
    let mut everywhere = RuleSet::EMPTY;
    let mut items: Vec<(Prefix, u32)> = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        if rule.destinations.is_empty() {
            everywhere.push(index as u32);
        }
        for net in &rule.destinations {
            items.extend(
                Prefix::from_net(net)
                    .without_ipv4()
                    .map(|p| (p, index as u32)),
            );
        }
    }
    items.sort_unstable();

    let mut overflows = Overflows::default();
    let mut entries = Vec::new();
    let mut emit = |prefix: Prefix, chain: &RuleSet| {
        let candidates = chain.union(&everywhere);
        if candidates.overflows() {
            overflows.record(prefix, &candidates);
        }
        entries.push((
            u32::from(prefix.len),
            prefix.addr(),
            candidates.candidates(),
        ));
    };

    // The root is every chain's first link. No prefix from a rule is ::/0 itself
    // (the IPv4 cut splits it), but a group for it would merge in harmlessly.
    let mut stack: Vec<(Prefix, RuleSet)> = vec![(Prefix::ROOT, RuleSet::EMPTY)];
    if items.first().map(|&(p, _)| p) != Some(Prefix::ROOT) {
        emit(Prefix::ROOT, &RuleSet::EMPTY);
    }
    let mut rest = &items[..];
    while let Some(&(prefix, _)) = rest.first() {
        let len = rest.iter().take_while(|(p, _)| *p == prefix).count();
        let (group, after) = rest.split_at(len);
        rest = after;
        while !stack
            .last()
            .expect("the root is never popped")
            .0
            .contains(prefix)
        {
            stack.pop();
        }
        let mut own = RuleSet::EMPTY;
        for &(_, rule) in group {
            own.push(rule);
        }
        let chain = stack.last().expect("the root").1.union(&own);
        emit(prefix, &chain);
        if prefix == Prefix::ROOT {
            stack[0].1 = chain;
        } else {
            stack.push((prefix, chain));
        }
    }

    errors.extend(overflows.errors(rules));
    if entries.len() > MAX_DEST_PREFIXES {
        errors.push(dest_capacity_error(rules));
    }
    entries
}

/// Candidate-list overflows, one per rule found to be the first too many (the 17th),
/// so that a config with thousands of affected prefixes gives a handful of errors.
#[derive(Default)]
struct Overflows {
    /// Rule index → (first prefix where it overflows, the candidates there, how many
    /// more prefixes overflow at it).
    by_rule: BTreeMap<u32, (Prefix, RuleSet, usize)>,
}

impl Overflows {
    fn record(&mut self, prefix: Prefix, candidates: &RuleSet) {
        let culprit = candidates.rule[abi::MAX_CANDIDATES];
        self.by_rule
            .entry(culprit)
            .and_modify(|(_, _, more)| *more += 1)
            .or_insert((prefix, *candidates, 0));
    }

    fn errors(self, rules: &[Rule]) -> impl Iterator<Item = CompileError> + '_ {
        self.by_rule
            .into_iter()
            .map(move |(culprit, (prefix, candidates, more))| {
                let culprit = culprit as usize;
                let numbers: Vec<String> = candidates
                    .as_slice()
                    .iter()
                    .map(|r| (r + 1).to_string())
                    .collect();
                let list = format!(
                    "rules {} can all match it, and the datapath checks at most {} rules per destination",
                    numbers.join(", "),
                    abi::MAX_CANDIDATES
                );
                let more = match more {
                    0 => String::new(),
                    1 => " (and 1 more prefix)".to_owned(),
                    n => format!(" (and {n} more prefixes)"),
                };
                // Point at this rule's destination on the prefix's chain, if it has one.
                let item = rules[culprit].destinations.iter().position(|net| {
                    Prefix::from_net(net)
                        .without_ipv4()
                        .any(|p| p.contains(prefix))
                });
                let message = if prefix == Prefix::ROOT {
                    format!(
                        "more than {} rules apply to every destination (rules without destinations are candidates everywhere): {list}",
                        abi::MAX_CANDIDATES
                    )
                } else {
                    format!(
                        "destination {} is covered by more than {} rules: {list}{more}",
                        describe(rules, prefix),
                        abi::MAX_CANDIDATES
                    )
                };
                CompileError {
                    rule: culprit,
                    field: item.map(|_| "destinations"),
                    item,
                    message,
                }
            })
    }
}

/// A trie prefix as the user wrote it, or, for a piece of an IPv6 prefix cut around
/// IPv4, the piece and the prefix it came from.
fn describe(rules: &[Rule], prefix: Prefix) -> String {
    let written = rules
        .iter()
        .flat_map(|r| &r.destinations)
        .find(|net| Prefix::from_net(net).without_ipv4().any(|p| p == prefix));
    match written {
        Some(net) if Prefix::from_net(net) != prefix => {
            format!("{prefix} (the part of {net} outside IPv4)")
        }
        _ => prefix.to_string(),
    }
}

/// Names the rule whose destinations take the trie past its size.
fn dest_capacity_error(rules: &[Rule]) -> CompileError {
    let mut seen: HashSet<Prefix> = HashSet::from([Prefix::ROOT]);
    let mut culprit = rules.len() - 1;
    'rules: for (index, rule) in rules.iter().enumerate() {
        for net in &rule.destinations {
            seen.extend(Prefix::from_net(net).without_ipv4());
            if seen.len() > MAX_DEST_PREFIXES {
                culprit = index;
                break 'rules;
            }
        }
    }
    CompileError {
        rule: culprit,
        field: Some("destinations"),
        item: None,
        message: format!(
            "the rules up to this one have more than {MAX_DEST_PREFIXES} distinct destination prefixes, the most the datapath holds"
        ),
    }
}

// ---------------------------------------------------------------------------------
// The client trie

/// One entry per (rule, client prefix): the rule index comes first in the key, so a
/// lookup for rule `i` can only hit rule `i`'s prefixes.
fn client_entries(
    rules: &[Rule],
    errors: &mut Vec<CompileError>,
) -> Vec<(u32, abi::ClientKeyData)> {
    let mut entries = Vec::new();
    let mut prefixes = Vec::new();
    for (index, rule) in rules.iter().enumerate() {
        prefixes.clear();
        prefixes.extend(
            rule.clients
                .iter()
                .flat_map(|net| Prefix::from_net(net).without_ipv4()),
        );
        // Pieces of a cut prefix can repeat a prefix also written as is.
        prefixes.sort_unstable();
        prefixes.dedup();
        let before = entries.len();
        for prefix in &prefixes {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&(index as u32).to_be_bytes());
            key[4..].copy_from_slice(&prefix.addr());
            entries.push((32 + u32::from(prefix.len), key));
        }
        if before <= MAX_CLIENT_PREFIXES && entries.len() > MAX_CLIENT_PREFIXES {
            errors.push(CompileError {
                rule: index,
                field: Some("clients"),
                item: None,
                message: format!(
                    "the rules up to this one have more than {MAX_CLIENT_PREFIXES} client prefixes, the most the datapath holds"
                ),
            });
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;
    use std::net::IpAddr;
    use std::time::Instant;

    use super::*;
    use crate::config::{parse, Class, Dscp, L4Proto, PortSpec};

    /// Two uplinks and three classes; rules are appended by each test.
    /// - "interactive": AF41, high, uplinks lte then fiber (so uplink 2);
    /// - "bulk": LE, low, fiber (uplink 1);
    /// - "plain": CS0, normal, no uplinks (main table).
    const BASE: &str = r#"
[lan]
interfaces = ["lan0"]

[[uplinks]]
name = "fiber"
interface = "wan0"

[[uplinks]]
name = "lte"
interface = "wwan0"

[[classes]]
name = "interactive"
dscp = "AF41"
queue = "high"
uplinks = ["lte", "fiber"]

[[classes]]
name = "bulk"
dscp = "LE"
queue = "low"
uplinks = ["fiber"]

[[classes]]
name = "plain"
dscp = "CS0"
"#;

    #[track_caller]
    fn config(rules: &str) -> Config {
        let text = format!("{BASE}\n{rules}");
        parse(&text, "test.toml").unwrap_or_else(|e| panic!("expected the config to load:\n{e}"))
    }

    #[track_caller]
    fn compiled(rules: &str) -> CompiledRules {
        compile(&config(rules)).unwrap_or_else(|e| panic!("expected the rules to compile: {e:?}"))
    }

    #[track_caller]
    fn compile_errors(config: &Config) -> Vec<CompileError> {
        match compile(config) {
            Ok(c) => panic!("expected compile errors, got {} rules", c.rules.len()),
            Err(errors) => errors,
        }
    }

    fn prefix(text: &str) -> Prefix {
        Prefix::from_net(&text.parse::<IpNet>().expect("a CIDR"))
    }

    fn key_prefix(prefixlen: u32, addr: [u8; 16]) -> Prefix {
        Prefix::new(u128::from_be_bytes(addr), prefixlen as u8)
    }

    /// The destination trie as "prefix -> [rule indexes]", in the compiler's order.
    fn dest_map(c: &CompiledRules) -> Vec<(String, Vec<u32>)> {
        c.destinations
            .iter()
            .map(|(len, addr, cand)| {
                let rules = cand.rule[..cand.n as usize].to_vec();
                (key_prefix(*len, *addr).to_string(), rules)
            })
            .collect()
    }

    fn entries(expected: &[(&str, &[u32])]) -> Vec<(String, Vec<u32>)> {
        expected
            .iter()
            .map(|(p, r)| (prefix(p).to_string(), r.to_vec()))
            .collect()
    }

    // ---- a simulation of the datapath's lookup ------------------------------------

    /// Longest-prefix match over the destination entries (what the LPM trie does).
    fn lookup_destination(c: &CompiledRules, addr: [u8; 16]) -> Option<&abi::Candidates> {
        let addr = Prefix::new(u128::from_be_bytes(addr), 128);
        c.destinations
            .iter()
            .filter(|(len, a, _)| key_prefix(*len, *a).contains(addr))
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, _, cand)| cand)
    }

    /// The client trie lookup: key (rule, address) at full length; an entry matches
    /// when its first `prefixlen` bits equal the key's.
    fn client_hit(c: &CompiledRules, rule: u32, addr: [u8; 16]) -> bool {
        let mut key = [0u8; 20];
        key[..4].copy_from_slice(&rule.to_be_bytes());
        key[4..].copy_from_slice(&addr);
        c.clients.iter().any(|(prefixlen, data)| {
            let full = (*prefixlen / 8) as usize;
            let rest = prefixlen % 8;
            data[..full] == key[..full]
                && (rest == 0 || (data[full] ^ key[full]) >> (8 - rest) == 0)
        })
    }

    /// What lan_ingress decides for a new flow: the winning rule's index.
    fn datapath(
        c: &CompiledRules,
        client: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: u16,
    ) -> Option<usize> {
        let cand = lookup_destination(c, abi::addr_bytes(dst)).expect("::/0 always matches");
        cand.rule[..cand.n as usize].iter().copied().find_map(|i| {
            let rule = &c.rules[i as usize];
            let statically = rule.flags & abi::RULE_F_PROVIDERS == 0;
            let client_ok =
                rule.flags & abi::RULE_F_CLIENTS == 0 || client_hit(c, i, abi::addr_bytes(client));
            let ports_ok = rule.flags & abi::RULE_F_PORTS == 0
                || rule.ports[..rule.n_ports as usize]
                    .iter()
                    .any(|r| r.proto == proto && (r.first..=r.last).contains(&port));
            (statically && client_ok && ports_ok).then_some(i as usize)
        })
    }

    /// First match over the config's rules, as the file reads: each present matcher
    /// must match (IPv6 prefixes never contain IPv4 addresses), provider rules are not
    /// static.
    fn reference(
        config: &Config,
        client: IpAddr,
        dst: IpAddr,
        proto: u8,
        port: u16,
    ) -> Option<usize> {
        config.rules.iter().position(|rule| {
            rule.providers.is_empty()
                && (rule.destinations.is_empty()
                    || rule.destinations.iter().any(|n| n.contains(&dst)))
                && (rule.clients.is_empty() || rule.clients.iter().any(|n| n.contains(&client)))
                && (rule.ports.is_empty()
                    || rule
                        .ports
                        .iter()
                        .any(|p| p.proto.number() == proto && (p.first..=p.last).contains(&port)))
        })
    }

    // ---- maps --------------------------------------------------------------------

    #[test]
    fn nested_destinations_list_their_ancestors_rules() {
        let c = compiled(
            r#"
[[rules]]
class = "interactive"
destinations = ["10.1.0.0/16"]

[[rules]]
class = "bulk"
destinations = ["10.0.0.0/8"]
"#,
        );
        assert_eq!(
            dest_map(&c),
            entries(&[
                ("::/0", &[]),
                ("10.0.0.0/8", &[1]),
                ("10.1.0.0/16", &[0, 1])
            ])
        );
        // The raw keys: IPv4 mapped, prefix length counted in 128 bits.
        let mapped = |a: [u8; 4]| abi::addr_bytes(IpAddr::from(a));
        assert_eq!((c.destinations[0].0, c.destinations[0].1), (0, [0; 16]));
        assert_eq!(
            (c.destinations[1].0, c.destinations[1].1),
            (104, mapped([10, 0, 0, 0]))
        );
        assert_eq!(
            (c.destinations[2].0, c.destinations[2].1),
            (112, mapped([10, 1, 0, 0]))
        );
        assert_eq!(c.destinations[0].2.rule, [0; 16], "unused slots are zero");
        assert_eq!(
            c.summary,
            Summary {
                rules: 2,
                destination_prefixes: 3,
                client_prefixes: 0,
                provider_rules: 0
            }
        );
    }

    #[test]
    fn one_rules_nested_prefixes_and_shared_prefixes_are_listed_once() {
        let c = compiled(
            r#"
[[rules]]
class = "plain"
destinations = ["10.0.0.0/8", "10.1.0.0/16", "2001:db8::/32"]

[[rules]]
class = "bulk"
destinations = ["10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16"]

[[rules]]
class = "bulk"
destinations = ["2001:db8:1::/48"]
"#,
        );
        assert_eq!(
            dest_map(&c),
            entries(&[
                ("::/0", &[]),
                // IPv4 (::ffff:0:0/96) sorts before 2001:db8::.
                ("10.0.0.0/8", &[0]),
                ("10.1.0.0/16", &[0, 1]),
                ("10.1.2.0/24", &[0, 1]),
                ("10.2.0.0/16", &[0, 1]),
                ("2001:db8::/32", &[0]),
                ("2001:db8:1::/48", &[0, 2]),
            ])
        );
    }

    #[test]
    fn rules_without_destinations_are_candidates_everywhere() {
        let c = compiled(
            r#"
[[rules]]
class = "interactive"
destinations = ["192.0.2.0/24"]

[[rules]]
class = "bulk"
ports = ["tcp:443"]

[[rules]]
class = "plain"
destinations = ["2001:db8::/32"]

[[rules]]
action = "block"
clients = ["198.51.100.0/25"]

[[rules]]
class = "interactive"
providers = ["openai"]
"#,
        );
        assert_eq!(
            dest_map(&c),
            entries(&[
                ("::/0", &[1, 3, 4]),
                ("192.0.2.0/24", &[0, 1, 3, 4]),
                ("2001:db8::/32", &[1, 2, 3, 4]),
            ])
        );
        assert_eq!(c.summary.provider_rules, 1);
        assert_eq!(
            c.summary.to_string(),
            "5 rules (1 by provider), 3 destination prefixes, 1 client prefixes"
        );
    }

    #[test]
    fn no_destinations_at_all_still_gives_the_root_entry() {
        let c = compiled("[[rules]]\nclass = \"bulk\"\nports = [\"udp:443\"]\n");
        assert_eq!(dest_map(&c), entries(&[("::/0", &[0])]));
        let c = compile(&config("")).expect("an empty rule set compiles");
        assert_eq!(dest_map(&c), entries(&[("::/0", &[])]));
        assert!(c.rules.is_empty() && c.clients.is_empty());
    }

    /// `::/0` means all of IPv6 and nothing of IPv4; `0.0.0.0/0` all of IPv4. In the
    /// mapped space the IPv6 prefix is cut into the 96 prefixes around ::ffff:0:0/96.
    #[test]
    fn ipv6_prefixes_do_not_cover_ipv4() {
        let c = compiled(
            r#"
[[rules]]
class = "interactive"
destinations = ["::/0"]
clients = ["::/0"]

[[rules]]
class = "bulk"
destinations = ["0.0.0.0/0"]

[[rules]]
class = "plain"
destinations = ["10.0.0.0/8", "2001:db8::/32"]
"#,
        );
        let map = dest_map(&c);
        let ipv6_pieces: Vec<_> = map.iter().filter(|(_, r)| r == &[0]).collect();
        assert_eq!(
            ipv6_pieces.len(),
            96,
            "::/0 minus IPv4 is 96 prefixes: {map:?}"
        );
        assert!(map.contains(&("::/0".into(), vec![])), "{map:?}");
        assert!(map.contains(&("8000::/1".into(), vec![0])), "{map:?}");
        assert!(map.contains(&("::/81".into(), vec![0])), "{map:?}");
        assert!(map.contains(&("::fffe:0:0/96".into(), vec![0])), "{map:?}");
        assert!(map.contains(&("0.0.0.0/0".into(), vec![1])), "{map:?}");
        assert!(map.contains(&("10.0.0.0/8".into(), vec![1, 2])), "{map:?}");
        assert!(
            map.contains(&("2001:db8::/32".into(), vec![0, 2])),
            "{map:?}"
        );
        assert_eq!(map.len(), 96 + 4);

        // The pieces cover IPv6 exactly: every bit pattern outside ::ffff:0:0/96 hits
        // rule 0 first, every IPv4 address rule 1.
        let lookup = |addr: &str| {
            let ip: IpAddr = addr.parse().unwrap();
            let cand = lookup_destination(&c, abi::addr_bytes(ip)).unwrap();
            cand.rule[..cand.n as usize].to_vec()
        };
        for addr in [
            "::",
            "::1",
            "::fffe:ffff:ffff",
            "::1:0:0:0",
            "2001:db8::1",
            "fe80::1",
            "ffff::",
        ] {
            let expected = if addr == "2001:db8::1" {
                vec![0, 2]
            } else {
                vec![0]
            };
            assert_eq!(lookup(addr), expected, "IPv6 {addr}");
        }
        for addr in ["0.0.0.0", "192.0.2.1", "255.255.255.255"] {
            assert_eq!(lookup(addr), [1], "IPv4 {addr}");
        }
        assert_eq!(lookup("10.9.8.7"), [1, 2]);

        // Clients are cut the same way: 96 keys for rule 0, none covering IPv4.
        assert_eq!(c.clients.len(), 96);
        assert!(client_hit(
            &c,
            0,
            abi::addr_bytes("2001:db8::7".parse().unwrap())
        ));
        assert!(client_hit(&c, 0, abi::addr_bytes("::".parse().unwrap())));
        assert!(!client_hit(
            &c,
            0,
            abi::addr_bytes("192.0.2.7".parse().unwrap())
        ));
        let any = "192.0.2.7".parse().unwrap();
        assert_eq!(
            datapath(
                &c,
                "2001:db8::7".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
                6,
                443
            ),
            Some(0)
        );
        assert_eq!(
            datapath(&c, any, "2001:db8::1".parse().unwrap(), 6, 443),
            Some(2)
        );
        assert_eq!(
            datapath(&c, any, "192.0.2.1".parse().unwrap(), 6, 443),
            Some(1)
        );
    }

    /// An IPv6 prefix inside ::ffff:0:0/96 is IPv4-mapped: the datapath cannot tell
    /// it from the IPv4 prefix it maps, so it is the same entry.
    #[test]
    fn ipv4_mapped_ipv6_prefixes_are_ipv4() {
        let c = compiled(
            r#"
[[rules]]
class = "bulk"
destinations = ["::ffff:192.0.2.0/120"]

[[rules]]
class = "plain"
destinations = ["192.0.2.0/24"]
"#,
        );
        assert_eq!(
            dest_map(&c),
            entries(&[("::/0", &[]), ("192.0.2.0/24", &[0, 1])])
        );
        assert_eq!(c.destinations[1].0, 120);
    }

    #[test]
    fn client_keys_are_rule_then_address() {
        let c = compiled(
            r#"
[[rules]]
class = "bulk"
clients = ["198.51.100.0/25", "2001:db8:1::/48"]

[[rules]]
action = "block"
destinations = ["192.0.2.0/24"]
clients = ["10.0.0.1"]
"#,
        );
        let key = |rule: u32, addr: &str| {
            let mut key = [0u8; 20];
            key[..4].copy_from_slice(&rule.to_be_bytes());
            key[4..].copy_from_slice(&abi::addr_bytes(addr.parse().unwrap()));
            key
        };
        assert_eq!(
            c.clients,
            vec![
                (32 + 96 + 25, key(0, "198.51.100.0")),
                (32 + 48, key(0, "2001:db8:1::")),
                (32 + 128, key(1, "10.0.0.1")),
            ]
        );
        assert_eq!(&c.clients[2].1[..4], &[0, 0, 0, 1], "rule index big endian");
        assert_eq!(c.summary.client_prefixes, 3);
        assert!(client_hit(
            &c,
            0,
            abi::addr_bytes("198.51.100.127".parse().unwrap())
        ));
        assert!(!client_hit(
            &c,
            0,
            abi::addr_bytes("198.51.100.128".parse().unwrap())
        ));
        assert!(!client_hit(
            &c,
            1,
            abi::addr_bytes("198.51.100.1".parse().unwrap())
        ));
        assert_eq!(c.rules[0].flags, abi::RULE_F_CLIENTS);
    }

    #[test]
    fn rule_values_marks_priorities_dscp_uplinks_ports() {
        let c = compiled(
            r#"
[[rules]]
class = "interactive"
destinations = ["192.0.2.0/24"]
ports = ["tcp:11434", "udp:8000-8001"]

[[rules]]
class = "bulk"
clients = ["10.0.0.0/8"]

[[rules]]
class = "plain"
destinations = ["2001:db8::/32"]

[[rules]]
action = "block"
providers = ["deepseek"]
clients = ["198.51.100.0/25"]
"#,
        );
        let range = |first, last, proto| abi::PortRange {
            first,
            last,
            proto,
            pad: [0; 3],
        };
        let mut ports = [abi::PortRange::default(); abi::MAX_PORT_RANGES];
        ports[0] = range(11434, 11434, 6);
        ports[1] = range(8000, 8001, 17);
        let expected = [
            abi::Rule {
                flags: abi::RULE_F_PORTS,
                mark: 0x3001_0000, // queue 1 (high) | classified | class 1 (uplink bits: steering)
                priority: 0x01a1_0010,
                action: abi::ACTION_CLASSIFY,
                class_id: 1,
                dscp: 34,
                uplink: 2,
                n_ports: 2,
                pad: [0; 3],
                ports,
            },
            abi::Rule {
                flags: abi::RULE_F_CLIENTS,
                mark: 0x7002_0000, // queue 3 (low) | classified | class 2 (uplink bits: steering)
                priority: 0x01a1_0030,
                action: abi::ACTION_CLASSIFY,
                class_id: 2,
                dscp: 1,
                uplink: 1,
                ..abi::Rule::default()
            },
            abi::Rule {
                flags: 0,
                mark: 0x5003_0000, // queue 2 (normal) | classified | main table | class 3
                priority: 0x01a1_0020,
                action: abi::ACTION_CLASSIFY,
                class_id: 3,
                dscp: 0,
                uplink: 0,
                ..abi::Rule::default()
            },
            abi::Rule {
                flags: abi::RULE_F_CLIENTS | abi::RULE_F_PROVIDERS,
                action: abi::ACTION_BLOCK,
                dscp: abi::DSCP_KEEP,
                ..abi::Rule::default()
            },
        ];
        for (i, (seen, expected)) in c.rules.iter().zip(&expected).enumerate() {
            assert_eq!(seen, expected, "rule {i}");
        }
        assert_eq!(c.rules.len(), 4);
        assert_eq!(c.summary.provider_rules, 1);

        assert_eq!(class_mark(0, 2, Queue::High), 0x3201_0000);
        assert_eq!(class_mark(254, 15, Queue::Low), 0x7fff_0000);
        assert_eq!(class_mark(1, 1, Queue::Normal), 0x5102_0000);
        assert_eq!(class_mark(4, 0, Queue::Low) & !abi::MARK_MASK, 0, "only our bits");
        assert_eq!(queue_priority(Queue::High), 0x01a1_0010);
        assert_eq!(queue_priority(Queue::Normal), 0x01a1_0020);
        assert_eq!(queue_priority(Queue::Low), 0x01a1_0030);
    }

    // ---- errors ------------------------------------------------------------------

    #[test]
    fn too_many_candidates_for_one_destination_is_refused() {
        // 15 rules on 10.0.0.0/8 and one without destinations: 16, the limit.
        let mut rules = String::new();
        for _ in 0..15 {
            rules.push_str("[[rules]]\nclass = \"bulk\"\ndestinations = [\"10.0.0.0/8\"]\n");
        }
        rules.push_str("[[rules]]\nclass = \"plain\"\nports = [\"tcp:22\"]\n");
        let c = compiled(&rules);
        let map = dest_map(&c);
        let all: Vec<u32> = (0..16).collect();
        assert_eq!(
            map,
            vec![("::/0".into(), vec![15]), ("10.0.0.0/8".into(), all)]
        );

        // A 17th rule below it overflows at its own prefix.
        rules.push_str(
            "[[rules]]\nclass = \"plain\"\ndestinations = [\"2001:db8::/32\", \"10.1.2.0/24\", \"10.1.3.0/24\"]\n",
        );
        let errors = compile_errors(&config(&rules));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(
            (e.rule, e.field, e.item),
            (16, Some("destinations"), Some(1))
        );
        assert_eq!(
            e.to_string(),
            "rule 17: destination 10.1.2.0/24 is covered by more than 16 rules: rules 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17 can all match it, and the datapath checks at most 16 rules per destination (and 1 more prefix)"
        );
    }

    #[test]
    fn too_many_rules_without_destinations_is_refused_at_the_17th() {
        let mut rules = String::new();
        for port in 1..=17 {
            let _ = write!(
                rules,
                "[[rules]]\nclass = \"plain\"\nports = [\"tcp:{port}\"]\n"
            );
        }
        rules.push_str("[[rules]]\nclass = \"plain\"\ndestinations = [\"::/0\"]\n");
        let errors = compile_errors(&config(&rules));
        // Every prefix overflows at rule 17; it is reported once.
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.rule, e.field, e.item), (16, None, None));
        assert!(
            e.message
                .starts_with("more than 16 rules apply to every destination"),
            "{e}"
        );

        // 16 without destinations, then a rule with prefixes: it overflows at every one
        // of them, reported once, at the first in address order (a piece of ::/0).
        let mut rules = String::new();
        for port in 1..=16 {
            let _ = write!(
                rules,
                "[[rules]]\nclass = \"plain\"\nports = [\"tcp:{port}\"]\n"
            );
        }
        rules.push_str(
            "[[rules]]\nclass = \"plain\"\ndestinations = [\"192.0.2.0/24\", \"::/0\"]\n",
        );
        let errors = compile_errors(&config(&rules));
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(
            (e.rule, e.field, e.item),
            (16, Some("destinations"), Some(1))
        );
        assert!(
            e.message.starts_with(
                "destination ::/81 (the part of ::/0 outside IPv4) is covered by more than 16 rules"
            ) && e.message.ends_with("(and 96 more prefixes)"),
            "{e}"
        );
    }

    #[test]
    fn too_many_port_ranges_is_refused() {
        let ports: Vec<String> = (1..=9).map(|p| format!("\"tcp:{p}\"")).collect();
        let rules = format!(
            "[[rules]]\nclass = \"plain\"\nports = [\"tcp:1\"]\n[[rules]]\nclass = \"bulk\"\nports = [{}]\n",
            ports.join(", ")
        );
        let errors = compile_errors(&config(&rules));
        assert_eq!(
            errors,
            vec![CompileError {
                rule: 1,
                field: Some("ports"),
                item: Some(8),
                message: "9 port ranges, the datapath checks at most 8 per rule; merge adjacent ranges or split the rule".into(),
            }]
        );
        assert!(errors[0].to_string().starts_with("rule 2: 9 port ranges"));
        // Eight is fine.
        let ports: Vec<String> = (1..=8).map(|p| format!("\"udp:{p}\"")).collect();
        let c = compiled(&format!(
            "[[rules]]\nclass = \"bulk\"\nports = [{}]\n",
            ports.join(", ")
        ));
        assert_eq!(c.rules[0].n_ports, 8);
        assert_eq!(c.rules[0].ports[7].first, 8);
    }

    fn plain_rule(class: Option<&str>) -> Rule {
        Rule {
            action: Action::Classify,
            class: class.map(str::to_owned),
            providers: vec![],
            destinations: vec![],
            clients: vec![],
            ports: vec![PortSpec {
                proto: L4Proto::Tcp,
                first: 443,
                last: 443,
            }],
        }
    }

    #[test]
    fn too_many_rules_is_refused() {
        let mut config = config("");
        config.rules = vec![plain_rule(Some("plain")); MAX_RULES + 1];
        let errors = compile_errors(&config);
        assert_eq!(errors.len(), 1);
        assert_eq!(
            errors[0].to_string(),
            "rule 16385: too many rules: 16385 are configured, the datapath holds at most 16384"
        );
    }

    /// validate() refuses these; the compiler reports rather than panics.
    #[test]
    fn unknown_classes_and_uplinks_are_errors_not_panics() {
        let mut config = config("");
        config.classes.push(Class {
            name: "lost".into(),
            dscp: Dscp::EF,
            queue: Queue::High,
            uplinks: vec!["nowhere".into()],
            demote: None,
        });
        config.rules = vec![
            plain_rule(None),
            plain_rule(Some("nope")),
            plain_rule(Some("lost")),
        ];
        let errors = compile_errors(&config);
        let seen: Vec<_> = errors
            .iter()
            .map(|e| (e.rule, e.field, e.to_string()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, Some("class"), "rule 1: rule has no class".into()),
                (
                    1,
                    Some("class"),
                    "rule 2: class \"nope\" is not defined".into()
                ),
                (
                    2,
                    Some("class"),
                    "rule 3: class \"lost\" names uplink \"nowhere\", which is not defined".into()
                ),
            ]
        );
    }

    #[test]
    fn more_classes_or_uplinks_than_the_mark_holds_are_errors() {
        let mut config = config("");
        for i in 0..300 {
            config.classes.push(Class {
                name: format!("c{i}"),
                dscp: Dscp::EF,
                queue: Queue::Normal,
                uplinks: vec![],
                demote: None,
            });
        }
        for i in 0..20 {
            let mut uplink = config.uplinks[0].clone();
            uplink.name = format!("u{i}");
            config.uplinks.push(uplink);
        }
        config.classes[3].uplinks = vec!["u13".into()]; // uplink number 16
        config.classes[4].uplinks = vec!["u12".into()]; // uplink number 15: fits
        config.rules = vec![
            plain_rule(Some("c251")), // class number 255: fits
            plain_rule(Some("c252")), // class number 256
            plain_rule(Some("c0")),   // class number 4, uplink 16
            plain_rule(Some("c1")),   // uplink 15
        ];
        let errors = compile_errors(&config);
        let seen: Vec<_> = errors.iter().map(|e| (e.rule, e.field)).collect();
        assert_eq!(
            seen,
            vec![(1, Some("class")), (2, Some("class"))],
            "{errors:?}"
        );
        assert!(
            errors[0].message.contains("room for 255 classes"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].message.contains("room for 15 uplinks"),
            "{}",
            errors[1]
        );
        config.rules.remove(2);
        config.rules.remove(1);
        let c = compile(&config).expect("255 classes and 15 uplinks fit");
        assert_eq!((c.rules[0].class_id, c.rules[0].mark), (255, 0x50ff_0000));
        assert_eq!((c.rules[1].class_id, c.rules[1].uplink), (5, 15));
    }

    // ---- scale -------------------------------------------------------------------

    #[test]
    fn ten_thousand_rules_compile_in_well_under_a_second() {
        let mut rules = String::new();
        for i in 0..10_000u32 {
            let [_, _, b, c] = i.to_be_bytes();
            let _ = write!(
                rules,
                "[[rules]]\nclass = \"bulk\"\ndestinations = [\"10.0.{b}.{c}\"]\n"
            );
        }
        let start = Instant::now();
        let config = config(&rules);
        let parsed = start.elapsed();
        let start = Instant::now();
        let c = compile(&config).expect("compiles");
        let took = start.elapsed();
        println!("10k rules: parsed in {parsed:?}, compiled in {took:?}");
        assert_eq!(c.rules.len(), 10_000);
        assert_eq!(c.destinations.len(), 10_001);
        assert!(c
            .destinations
            .iter()
            .skip(1)
            .all(|(len, _, cand)| *len == 128 && cand.n == 1));
        assert!(
            took.as_secs_f64() < 1.0,
            "10k rules took {took:?} to compile"
        );
    }

    #[test]
    fn a_hundred_thousand_destination_prefixes_compile() {
        // 1000 rules with 100 prefixes each, nested: each rule has a /16, and /24s
        // and /32s inside other rules' /16s.
        let mut config = config("");
        let net = |text: String| text.parse::<IpNet>().unwrap();
        for r in 0..1000u32 {
            let mut rule = plain_rule(Some("bulk"));
            rule.ports.clear();
            let (hi, lo) = (r / 250, r % 250);
            rule.destinations
                .push(net(format!("{}.{lo}.0.0/16", 10 + hi)));
            for k in 0..99u32 {
                let other = (lo + 1 + k) % 250;
                rule.destinations
                    .push(net(format!("{}.{other}.{k}.{}/32", 10 + hi, r % 256)));
            }
            config.rules.push(rule);
        }
        let start = Instant::now();
        let c = compile(&config).expect("compiles");
        let took = start.elapsed();
        println!(
            "100k destination prefixes in 1000 rules: compiled in {took:?} ({})",
            c.summary
        );
        assert_eq!(c.summary.destination_prefixes, 1 + 1000 + 99_000);
        assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    }

    // ---- against a first-match reference -----------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    /// An address from a small space, so that prefixes nest and overlap often.
    fn near_address(rng: &mut XorShift, v6: bool) -> IpAddr {
        let (a, b, c) = (rng.below(4), rng.below(4), rng.below(256));
        if v6 {
            let addr = (0x2001_0db8u128 << 96)
                | (u128::from(a) << 80)
                | (u128::from(b) << 64)
                | u128::from(c);
            IpAddr::from(Ipv6Addr::from(addr))
        } else {
            IpAddr::from([10, a as u8, b as u8, c as u8])
        }
    }

    fn random_address(rng: &mut XorShift) -> IpAddr {
        match rng.below(4) {
            0 => IpAddr::from(Ipv4Addr::from(rng.next() as u32)),
            1 => loop {
                let addr = Ipv6Addr::from((u128::from(rng.next()) << 64) | u128::from(rng.next()));
                if addr.to_ipv4_mapped().is_none() {
                    break IpAddr::from(addr);
                }
            },
            2 => near_address(rng, false),
            _ => near_address(rng, true),
        }
    }

    fn random_prefix(rng: &mut XorShift) -> IpNet {
        let v6 = rng.chance(40);
        let addr = near_address(rng, v6);
        // Short prefixes rarely: each one is on nearly every chain.
        let len = match (rng.chance(3), v6) {
            (true, _) => 0,
            (false, true) => *rng.pick(&[16, 32, 48, 64, 64, 80, 96, 112, 120, 128, 128]),
            (false, false) => *rng.pick(&[8, 16, 16, 20, 24, 24, 28, 30, 32, 32]),
        };
        IpNet::new(addr, len).unwrap().trunc()
    }

    fn toml_list(items: &[String]) -> String {
        let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    fn random_rules(rng: &mut XorShift, n: usize) -> String {
        let mut out = String::new();
        for _ in 0..n {
            let mut dests: Vec<String> = Vec::new();
            let mut clients: Vec<String> = Vec::new();
            let mut ports: Vec<String> = Vec::new();
            if rng.chance(92) {
                for _ in 0..1 + rng.below(2) {
                    dests.push(random_prefix(rng).to_string());
                }
            }
            if rng.chance(30) {
                for _ in 0..1 + rng.below(2) {
                    clients.push(random_prefix(rng).to_string());
                }
            }
            if rng.chance(40) || (dests.is_empty() && clients.is_empty()) {
                for _ in 0..1 + rng.below(3) {
                    let proto = *rng.pick(&["tcp", "udp"]);
                    let first = *rng.pick(&[53u16, 80, 443, 8000]);
                    let last = first + *rng.pick(&[0u16, 0, 1, 10]);
                    ports.push(format!("{proto}:{first}-{last}"));
                }
            }
            for list in [&mut dests, &mut clients, &mut ports] {
                list.sort();
                list.dedup();
            }
            out.push_str("[[rules]]\n");
            if rng.chance(15) {
                out.push_str("action = \"block\"\n");
            } else {
                let _ = writeln!(
                    out,
                    "class = {:?}",
                    rng.pick(&["interactive", "bulk", "plain"])
                );
            }
            if rng.chance(8) {
                out.push_str("providers = [\"openai\"]\n");
            }
            for (key, list) in [
                ("destinations", &dests),
                ("clients", &clients),
                ("ports", &ports),
            ] {
                if !list.is_empty() {
                    let _ = writeln!(out, "{key} = {}", toml_list(list));
                }
            }
        }
        out
    }

    #[test]
    fn datapath_lookup_agrees_with_first_match() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let (mut configs, mut refused, mut matched) = (0, 0, 0);
        while configs < 8 {
            assert!(
                refused < 100,
                "the generator overflows too often: {refused} refused"
            );
            let config = config(&random_rules(&mut rng, 50));
            let c = match compile(&config) {
                Ok(c) => c,
                Err(errors) => {
                    // Chains deeper than 16 rules do happen; only that may fail.
                    assert!(
                        errors
                            .iter()
                            .all(|e| e.message.contains("more than 16 rules")),
                        "{errors:?}"
                    );
                    refused += 1;
                    continue;
                }
            };
            configs += 1;
            for _ in 0..400 {
                // Half the destinations inside some rule's prefix.
                let dst = match config.rules[rng.below(50) as usize].destinations.first() {
                    Some(net) if rng.chance(50) => {
                        let host = match net {
                            IpNet::V4(n) => IpAddr::from(Ipv4Addr::from(
                                u32::from(n.network())
                                    | (rng.next() as u32 & !u32::from(n.netmask())),
                            )),
                            IpNet::V6(n) => IpAddr::from(Ipv6Addr::from(
                                u128::from(n.network())
                                    | (u128::from(rng.next()) & !u128::from(n.netmask())),
                            )),
                        };
                        match host {
                            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                                random_address(&mut rng)
                            }
                            host => host,
                        }
                    }
                    _ => random_address(&mut rng),
                };
                let client = random_address(&mut rng);
                let proto = *rng.pick(&[6u8, 17, 1]);
                let port = *rng.pick(&[53u16, 80, 81, 443, 444, 8000, 8005, 8010, 8011, 9999]);
                let expected = reference(&config, client, dst, proto, port);
                let seen = datapath(&c, client, dst, proto, port);
                assert_eq!(
                    seen, expected,
                    "client {client}, destination {dst}, proto {proto}, port {port}: the datapath picks rule {seen:?}, first match is {expected:?}"
                );
                matched += usize::from(expected.is_some());
            }
        }
        println!("{configs} configs agreed on 400 flows each ({matched} matched a rule); {refused} configs refused for overflow");
        assert!(matched > 400, "too few flows matched any rule: {matched}");
    }
}
