//! Uplinks end to end in the lab (two ISPs, NAT on each uplink): policy routing
//! installed and removed, carrier loss on the primary moving interactive flows to
//! the LTE in well under a second, a bulk class that never touches the LTE, flows
//! on the LTE untouched, sticky flows after the primary returns; IPv4 and IPv6.
//! Needs root.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inferlane::lab::failover::{self, first_from, largest_gap, Arrival};
use inferlane::lab::scenario::{lab_config_base, DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

fn sink(lab: &Lab, bind: SocketAddr, stop: &AtomicBool) -> Vec<Arrival> {
    failover::sink(lab, bind, stop).unwrap_or_else(|e| panic!("expected the UDP sink on {bind} to run, got: {e}"))
}

fn stream(lab: &Lab, to: SocketAddr, stop: &AtomicBool) -> u32 {
    failover::stream(lab, to, stop).unwrap_or_else(|e| panic!("expected the UDP stream to {to} to run, got: {e}"))
}

fn status_json(lab: &Lab, socket: &Path) -> serde_json::Value {
    let out = std::process::Command::new(bin())
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    let _ = lab;
    assert!(out.status.success(), "inferlane status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status JSON: {e}"))
}

fn uplink<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["uplinks"]
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == name))
        .unwrap_or_else(|| panic!("expected uplink {name} in status, saw {}", status["uplinks"]))
}

/// Our rules and tables in the router namespace, as `ip` shows them.
fn routing_state(lab: &Lab) -> (String, String) {
    let rules = lab.run(Role::Router, "ip", &["rule", "show"]).unwrap()
        + &lab.run(Role::Router, "ip", &["-6", "rule", "show"]).unwrap();
    let routes = lab.run(Role::Router, "ip", &["route", "show", "table", "all", "proto", "173"]).unwrap()
        + &lab.run(Role::Router, "ip", &["-6", "route", "show", "table", "all", "proto", "173"]).unwrap();
    (rules, routes)
}

