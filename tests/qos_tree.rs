//! The queues on a real kernel: the HTB trees `qos::Qos` builds through rtnetlink,
//! read back with iproute2's `tc`, on a veth pair inside a namespace each test
//! makes (and removes when it ends or panics: the `Netns` guard; deleting the
//! namespace destroys the veths and every qdisc on them).
//!
//! Privileged: each test returns early (or fails, under INFERLANE_REQUIRE_PRIVILEGED=1)
//! when not run as root.

use std::collections::BTreeMap;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use inferlane::config::{Config, Lan, Rate, Uplink};
use inferlane::lab::{self, Netns};
use inferlane::qos::tree::{HtbTree, Lane, ROOT_MAJOR};
use inferlane::qos::{Links, Qos, QosError};

const WAN: &str = "wan0";
const LAN: &str = "lan0";
/// A neighbour on the WAN side, with a static ARP entry, so datagrams to it leave
/// through wan0's qdisc without anyone answering.
const WAN_ADDR: &str = "10.77.0.1/24";
const WAN_PEER: &str = "10.77.0.2";

fn rate(s: &str) -> Rate {
    s.parse().unwrap()
}

fn config(egress: &str, ingress: Option<&str>) -> Config {
    Config {
        lan: Lan { interfaces: vec![LAN.into()] },
        uplinks: vec![Uplink {
            name: "fiber".into(),
            interface: WAN.into(),
            priority: 10,
            metered: false,
            weight: 1,
            gateways: Vec::new(),
            egress_rate: Some(rate(egress)),
            ingress_rate: ingress.map(rate),
            health: None,
        }],
        ..Config::default()
    }
}

