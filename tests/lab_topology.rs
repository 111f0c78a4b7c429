//! The lab topology itself: it builds, routes and NATs as the address plan says, shapes
//! when asked, and leaves nothing behind, also when a test panics.
//!
//! Privileged: each test returns early (or fails, under INFERLANE_REQUIRE_PRIVILEGED=1)
//! when not run as root. Every test works only in namespaces its own lab created.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::process::ChildStdout;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use inferlane::lab::addr::*;
use inferlane::lab::{self, Lab, LabOptions, Role, Tbf};

const PING_TIMEOUT: Duration = Duration::from_secs(1);

fn build(opts: &LabOptions) -> Lab {
    let start = Instant::now();
    let lab = Lab::build(opts).unwrap_or_else(|e| panic!("expected the lab to build, got: {e}"));
    eprintln!("lab {} built in {:?}", lab.id(), start.elapsed());
    lab
}

/// The lab's namespaces that `ip netns list` still shows.
fn leftovers(names: &[String]) -> Vec<String> {
    let listed = lab::netns::list().expect("ip netns list");
    names
        .iter()
        .filter(|n| listed.contains(n))
        .cloned()
        .collect()
}

fn ping_ok(lab: &Lab, dst: IpAddr) {
    if let Err(e) = lab.ping(Role::Lan, dst, PING_TIMEOUT) {
        panic!(
            "expected an echo reply from {dst} to the LAN client of {}, got: {e}",
            lab.id()
        );
    }
}

#[test]
fn lan_client_reaches_servers_over_ipv4_and_ipv6_via_isp1() {
    if !lab::require_root_or_skip("lan_client_reaches_servers_over_ipv4_and_ipv6_via_isp1") {
        return;
    }
    let lab = build(&LabOptions::default());
    let wan1_before = lab
        .link_stats(Role::Router, ROUTER_WAN1_IF)
        .expect("wan0 stats");

    for dst in [
        IpAddr::from(SERVER_V4),
        SERVER_V6.into(),
        DNS_V4.into(),
        DNS_V6.into(),
    ] {
        ping_ok(&lab, dst);
    }

    // The primary route (metric 100) is isp1: the four echoes left through wan0.
    let wan1_after = lab
        .link_stats(Role::Router, ROUTER_WAN1_IF)
        .expect("wan0 stats");
    let sent = wan1_after.tx_packets - wan1_before.tx_packets;
    assert!(
        sent >= 4,
        "expected >= 4 packets out of router wan0, saw {sent}"
    );
    lab.teardown().expect("teardown");
}

/// Starts tcpdump in inet on its isp1 interface and returns once it is capturing.
fn capture_one(lab: &mut Lab, filter: &str) -> (u32, ChildStdout) {
    let args = ["-i", INET_ISP1_IF, "-n", "-l", "-p", "-c", "1", filter];
    let lab::PipedChild {
        pid,
        stdout,
        stderr,
    } = lab
        .spawn_piped(Role::Inet, "tcpdump", &args)
        .expect("start tcpdump");
    // tcpdump says "listening on ..." on stderr once the capture is live. Read stderr on
    // a thread, to the end, so a hung tcpdump cannot hang the test and a chatty one
    // cannot block on a full pipe.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with("listening on") => return (pid, stdout),
            Ok(line) => seen.push(line),
            Err(_) => panic!("expected tcpdump to start capturing in inet, its stderr: {seen:?}"),
        }
    }
}

fn captured_line(lab: &mut Lab, pid: u32, mut stdout: ChildStdout) -> String {
    let status = lab
        .wait(pid, Duration::from_secs(5))
        .expect("tcpdump to capture one packet");
    let mut out = String::new();
    stdout
        .read_to_string(&mut out)
        .expect("read tcpdump output");
    assert!(
        status.success(),
        "expected tcpdump to exit 0, got {status}; output: {out}"
    );
    out
}

#[test]
fn server_side_sees_the_routers_nat_address() {
    if !lab::require_root_or_skip("server_side_sees_the_routers_nat_address") {
        return;
    }
    let mut lab = build(&LabOptions::default());

    let (pid, child) = capture_one(&mut lab, "icmp and icmp[icmptype] == icmp-echo");
    ping_ok(&lab, SERVER_V4.into());
    let line = captured_line(&mut lab, pid, child);
    let want = format!(
        "IP {} > {}: ICMP echo request",
        ROUTER_WAN1_V4.addr, SERVER_V4
    );
    assert!(
        line.contains(&want),
        "expected inet to capture `{want}`, captured: {line}"
    );

    // ip6[40] is the ICMPv6 type when no extension header follows; 128 = echo request.
    let (pid, child) = capture_one(&mut lab, "icmp6 and ip6[40] == 128");
    ping_ok(&lab, SERVER_V6.into());
    let line = captured_line(&mut lab, pid, child);
    let want = format!(
        "IP6 {} > {}: ICMP6, echo request",
        ROUTER_WAN1_V6.addr, SERVER_V6
    );
    assert!(
        line.contains(&want),
        "expected inet to capture `{want}`, captured: {line}"
    );

    lab.teardown().expect("teardown");
}

