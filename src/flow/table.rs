//! The flow tracker's map: flow key → value, open addressing with linear
//! probing and backward-shift deletion.
//!
//! Why not `std::collections::HashMap`: under churn (flows made and ended all
//! day) its removals leave tombstones that use up its room to grow; when the
//! room is gone and more than half the table is in use, it doubles, whatever
//! the number of flows. Measured in the soak benchmark: 100k live flows, after
//! two rounds of 100k flows made and ended, the map went from 131,072 to
//! 262,144 buckets (+20 MB resident, 40 MB more at the moment of the copy).
//! Backward-shift deletion leaves no tombstones: the table's size follows the
//! number of live flows only, it grows at 80 % (by doubling) and shrinks when
//! asked to.
//!
//! Keys are hashed with the standard library's `RandomState` (SipHash, random
//! keys): LAN clients choose their ports and addresses, and must not be able to
//! pile flows into one probe sequence.
//!
//! [`Tracked`] keeps IPv4 flows under a 14-byte key instead of the 40-byte
//! IPv4-mapped `FlowKey` (the key comes back byte for byte).

use std::hash::{BuildHasher, Hash};

use crate::bpf::abi::FlowKey;

/// Smallest table allocated.
const MIN_SLOTS: usize = 1024;

pub struct FlowMap<K, V> {
    /// Per slot: 32 bits of the key's hash with the lowest set, 0 when empty.
    /// The slot a key belongs in (its home) comes from the other 31 bits.
    hashes: Vec<u32>,
    slots: Vec<(K, V)>,
    len: usize,
    state: std::collections::hash_map::RandomState,
}

impl<K, V> Default for FlowMap<K, V> {
    fn default() -> Self {
        FlowMap { hashes: Vec::new(), slots: Vec::new(), len: 0, state: Default::default() }
    }
}