#[test]
fn carrier_loss_moves_interactive_flows_and_keeps_bulk_off_the_lte() {
    if !require_root_or_skip("carrier_loss_moves_interactive_flows_and_keeps_bulk_off_the_lte") {
        return;
    }
    let work = WorkDir::new("uplink").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let (s4, s6) = (addr::SERVER_V4, addr::SERVER_V6);
    // Interactive (fiber, then lte) on udp:9000; "voice" prefers the lte; bulk
    // (fiber only) on tcp:5201.
    let cfg = format!(
        "{}\n[[classes]]\nname = \"voice\"\ndscp = \"EF\"\nuplinks = [\"lte\", \"fiber\"]\n\
         [[rules]]\nclass = \"interactive\"\ndestinations = [\"{s4}/32\", \"{s6}/128\"]\nports = [\"udp:9000\"]\n\
         [[rules]]\nclass = \"voice\"\ndestinations = [\"{s4}/32\"]\nports = [\"udp:9001\"]\n\
         [[rules]]\nclass = \"bulk\"\ndestinations = [\"{s4}/32\", \"{s6}/128\"]\nports = [\"tcp:5201\"]\n",
        lab_config_base(&socket, "flow_table_size = 4096")
    );
    let before = routing_state(&lab);
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();

    // Routing installed: a table per uplink with its learned gateway, rules both families.
    let (rules, routes) = routing_state(&lab);
    for want in ["fwmark 0x1000000/0xf000000 lookup main suppress_prefixlength 0", "fwmark 0x1000000/0xf000000 lookup 20000", "fwmark 0x2000000/0xf000000 lookup 20001"] {
        assert_eq!(rules.matches(want).count(), 2, "expected rule {want:?} for IPv4 and IPv6, saw:\n{rules}");
    }
    for want in [
        format!("default via {} dev wan0 table 20000", addr::ISP1_DOWN_V4.addr),
        format!("default via {} dev wwan0 table 20001", addr::ISP2_DOWN_V4.addr),
        format!("default via {} dev wan0 table 20000", addr::ISP1_DOWN_V6.addr),
        format!("default via {} dev wwan0 table 20001", addr::ISP2_DOWN_V6.addr),
    ] {
        assert!(routes.contains(&want), "expected route {want:?}, saw:\n{routes}");
    }

    let fiber4: IpAddr = addr::ROUTER_WAN1_V4.addr.into();
    let lte4: IpAddr = addr::ROUTER_WAN2_V4.addr.into();
    let fiber6: IpAddr = addr::ROUTER_WAN1_V6.addr.into();
    let lte6: IpAddr = addr::ROUTER_WAN2_V6.addr.into();
    let stop = AtomicBool::new(false);
    let (cut, bulk_refused, restored, new_flow_from) = std::thread::scope(|sc| {
        let _stop = failover::StopOnDrop(&stop);
        let sinks = [
            sc.spawn(|| sink(&lab, SocketAddr::new(s4.into(), 9000), &stop)),
            sc.spawn(|| sink(&lab, SocketAddr::new(s6.into(), 9000), &stop)),
            sc.spawn(|| sink(&lab, SocketAddr::new(s4.into(), 9001), &stop)),
        ];
        std::thread::sleep(Duration::from_millis(200));
        let streams = [
            sc.spawn(|| stream(&lab, SocketAddr::new(s4.into(), 9000), &stop)),
            sc.spawn(|| stream(&lab, SocketAddr::new(s6.into(), 9000), &stop)),
            sc.spawn(|| stream(&lab, SocketAddr::new(s4.into(), 9001), &stop)),
        ];
        std::thread::sleep(Duration::from_secs(1));
        // The fiber's carrier goes: its peer in isp1 is taken down.
        let cut = Instant::now();
        lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "down"]).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        // Bulk may not use the lte: a new bulk connection is refused at once.
        let t = Instant::now();
        let refused = lab
            .ns(Role::Lan)
            .run_in("bulk connect", || {
                Ok(std::net::TcpStream::connect_timeout(&SocketAddr::new(s4.into(), 5201), Duration::from_secs(3)).err().map(|e| e.kind()))
            })
            .unwrap();
        let bulk_refused = (refused, t.elapsed());
        // Fiber back: flows stay on the lte (sticky); a new flow takes the fiber.
        lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "up"]).unwrap();
        let restored = Instant::now();
        std::thread::sleep(Duration::from_millis(1000));
        let new_flow_from = lab
            .ns(Role::Lan)
            .run_in("new flow", || {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                for i in 0..5u32 {
                    s.send_to(&(1_000_000 + i).to_be_bytes(), SocketAddr::new(s4.into(), 9000))?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            })
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        for s in streams {
            s.join().unwrap();
        }
        let arrivals: Vec<Vec<Arrival>> = sinks.into_iter().map(|s| s.join().unwrap()).collect();
        ((cut, arrivals), bulk_refused, restored, new_flow_from)
    });
    let _ = new_flow_from;
    let (cut, arrivals) = cut;
    let status = status_json(&lab, &socket);
    let log = daemon.log_text();

    let report = |name: &str, a: &[Arrival], from_before: IpAddr, from_after: IpAddr| -> Duration {
        let before_cut: Vec<_> = a.iter().filter(|x| x.at < cut).collect();
        assert!(before_cut.len() > 50, "{name}: expected the stream to flow before the cut, saw {} packets", before_cut.len());
        assert!(before_cut.iter().all(|x| x.from == from_before), "{name}: expected every packet before the cut from {from_before}");
        let moved = first_from(a, from_after, cut).unwrap_or_else(|| panic!("{name}: no packet from {from_after} after the cut\n{log}"));
        moved - cut
    };
    let a4 = &arrivals[0];
    let a6 = &arrivals[1];
    let voice = &arrivals[2];
    let t4 = report("IPv4 interactive", a4, fiber4, lte4);
    let t6 = report("IPv6 interactive", a6, fiber6, lte6);
    eprintln!("failover on carrier loss: IPv4 {t4:?}, IPv6 {t6:?}");
    assert!(t4 < Duration::from_millis(1000) && t6 < Duration::from_millis(1000), "expected failover in < 1 s, saw IPv4 {t4:?} IPv6 {t6:?}");
    // The flow stays on the lte after the fiber is back (sticky)...
    let sticky: Vec<_> = a4.iter().filter(|x| x.at > restored + Duration::from_millis(100) && x.seq < 1_000_000).collect();
    assert!(
        !sticky.is_empty() && sticky.iter().all(|x| x.from == lte4),
        "expected the IPv4 stream to stay on the lte after failback, saw {} packets, {} from the lte, first other {:?}\n{}",
        sticky.len(),
        sticky.iter().filter(|x| x.from == lte4).count(),
        sticky.iter().find(|x| x.from != lte4).map(|x| (x.from, x.seq, x.at - restored)),
        log
    );
    // ...and a new flow takes the fiber.
    let fresh: Vec<_> = a4.iter().filter(|x| x.seq >= 1_000_000).collect();
    assert!(!fresh.is_empty() && fresh.iter().all(|x| x.from == fiber4), "expected the new flow on the fiber, saw {fresh:?}");
    // The voice stream lived on the lte all along: untouched, no gap.
    assert!(voice.iter().all(|x| x.from == lte4), "expected the voice stream only from the lte");
    let gap = largest_gap(voice, cut - Duration::from_millis(500), cut + Duration::from_millis(1000));
    assert!(gap < Duration::from_millis(100), "expected no gap on the lte stream during the fiber's failure, saw {gap:?}");
    // Bulk: refused, quickly, and nothing of it left through the lte.
    let (refused, took) = bulk_refused;
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused), "expected the bulk connection refused (RST), took {took:?}");
    assert!(took < Duration::from_millis(500), "expected the refusal at once, took {took:?}");
    assert!(status["flow_table"]["stats"]["no_uplink"].as_u64().unwrap_or(0) >= 1, "expected no_uplink counted: {}", status["flow_table"]);

    // Status tells the story.
    let fiber = uplink(&status, "fiber");
    assert_eq!(fiber["up"], true, "fiber is back: {fiber}");
    let lte = uplink(&status, "lte");
    assert!(lte["counters"]["moved"].as_u64().unwrap() >= 2, "expected the two interactive flows counted as moved to the lte: {lte}");
    let switches = status["switches"].as_array().expect("switches");
    assert!(
        switches.iter().any(|s| s["uplink"] == "fiber" && s["up"] == false && s["reason"] == "carrier lost" && s["flows_ended"].as_u64().unwrap_or(0) >= 2),
        "expected a 'carrier lost' switch that ended the fiber's flows, saw {switches:?}"
    );
    assert!(switches.iter().any(|s| s["uplink"] == "fiber" && s["up"] == true), "expected the fiber's return: {switches:?}");

    daemon.stop(Duration::from_secs(10)).unwrap();
    let after = routing_state(&lab);
    assert_eq!(after, before, "expected the routing state as before the daemon started");
    lab.teardown().unwrap();
}

