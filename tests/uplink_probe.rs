//! Uplink probes against a real kernel: two network namespaces made by the test.
//!
//! ```text
//!  probe ns                                   target ns
//!  up0 10.77.0.1/24 fd77::1/64  ── veth ──  t0 10.77.0.2/24 fd77::2/64
//!  up1 10.78.0.1/24             ── veth ──  t1 10.78.0.2/24
//!  rule fwmark 0x64 → table 100:              lo 10.99.0.1/32 fd99::1/128
//!    10.99.0.0/24 via 10.77.0.2 dev up0       TCP :8443 listener, :8444 closed
//!    fd99::/64   via fd77::2   dev up0        DNS responder on :53 (v4, v6)
//! ```
//! The probe targets (10.99.0.1, fd99::1) are reachable only through the mark rule and
//! only over up0 (the target answers ARP only for addresses on the asking interface), so
//! a probe answers only when SO_MARK and SO_BINDTODEVICE both do their job.
//!
//! Privileged: each test returns early (or fails, under INFERLANE_REQUIRE_PRIVILEGED=1)
//! when not run as root. Nothing leaves the two namespaces; both are removed by their
//! guards, also when a test panics.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use inferlane::config::Probe;
use inferlane::lab::{self, Netns};
use inferlane::uplink::health::{HealthParams, State};
use inferlane::uplink::monitor::{self, HealthReport, ReportKind, UplinkInput};
use inferlane::uplink::probe::{
    icmp_echo_ip_bytes, Prober, ProberConfig, RoundResult, TargetStatus,
};
use nix::sched::{setns, CloneFlags};
use simple_dns::Packet;

const MARK: u32 = 0x64;
const TARGET_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 1);
const NEIGHBOUR_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const OPEN_PORT: u16 = 8443;
const CLOSED_PORT: u16 = 8444;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The two namespaces and the servers in the target one. Field order is drop order:
/// servers stop before the namespaces go.
struct Scene {
    _servers: Servers,
    target: Netns,
    probe: Netns,
}

fn scene() -> Scene {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}{n}", std::process::id());
    let probe = Netns::add(&format!("ilhp{id}")).expect("create probe namespace");
    let target = Netns::add(&format!("ilht{id}")).expect("create target namespace");
    // Before the links exist, so the defaults apply to them.
    probe
        .set_sysctls(&[
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])
        .expect("probe sysctls");
    target
        .set_sysctls(&[
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.arp_ignore", "1"),
        ])
        .expect("target sysctls");
    probe
        .ip_batch(&format!(
            "link add up0 type veth peer name t0 netns {t}\n\
             link add up1 type veth peer name t1 netns {t}\n\
             addr add 10.77.0.1/24 dev up0\n\
             addr add fd77::1/64 dev up0 nodad\n\
             addr add 10.78.0.1/24 dev up1\n\
             link set lo up\n\
             link set up0 up\n\
             link set up1 up\n\
             rule add fwmark {MARK} table 100 priority 100\n\
             route add 10.99.0.0/24 via 10.77.0.2 dev up0 table 100",
            t = target.name()
        ))
        .expect("probe namespace links, addresses, rules");
    for args in [
        [
            "-6", "rule", "add", "fwmark", "100", "table", "100", "priority", "100",
        ]
        .as_slice(),
        &[
            "-6",
            "route",
            "add",
            "fd99::/64",
            "via",
            "fd77::2",
            "dev",
            "up0",
            "table",
            "100",
        ],
    ] {
        probe
            .exec("ip", args)
            .expect("probe namespace IPv6 rule and route");
    }
    target
        .ip_batch(
            "addr add 10.77.0.2/24 dev t0\n\
             addr add fd77::2/64 dev t0 nodad\n\
             addr add 10.78.0.2/24 dev t1\n\
             addr add 10.99.0.1/32 dev lo\n\
             addr add fd99::1/128 dev lo\n\
             link set lo up\n\
             link set t0 up\n\
             link set t1 up",
        )
        .expect("target namespace addresses");
    let servers = Servers::start(&target);
    Scene {
        _servers: servers,
        target,
        probe,
    }
}