/// A namespace named after the test and the pid, with wan0 and lan0 (a veth pair,
/// both ends here), both up.
fn scenery(tag: &str) -> Netns {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!("ilq{}{}{}", std::process::id(), tag, SEQ.fetch_add(1, Ordering::Relaxed));
    let ns = Netns::add(&name).unwrap_or_else(|e| panic!("expected to create namespace {name}: {e}"));
    // No IPv6: its neighbour discovery and MLD would add packets to the counts.
    ns.set_sysctls(&[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")])
        .unwrap_or_else(|e| panic!("expected to disable IPv6 in {name}: {e}"));
    ns.ip_batch(&format!(
        "link add {WAN} type veth peer name {LAN}\n\
         link set {WAN} up\n\
         link set {LAN} up\n\
         addr add {WAN_ADDR} dev {WAN}\n\
         neigh add {WAN_PEER} lladdr 02:00:00:00:77:02 dev {WAN} nud permanent\n"
    ))
    .unwrap_or_else(|e| panic!("expected the veth scenery in {name}: {e}"));
    ns
}

/// Runs `f` on a thread inside the namespace (the Qos calls work in the calling
/// thread's namespace).
fn inside<T: Send>(ns: &Netns, what: &str, f: impl FnOnce() -> Result<T, QosError> + Send) -> Result<T, QosError> {
    ns.run_in(what, || Ok(f()))
        .unwrap_or_else(|e| panic!("expected to enter {} for {what}: {e}", ns.name()))
}

fn apply(ns: &Netns, config: &Config) -> Result<Qos, QosError> {
    inside(ns, "apply", || Qos::apply(config, &Links::resolve(config)?))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Qdisc {
    kind: String,
    handle: String,
    parent: Option<String>,
    limit: Option<u64>,
    default: Option<String>,
}

fn qdiscs(ns: &Netns, dev: &str) -> Vec<Qdisc> {
    let out = ns.exec("tc", &["-j", "qdisc", "show", "dev", dev]).expect("tc -j qdisc show");
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc -j qdisc show gave {out:?}: {e}"));
    json.iter()
        .map(|q| Qdisc {
            kind: q["kind"].as_str().unwrap_or_default().to_owned(),
            handle: q["handle"].as_str().unwrap_or_default().to_owned(),
            parent: q["parent"].as_str().map(str::to_owned),
            limit: q["options"]["limit"].as_u64(),
            default: q["options"]["default"].as_str().map(str::to_owned),
        })
        .collect()
}

/// One `tc -s -d class show` entry. iproute2 6.1 prints HTB classes as text even
/// with -j, so this reads the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Class {
    parent: String,
    leaf: Option<String>,
    prio: Option<u32>,
    quantum: Option<u32>,
    rate_bits: u64,
    ceil_bits: u64,
    burst: u64,
    cburst: u64,
    packets: u64,
}

fn tc_rate(s: &str) -> u64 {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        "Tbit" => 1e12,
        _ => panic!("unexpected tc rate {s:?}"),
    };
    (number.parse::<f64>().unwrap_or_else(|_| panic!("tc rate {s:?}")) * scale).round() as u64
}

/// "5000b/1" or "12500b" → bytes.
fn tc_size(s: &str) -> u64 {
    let s = s.split('/').next().unwrap();
    let (number, scale) = if let Some(n) = s.strip_suffix("Kb") {
        (n, 1024.0)
    } else if let Some(n) = s.strip_suffix("Mb") {
        (n, 1024.0 * 1024.0)
    } else {
        (s.strip_suffix('b').unwrap_or_else(|| panic!("tc size {s:?}")), 1.0)
    };
    (number.parse::<f64>().unwrap_or_else(|_| panic!("tc size {s:?}")) * scale).round() as u64
}

fn classes(ns: &Netns, dev: &str) -> BTreeMap<String, Class> {
    let out = ns.exec("tc", &["-s", "-d", "class", "show", "dev", dev]).expect("tc class show");
    let mut map = BTreeMap::new();
    let mut current: Option<(String, Class)> = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["class", "htb", handle, rest @ ..] => {
                if let Some((h, c)) = current.take() {
                    map.insert(h, c);
                }
                let mut class = Class::default();
                let mut it = rest.iter();
                while let Some(&key) = it.next() {
                    if key == "root" {
                        class.parent = "root".into();
                        continue;
                    }
                    let Some(&value) = it.next() else { break };
                    match key {
                        "parent" => class.parent = value.into(),
                        "leaf" => class.leaf = Some(value.into()),
                        "prio" => class.prio = value.parse().ok(),
                        "quantum" => class.quantum = value.parse().ok(),
                        "rate" => class.rate_bits = tc_rate(value),
                        "ceil" => class.ceil_bits = tc_rate(value),
                        "burst" => class.burst = tc_size(value),
                        "cburst" => class.cburst = tc_size(value),
                        // "linklayer ethernet", "mpu 0b", "level 0", ...
                        _ => {}
                    }
                }
                current = Some((handle.to_string(), class));
            }
            ["Sent", _bytes, "bytes", packets, "pkt", ..] => {
                if let Some((_, c)) = current.as_mut() {
                    c.packets = packets.parse().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    if let Some((h, c)) = current {
        map.insert(h, c);
    }
    map
}

fn classid(minor: u16) -> String {
    format!("{ROOT_MAJOR:x}:{minor:x}")
}

/// The kernel's tree on `dev` is `tree`, with `leaf_kind` leaves. Rates exactly;
/// bursts within 2 % (the kernel keeps them as scheduler ticks, tc converts back).
fn assert_tree(ns: &Netns, dev: &str, tree: &HtbTree, leaf_kind: &str) {
    let qd = qdiscs(ns, dev);
    let root = qd.iter().find(|q| q.parent.is_none()).unwrap_or_else(|| panic!("{dev}: no root qdisc in {qd:?}"));
    assert_eq!(
        (root.kind.as_str(), root.handle.as_str(), root.default.as_deref()),
        ("htb", "1a1:", Some("0x40")),
        "{dev}: expected root htb 1a1: default 0x40, saw {root:?}"
    );
    let cl = classes(ns, dev);
    assert_eq!(cl.len(), 5, "{dev}: expected 5 classes, saw {cl:#?}");
    let parent = &cl[&classid(tree.parent.minor)];
    assert_eq!(parent.parent, "root");
    assert_eq!(parent.rate_bits, tree.link.bits_per_sec(), "{dev}: parent rate");
    assert_eq!(parent.ceil_bits, tree.link.bits_per_sec(), "{dev}: parent ceil");
    for leaf in &tree.leaves {
        let id = classid(leaf.class.minor);
        let c = cl.get(&id).unwrap_or_else(|| panic!("{dev}: expected class {id}, saw {cl:#?}"));
        let what = format!("{dev} class {id} ({})", leaf.lane.name());
        assert_eq!(c.parent, classid(tree.parent.minor), "{what}: parent");
        assert_eq!(c.rate_bits, leaf.class.rate * 8, "{what}: rate");
        assert_eq!(c.ceil_bits, tree.link.bits_per_sec(), "{what}: ceil is the link");
        assert_eq!(c.prio, Some(leaf.class.prio), "{what}: prio");
        assert_eq!(c.quantum, Some(leaf.class.quantum), "{what}: quantum");
        for (seen, want, name) in [(c.burst, leaf.class.burst, "burst"), (c.cburst, leaf.class.cburst, "cburst")] {
            assert!(seen.abs_diff(want) * 50 <= want, "{what}: {name} {seen}, expected about {want}");
        }
        let handle = format!("{:x}:", leaf.lane.leaf_major());
        assert_eq!(c.leaf.as_deref(), Some(handle.as_str()), "{what}: leaf qdisc");
        let q = qd
            .iter()
            .find(|q| q.handle == handle)
            .unwrap_or_else(|| panic!("{what}: expected leaf qdisc {handle} in {qd:?}"));
        assert_eq!(q.kind, leaf_kind, "{what}: leaf kind");
        assert_eq!(q.parent.as_deref(), Some(id.as_str()), "{what}: leaf parent");
        if leaf_kind == "bfifo" {
            assert_eq!(q.limit, Some(u64::from(leaf.fifo_limit)), "{what}: bfifo limit");
        }
    }
}

/// Nothing of ours on `dev`: the root is the kernel default again (handle 0:).
fn assert_clean(ns: &Netns, dev: &str) {
    let qd = qdiscs(ns, dev);
    assert!(
        qd.iter().all(|q| q.handle == "0:" || q.parent.as_deref().is_some_and(|p| p.starts_with("ffff"))),
        "{dev}: expected only the kernel default qdisc, saw {qd:?}"
    );
    assert!(classes(ns, dev).is_empty(), "{dev}: expected no classes");
}

/// Sends `n` UDP datagrams to the WAN neighbour with skb->priority `priority`
/// (SO_PRIORITY, as the eBPF programs would set it), from inside the namespace.
fn send(ns: &Netns, priority: u32, n: usize) {
    ns.run_in("send udp", || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let value = priority as libc::c_int;
        // SAFETY: a valid socket and a c_int option of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PRIORITY,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for _ in 0..n {
            socket.send_to(&[0u8; 200], (WAN_PEER, 9))?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("expected to send from {}: {e}", ns.name()));
}

/// Packets counted by each leaf qdisc (by handle): a qdisc made again starts at 0.
fn leaf_packets(ns: &Netns, dev: &str) -> BTreeMap<String, u64> {
    let out = ns.exec("tc", &["-s", "-j", "qdisc", "show", "dev", dev]).expect("tc -s -j qdisc show");
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc -s -j qdisc show gave {out:?}: {e}"));
    json.iter()
        .filter(|q| q["kind"] != "htb")
        .map(|q| (q["handle"].as_str().unwrap_or_default().to_owned(), q["packets"].as_u64().unwrap_or_default()))
        .collect()
}

fn packets(ns: &Netns, dev: &str) -> BTreeMap<String, u64> {
    classes(ns, dev).into_iter().map(|(h, c)| (h, c.packets)).collect()
}

const fn prio(minor: u16) -> u32 {
    ((ROOT_MAJOR as u32) << 16) | minor as u32
}

#[test]
fn tree_matches_the_config_classifies_by_priority_changes_in_place_and_is_removed() {
    if !lab::require_root_or_skip("tree_matches_the_config_classifies_by_priority_changes_in_place_and_is_removed") {
        return;
    }
    let ns = scenery("a");
    let cfg = config("100mbit", Some("50mbit"));
    let qos = apply(&ns, &cfg).unwrap_or_else(|e| panic!("expected the queues to apply: {e}"));
    let kind = qos.leaf_kind().expect("a leaf kind was chosen").kind();
    let status = qos.describe();
    eprintln!("{status}");
    assert_eq!(status.leaf_qdisc.as_deref(), Some(kind));
    assert_eq!(status.interfaces.len(), 2, "wan0 upload and lan0 download: {status:?}");
    assert_tree(&ns, WAN, &HtbTree::new(rate("100mbit")), kind);
    assert_tree(&ns, LAN, &HtbTree::new(rate("50mbit")), kind);
    // The documented shares, read from the kernel (not from our own tree).
    let cl = classes(&ns, WAN);
    let mbit = |lane: Lane| cl[&classid(lane.minor())].rate_bits / 1_000_000;
    assert_eq!(
        [mbit(Lane::High), mbit(Lane::Normal), mbit(Lane::Default), mbit(Lane::Low)],
        [40, 30, 20, 10],
        "100mbit split 40/30/20/10 %"
    );

    // skb->priority selects the class; priority 0 lands in the default class.
    let before = packets(&ns, WAN);
    send(&ns, prio(Lane::High.minor()), 5);
    send(&ns, prio(Lane::Low.minor()), 4);
    send(&ns, 0, 3);
    let after = packets(&ns, WAN);
    let delta = |lane: Lane| after[&classid(lane.minor())] - before[&classid(lane.minor())];
    assert_eq!(
        [delta(Lane::High), delta(Lane::Low), delta(Lane::Default), delta(Lane::Normal)],
        [5, 4, 3, 0],
        "packets per class (high, low, default, normal): before {before:?} after {after:?}"
    );

    // Applying the same config again (a restart adopting our tree) changes nothing.
    let dump = |ns: &Netns| (qdiscs(ns, WAN), qdiscs(ns, LAN), classes(ns, WAN), classes(ns, LAN));
    let first = dump(&ns);
    let leaves_before = leaf_packets(&ns, WAN);
    assert!(leaves_before.values().sum::<u64>() >= 12, "the leaves counted what was sent: {leaves_before:?}");
    let again = apply(&ns, &cfg).unwrap_or_else(|e| panic!("expected a second apply to adopt our tree: {e}"));
    assert_eq!(dump(&ns), first, "a second apply must leave the same tree");
    // The leaves themselves were kept, not deleted and made again (which would drop
    // what they hold): their counters carry on.
    assert_eq!(leaf_packets(&ns, WAN), leaves_before, "an adopted tree's leaf qdiscs must be kept");
    assert_eq!(again.leaf_kind().map(|k| k.kind()), Some(kind), "the adopted leaf kind");
    assert_eq!(again.describe().interfaces[0].replaced, "adopted");
    drop(again);

    // A reload with another egress rate changes the classes in place: the class
    // counters keep counting (a rebuilt tree would start from zero).
    let mut qos = qos;
    let changed = config("40mbit", Some("50mbit"));
    inside(&ns, "update", || qos.update(&changed, &Links::resolve(&changed)?))
        .unwrap_or_else(|e| panic!("expected the update to apply: {e}"));
    assert_tree(&ns, WAN, &HtbTree::new(rate("40mbit")), kind);
    assert_tree(&ns, LAN, &HtbTree::new(rate("50mbit")), kind);
    let kept = packets(&ns, WAN);
    assert!(
        after.iter().all(|(class, n)| kept[class] >= *n),
        "the update must keep the classes and their counters: before {after:?}, after {kept:?}"
    );

    // Failover: the download rate follows within a second.
    let start = Instant::now();
    inside(&ns, "set_download_rate", || qos.set_download_rate(Some(rate("20mbit")))).expect("download rate");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "expected the rate change within 1 s, took {took:?}");
    assert_tree(&ns, LAN, &HtbTree::new(rate("20mbit")), kind);
    assert_tree(&ns, WAN, &HtbTree::new(rate("40mbit")), kind);
    // An uplink without ingress_rate: no download shaping; and back.
    inside(&ns, "set_download_rate", || qos.set_download_rate(None)).expect("download rate none");
    assert_clean(&ns, LAN);
    inside(&ns, "set_download_rate", || qos.set_download_rate(Some(rate("30mbit")))).expect("download rate");
    assert_tree(&ns, LAN, &HtbTree::new(rate("30mbit")), kind);

    inside(&ns, "remove", || qos.remove().map_err(|mut e| e.remove(0))).unwrap_or_else(|e| panic!("expected remove: {e}"));
    assert_clean(&ns, WAN);
    assert_clean(&ns, LAN);
    ns.remove().expect("remove namespace");
}

#[test]
fn a_root_qdisc_we_did_not_create_is_never_replaced() {
    if !lab::require_root_or_skip("a_root_qdisc_we_did_not_create_is_never_replaced") {
        return;
    }
    let ns = scenery("b");
    ns.tc_batch(&format!("qdisc add dev {LAN} root handle 8001: tbf rate 1mbit burst 10kb latency 50ms\n"))
        .expect("foreign tbf");
    // wan0 is shaped first, then lan0 fails: the apply must undo wan0 as well.
    let err = apply(&ns, &config("100mbit", Some("50mbit"))).expect_err("apply must refuse a foreign root qdisc");
    match &err {
        QosError::ForeignRoot { iface, kind, .. } => assert_eq!((iface.as_str(), kind.as_str()), (LAN, "tbf"), "{err}"),
        other => panic!("expected ForeignRoot on {LAN}, got: {other}"),
    }
    let lan = qdiscs(&ns, LAN);
    assert!(
        lan.iter().any(|q| q.kind == "tbf" && q.handle == "8001:" && q.parent.is_none()),
        "the foreign tbf must still be the root of {LAN}: {lan:?}"
    );
    assert_clean(&ns, WAN);

    // Without a download rate, only wan0 is shaped, and the tbf stays untouched.
    let qos = apply(&ns, &config("100mbit", None)).unwrap_or_else(|e| panic!("expected wan0 alone to apply: {e}"));
    assert_eq!(qdiscs(&ns, LAN), lan, "{LAN} must be untouched");
    inside(&ns, "remove", || qos.remove().map_err(|mut e| e.remove(0))).unwrap_or_else(|e| panic!("remove: {e}"));
    assert_clean(&ns, WAN);
    assert_eq!(qdiscs(&ns, LAN), lan, "remove must not touch the foreign tbf");
    ns.remove().expect("remove namespace");
}
