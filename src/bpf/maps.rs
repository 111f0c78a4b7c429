//! Typed access to the datapath's maps: settings, the double-buffered rule maps,
//! the flow table and its statistics.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};

use super::abi::{AddrInfo, Candidates, ClientKeyData, Flow, FlowKey, FlowStats, Rule, RuleProviderKey, Settings};
use std::os::fd::AsFd;

use super::{BpfError, Datapath};

const MAP_SETTINGS: &str = "settings";
const MAP_FLOWS: &str = "flows";
const MAP_FLOW_STATS: &str = "flow_stats";

/// The rule maps' contents for one rule set, as the rule compiler produces them.
pub struct RuleMaps<'a> {
    pub rules: &'a [Rule],
    pub destinations: &'a [(u32, [u8; 16], Candidates)],
    pub clients: &'a [(u32, ClientKeyData)],
    /// (rule index, provider id) for rules naming providers.
    pub rule_providers: &'a [(u32, u16)],
    /// What a flow to a known provider gets when no rule matches, by provider id.
    pub provider_defaults: &'a [(u16, Rule)],
    /// Bulk demotion by class id - 1 (class ids past the end: none).
    pub demotions: &'a [super::abi::Demote],
}

/// Datapath behaviour switches, written with each rule set.
#[derive(Debug, Clone, Copy, Default)]
pub struct Switches {
    /// Enforce (mark, rewrite, block) rather than observe.
    pub enforce: bool,
    pub block_ai_quic: bool,
}

const MAP_ADDR_PROVIDERS: &str = "addr_providers";
const MAP_CLASS_DEMOTE: &str = "class_demote";
const MAP_PUNTS: &str = "punts";
const MAP_FLOW_VERDICTS: &str = "flow_verdicts";
const MAP_DNS_NAMES: &str = "dns_names";

pub(super) fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { map, source }
}

impl Datapath {
    pub(super) fn map_data(&self, name: &'static str) -> Result<&aya::maps::Map, BpfError> {
        self.ebpf.map(name).ok_or(BpfError::Missing { kind: "map", name })
    }