impl<K: Copy + Eq + Hash + Default, V: Copy + Default> FlowMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (the table holds up to 80 % of them before it grows).
    pub fn slots(&self) -> usize {
        self.hashes.len()
    }

    fn hash(&self, key: &K) -> u32 {
        self.state.hash_one(key) as u32 | 1
    }

    fn home(&self, hash: u32) -> usize {
        (hash >> 1) as usize & (self.hashes.len() - 1)
    }

    fn find(&self, key: &K) -> Option<usize> {
        self.find_hashed(self.hash(key), key)
    }

    fn find_hashed(&self, h: u32, key: &K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let mask = self.hashes.len() - 1;
        let mut i = self.home(h);
        loop {
            match self.hashes[i] {
                0 => return None,
                x if x == h && self.slots[i].0 == *key => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.find(key).map(|i| &self.slots[i].1)
    }

    /// The value of `key`, inserted as `make()` if absent.
    pub fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> &mut V {
        self.get_or_insert_hashed(self.hash(key), key, make)
    }

    /// As [`FlowMap::get_or_insert_with`], with the key's hash from [`FlowMap::hash`].
    fn get_or_insert_hashed(&mut self, h: u32, key: &K, make: impl FnOnce() -> V) -> &mut V {
        let i = match self.find_hashed(h, key) {
            Some(i) => i,
            None => {
                if (self.len + 1) * 5 > self.hashes.len() * 4 {
                    self.resize((self.hashes.len() * 2).max(MIN_SLOTS));
                }
                self.place(h, *key, make())
            }
        };
        &mut self.slots[i].1
    }

    /// Asks the CPU to start loading the cache lines a lookup of the key with
    /// hash `h` reads first (its home slot's hash and entry). A scan looks up
    /// keys in the kernel table's order, which is random for this table: each
    /// lookup would otherwise wait for two or three cache misses in turn.
    fn prefetch(&self, h: u32) {
        if self.hashes.is_empty() {
            return;
        }
        let i = self.home(h);
        prefetch_read(&self.hashes[i] as *const u32 as *const u8);
        let slot = &self.slots[i] as *const (K, V) as *const u8;
        prefetch_read(slot);
        // An entry spans two or three lines; the key and the counters the scan
        // compares sit in its first 128 bytes. Only an address is formed
        // (wrapping_add, never dereferenced): the last slot's may lie past the
        // table, which a prefetch does not mind.
        if std::mem::size_of::<(K, V)>() > 64 {
            prefetch_read(slot.wrapping_add(64));
        }
    }

    /// Puts an absent key in the first free slot of its probe sequence.
    fn place(&mut self, h: u32, key: K, value: V) -> usize {
        let mask = self.hashes.len() - 1;
        let mut i = self.home(h);
        while self.hashes[i] != 0 {
            i = (i + 1) & mask;
        }
        self.hashes[i] = h;
        self.slots[i] = (key, value);
        self.len += 1;
        i
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key)?;
        let value = self.slots[i].1;
        let mask = self.hashes.len() - 1;
        // Backward shift: move later entries of the run into the hole when the
        // hole lies between their home slot and where they are.
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while self.hashes[j] != 0 {
            let home = self.home(self.hashes[j]);
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.hashes[hole] = self.hashes[j];
                self.slots[hole] = self.slots[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.hashes[hole] = 0;
        self.slots[hole] = Default::default();
        self.len -= 1;
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.hashes.iter().zip(&self.slots).filter(|(h, _)| **h != 0).map(|(_, (k, v))| (k, v))
    }

    /// Makes the table as small as `len` entries allow (at least
    /// `min_entries`), giving its memory back.
    pub fn shrink_to(&mut self, min_entries: usize) {
        let want = slots_for(self.len.max(min_entries));
        if want < self.hashes.len() {
            self.resize(want);
        }
    }

    pub fn clear(&mut self) {
        *self = FlowMap { state: std::mem::take(&mut self.state), ..FlowMap::default() };
    }

    fn resize(&mut self, slots: usize) {
        let old_hashes = std::mem::replace(&mut self.hashes, vec![0; slots]);
        let old_slots = std::mem::replace(&mut self.slots, vec![Default::default(); slots]);
        self.len = 0;
        for (h, (k, v)) in old_hashes.into_iter().zip(old_slots) {
            if h != 0 {
                self.place(h, k, v);
            }
        }
    }
}

/// An IPv4 flow's key: the 5-tuple without the mapped prefix (14 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct V4Key {
    client: [u8; 4],
    remote: [u8; 4],
    client_port: u16,
    remote_port: u16,
    proto: u8,
}

const MAPPED: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl V4Key {
    /// The short form of an IPv4 key that [`V4Key::key`] gives back exactly.
    fn of(k: &FlowKey) -> Option<V4Key> {
        (k.family == 4 && k.pad == 0 && k.client[..12] == MAPPED && k.remote[..12] == MAPPED).then(|| V4Key {
            client: k.client[12..].try_into().expect("4 bytes"),
            remote: k.remote[12..].try_into().expect("4 bytes"),
            client_port: k.client_port,
            remote_port: k.remote_port,
            proto: k.proto,
        })
    }

    fn key(&self) -> FlowKey {
        let mapped = |a: [u8; 4]| {
            let mut b = [0u8; 16];
            b[..12].copy_from_slice(&MAPPED);
            b[12..].copy_from_slice(&a);
            b
        };
        FlowKey {
            client: mapped(self.client),
            remote: mapped(self.remote),
            client_port: self.client_port,
            remote_port: self.remote_port,
            proto: self.proto,
            family: 4,
            pad: 0,
        }
    }
}

/// Flow key → value, IPv4 flows under their short key.
pub struct Tracked<V> {
    v4: FlowMap<V4Key, V>,
    other: FlowMap<FlowKey, V>,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked { v4: FlowMap::default(), other: FlowMap::default() }
    }
}

impl<V: Copy + Default> Tracked<V> {
    pub fn len(&self) -> usize {
        self.v4.len() + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &FlowKey) -> Option<&V> {
        match V4Key::of(key) {
            Some(k) => self.v4.get(&k),
            None => self.other.get(key),
        }
    }