/// A silent blackout: the fiber keeps its carrier, but its ISP drops everything.
/// Health probes (300 ms, 3 misses) take the fiber down and the interactive
/// stream moves to the lte within 2 s; when the ISP recovers, the fiber comes back
/// only after the hold (up_after good rounds), and the stream stays on the lte.
#[test]
fn silent_blackout_is_detected_by_probes_and_failback_waits_for_the_hold() {
    if !require_root_or_skip("silent_blackout_is_detected_by_probes_and_failback_waits_for_the_hold") {
        return;
    }
    let work = WorkDir::new("blackout").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let s4 = addr::SERVER_V4;
    // Probes to two inet addresses, through each uplink's own table.
    let health = format!("health = {{ probes = [\"icmp:{s4}\", \"icmp:{}\"], interval = \"300ms\", down_after = 3, up_after = 10 }}\n", addr::DNS_V4);
    let base = lab_config_base(&socket, "flow_table_size = 4096")
        .replace("priority = 10\n", &format!("priority = 10\n{health}"))
        .replace("priority = 20\n", &format!("priority = 20\n{health}"));
    let cfg = format!("{base}\n[[rules]]\nclass = \"interactive\"\ndestinations = [\"{s4}/32\"]\nports = [\"udp:9000\"]\n");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    let fiber4: IpAddr = addr::ROUTER_WAN1_V4.addr.into();
    let lte4: IpAddr = addr::ROUTER_WAN2_V4.addr.into();
    let stop = AtomicBool::new(false);
    let (cut, healed, arrivals) = std::thread::scope(|sc| {
        let _stop = failover::StopOnDrop(&stop);
        let sink_t = sc.spawn(|| sink(&lab, SocketAddr::new(s4.into(), 9000), &stop));
        std::thread::sleep(Duration::from_millis(200));
        let stream_t = sc.spawn(|| stream(&lab, SocketAddr::new(s4.into(), 9000), &stop));
        std::thread::sleep(Duration::from_secs(1));
        let cut = Instant::now();
        lab.ns(Role::Isp1)
            .nft("table inet blackout {\n chain forward_all { type filter hook forward priority 0; policy drop; }\n chain input_all { type filter hook input priority 0; policy drop; }\n}\n")
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        lab.run(Role::Isp1, "nft", &["delete", "table", "inet", "blackout"]).unwrap();
        let healed = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        stream_t.join().unwrap();
        (cut, healed, sink_t.join().unwrap())
    });
    let _ = healed;
    let moved = first_from(&arrivals, lte4, cut).unwrap_or_else(|| panic!("no packet via the lte after the blackout\n{}", daemon.log_text()));
    let took = moved - cut;
    eprintln!("failover on silent blackout: {took:?}");
    assert!(took < Duration::from_secs(2), "expected failover within 2 s of the blackout, saw {took:?}");
    assert!(arrivals.iter().filter(|a| a.at < cut).all(|a| a.from == fiber4), "before the blackout, everything via the fiber");
    // 1.5 s after the ISP healed the hold (10 rounds, 3 s) has not passed: still down.
    let status = status_json(&lab, &socket);
    let fiber = uplink(&status, "fiber");
    assert_eq!(fiber["up"], false, "expected the fiber held down until 10 good rounds: {fiber}");
    assert_eq!(fiber["health"]["state"], "down", "{fiber}");
    assert!(fiber["health"]["probe_bytes_sent"].as_u64().unwrap_or(0) > 0, "probe bytes counted: {fiber}");
    let switches = status["switches"].as_array().expect("switches");
    assert!(
        switches.iter().any(|s| s["uplink"] == "fiber" && s["up"] == false && s["reason"].as_str().unwrap_or("").contains("probe rounds lost")),
        "expected a probe-loss switch: {switches:?}"
    );
    // After the hold it is back.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let status = status_json(&lab, &socket);
        if uplink(&status, "fiber")["up"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "expected the fiber back after the hold: {}", uplink(&status, "fiber"));
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.stop(Duration::from_secs(10)).unwrap();
    lab.teardown().unwrap();
}