    pub(super) fn map_data_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
        self.ebpf.map_mut(name).ok_or(BpfError::Missing { kind: "map", name })
    }

    pub fn settings(&self) -> Result<Settings, BpfError> {
        let array: Array<&MapData, Settings> = Array::try_from(self.map_data(MAP_SETTINGS)?).map_err(map_err(MAP_SETTINGS))?;
        array.get(&0, 0).map_err(map_err(MAP_SETTINGS))
    }

    fn write_settings(&mut self, s: Settings) -> Result<(), BpfError> {
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(self.map_data_mut(MAP_SETTINGS)?).map_err(map_err(MAP_SETTINGS))?;
        array.set(0, s, 0).map_err(map_err(MAP_SETTINGS))
    }

    /// Install a rule set and the mode without a program reload: fill the idle
    /// copy of the rule maps, then flip `settings.rule_set` in one map write. Until
    /// the flip the live copy is untouched, so a failure leaves the old rules in
    /// force, and a packet sees either the old rules or the new ones, never a mix.
    pub fn install(&mut self, rules: &RuleMaps<'_>, enforce: bool) -> Result<(), BpfError> {
        self.install_with(rules, Switches { enforce, block_ai_quic: false })
    }

    /// [`Datapath::install`] with every switch of the settings map.
    pub fn install_with(&mut self, rules: &RuleMaps<'_>, sw: Switches) -> Result<(), BpfError> {
        let current = self.settings()?;
        let idle = 1 - (current.rule_set & 1);
        let (rules_name, dests_name, clients_name) = rule_map_names(idle);

        {
            let mut array: Array<&mut MapData, Rule> =
                Array::try_from(self.map_data_mut(rules_name)?).map_err(map_err(rules_name))?;
            for (i, rule) in rules.rules.iter().enumerate() {
                array.set(i as u32, *rule, 0).map_err(map_err(rules_name))?;
            }
        }
        {
            let mut trie: LpmTrie<&mut MapData, [u8; 16], Candidates> =
                LpmTrie::try_from(self.map_data_mut(dests_name)?).map_err(map_err(dests_name))?;
            clear_trie(&mut trie).map_err(map_err(dests_name))?;
            for (len, addr, cand) in rules.destinations {
                trie.insert(&Key::new(*len, *addr), *cand, 0).map_err(map_err(dests_name))?;
            }
        }
        {
            let mut trie: LpmTrie<&mut MapData, ClientKeyData, u8> =
                LpmTrie::try_from(self.map_data_mut(clients_name)?).map_err(map_err(clients_name))?;
            clear_trie(&mut trie).map_err(map_err(clients_name))?;
            for (len, data) in rules.clients {
                trie.insert(&Key::new(*len, *data), 1, 0).map_err(map_err(clients_name))?;
            }
        }
        let (rp_name, pd_name) = provider_map_names(idle);
        {
            let mut map: HashMap<&mut MapData, RuleProviderKey, u8> =
                HashMap::try_from(self.map_data_mut(rp_name)?).map_err(map_err(rp_name))?;
            let old: Vec<RuleProviderKey> = map.keys().collect::<Result<_, _>>().map_err(map_err(rp_name))?;
            for k in old {
                match map.remove(&k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(rp_name)(e)),
                }
            }
            for (rule, provider) in rules.rule_providers {
                let key = RuleProviderKey { rule: *rule, provider: *provider, pad: 0 };
                map.insert(key, 1, 0).map_err(map_err(rp_name))?;
            }
        }
        {
            let mut array: Array<&mut MapData, Rule> =
                Array::try_from(self.map_data_mut(pd_name)?).map_err(map_err(pd_name))?;
            // Every slot written: ids a previous set used must not keep their class.
            let mut defaults = vec![Rule::default(); super::abi::MAX_PROVIDERS];
            for (id, rule) in rules.provider_defaults {
                if let Some(slot) = defaults.get_mut(*id as usize) {
                    *slot = *rule;
                }
            }
            for (i, rule) in defaults.iter().enumerate() {
                array.set(i as u32, *rule, 0).map_err(map_err(pd_name))?;
            }
        }
        {
            // Not double-buffered: one entry per class id, each written whole.
            // Before the flip, so a failure leaves the running rules in force.
            let mut array: Array<&mut MapData, super::abi::Demote> =
                Array::try_from(self.map_data_mut(MAP_CLASS_DEMOTE)?).map_err(map_err(MAP_CLASS_DEMOTE))?;
            for id in 1..256u32 {
                let d = rules.demotions.get(id as usize - 1).copied().unwrap_or_default();
                array.set(id, d, 0).map_err(map_err(MAP_CLASS_DEMOTE))?;
            }
        }
        // The flip. n_rules only gates "are there any rules"; a packet that reads a
        // torn value sees either set's answer for its single lookup.
        self.write_settings(Settings {
            rule_set: idle,
            enforce: sw.enforce as u32,
            n_rules: rules.rules.len() as u32,
            block_ai_quic: sw.block_ai_quic as u32,
        })
    }

    /// Every live flow. The table changes while it is read: a flow created or
    /// evicted meanwhile may be missing, none appears twice. Holds the whole
    /// table in memory (168 B a flow): walks that can work a batch at a time use
    /// [`FlowTable::for_each_chunk`].
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, BpfError> {
        let mut out = Vec::new();
        self.flow_table()?.for_each_chunk(|k, v| out.extend(k.iter().copied().zip(v.iter().copied())))?;
        Ok(out)
    }

    /// A handle on the flow table that needs no lock on the `Datapath`: the
    /// daemon walks the table with it while punts and control requests go on.
    pub fn flow_table(&self) -> Result<FlowTable, BpfError> {
        let data = self.flows_map_data().ok_or(BpfError::Missing { kind: "map", name: MAP_FLOWS })?;
        let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| flows_err("dup", e))?;
        Ok(FlowTable { fd })
    }

    fn flows_map_data(&self) -> Option<&MapData> {
        match self.ebpf.map(MAP_FLOWS)? {
            aya::maps::Map::LruHashMap(d) | aya::maps::Map::HashMap(d) => Some(d),
            _ => None,
        }
    }

    /// Delete flows from the table (ended, exported); returns how many went.
    pub fn delete_flows(&mut self, keys: &[FlowKey]) -> Result<usize, BpfError> {
        self.flow_table()?.delete(keys)
    }

    /// Flow-table statistics, summed over CPUs.
    pub fn flow_stats(&self) -> Result<FlowStats, BpfError> {
        let array: PerCpuArray<&MapData, FlowStats> =
            PerCpuArray::try_from(self.map_data(MAP_FLOW_STATS)?).map_err(map_err(MAP_FLOW_STATS))?;
        let values = array.get(&0, 0).map_err(map_err(MAP_FLOW_STATS))?;
        let mut sum = FlowStats::default();
        values.iter().for_each(|v| sum.add(v));
        Ok(sum)
    }
}

