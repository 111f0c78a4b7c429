//! The two recognition budgets of issue 4, measured through the lab with real
//! clients and the daemon running:
//! - the SNI verdict is in place before the client's first application-data
//!   packet in ≥ 99% of connections: 100 curl TLS connections (no DNS, so only
//!   the ClientHello can name the provider), checked on the wire (DSCP at the ISP,
//!   after NAT) and in `inferlane flows`. Asserted.
//! - a flow to a DNS-learned address is classified at its first packet in ≥ 99%
//!   of connections made immediately after the lookup: 100 curl connections, each
//!   resolving a name no lookup answered before through the system resolver, and
//!   100 from a tight loop that connects microseconds after the answer. Asserted
//!   for both. (With learning in the daemon alone this was 85-91/100 for curl and
//!   23-29/100 for the tight loop: the answer reached the client while the daemon
//!   was still reading it. lan_egress now installs the addresses of provider
//!   names itself before the answer goes on.)
//! Clients and servers run at the lowest CPU priority (nice 19): on a real
//! router they are other machines and never take the router's CPU from the
//! daemon, whereas in the lab they share it (and, on a shared test machine, with
//! other work). The figures are printed. Needs root.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::capture::{Capture, Packet};
use inferlane::lab::dns::{self, DnsServer};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const TRIALS: usize = 100;
/// The budget: at least this share of the trials.
const BUDGET: f64 = 0.99;
const DSCP_EF: u8 = 46;

fn config(socket: &Path, providers: &str) -> String {
    format!(
        r#"
[daemon]
control_socket = "{socket}"
flow_table_size = 4096

[lan]
interfaces = ["lan0"]

[[classes]]
name = "fast"
dscp = "EF"
queue = "high"

[[rules]]
class = "fast"
providers = [{providers}]
"#,
        socket = socket.display()
    )
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

/// The two measurements run one after the other: each is about the daemon's
/// speed, and the other's hundred clients would be load it does not have on a
/// router.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn share(n: usize) -> f64 {
    n as f64 / TRIALS as f64
}

/// Trial i's address: half IPv4 (192.0.2.60-109), half IPv6, all on inet's
/// loopback inside the lab's server prefixes. `set` 1 (the tight loop) is IPv6
/// only, in another range.
fn trial_addr(set: u16, i: usize) -> IpAddr {
    if set == 0 && i % 2 == 0 {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 60 + (i / 2) as u8))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 1 + set, i as u16))
    }
}

/// /etc/netns/NAME/resolv.conf, which `ip netns exec` binds over /etc/resolv.conf:
/// the LAN's programs resolve through the lab DNS server. Removed on drop.
struct LanResolver(std::path::PathBuf);

impl LanResolver {
    fn install(lab: &Lab) -> LanResolver {
        let dir = Path::new("/etc/netns").join(lab.netns(Role::Lan));
        std::fs::create_dir_all(&dir).unwrap();
        let guard = LanResolver(dir);
        std::fs::write(guard.0.join("resolv.conf"), format!("nameserver {}\noptions timeout:1 attempts:2\n", addr::DNS_V4))
            .unwrap();
        guard
    }
}

impl Drop for LanResolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // /etc/netns itself only if nothing else uses it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// Per trial (address, client port): whether `inferlane flows` shows the flow
/// classified by DNS, and whether its SYN left with EF.
fn at_syn(f: &[FlowInfo], syns: &[&Packet], trials: &[(IpAddr, u16)]) -> (usize, usize, usize) {
    let by_dns = trials
        .iter()
        .filter(|(to, port)| {
            f.iter().any(|x| {
                x.remote == *to
                    && x.client_port == *port
                    && x.source.as_deref() == Some("dns")
                    && x.provider.as_deref() == Some("azure-openai")
                    && x.class.as_deref() == Some("fast")
            })
        })
        .count();
    let ef = trials.iter().filter(|(to, _)| syns.iter().any(|p| p.dst.ip() == *to && p.dscp == DSCP_EF)).count();
    let seen = trials.iter().filter(|(to, _)| syns.iter().any(|p| p.dst.ip() == *to)).count();
    (by_dns, ef, seen)
}

