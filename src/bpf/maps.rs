//! Typed access to the datapath's maps: settings, the double-buffered rule maps,
//! the flow table and its statistics.

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};

use super::abi::{Candidates, ClientKeyData, Flow, FlowKey, FlowStats, Rule, Settings};
use super::{BpfError, Datapath};

const MAP_SETTINGS: &str = "settings";
const MAP_FLOWS: &str = "flows";
const MAP_FLOW_STATS: &str = "flow_stats";

/// The rule maps' contents for one rule set, as the rule compiler produces them.
pub struct RuleMaps<'a> {
    pub rules: &'a [Rule],
    pub destinations: &'a [(u32, [u8; 16], Candidates)],
    pub clients: &'a [(u32, ClientKeyData)],
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> BpfError {
    move |source| BpfError::Map { map, source }
}

impl Datapath {
    fn map_data(&self, name: &'static str) -> Result<&aya::maps::Map, BpfError> {
        self.ebpf.map(name).ok_or(BpfError::Missing { kind: "map", name })
    }

    fn map_data_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, BpfError> {
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
        // The flip. n_rules only gates "are there any rules"; a packet that reads a
        // torn value sees either set's answer for its single lookup.
        self.write_settings(Settings {
            rule_set: idle,
            enforce: enforce as u32,
            n_rules: rules.rules.len() as u32,
            pad: 0,
        })
    }

    /// Every live flow. The table changes while it is read: a flow created or
    /// evicted meanwhile may be missing, none appears twice.
    pub fn flows(&self) -> Result<Vec<(FlowKey, Flow)>, BpfError> {
        let map: HashMap<&MapData, FlowKey, Flow> =
            HashMap::try_from(self.map_data(MAP_FLOWS)?).map_err(map_err(MAP_FLOWS))?;
        let mut out = Vec::new();
        for entry in map.iter() {
            match entry {
                Ok(kv) => out.push(kv),
                // Evicted between the key walk and the lookup: not an error.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(MAP_FLOWS)(e)),
            }
        }
        Ok(out)
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