fn flows_err(call: &'static str, io_error: std::io::Error) -> BpfError {
    BpfError::Map { map: MAP_FLOWS, source: aya::maps::MapError::SyscallError(aya::sys::SyscallError { call, io_error }) }
}

/// The flow table through its own file descriptor (a dup: the map lives while
/// either the `Datapath` or this handle does).
pub struct FlowTable {
    fd: std::os::fd::OwnedFd,
}

impl FlowTable {
    /// Every live flow, a batch (at most [`super::batch::CHUNK`]) at a time, in
    /// one reused buffer: the memory of a walk does not grow with the table.
    pub fn for_each_chunk(&self, mut f: impl FnMut(&[FlowKey], &[Flow])) -> Result<(), BpfError> {
        match super::batch::for_each_chunk::<FlowKey, Flow>(self.fd.as_fd(), &mut f) {
            Ok(()) => Ok(()),
            // Kernels before 5.6 have no batch reads: key by key.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                super::batch::for_each_chunk_by_key::<FlowKey, Flow>(self.fd.as_fd(), f).map_err(|e| flows_err("BPF_MAP_GET_NEXT_KEY", e))
            }
            Err(e) => Err(flows_err("BPF_MAP_LOOKUP_BATCH", e)),
        }
    }

    /// Delete flows (ended, exported); returns how many went.
    pub fn delete(&self, keys: &[FlowKey]) -> Result<usize, BpfError> {
        super::batch::delete(self.fd.as_fd(), keys).map_err(|e| flows_err("BPF_MAP_DELETE_BATCH", e))
    }
}

fn provider_map_names(set: u32) -> (&'static str, &'static str) {
    if set == 0 {
        ("rule_providers_0", "provider_defaults_0")
    } else {
        ("rule_providers_1", "provider_defaults_1")
    }
}

