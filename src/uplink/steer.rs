//! Where new flows go: the per-class steering entries the datapath reads
//! (`struct il_steer`), computed from the config and the uplinks' health.
//!
//! For each class (and for unclassified flows, class id 0), the preference list
//! is the class's `uplinks` (or `[routing] default_uplinks`, by default the
//! unmetered uplinks by priority, then the metered ones). New flows go to the
//! first usable uplink of the list; the usable uplinks of the list that share its
//! priority (and its being metered or not) take new flows by weight.
//! An empty list lets the main routing table decide; a list with no usable uplink
//! holds the class's flows rather than leak them to a link it may not use (a bulk
//! class listing only the fiber never spills onto the metered LTE).

use crate::bpf::abi::{Steer, MAX_UPLINKS, STEER_SLOTS};
use crate::config::Config;

/// The steering entries for every class id, 0 (unclassified) first; `usable[i]`
/// says whether uplink `i` (config order) may take new flows now.
pub fn steering(config: &Config, usable: &[bool]) -> Vec<(u32, Steer)> {
    let mut out = Vec::with_capacity(config.classes.len() + 1);
    out.push((0, entry(config, &default_list(config), usable)));
    for (i, class) in config.classes.iter().enumerate() {
        let list: Vec<usize> = class
            .uplinks
            .iter()
            .filter_map(|name| config.uplinks.iter().position(|u| &u.name == name))
            .collect();
        out.push((i as u32 + 1, entry(config, &list, usable)));
    }
    out
}

/// The preference list of unclassified flows (uplink indexes).
pub fn default_list(config: &Config) -> Vec<usize> {
    match &config.routing.default_uplinks {
        Some(names) => names
            .iter()
            .filter_map(|name| config.uplinks.iter().position(|u| &u.name == name))
            .collect(),
        None => {
            let mut all: Vec<usize> = (0..config.uplinks.len()).collect();
            // Unmetered first, then by priority; stable, so equal ones keep
            // config order. A metered link takes unclassified flows only when no
            // unmetered one is up (TLS flows are unclassified at their SYN, so
            // they need somewhere to go while the primary is down).
            all.sort_by_key(|&i| (config.uplinks[i].metered, config.uplinks[i].priority));
            all
        }
    }
}

/// The steering entry for one preference list.
fn entry(config: &Config, list: &[usize], usable: &[bool]) -> Steer {
    let list: Vec<usize> = list.iter().copied().filter(|&i| i < MAX_UPLINKS).collect();
    let mut steer = Steer::default();
    if list.is_empty() {
        return steer;
    }
    for &i in &list {
        steer.allowed |= 1 << (i + 1);
    }
    let healthy: Vec<usize> = list.iter().copied().filter(|&i| usable.get(i).copied().unwrap_or(false)).collect();
    let Some(&first) = healthy.first() else {
        steer.deny = 1;
        return steer;
    };
    // Sharing only among equals: same priority, and metered with metered.
    let (priority, metered) = (config.uplinks[first].priority, config.uplinks[first].metered);
    let group: Vec<usize> = healthy
        .into_iter()
        .filter(|&i| config.uplinks[i].priority == priority && config.uplinks[i].metered == metered)
        .collect();
    let weights: Vec<u32> = group.iter().map(|&i| config.uplinks[i].weight.max(1)).collect();
    let mut at = 0;
    for (&i, slots) in group.iter().zip(share_slots(&weights)) {
        for _ in 0..slots {
            steer.slot[at] = i as u8 + 1;
            at += 1;
        }
    }
    steer.n = group.len() as u8;
    steer
}

/// Slots per weight, summing to STEER_SLOTS: every member at least one slot, the
/// rest by largest remainder. With 16 slots a share is exact to 1/16.
fn share_slots(weights: &[u32]) -> Vec<usize> {
    let n = weights.len().min(STEER_SLOTS);
    let weights = &weights[..n];
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let spare = (STEER_SLOTS - n) as u64;
    // Each member has one slot; the spare ones go by weight.
    let exact: Vec<(u64, u64)> = weights
        .iter()
        .map(|&w| {
            let scaled = u64::from(w) * spare;
            (scaled / total, scaled % total)
        })
        .collect();
    let mut slots: Vec<usize> = exact.iter().map(|&(q, _)| 1 + q as usize).collect();
    let mut left = STEER_SLOTS - slots.iter().sum::<usize>();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for &i in order.iter().cycle() {
        if left == 0 {
            break;
        }
        slots[i] += 1;
        left -= 1;
    }
    slots
}