/// Intermittent loss on the fiber's ISP (30 %, then 50 % of packets dropped at
/// random by nftables): the uplink may be taken down once, but it never flaps:
/// with the default hold (100 good rounds) it does not come back while the loss
/// lasts, so there is at most one switch.
#[test]
fn random_loss_switches_at_most_once() {
    if !require_root_or_skip("random_loss_switches_at_most_once") {
        return;
    }
    let work = WorkDir::new("loss").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let health = format!(
        "health = {{ probes = [\"icmp:{}\", \"icmp:{}\"], interval = \"300ms\" }}\n",
        addr::SERVER_V4,
        addr::DNS_V4
    );
    let cfg = lab_config_base(&socket, "flow_table_size = 4096").replace("priority = 10\n", &format!("priority = 10\n{health}"));
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    let mut fiber_switches = Vec::new();
    for loss in [30, 50] {
        lab.ns(Role::Isp1)
            .nft(&format!(
                "table inet loss {{\n chain forward_all {{ type filter hook forward priority 0; numgen random mod 100 < {loss} drop; }}\n chain input_all {{ type filter hook input priority 0; numgen random mod 100 < {loss} drop; }}\n}}\n"
            ))
            .unwrap();
        std::thread::sleep(Duration::from_secs(8));
        lab.run(Role::Isp1, "nft", &["delete", "table", "inet", "loss"]).unwrap();
        let status = status_json(&lab, &socket);
        let fiber = uplink(&status, "fiber").clone();
        let switches: Vec<serde_json::Value> =
            status["switches"].as_array().unwrap().iter().filter(|s| s["uplink"] == "fiber").cloned().collect();
        eprintln!("{loss}% loss: fiber up={} loss_ratio={} switches={}", fiber["up"], fiber["health"]["loss_ratio"], switches.len());
        // Per probe, not per round: a round counts as lost only when none of its
        // two probes is answered, which at 30 % loss both ways (about a quarter of
        // the rounds) can leave the 20-odd rounds of a phase all answered by chance.
        let h = &fiber["health"];
        let (sent, received, probes) = (
            h["probe_bytes_sent"].as_u64().unwrap_or(0),
            h["probe_bytes_received"].as_u64().unwrap_or(0),
            h["probes"].as_u64().unwrap_or(0).max(1),
        );
        let unanswered = sent.saturating_sub(received) / (sent / probes).max(1);
        assert!(unanswered >= 3, "expected the probes to see the loss ({unanswered} probes unanswered): {fiber}");
        fiber_switches = switches;
    }
    assert!(fiber_switches.len() <= 1, "expected at most one switch of the fiber under intermittent loss, saw {fiber_switches:?}");
    assert!(fiber_switches.iter().all(|s| s["up"] == false), "expected no failback during the loss: {fiber_switches:?}");
    daemon.stop(Duration::from_secs(10)).unwrap();
    lab.teardown().unwrap();
}
