//! Failover time in the lab: how long after the primary (fiber) fails a stream of
//! small UDP datagrams (one every 10 ms, one flow) arrives through the LTE instead.
//!
//!     make bench     # or: cargo run --release --example bench_failover -- --write BENCHMARKS.md
//!
//! Two failures, `--trials` each (default 10), a fresh daemon per trial (so flap
//! damping from the previous trial plays no part):
//! - carrier loss: the fiber's peer interface in the ISP namespace goes down;
//! - silent blackout: the ISP namespace drops everything (nftables), the carrier
//!   stays; health probes (ICMP to two inet addresses, 300 ms, 3 misses) notice.
//! The time is from the failure to the first datagram the sink sees from the LTE's
//! address (the NAT source), so it includes one stream interval (10 ms).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inferlane::lab::failover::{first_from, sink, stream};
use inferlane::lab::scenario::{lab_config_base, write_bench_section, DaemonProcess, WorkDir};
use inferlane::lab::{addr, Lab, LabOptions, Role};

const HEADING: &str = "## Uplink failover (lab, UDP stream every 10 ms)";

#[derive(Clone, Copy, PartialEq)]
enum Failure {
    Carrier,
    Blackout,
}

fn main() {
    let mut write: Option<PathBuf> = None;
    let mut trials = 10usize;
    let mut bin = PathBuf::from("target/release/inferlane");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write" => write = args.next().map(PathBuf::from),
            "--trials" => trials = args.next().and_then(|v| v.parse().ok()).expect("--trials N"),
            "--bin" => bin = args.next().map(PathBuf::from).expect("--bin PATH"),
            _ => {
                eprintln!("bench_failover [--write FILE] [--trials N (10)] [--bin PATH/TO/inferlane]");
                std::process::exit(2);
            }
        }
    }
    assert!(inferlane::lab::is_root(), "run as root (network namespaces, eBPF)");
    let work = WorkDir::new("bench-failover").expect("work dir");
    let lab = Lab::build(&LabOptions::default()).expect("lab");
    let mut rows = Vec::new();
    for failure in [Failure::Carrier, Failure::Blackout] {
        let mut times = Vec::new();
        for t in 0..trials {
            let took = trial(&bin, &lab, &work, failure, t);
            eprintln!("{} trial {}: {:?}", name(failure), t + 1, took);
            times.push(took);
        }
        rows.push((failure, times));
    }
    lab.teardown().expect("lab teardown");
    let mut section = format!(
        "{HEADING}\n\nCommand: `make bench` (`cargo run --release --example bench_failover -- --write BENCHMARKS.md`), as root.\n\
         Method: a fresh daemon per trial, lab config (fiber priority 10, lte priority 20), health probes ICMP to \
         two inet addresses every 300 ms, down after 3 lost rounds; a LAN client sends one UDP datagram every 10 ms \
         (one flow, class interactive); trials fail at different points of the 300 ms probe round; time from the failure to the first datagram arriving from the LTE's NAT \
         address. {trials} trials each, one run.\n\n\
         | failure | median | p95 | max | budget | mwan3 default | pfSense dpinger default |\n|---|---|---|---|---|---|---|\n"
    );
    for (failure, mut times) in rows {
        times.sort();
        let median = times[times.len() / 2];
        let p95 = times[((times.len() as f64 * 0.95).ceil() as usize).saturating_sub(1).min(times.len() - 1)];
        let max = *times.last().unwrap();
        let budget = if failure == Failure::Carrier { "≤ 1 s" } else { "≤ 2 s" };
        section.push_str(&format!(
            "| {} | {} | {} | {} | {budget} | about 60–130 s | about 15 s |\n",
            name(failure),
            ms(median),
            ms(p95),
            ms(max)
        ));
    }
    section.push_str(
        "\nmwan3 and dpinger figures are their defaults as quoted in issue 5 (not measured here). \
         Flows on the dead uplink move at their next packet; their conntrack entries are deleted so NAT follows.\n\n",
    );
    print!("{section}");
    if let Some(path) = write {
        write_bench_section(&path, HEADING, &section).expect("write BENCHMARKS.md");
    }
}

fn name(f: Failure) -> &'static str {
    match f {
        Failure::Carrier => "carrier loss",
        Failure::Blackout => "silent blackout (probes)",
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn trial(bin: &Path, lab: &Lab, work: &WorkDir, failure: Failure, index: usize) -> Duration {
    let socket = work.path().join("control.sock");
    let health = format!(
        "health = {{ probes = [\"icmp:{}\", \"icmp:{}\"], interval = \"300ms\", down_after = 3, up_after = 5 }}\n",
        addr::SERVER_V4,
        addr::DNS_V4
    );
    let s4 = addr::SERVER_V4;
    let cfg = format!(
        "{}\n[[rules]]\nclass = \"interactive\"\ndestinations = [\"{s4}/32\"]\nports = [\"udp:9000\"]\n",
        lab_config_base(&socket, "flow_table_size = 4096")
            .replace("priority = 10\n", &format!("priority = 10\n{health}"))
            .replace("priority = 20\n", &format!("priority = 20\n{health}"))
    );
    let mut daemon = DaemonProcess::start(bin, lab, work, &cfg).expect("daemon");
    // Let the probes answer once (Unknown → Up).
    std::thread::sleep(Duration::from_millis(800));
    let lte: IpAddr = addr::ROUTER_WAN2_V4.addr.into();
    let stop = AtomicBool::new(false);
    let (cut, arrivals) = std::thread::scope(|sc| {
        let _stop = inferlane::lab::failover::StopOnDrop(&stop);
        let sink_t = sc.spawn(|| sink(lab, SocketAddr::new(s4.into(), 9000), &stop));
        std::thread::sleep(Duration::from_millis(100));
        let stream_t = sc.spawn(|| stream(lab, SocketAddr::new(s4.into(), 9000), &stop));
        // Trials fail at different points of the probe round (300 ms).
        std::thread::sleep(Duration::from_millis(500 + (index as u64 * 37) % 300));
        let cut = Instant::now();
        match failure {
            Failure::Carrier => {
                lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "down"]).expect("link down");
            }
            Failure::Blackout => lab
                .ns(Role::Isp1)
                .nft("table inet blackout {\n chain forward_all { type filter hook forward priority 0; policy drop; }\n chain input_all { type filter hook input priority 0; policy drop; }\n}\n")
                .expect("blackout"),
        }
        std::thread::sleep(Duration::from_millis(3000));
        stop.store(true, Ordering::Relaxed);
        let _ = stream_t.join();
        (cut, sink_t.join().expect("sink").expect("sink ran"))
    });
    match failure {
        Failure::Carrier => {
            lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "up"]).expect("link up");
        }
        Failure::Blackout => {
            lab.run(Role::Isp1, "nft", &["delete", "table", "inet", "blackout"]).expect("heal");
        }
    }
    daemon.stop(Duration::from_secs(10)).expect("daemon stop");
    first_from(&arrivals, lte, cut).map(|t| t - cut).unwrap_or(Duration::from_secs(3))
}