/// The uplink (index) a steering entry sends every new flow to, when it has a
/// single choice; None when flows are shared, held or left to the main table.
pub fn single_choice(steer: &Steer) -> Option<usize> {
    (steer.n == 1).then(|| usize::from(steer.slot[0]) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        crate::config::parse(text, "t.toml").expect("test config is valid")
    }

    const THREE: &str = r#"
[lan]
interfaces = ["lan0"]
[[uplinks]]
name = "fiber"
interface = "wan0"
priority = 10
weight = 3
[[uplinks]]
name = "cable"
interface = "wan1"
priority = 10
[[uplinks]]
name = "lte"
interface = "wwan0"
priority = 20
metered = true
[[classes]]
name = "interactive"
dscp = "AF41"
uplinks = ["fiber", "cable", "lte"]
[[classes]]
name = "bulk"
dscp = "LE"
uplinks = ["fiber"]
[[classes]]
name = "plain"
dscp = 0
[[classes]]
name = "lte-first"
dscp = 0
uplinks = ["lte", "fiber"]
"#;

    fn slots_of(s: &Steer) -> [usize; 4] {
        let mut count = [0; 4];
        for &u in &s.slot {
            count[usize::from(u)] += 1;
        }
        count
    }

    #[test]
    fn equal_priorities_share_by_weight_and_others_wait() {
        let c = config(THREE);
        let s = steering(&c, &[true, true, true]);
        assert_eq!(s.len(), 5, "class 0 and four classes");
        let interactive = s[1].1;
        assert_eq!(interactive.n, 2);
        assert_eq!(interactive.allowed, 0b1110);
        // fiber weight 3, cable 1: 12 and 4 of 16 slots; lte (priority 20) none.
        assert_eq!(slots_of(&interactive), [0, 12, 4, 0]);
        // Default policy: every uplink by priority, so the same group.
        assert_eq!(slots_of(&s[0].1), [0, 12, 4, 0]);
        // Class order beats priority: lte-first sends everything to lte.
        assert_eq!(single_choice(&s[4].1), Some(2));
    }

    #[test]
    fn a_down_uplink_leaves_the_group_and_the_next_priority_takes_over() {
        let c = config(THREE);
        let s = steering(&c, &[false, true, true]);
        assert_eq!(single_choice(&s[1].1), Some(1), "cable alone");
        let s = steering(&c, &[false, false, true]);
        assert_eq!(single_choice(&s[1].1), Some(2), "then lte");
        assert_eq!(single_choice(&s[4].1), Some(2));
        let s = steering(&c, &[true, true, false]);
        assert_eq!(single_choice(&s[4].1), Some(0), "lte-first falls back to fiber");
    }

    #[test]
    fn a_class_with_no_usable_uplink_is_held_and_an_empty_list_uses_main() {
        let c = config(THREE);
        let s = steering(&c, &[false, true, true]);
        let bulk = s[2].1;
        assert_eq!((bulk.n, bulk.deny, bulk.allowed), (0, 1, 0b10), "bulk never spills to lte");
        let plain = s[3].1;
        assert_eq!(plain, Steer::default(), "no uplinks listed: the main table decides");
    }

    #[test]
    fn unclassified_flows_keep_off_a_metered_link_of_equal_priority() {
        let text = THREE.replace("priority = 20\nmetered = true", "priority = 10\nmetered = true");
        let s = steering(&config(&text), &[true, true, true]);
        assert_eq!(slots_of(&s[0].1), [0, 12, 4, 0], "lte shares nothing while the unmetered are up");
        let s = steering(&config(&text), &[false, false, true]);
        assert_eq!(single_choice(&s[0].1), Some(2), "lte is the last resort");
    }

    #[test]
    fn default_uplinks_from_routing() {
        let text = format!("{THREE}[routing]\ndefault_uplinks = [\"lte\"]\n");
        let s = steering(&config(&text), &[true, true, true]);
        assert_eq!(single_choice(&s[0].1), Some(2));
        let text = format!("{THREE}[routing]\ndefault_uplinks = []\n");
        assert_eq!(steering(&config(&text), &[true, true, true])[0].1, Steer::default());
    }

    #[test]
    fn shares_sum_to_the_slots_and_nobody_starves() {
        for weights in [vec![1], vec![1, 1], vec![1, 100], vec![100, 1, 1], vec![7, 5, 3, 2, 1]] {
            let slots = share_slots(&weights);
            assert_eq!(slots.iter().sum::<usize>(), STEER_SLOTS, "weights {weights:?} gave {slots:?}");
            assert!(slots.iter().all(|&s| s >= 1), "weights {weights:?} gave {slots:?}");
            // Heavier never gets fewer slots than lighter.
            for a in 0..weights.len() {
                for b in 0..weights.len() {
                    if weights[a] > weights[b] {
                        assert!(slots[a] >= slots[b], "weights {weights:?} gave {slots:?}");
                    }
                }
            }
        }
        assert_eq!(share_slots(&[1, 1]), vec![8, 8]);
        assert_eq!(share_slots(&[3, 1]), vec![12, 4]);
    }
}