impl Datapath {
    /// Tell the datapath that `addr` (IPv6 or IPv4-mapped) belongs to `provider`.
    pub fn learn_address(&mut self, addr: [u8; 16], provider: u16) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, [u8; 16], AddrInfo> =
            HashMap::try_from(self.map_data_mut(MAP_ADDR_PROVIDERS)?).map_err(map_err(MAP_ADDR_PROVIDERS))?;
        map.insert(addr, AddrInfo { provider_id: provider, pad: 0, pad2: 0 }, 0)
            .map_err(map_err(MAP_ADDR_PROVIDERS))
    }

    /// Replace the provider names lan_egress recognises in DNS answers.
    pub fn set_dns_names(&mut self, names: &[(u64, super::abi::DnsName)]) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, u64, super::abi::DnsName> =
            HashMap::try_from(self.map_data_mut(MAP_DNS_NAMES)?).map_err(map_err(MAP_DNS_NAMES))?;
        let keep: std::collections::HashSet<u64> = names.iter().map(|(k, _)| *k).collect();
        let old: Vec<u64> = map.keys().collect::<Result<_, _>>().map_err(map_err(MAP_DNS_NAMES))?;
        for (k, v) in names {
            map.insert(k, v, 0).map_err(map_err(MAP_DNS_NAMES))?;
        }
        for k in old.iter().filter(|k| !keep.contains(k)) {
            match map.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_DNS_NAMES)(e)),
            }
        }
        Ok(())
    }

    /// The learned addresses (IPv6 or IPv4-mapped) and their providers.
    pub fn learned_addresses(&self) -> Result<Vec<([u8; 16], u16)>, BpfError> {
        let map: HashMap<&MapData, [u8; 16], AddrInfo> =
            HashMap::try_from(self.map_data(MAP_ADDR_PROVIDERS)?).map_err(map_err(MAP_ADDR_PROVIDERS))?;
        map.iter()
            .map(|r| r.map(|(k, v)| (k, v.provider_id)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(MAP_ADDR_PROVIDERS))
    }

    /// Hand a verdict to a pending flow; the datapath applies it at the flow's
    /// next packet either way (lan_ingress or lan_egress) and removes the entry.
    pub fn set_verdict(&mut self, key: FlowKey, verdict: super::abi::Verdict) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, FlowKey, super::abi::Verdict> =
            HashMap::try_from(self.map_data_mut(MAP_FLOW_VERDICTS)?).map_err(map_err(MAP_FLOW_VERDICTS))?;
        map.insert(key, verdict, 0).map_err(map_err(MAP_FLOW_VERDICTS))
    }

    /// The verdicts waiting for their flow's next packet.
    pub fn verdicts(&self) -> Result<Vec<(FlowKey, super::abi::Verdict)>, BpfError> {
        let map: HashMap<&MapData, FlowKey, super::abi::Verdict> =
            HashMap::try_from(self.map_data(MAP_FLOW_VERDICTS)?).map_err(map_err(MAP_FLOW_VERDICTS))?;
        map.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(MAP_FLOW_VERDICTS))
    }

    /// Remove verdicts no flow will pick up: the flow ended, was evicted, or is
    /// no longer waiting. Returns how many went.
    pub fn sweep_verdicts(&mut self) -> Result<usize, BpfError> {
        let stale: Vec<FlowKey> = {
            let verdicts: HashMap<&MapData, FlowKey, super::abi::Verdict> =
                HashMap::try_from(self.map_data(MAP_FLOW_VERDICTS)?).map_err(map_err(MAP_FLOW_VERDICTS))?;
            let flows: HashMap<&MapData, FlowKey, Flow> =
                HashMap::try_from(self.map_data(MAP_FLOWS)?).map_err(map_err(MAP_FLOWS))?;
            verdicts
                .keys()
                .filter_map(Result::ok)
                .filter(|k| match flows.get(k, 0) {
                    Ok(f) => f.flags & super::abi::FLOW_F_PENDING == 0,
                    Err(_) => true,
                })
                .collect()
        };
        let mut map: HashMap<&mut MapData, FlowKey, super::abi::Verdict> =
            HashMap::try_from(self.map_data_mut(MAP_FLOW_VERDICTS)?).map_err(map_err(MAP_FLOW_VERDICTS))?;
        for k in &stale {
            match map.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_FLOW_VERDICTS)(e)),
            }
        }
        Ok(stale.len())
    }

    pub fn forget_address(&mut self, addr: [u8; 16]) -> Result<(), BpfError> {
        let mut map: HashMap<&mut MapData, [u8; 16], AddrInfo> =
            HashMap::try_from(self.map_data_mut(MAP_ADDR_PROVIDERS)?).map_err(map_err(MAP_ADDR_PROVIDERS))?;
        match map.remove(&addr) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_ADDR_PROVIDERS)(e)),
        }
    }

    /// The punt ring buffer, moved out to its consumer task (it is read without
    /// the datapath lock).
    pub fn take_punts(&mut self) -> Result<aya::maps::RingBuf<MapData>, BpfError> {
        let map = self.ebpf.take_map(MAP_PUNTS).ok_or(BpfError::Missing { kind: "map", name: MAP_PUNTS })?;
        aya::maps::RingBuf::try_from(map).map_err(map_err(MAP_PUNTS))
    }
}

fn rule_map_names(set: u32) -> (&'static str, &'static str, &'static str) {
    if set == 0 {
        ("rules_0", "dests_0", "clients_0")
    } else {
        ("rules_1", "dests_1", "clients_1")
    }
}

fn clear_trie<K: aya::Pod, V: aya::Pod>(trie: &mut LpmTrie<&mut MapData, K, V>) -> Result<(), aya::maps::MapError> {
    let keys: Vec<Key<K>> = trie.keys().collect::<Result<_, _>>()?;
    for k in keys {
        match trie.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