/// (kind, rate in bytes/s) of the root qdisc on `ifname`.
fn root_qdisc(lab: &Lab, role: Role, ifname: &str) -> (String, Option<u64>) {
    let out = lab
        .run(role, "tc", &["-j", "qdisc", "show", "dev", ifname])
        .expect("tc qdisc show");
    let qdiscs: serde_json::Value = serde_json::from_str(&out).expect("tc -j output is JSON");
    let root = qdiscs
        .as_array()
        .and_then(|a| a.iter().find(|q| q["root"] == true))
        .unwrap_or_else(|| panic!("expected a root qdisc on {role} {ifname}, tc says: {out}"));
    (
        root["kind"].as_str().unwrap_or("").to_owned(),
        root["options"]["rate"].as_u64(),
    )
}

#[test]
fn tbf_bottlenecks_are_installed_in_both_directions_when_rates_are_set() {
    if !lab::require_root_or_skip(
        "tbf_bottlenecks_are_installed_in_both_directions_when_rates_are_set",
    ) {
        return;
    }
    let (rate1, rate2) = (20_000, 5_000);
    let lab = build(&LabOptions {
        isp1_rate_kbit: Some(rate1),
        isp2_rate_kbit: Some(rate2),
    });
    for (role, rate) in [(Role::Isp1, rate1), (Role::Isp2, rate2)] {
        let want = Tbf::for_rate(rate).rate_bytes_per_sec();
        for ifname in [ISP_DOWN_IF, ISP_UP_IF] {
            let (kind, got) = root_qdisc(&lab, role, ifname);
            assert_eq!(
                (kind.as_str(), got),
                ("tbf", Some(want)),
                "expected tbf at {want} B/s on {role} {ifname}"
            );
        }
    }
    // Still routes with the shapers in place.
    ping_ok(&lab, SERVER_V4.into());
    lab.teardown().expect("teardown");

    let plain = build(&LabOptions {
        isp1_rate_kbit: None,
        isp2_rate_kbit: Some(rate2),
    });
    let (kind, _) = root_qdisc(&plain, Role::Isp1, ISP_DOWN_IF);
    assert_ne!(
        kind, "tbf",
        "expected no tbf on isp1 when its rate is unset"
    );
    plain.teardown().expect("teardown");
}

#[test]
fn teardown_kills_processes_and_removes_every_namespace() {
    if !lab::require_root_or_skip("teardown_kills_processes_and_removes_every_namespace") {
        return;
    }
    let mut lab = build(&LabOptions::default());
    let names = lab.netns_names();
    assert_eq!(
        leftovers(&names),
        names,
        "expected all namespaces listed while the lab lives"
    );

    let owned = lab
        .spawn(Role::Inet, "sleep", &["600"])
        .expect("spawn sleep");
    // Started outside the lab's bookkeeping: must still die with the namespace.
    let mut stray = lab
        .command(Role::Router, "sleep")
        .arg("600")
        .spawn()
        .expect("spawn stray");

    lab.teardown().expect("teardown reports no error");

    assert_eq!(
        leftovers(&names),
        Vec::<String>::new(),
        "expected no lab namespace after teardown"
    );
    let status = stray.wait().expect("reap stray");
    assert!(
        !status.success(),
        "expected the stray sleep to be killed, it exited with {status}"
    );
    let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(owned as i32), None).is_ok();
    assert!(
        !alive,
        "expected spawned pid {owned} to be gone after teardown"
    );
}

#[test]
fn dropping_a_lab_while_panicking_removes_its_namespaces() {
    if !lab::require_root_or_skip("dropping_a_lab_while_panicking_removes_its_namespaces") {
        return;
    }
    let mut names = Vec::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut lab = build(&LabOptions {
            isp1_rate_kbit: Some(10_000),
            isp2_rate_kbit: None,
        });
        names = lab.netns_names();
        lab.spawn(Role::Inet, "sleep", &["600"])
            .expect("spawn sleep");
        panic!("deliberate panic with a live lab");
    }));
    assert!(result.is_err(), "expected the closure to panic");
    assert_eq!(
        names.len(),
        5,
        "expected the lab to have been built before the panic"
    );
    assert_eq!(
        leftovers(&names),
        Vec::<String>::new(),
        "expected no lab namespace after unwinding"
    );
}

#[test]
fn two_labs_live_side_by_side() {
    if !lab::require_root_or_skip("two_labs_live_side_by_side") {
        return;
    }
    let a = build(&LabOptions::default());
    let b = build(&LabOptions::default());
    let (na, nb) = (a.netns_names(), b.netns_names());
    assert!(
        na.iter().all(|n| !nb.contains(n)),
        "expected disjoint names, got {na:?} and {nb:?}"
    );
    for lab in [&a, &b] {
        ping_ok(lab, SERVER_V4.into());
        ping_ok(lab, SERVER_V6.into());
    }
    a.teardown().expect("teardown a");
    // b is unaffected by a's teardown.
    ping_ok(&b, SERVER_V4.into());
    drop(b);
    let all: Vec<String> = na.into_iter().chain(nb).collect();
    assert_eq!(
        leftovers(&all),
        Vec::<String>::new(),
        "expected no lab namespace left"
    );
}