/// Two kinds of client, each connecting to a name no lookup answered before:
/// curl resolving through the system resolver (glibc, the lab DNS server in
/// resolv.conf) and connecting as soon as it has the address, and a tight loop
/// that sends the query itself and connects from the same thread within
/// microseconds of the answer. Both must meet the budget: the datapath installs
/// the addresses of provider names before the answer reaches the client.
#[test]
fn dns_learned_flows_are_classified_at_their_first_packet_in_99_percent() {
    if !require_root_or_skip("dns_learned_flows_are_classified_at_their_first_packet_in_99_percent") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let work = WorkDir::new("budget-dns").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let _resolv = LanResolver::install(&lab);
    let sets: Vec<Vec<(String, IpAddr)>> = (0..2u16)
        .map(|set| (0..TRIALS).map(|i| (format!("{}{i}.openai.azure.com", ["r", "s"][set as usize]), trial_addr(set, i))).collect())
        .collect();
    let script: String = sets
        .iter()
        .flatten()
        .map(|(_, a)| format!("addr add {a}/{} dev lo\n", if a.is_ipv6() { 128 } else { 32 }))
        .collect();
    lab.ns(Role::Inet).ip_batch(&script).unwrap();
    let zone: Vec<(&str, IpAddr)> = sets.iter().flatten().map(|(n, a)| (n.as_str(), *a)).collect();
    let _dns = DnsServer::start(&lab, &zone).unwrap();
    // One dual-stack listener answers on every address with an empty response.
    let listener = lab.ns(Role::Inet).run_in("bind", || TcpListener::bind("[::]:9443")).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut conn, b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, r#""azure-openai""#)).unwrap();
    let capture = Capture::start(&mut lab, Role::Isp1, addr::ISP_DOWN_IF, "tcp port 9443").unwrap();

    // curl: its own lookup (A and AAAA through glibc), then the connect.
    let mut curl_trials = Vec::new();
    for (name, to) in &sets[0] {
        let out = lab
            .command(Role::Lan, "nice")
            .args(["-n", "19", "curl"])
            .args(["-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{local_port} %{remote_ip}"])
            .arg(format!("http://{name}:9443/"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "curl {name}: {text} {}", String::from_utf8_lossy(&out.stderr));
        let (port, ip) = text.split_once(' ').unwrap();
        assert_eq!(ip.parse::<IpAddr>().unwrap(), *to, "{name} resolved through the lab DNS");
        curl_trials.push((*to, port.parse::<u16>().unwrap()));
    }

    // The tight loop, on one thread in the LAN: the answer arrives, the connect follows.
    let names = &sets[1];
    let loop_trials: Vec<(IpAddr, u16)> = lab
        .ns(Role::Lan)
        .run_in("lookups and connects", || {
            let resolver = UdpSocket::bind("0.0.0.0:0")?;
            resolver.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut out = Vec::new();
            for (i, (name, want)) in names.iter().enumerate() {
                let answer = dns::lookup(&resolver, i as u16 + 1, name, want.is_ipv6())?;
                let to = *answer.first().ok_or_else(|| std::io::Error::other(format!("no answer for {name}")))?;
                let c = TcpStream::connect_timeout(&SocketAddr::new(to, 9443), Duration::from_secs(2))?;
                out.push((to, c.local_addr()?.port()));
            }
            Ok(out)
        })
        .unwrap();

    let f = flows(&socket);
    let packets = capture.settled(Duration::from_millis(200), Duration::from_secs(5));
    capture.stop(&mut lab).unwrap();
    let syns: Vec<&Packet> = packets.iter().filter(|p| p.is_syn() && p.dst.port() == 9443).collect();
    let (curl_dns, curl_ef, curl_seen) = at_syn(&f, &syns, &curl_trials);
    let (loop_dns, loop_ef, loop_seen) = at_syn(&f, &syns, &loop_trials);
    let learning = daemon.status().unwrap().learning;
    eprintln!(
        "budget (DNS): curl (system resolver, then connect): {curl_dns}/{TRIALS} flows classified by DNS at their SYN, \
         {curl_ef}/{curl_seen} SYNs with EF on the wire; tight loop (connect µs after the answer): {loop_dns}/{TRIALS} \
         and {loop_ef}/{loop_seen}; {} answers read, {} addresses learned",
        learning.dns_answers, learning.addresses_learned
    );
    assert_eq!((curl_seen, loop_seen), (TRIALS, TRIALS), "every connection's SYN in the capture");
    assert!(share(curl_dns) >= BUDGET, "budget: ≥ 99% classified at the SYN, saw {curl_dns}/{TRIALS}");
    assert!(share(curl_ef) >= BUDGET, "budget: ≥ 99% of SYNs with the class's DSCP, saw {curl_ef}/{TRIALS}");
    assert!(share(loop_dns) >= BUDGET, "budget (tight loop): ≥ 99% classified at the SYN, saw {loop_dns}/{TRIALS}");
    assert!(share(loop_ef) >= BUDGET, "budget (tight loop): ≥ 99% of SYNs with EF, saw {loop_ef}/{TRIALS}");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn sni_verdict_precedes_the_first_application_data_in_99_percent() {
    if !require_root_or_skip("sni_verdict_precedes_the_first_application_data_in_99_percent") {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    const NAME: &str = "api.anthropic.com";
    let work = WorkDir::new("budget-sni").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={NAME}"), "-addext", &format!("subjectAltName=DNS:{NAME}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    for family in ["-4", "-6"] {
        lab.spawn(Role::Inet, "nice", &["-n", "19", "openssl", "s_server", family, "-quiet", "-accept", "443", "-cert", &c, "-key", &k, "-www"]).unwrap();
    }
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, r#""anthropic""#)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.run(Role::Inet, "ss", &["-Hltn", "sport = :443"]).unwrap().lines().count() < 2 {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let capture = Capture::start(&mut lab, Role::Isp1, addr::ISP_DOWN_IF, "tcp port 443").unwrap();

    let mut local_ports = Vec::new();
    for i in 0..TRIALS {
        let server = if i % 2 == 0 { addr::SERVER_V4.to_string() } else { format!("[{}]", addr::SERVER_V6) };
        let out = lab
            .command(Role::Lan, "nice")
            .args(["-n", "19", "curl"])
            .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code} %{local_port}", "--cacert", &c])
            .args(["--resolve", &format!("{NAME}:443:{server}"), &format!("https://{NAME}/")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (code, port) = text.split_once(' ').unwrap_or(("", ""));
        assert_eq!(code, "200", "curl {i} via {server}: {}", String::from_utf8_lossy(&out.stderr));
        local_ports.push((i % 2 == 1, port.parse::<u16>().unwrap()));
    }

    let f = flows(&socket);
    let named = local_ports
        .iter()
        .filter(|(v6, port)| {
            f.iter().any(|x| {
                x.client_port == *port
                    && x.remote.is_ipv6() == *v6
                    && x.source.as_deref() == Some("sni")
                    && x.provider.as_deref() == Some("anthropic")
                    && x.dscp == Some(DSCP_EF)
            })
        })
        .count();

    // On the wire: the client's connections, split at their SYNs (a NAT port may
    // be reused). Per connection the first payload packet is the ClientHello (sent
    // before any verdict can exist); the verdict is in time when every client
    // payload packet after it — Finished, then the request, the first application
    // data — carries EF.
    let packets = capture.settled(Duration::from_millis(200), Duration::from_secs(5));
    capture.stop(&mut lab).unwrap();
    let mut connections: BTreeMap<(bool, u16), Vec<Vec<&Packet>>> = BTreeMap::new();
    for p in packets.iter().filter(|p| p.dst.port() == 443) {
        let conns = connections.entry((p.is_v6(), p.src.port())).or_default();
        if p.is_syn() || conns.is_empty() {
            conns.push(Vec::new());
        }
        conns.last_mut().unwrap().push(p);
    }
    let all: Vec<&Vec<&Packet>> = connections.values().flatten().collect();
    let in_time = all
        .iter()
        .filter(|c| {
            let payload: Vec<u8> = c.iter().filter(|p| p.payload > 0).map(|p| p.dscp).collect();
            payload.len() >= 2 && payload[0] == 0 && payload[1..].iter().all(|d| *d == DSCP_EF)
        })
        .count();
    let late: Vec<Vec<(u8, usize)>> = all
        .iter()
        .filter(|c| {
            let payload: Vec<u8> = c.iter().filter(|p| p.payload > 0).map(|p| p.dscp).collect();
            !(payload.len() >= 2 && payload[0] == 0 && payload[1..].iter().all(|d| *d == DSCP_EF))
        })
        .map(|c| c.iter().map(|p| (p.dscp, p.payload)).collect())
        .collect();
    let s = daemon.status().unwrap();
    eprintln!(
        "budget (SNI): {in_time}/{} connections with the verdict before the first application data on the wire, \
         {named}/{TRIALS} flows named by SNI with EF (inferlane flows); {} ClientHellos read, {} not understood",
        all.len(),
        s.learning.hellos,
        s.learning.hello_errors
    );
    let log = daemon.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("not understood")).take(3).collect();
    if !errors.is_empty() {
        eprintln!("budget (SNI): daemon log (RUST_LOG=debug shows why):\n{}", errors.join("\n"));
    }
    let unnamed: Vec<String> = local_ports
        .iter()
        .filter(|(v6, port)| {
            !f.iter().any(|x| {
                x.client_port == *port && x.remote.is_ipv6() == *v6 && x.source.as_deref() == Some("sni") && x.dscp == Some(DSCP_EF)
            })
        })
        .map(|(v6, port)| format!("{port} (v6 {v6}): {:?}", f.iter().filter(|x| x.client_port == *port).collect::<Vec<_>>()))
        .collect();
    assert_eq!(all.len(), TRIALS, "every connection in the capture");
    assert!(share(named) >= BUDGET, "budget: ≥ 99% of flows named by SNI, saw {named}/{TRIALS}: {unnamed:#?}");
    assert!(
        share(in_time) >= BUDGET,
        "budget: ≥ 99% with the verdict before the first application data, saw {in_time}/{TRIALS}; late ones (DSCP, payload): {late:?}"
    );
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
