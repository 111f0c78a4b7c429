//! Observe mode logs what it would have blocked: the daemon in the lab with block
//! rules and `mode = "observe"`; LAN clients make several connections, some of
//! them to blocked destinations (a static rule, a provider learned through DNS,
//! both families), each of many packets. The daemon's log (captured from its
//! stderr) has exactly one structured line per would-be-blocked flow, naming the
//! client, the destination, the provider and the rule, and none for the flows no
//! rule blocks; the packets themselves all went through. Needs root.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use inferlane::lab::dns::{self, DnsServer};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const NAME: &str = "api.openai.com";
const MESSAGE: &str = "observe mode: flow would have been blocked";
/// Request/response exchanges per connection: many packets, one flow.
const EXCHANGES: usize = 5;

fn config(socket: &Path) -> String {
    format!(
        r#"
[daemon]
mode = "observe"
control_socket = "{socket}"
flow_table_size = 4096

[lan]
interfaces = ["lan0"]

[[classes]]
name = "fast"
dscp = "EF"
queue = "high"

# 1
[[rules]]
action = "block"
destinations = ["{dns4}/32", "{dns6}/128"]
ports = ["tcp:9100"]

# 2: before the provider's block
[[rules]]
class = "fast"
ports = ["tcp:9101"]

# 3
[[rules]]
action = "block"
providers = ["openai"]
"#,
        socket = socket.display(),
        dns4 = addr::DNS_V4,
        dns6 = addr::DNS_V6,
    )
}

/// An echo server on `ip`:`port` in inet, a thread per connection.
fn echo_server(lab: &Lab, ip: IpAddr, port: u16) {
    let listener = lab.ns(Role::Inet).run_in("bind", move || TcpListener::bind((ip, port))).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// One connection from the LAN with EXCHANGES round trips; its local port.
fn connection(lab: &Lab, to: SocketAddr) -> u16 {
    let mut c = lab
        .ns(Role::Lan)
        .run_in("connect", move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for i in 0..EXCHANGES {
        let msg = format!("request {i}\n");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).unwrap_or_else(|e| panic!("{to}: the echo of exchange {i} (observe mode drops nothing): {e}"));
        assert_eq!(back, msg.as_bytes());
    }
    c.local_addr().unwrap().port()
}

/// The `key=value` fields of a tracing fmt line (values without spaces or quoted).
fn fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].rsplit(' ').next().unwrap_or("").to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (quoted[..end].to_string(), &quoted[(end + 1).min(quoted.len())..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        out.insert(key, value);
        rest = next;
    }
    out
}

#[test]
fn observe_mode_logs_each_flow_it_would_have_blocked_once() {
    if !require_root_or_skip("observe_mode_logs_each_flow_it_would_have_blocked_once") {
        return;
    }
    let work = WorkDir::new("observe").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    let v4 = IpAddr::V4(addr::SERVER_V4);
    let v6 = IpAddr::V6(addr::SERVER_V6);
    // The DNS server's addresses (no provider) also serve the statically blocked
    // port; the provider's address the rest.
    let (dns4, dns6) = (IpAddr::V4(addr::DNS_V4), IpAddr::V6(addr::DNS_V6));
    for ip in [dns4, dns6] {
        echo_server(&lab, ip, 9100);
    }
    for ip in [v4, v6] {
        for port in [9101, 443] {
            echo_server(&lab, ip, port);
        }
    }
    // api.openai.com is learned through DNS, so its flows have the provider at
    // their first packet.
    let _dns = DnsServer::start(&lab, &[(NAME, v4), (NAME, v6)]).unwrap();
    let resolver = lab.ns(Role::Lan).run_in("bind the stub resolver", || UdpSocket::bind("0.0.0.0:0")).unwrap();
    resolver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    for (id, is_v6) in [(1, false), (2, true)] {
        assert_eq!(dns::lookup(&resolver, id, NAME, is_v6).unwrap().len(), 1, "one address per family");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while daemon.status().unwrap().learning.addresses_learned < 2 {
        assert!(Instant::now() < deadline, "the daemon learned no addresses: {:?}", daemon.status().unwrap().learning);
        std::thread::sleep(Duration::from_millis(20));
    }

    // (destination, rule the line must name, provider) — None: no line expected.
    let plan: Vec<(SocketAddr, Option<(&str, &str)>)> = vec![
        (SocketAddr::new(dns4, 9100), Some(("1", "none"))),
        (SocketAddr::new(dns4, 9100), Some(("1", "none"))),
        (SocketAddr::new(dns6, 9100), Some(("1", "none"))),
        (SocketAddr::new(v4, 443), Some(("3", "openai"))),
        (SocketAddr::new(v6, 443), Some(("3", "openai"))),
        (SocketAddr::new(v4, 9101), None),
        (SocketAddr::new(v6, 9101), None),
    ];
    let client = |ip: IpAddr| if ip.is_ipv6() { IpAddr::V6(addr::LAN_CLIENT_V6.addr) } else { IpAddr::V4(addr::LAN_CLIENT_V4.addr) };
    let made: Vec<(SocketAddr, SocketAddr, Option<(&str, &str)>)> = plan
        .iter()
        .map(|(to, want)| (SocketAddr::new(client(to.ip()), connection(&lab, *to)), *to, *want))
        .collect();
    let would_block = daemon.status().unwrap().flow_table.stats.would_block;
    let blocked_flows = made.iter().filter(|m| m.2.is_some()).count() as u64;
    assert!(
        would_block >= blocked_flows * (EXCHANGES as u64 + 2),
        "expected the datapath to count every packet of the {blocked_flows} flows it would have blocked, saw {would_block}"
    );

    // Two scans (one a second) after the last connection: every flow was seen, and
    // seen again without a second line.
    std::thread::sleep(Duration::from_millis(2500));
    let log = daemon.log_text();
    let lines: Vec<BTreeMap<String, String>> = log.lines().filter(|l| l.contains(MESSAGE)).map(fields).collect();
    for (client, to, want) in &made {
        let mine: Vec<&BTreeMap<String, String>> =
            lines.iter().filter(|f| f.get("client") == Some(&client.to_string())).collect();
        match want {
            None => assert!(mine.is_empty(), "{client} -> {to}: no rule blocks it, yet logged: {mine:?}"),
            Some((rule, provider)) => {
                assert_eq!(mine.len(), 1, "{client} -> {to}: exactly one line expected, saw {mine:?}\n{log}");
                let f = mine[0];
                assert_eq!(f.get("destination"), Some(&to.to_string()), "{client}: {f:?}");
                assert_eq!(f.get("rule").map(String::as_str), Some(*rule), "{client}: {f:?}");
                assert_eq!(f.get("provider").map(String::as_str), Some(*provider), "{client}: {f:?}");
                assert_eq!(f.get("proto").map(String::as_str), Some("tcp"), "{client}: {f:?}");
                let source = if *provider == "openai" { "dns" } else { "static" };
                assert_eq!(f.get("source").map(String::as_str), Some(source), "{client}: {f:?}");
            }
        }
    }
    assert_eq!(lines.len() as u64, blocked_flows, "one line per would-be-blocked flow, nothing else:\n{log}");
    assert!(log.lines().filter(|l| l.contains(MESSAGE)).all(|l| l.contains(" INFO ")), "logged at info:\n{log}");
    eprintln!(
        "observe_e2e: {blocked_flows} flows, {would_block} packets counted as would-block, {} log lines, e.g.\n{}",
        lines.len(),
        log.lines().find(|l| l.contains(MESSAGE)).unwrap_or("")
    );
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