/// Listener and DNS responder threads inside the target namespace.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(ns: &Netns) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for addr in [IpAddr::from(TARGET_V4), TARGET_V6.into()] {
            let (s, r) = (stop.clone(), ready_tx.clone());
            threads.push(spawn_in(ns, move || {
                let l = TcpListener::bind(SocketAddr::new(addr, OPEN_PORT)).expect("listen");
                l.set_nonblocking(true).unwrap();
                r.send(()).unwrap();
                while !s.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            }));
            let (s, r) = (stop.clone(), ready_tx.clone());
            threads.push(spawn_in(ns, move || {
                let sock = UdpSocket::bind(SocketAddr::new(addr, 53)).expect("bind :53");
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                r.send(()).unwrap();
                let mut buf = [0u8; 1500];
                while !s.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let Ok(query) = Packet::parse(&buf[..n]) else {
                        continue;
                    };
                    let mut reply = Packet::new_reply(query.id());
                    reply.questions = query.questions.clone();
                    let _ = sock.send_to(&reply.build_bytes_vec().unwrap(), from);
                }
            }));
        }
        for _ in 0..threads.len() {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("servers in the target namespace to start");
        }
        Servers { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A thread that lives in `ns` until `f` returns.
fn spawn_in(ns: &Netns, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
    let file = File::open(format!("/run/netns/{}", ns.name())).expect("open netns");
    thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// Runs `f` on a current-thread tokio runtime on a thread inside `ns`.
fn in_ns<'a, T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> + Send,
) -> T {
    ns.run_in("tokio runtime", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .expect("run in the probe namespace")
}

fn config(interface: &str, mark: u32, targets: Vec<Probe>) -> ProberConfig {
    ProberConfig::new("test", interface, mark, targets)
}

fn all_targets() -> Vec<Probe> {
    vec![
        Probe::Icmp(TARGET_V4.into()),
        Probe::Icmp(TARGET_V6.into()),
        Probe::Tcp(SocketAddr::new(TARGET_V4.into(), OPEN_PORT)),
        Probe::Tcp(SocketAddr::new(TARGET_V4.into(), CLOSED_PORT)),
        Probe::Tcp(SocketAddr::new(TARGET_V6.into(), OPEN_PORT)),
        Probe::Tcp(SocketAddr::new(TARGET_V6.into(), CLOSED_PORT)),
        Probe::Dns(SocketAddr::new(TARGET_V4.into(), 53)),
        Probe::Dns(SocketAddr::new(TARGET_V6.into(), 53)),
    ]
}

const DROP_ALL: &str = "table inet ilh_drop {\n\
    chain pre { type filter hook prerouting priority -300; policy drop; }\n\
    chain out { type filter hook output priority -300; policy drop; }\n\
}\n";

fn describe(r: &RoundResult) -> String {
    r.targets
        .iter()
        .map(|t| format!("{:?}: {:?} rtt {:?}", t.probe, t.status, t.rtt))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn probes_answer_are_lost_under_a_blackout_and_late_replies_are_recognised() {
    if !lab::require_root_or_skip(
        "probes_answer_are_lost_under_a_blackout_and_late_replies_are_recognised",
    ) {
        return;
    }
    let scene = scene();
    let target = &scene.target;
    let (healthy, blackout, late) = in_ns(&scene.probe, || {
        Box::pin(async {
            let mut prober =
                Prober::new(config("up0", MARK, all_targets())).expect("open probe sockets");
            // The first round also resolves neighbours; take the second.
            prober.round(Duration::from_secs(2)).await;
            let healthy = prober.round(Duration::from_secs(2)).await;
            let before = prober.counters();

            // Blackout: the target drops everything.
            target.nft(DROP_ALL).expect("install drop ruleset");
            let blackout = prober.round(Duration::from_millis(500)).await;
            target
                .exec("nft", &["delete", "table", "inet", "ilh_drop"])
                .expect("remove drop ruleset");

            // A round closed at once (timeout 0) is lost; its replies arrive later and
            // must come back as late replies with the next round.
            let zero = prober.round(Duration::ZERO).await;
            let next = prober.round(Duration::from_secs(2)).await;
            (healthy, (blackout, before), (zero, next))
        })
    });

    eprintln!("healthy round: {}", describe(&healthy));
    assert!(healthy.answered);
    for t in &healthy.targets {
        let expected = match t.probe {
            Probe::Tcp(a) if a.port() == CLOSED_PORT => TargetStatus::Refused,
            _ => TargetStatus::Answered,
        };
        assert_eq!(
            t.status, expected,
            "{:?}: expected {expected:?}, saw {:?}",
            t.probe, t.status
        );
        assert!(
            t.rtt.is_some_and(|r| r < Duration::from_secs(1)),
            "{:?}: rtt {:?}",
            t.probe,
            t.rtt
        );
        match t.probe {
            Probe::Icmp(a) => {
                let size = icmp_echo_ip_bytes(a);
                assert_eq!(
                    (t.bytes_sent, t.bytes_received),
                    (size, size),
                    "{a} echo bytes"
                );
            }
            Probe::Dns(a) => {
                let ip = if a.is_ipv4() { 20 } else { 40 };
                // Query: 12-byte header, root name, type, class = 17 bytes; the reply
                // echoes the question.
                assert_eq!(t.bytes_sent, ip + 8 + 17, "{a} DNS query bytes");
                assert_eq!(t.bytes_received, ip + 8 + 17, "{a} DNS reply bytes");
            }
            Probe::Tcp(_) => assert!(t.bytes_sent > 0 && t.bytes_received > 0),
        }
    }
    let sum_sent: u64 = healthy.targets.iter().map(|t| t.bytes_sent).sum();
    assert_eq!(healthy.bytes_sent, sum_sent);

    let (blackout, before) = blackout;
    eprintln!("blackout round: {}", describe(&blackout));
    assert!(
        !blackout.answered,
        "expected every probe lost under the drop ruleset"
    );
    for t in &blackout.targets {
        assert_eq!(t.status, TargetStatus::Lost, "{:?} under blackout", t.probe);
        assert_eq!(t.bytes_received, 0);
    }
    assert!(before.bytes_sent > 0);

    let (zero, next) = late;
    assert!(
        !zero.answered,
        "a round with timeout 0 closes before any reply"
    );
    eprintln!(
        "late replies: {:?}",
        next.late
            .iter()
            .map(|l| (l.probe, l.rtt))
            .collect::<Vec<_>>()
    );
    assert!(next.answered);
    for (i, probe) in all_targets().into_iter().enumerate() {
        let hit = next.late.iter().find(|l| l.target == i);
        let l = hit.unwrap_or_else(|| {
            panic!(
                "expected a late reply from {probe:?} to round {}, saw {:?}",
                zero.round, next.late
            )
        });
        assert_eq!((l.round, l.probe), (zero.round, probe));
    }
}

fn icmp_answered(scene: &Scene, interface: &'static str, mark: u32, dst: IpAddr) -> RoundResult {
    in_ns(&scene.probe, move || {
        Box::pin(async move {
            let mut prober = Prober::new(config(interface, mark, vec![Probe::Icmp(dst)]))
                .expect("open probe sockets");
            prober.round(Duration::from_millis(700)).await
        })
    })
}

#[test]
fn so_mark_and_so_bindtodevice_decide_the_way_out() {
    if !lab::require_root_or_skip("so_mark_and_so_bindtodevice_decide_the_way_out") {
        return;
    }
    let scene = scene();
    for dst in [IpAddr::from(TARGET_V4), TARGET_V6.into()] {
        let r = icmp_answered(&scene, "up0", MARK, dst);
        assert!(
            r.answered,
            "{dst} via up0 with mark {MARK:#x}: expected an answer, got {}",
            describe(&r)
        );
        // Without the mark the main table has no route to the target.
        let r = icmp_answered(&scene, "up0", 0, dst);
        eprintln!("{dst} via up0 without mark: {}", describe(&r));
        assert!(
            !r.answered,
            "{dst} via up0 without mark: expected no answer, got {}",
            describe(&r)
        );
    }
    // With the mark but bound to up1: the mark's table routes via up0, which the bound
    // socket may not use.
    let r = icmp_answered(&scene, "up1", MARK, TARGET_V4.into());
    eprintln!("target via up1 with mark: {}", describe(&r));
    assert!(
        !r.answered,
        "bound to up1: expected no answer, got {}",
        describe(&r)
    );
    // The neighbour on up0 answers only a socket bound to up0.
    let r = icmp_answered(&scene, "up0", 0, NEIGHBOUR_V4.into());
    assert!(r.answered, "neighbour via up0: {}", describe(&r));
    let r = icmp_answered(&scene, "up1", 0, NEIGHBOUR_V4.into());
    assert!(
        !r.answered,
        "neighbour via up1: expected no answer, got {}",
        describe(&r)
    );
}

/// The monitor task end to end: Up at the first answers, then a silent blackout made
/// by the target's nftables, measured from just before the drop ruleset is loaded.
#[test]
fn monitor_detects_a_silent_blackout_within_budget() {
    if !lab::require_root_or_skip("monitor_detects_a_silent_blackout_within_budget") {
        return;
    }
    let scene = scene();
    let mut times = Vec::new();
    for trial in 0..5u64 {
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (report_tx, mut report_rx) = tokio::sync::mpsc::channel::<HealthReport>(64);
        let (_input_tx, input_rx) = tokio::sync::mpsc::channel::<UplinkInput>(8);
        let probe_ns = &scene.probe;
        let detected = thread::scope(|s| {
            let task = s.spawn(move || {
                in_ns(probe_ns, move || {
                    Box::pin(async move {
                        let prober = Prober::new(config(
                            "up0",
                            MARK,
                            vec![Probe::Icmp(TARGET_V4.into()), Probe::Icmp(TARGET_V6.into())],
                        ))
                        .expect("open probe sockets");
                        monitor::run(
                            "test".into(),
                            HealthParams::default(),
                            prober,
                            input_rx,
                            shutdown_rx,
                            report_tx,
                        )
                        .await;
                    })
                })
            });
            let wait_for = |rx: &mut tokio::sync::mpsc::Receiver<HealthReport>, state: State| {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    assert!(
                        Instant::now() < deadline,
                        "expected the uplink to become {state}"
                    );
                    let Some(r) = rx.blocking_recv() else {
                        panic!("monitor ended before the uplink became {state}")
                    };
                    if let ReportKind::Transition(t) = r.kind {
                        if t.to == state {
                            return (Instant::now(), r);
                        }
                        panic!("unexpected transition {t:?}");
                    }
                }
            };
            wait_for(&mut report_rx, State::Up);
            // Let the RTT estimate settle as in steady operation; each trial starts the
            // blackout at another phase of the 300 ms round clock.
            thread::sleep(Duration::from_millis(1_500 + 67 * trial));
            let start = Instant::now();
            scene.target.nft(DROP_ALL).expect("install drop ruleset");
            let applied = start.elapsed();
            let (at, report) = wait_for(&mut report_rx, State::Down);
            let _ = shutdown_tx.send(true);
            task.join().expect("monitor thread");
            scene
                .target
                .exec("nft", &["delete", "table", "inet", "ilh_drop"])
                .expect("remove drop ruleset");
            let t = report.figures.history.last().copied().expect("history");
            eprintln!(
                "trial {trial}: Down after {:?} (nft took {applied:?}), reason: {}",
                at - start,
                t.reason
            );
            at - start
        });
        times.push(detected);
    }
    times.sort();
    eprintln!("silent blackout detection over 5 trials: {times:?}");
    let worst = *times.last().unwrap();
    assert!(
        worst <= Duration::from_secs(2),
        "expected detection <= 2 s, worst {worst:?}"
    );
}