    pub fn get_or_insert_with(&mut self, key: &FlowKey, make: impl FnOnce() -> V) -> &mut V {
        match V4Key::of(key) {
            Some(k) => self.v4.get_or_insert_with(&k, make),
            None => self.other.get_or_insert_with(key, make),
        }
    }

    /// The key's hash, for [`Tracked::prefetch`] and [`Tracked::get_or_insert_hashed`].
    pub fn hashed(&self, key: &FlowKey) -> Hashed {
        match V4Key::of(key) {
            Some(k) => Hashed { hash: self.v4.hash(&k), v4: Some(k) },
            None => Hashed { hash: self.other.hash(key), v4: None },
        }
    }

    /// Starts loading what a lookup of the key behind `h` will read; a scan
    /// issues it some keys ahead of the lookup.
    pub fn prefetch(&self, h: &Hashed) {
        match h.v4 {
            Some(_) => self.v4.prefetch(h.hash),
            None => self.other.prefetch(h.hash),
        }
    }

    /// [`Tracked::get_or_insert_with`] for `key`, whose hash `h` is from [`Tracked::hashed`].
    pub fn get_or_insert_hashed(&mut self, key: &FlowKey, h: &Hashed, make: impl FnOnce() -> V) -> &mut V {
        match &h.v4 {
            Some(k) => self.v4.get_or_insert_hashed(h.hash, k, make),
            None => self.other.get_or_insert_hashed(h.hash, key, make),
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Option<V> {
        match V4Key::of(key) {
            Some(k) => self.v4.remove(&k),
            None => self.other.remove(key),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (FlowKey, &V)> {
        self.v4.iter().map(|(k, v)| (k.key(), v)).chain(self.other.iter().map(|(k, v)| (*k, v)))
    }

    /// Keys of the entries for which `f` holds, at most `n`.
    pub fn keys_where(&self, n: usize, mut f: impl FnMut(&V) -> bool) -> Vec<FlowKey> {
        self.iter().filter(|(_, v)| f(v)).map(|(k, _)| k).take(n).collect()
    }

    /// Gives memory back from a map at most an eighth full (shrunk to twice
    /// what it holds). True when that applies to either map.
    pub fn mostly_empty(&self) -> bool {
        let sparse = |len: usize, slots: usize| slots > MIN_SLOTS && len <= slots / 8;
        sparse(self.v4.len(), self.v4.slots()) || sparse(self.other.len(), self.other.slots())
    }

    pub fn shrink(&mut self) {
        self.v4.shrink_to(self.v4.len() * 2);
        self.other.shrink_to(self.other.len() * 2);
    }

    pub fn clear(&mut self) {
        self.v4.clear();
        self.other.clear();
    }
}

/// A hint to load the line holding address `p` into the caches; no effect on
/// what the program computes. `p` is never dereferenced: any address will do.
#[inline(always)]
fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, reads nothing into the
    // program and writes nothing, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: PRFM is a hint: it never faults and writes nothing.
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// A [`FlowKey`]'s hash in the map of [`Tracked`] that holds it, computed once
/// for a prefetch and the lookup after it.
#[derive(Clone, Copy)]
pub struct Hashed {
    hash: u32,
    v4: Option<V4Key>,
}

/// Slots for `entries` at most 80 % full: a power of two, at least MIN_SLOTS.
fn slots_for(entries: usize) -> usize {
    (entries * 5 / 4 + 1).next_power_of_two().max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        let mut k = FlowKey::default();
        k.client[12..].copy_from_slice(&i.to_be_bytes());
        k.client_port = (i as u16).to_be();
        k.proto = 17;
        k.family = 4;
        k
    }

    #[test]
    fn behaves_as_a_map_under_churn_and_keeps_its_size() {
        let mut m: FlowMap<FlowKey, u64> = FlowMap::default();
        let mut reference = std::collections::HashMap::new();
        // Ten rounds of 50,000 flows made and ended, 10,000 kept live throughout.
        let mut next = 0u32;
        for round in 0..10 {
            for _ in 0..50_000 {
                next += 1;
                *m.get_or_insert_with(&key(next), || 0) += u64::from(next);
                reference.insert(key(next), u64::from(next));
            }
            let old: Vec<FlowKey> = reference.keys().copied().filter(|k| (u32::from_be_bytes(k.client[12..].try_into().unwrap())) + 10_000 <= next).collect();
            for k in old {
                assert_eq!(m.remove(&k), reference.remove(&k), "round {round}");
            }
            assert_eq!(m.len(), reference.len());
            for (k, v) in &reference {
                assert_eq!(m.get(k), Some(v));
            }
            assert_eq!(m.iter().count(), reference.len());
            assert!(m.get(&key(next + 1)).is_none());
            // 50,000 live at the first peak fit 65,536 slots at 80 %; 60,000 from
            // the second on need 131,072, and churn never asks for more.
            assert_eq!(m.slots(), if round == 0 { 65_536 } else { 131_072 }, "round {round}");
        }
        m.shrink_to(0);
        assert_eq!(m.slots(), 16_384, "10,000 entries at most 80 % full");
        for (k, v) in &reference {
            assert_eq!(m.get(k), Some(v));
        }
        m.clear();
        assert_eq!((m.len(), m.slots()), (0, 0));
    }

    #[test]
    fn lookups_by_precomputed_hash_find_what_plain_lookups_find() {
        let mut t: Tracked<u32> = Tracked::default();
        let v6 = |i: u32| FlowKey { client: crate::bpf::abi::addr_bytes(format!("fd77::{i:x}").parse().unwrap()), family: 6, ..key(i) };
        // An empty map: nothing to prefetch, and no panic.
        t.prefetch(&t.hashed(&key(1)));
        for i in 0..5_000 {
            for k in [key(i), v6(i)] {
                let h = t.hashed(&k);
                t.prefetch(&h);
                *t.get_or_insert_hashed(&k, &h, || 0) += i + 1;
            }
        }
        assert_eq!(t.len(), 10_000);
        for i in 0..5_000 {
            assert_eq!(t.get(&key(i)), Some(&(i + 1)));
            assert_eq!(t.get(&v6(i)), Some(&(i + 1)));
            // The hashed path finds the entry the plain path made.
            let h = t.hashed(&key(i));
            assert_eq!(*t.get_or_insert_hashed(&key(i), &h, || 99), i + 1);
        }
        assert_eq!(t.len(), 10_000);
    }

    #[test]
    fn ipv4_keys_come_back_byte_for_byte_and_others_stay_whole() {
        let v4 = FlowKey {
            client: crate::bpf::abi::addr_bytes("10.0.0.2".parse().unwrap()),
            remote: crate::bpf::abi::addr_bytes("192.0.2.10".parse().unwrap()),
            client_port: 40000u16.to_be(),
            remote_port: 443u16.to_be(),
            proto: 6,
            family: 4,
            pad: 0,
        };
        let v6 = FlowKey { client: crate::bpf::abi::addr_bytes("fd77::2".parse().unwrap()), family: 6, ..v4 };
        // A family-4 key whose addresses are not IPv4-mapped stays whole.
        let odd = FlowKey { client: [1; 16], ..v4 };
        let mut t: Tracked<u32> = Tracked::default();
        for (i, k) in [v4, v6, odd].iter().enumerate() {
            *t.get_or_insert_with(k, || 0) = i as u32 + 1;
        }
        assert_eq!((t.v4.len(), t.other.len()), (1, 2));
        let mut all: Vec<(FlowKey, u32)> = t.iter().map(|(k, v)| (k, *v)).collect();
        all.sort_by_key(|(_, v)| *v);
        assert_eq!(all, vec![(v4, 1), (v6, 2), (odd, 3)]);
        assert_eq!(t.keys_where(10, |v| *v == 1), vec![v4]);
        assert_eq!((t.remove(&v4), t.get(&v4), t.get(&v6)), (Some(1), None, Some(&2)));
        assert_eq!(std::mem::size_of::<V4Key>(), 14);
    }
}
