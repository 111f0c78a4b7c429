//! The address book of DNS learning: which address belongs to which provider,
//! until when. An entry lives for the answer's TTL plus a grace period (clients
//! and resolvers cache longer than they should), and for as long as a live flow
//! still uses the address. The daemon mirrors it into the datapath's
//! `addr_providers` map.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Kept past the TTL: stub resolvers and browsers reuse answers beyond it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    provider: u16,
    expires: Instant,
}

#[derive(Debug, Default)]
pub struct AddressBook {
    entries: HashMap<IpAddr, Entry>,
    grace: Duration,
}

/// What a `learn` changed, so the caller writes the datapath only when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    New,
    /// Another provider's name now resolves to this address (shared CDN address):
    /// the latest answer wins, as it is the one the client will connect with.
    Changed,
    Refreshed,
}

impl AddressBook {
    pub fn new(grace: Duration) -> Self {
        AddressBook { entries: HashMap::new(), grace }
    }

    pub fn learn(&mut self, addr: IpAddr, provider: u16, ttl: u32, now: Instant) -> Learned {
        let expires = now + Duration::from_secs(u64::from(ttl)) + self.grace;
        match self.entries.get_mut(&addr) {
            Some(e) if e.provider == provider => {
                e.expires = e.expires.max(expires);
                Learned::Refreshed
            }
            Some(e) => {
                *e = Entry { provider, expires };
                Learned::Changed
            }
            None => {
                self.entries.insert(addr, Entry { provider, expires });
                Learned::New
            }
        }
    }

    pub fn provider(&self, addr: &IpAddr) -> Option<u16> {
        self.entries.get(addr).map(|e| e.provider)
    }

    /// Remove and return the entries past their time that no live flow uses.
    pub fn expire(&mut self, now: Instant, in_use: &HashSet<IpAddr>) -> Vec<IpAddr> {
        let gone: Vec<IpAddr> = self
            .entries
            .iter()
            .filter(|(addr, e)| e.expires <= now && !in_use.contains(addr))
            .map(|(addr, _)| *addr)
            .collect();
        for a in &gone {
            self.entries.remove(a);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_for_ttl_plus_grace_and_while_in_use() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(Duration::from_secs(10));
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(book.learn(a, 1, 30, t0), Learned::New);
        assert_eq!(book.learn(b, 2, 5, t0), Learned::New);
        assert_eq!(book.learn(a, 1, 1, t0), Learned::Refreshed, "a shorter TTL does not shorten the entry");
        assert!(book.expire(t0 + Duration::from_secs(14), &HashSet::new()).is_empty());
        assert_eq!(book.expire(t0 + Duration::from_secs(15), &HashSet::new()), vec![b]);
        let in_use: HashSet<IpAddr> = [a].into();
        assert!(book.expire(t0 + Duration::from_secs(100), &in_use).is_empty(), "kept while a flow uses it");
        assert_eq!(book.expire(t0 + Duration::from_secs(100), &HashSet::new()), vec![a]);
        assert!(book.is_empty());
    }

    #[test]
    fn a_shared_address_follows_the_latest_answer() {
        let t0 = Instant::now();
        let mut book = AddressBook::new(DEFAULT_GRACE);
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        book.learn(a, 1, 30, t0);
        assert_eq!(book.learn(a, 2, 30, t0), Learned::Changed);
        assert_eq!(book.provider(&a), Some(2));
    }
}
