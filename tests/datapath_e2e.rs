//! End to end through the lab: real UDP and TCP from the LAN client, the daemon's
//! classification seen on the wire (DSCP at the ISP, with the IPv4 checksum right
//! and ECN kept), exact per-flow counters, observe mode, live rule reloads, and
//! skb->mark / skb->priority acting on policy routing and HTB. Needs root.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

/// Classes and rules for these tests: UDP 7000 interactive (AF41), UDP 7001 bulk
/// (LE), UDP 7002 unclassified; TCP 5201 interactive.
fn config(socket: &Path, mode: &str, interactive_uplinks: &str) -> String {
    format!(
        r#"
[daemon]
mode = "{mode}"
control_socket = "{socket}"
flow_table_size = 4096

[lan]
interfaces = ["lan0"]

[[uplinks]]
name = "fiber"
interface = "wan0"

[[uplinks]]
name = "lte"
interface = "wwan0"
metered = true

[[classes]]
name = "interactive"
dscp = "AF41"
queue = "high"
uplinks = {interactive_uplinks}

[[classes]]
name = "bulk"
dscp = "LE"
queue = "low"
uplinks = ["fiber"]

[[rules]]
class = "interactive"
destinations = ["{s4}/32", "{s6}/128"]
ports = ["udp:7000", "tcp:5201"]

[[rules]]
class = "bulk"
destinations = ["{s4}/32", "{s6}/128"]
ports = ["udp:7001"]
"#,
        socket = socket.display(),
        s4 = addr::SERVER_V4,
        s6 = addr::SERVER_V6,
    )
}

/// ECN-capable transport codepoint plus DSCP CS5, as a client might send: the
/// datapath must replace the DSCP and keep the ECN bits.
const SENT_TOS: u8 = (40 << 2) | 0b10;

fn set_tos(sock: &UdpSocket, v6: bool, tos: u8) {
    let val: libc::c_int = tos as libc::c_int;
    let (level, name) = if v6 { (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) } else { (libc::IPPROTO_IP, libc::IP_TOS) };
    // SAFETY: setsockopt with a valid fd and a pointer to an int of the given size.
    let rc = unsafe {
        libc::setsockopt(sock.as_raw_fd(), level, name, &val as *const _ as *const libc::c_void, std::mem::size_of_val(&val) as u32)
    };
    assert_eq!(rc, 0, "setsockopt TOS: {}", std::io::Error::last_os_error());
}

/// A UDP echo server in `inet` on `port`, both families; returns once bound.
fn echo_server(lab: &Lab, port: u16) -> Vec<std::thread::JoinHandle<()>> {
    let mut handles = Vec::new();
    for ip in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let sock = lab
            .ns(Role::Inet)
            .run_in("bind echo server", move || UdpSocket::bind(SocketAddr::new(ip, port)))
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }));
    }
    handles
}

/// Send `count` datagrams of `size` bytes from the LAN client to the server and
/// wait for each echo. Returns the client's local port.
fn ping_pong(lab: &Lab, server: IpAddr, port: u16, count: usize, size: usize) -> u16 {
    let bind: SocketAddr = match server {
        IpAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
        IpAddr::V6(_) => "[::]:0".parse().unwrap(),
    };
    let sock = lab.ns(Role::Lan).run_in("bind client", move || UdpSocket::bind(bind)).unwrap();
    set_tos(&sock, server.is_ipv6(), SENT_TOS);
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let payload = vec![0x5au8; size];
    let mut buf = [0u8; 2048];
    for i in 0..count {
        sock.send_to(&payload, SocketAddr::new(server, port)).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap_or_else(|e| panic!("echo {i} to {server}:{port} lost: {e}"));
        assert_eq!(n, size);
    }
    sock.local_addr().unwrap().port()
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

fn find<'a>(flows: &'a [FlowInfo], client_port: u16, remote: IpAddr, remote_port: u16) -> &'a FlowInfo {
    flows
        .iter()
        .find(|f| f.client_port == client_port && f.remote == remote && f.remote_port == remote_port)
        .unwrap_or_else(|| panic!("no flow :{client_port} -> {remote}:{remote_port} in {flows:#?}"))
}

/// tcpdump on the isp1 side of the router, packets to UDP ports 7000-7002.
struct Capture {
    pid: u32,
    out: std::process::ChildStdout,
}

fn capture(lab: &mut Lab, iface_role: Role, count: usize) -> Capture {
    let c = count.to_string();
    let piped = lab
        .spawn_piped(iface_role, "tcpdump", &["-i", addr::ISP_DOWN_IF, "-l", "-t", "-nn", "-v", "-c", &c, "udp and dst portrange 7000-7002"])
        .unwrap();
    // tcpdump says "listening on" once the capture runs.
    let mut err = std::io::BufReader::new(piped.stderr);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    assert!(line.contains("listening"), "tcpdump did not start: {line}");
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    Capture { pid: piped.pid, out: piped.stdout }
}

fn finish(lab: &mut Lab, cap: Capture) -> String {
    // Fewer packets than expected must fail the test, not hang it: stop tcpdump.
    if lab.wait(cap.pid, Duration::from_secs(5)).is_err() {
        let _ = lab.stop(cap.pid);
    }
    let mut text = String::new();
    let mut out = cap.out;
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    text
}

/// The TOS / traffic class of every captured packet to `port`, from tcpdump -v.
fn tos_seen(capture: &str, port: u16, v6: bool) -> Vec<u8> {
    // tcpdump -v prints the IP header on one line and the addresses on the next
    // (IPv4), or both on one line (IPv6).
    let lines: Vec<&str> = capture.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let (field, text) = if v6 { ("class 0x", *l) } else { ("tos 0x", *l) };
        if !l.trim_start().starts_with(if v6 { "IP6" } else { "IP " }) {
            continue;
        }
        let next = if v6 { *l } else { lines.get(i + 1).copied().unwrap_or("") };
        if !next.contains(&format!(".{port}:")) {
            continue;
        }
        let Some(at) = text.find(field) else { continue };
        let hex: String = text[at + field.len()..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        out.push(u8::from_str_radix(&hex, 16).unwrap());
    }
    out
}

#[test]
fn dscp_on_the_wire_and_exact_flow_counters() {
    if !require_root_or_skip("dscp_on_the_wire_and_exact_flow_counters") {
        return;
    }
    let work = WorkDir::new("dp-dscp").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, "enforce", r#"["fiber"]"#)).unwrap();
    let mut servers = Vec::new();
    for port in [7000, 7001, 7002] {
        servers.extend(echo_server(&lab, port));
    }
    const N: usize = 50;
    const SIZE: usize = 300;
    let cap = capture(&mut lab, Role::Isp1, 6 * N);
    let s4 = IpAddr::V4(addr::SERVER_V4);
    let s6 = IpAddr::V6(addr::SERVER_V6);
    let mut ports = Vec::new();
    for server in [s4, s6] {
        for port in [7000, 7001, 7002] {
            ports.push((server, port, ping_pong(&lab, server, port, N, SIZE)));
        }
    }
    let text = finish(&mut lab, cap);
    assert!(!text.contains("bad cksum"), "IPv4 header checksum broken by the DSCP rewrite:\n{text}");

    let ecn = SENT_TOS & 0b11;
    for (server, port, expect_dscp) in [(s4, 7000, 34u8), (s4, 7001, 1), (s4, 7002, SENT_TOS >> 2), (s6, 7000, 34), (s6, 7001, 1), (s6, 7002, SENT_TOS >> 2)] {
        let seen = tos_seen(&text, port, server.is_ipv6());
        assert_eq!(seen.len(), N, "{server}:{port}: captured {} packets, expected {N}:\n{text}", seen.len());
        let expect = (expect_dscp << 2) | ecn;
        assert!(seen.iter().all(|t| *t == expect), "{server}:{port}: TOS on the wire {seen:x?}, expected 0x{expect:02x}");
    }

    let all = flows(&socket);
    for (server, port, client_port) in &ports {
        let f = find(&all, *client_port, *server, *port);
        let ip_header = if server.is_ipv6() { 40 } else { 20 };
        let bytes = (N * (SIZE + 8 + ip_header)) as u64;
        assert_eq!((f.up_packets, f.up_bytes), (N as u64, bytes), "upload of {f:?}");
        assert_eq!((f.down_packets, f.down_bytes), (N as u64, bytes), "download of {f:?}");
        assert_eq!(f.dscp_seen, SENT_TOS >> 2, "DSCP as sent: {f:?}");
        let (class, rule) = match port {
            7000 => (Some("interactive"), Some(1)),
            7001 => (Some("bulk"), Some(2)),
            _ => (None, None),
        };
        assert_eq!((f.class.as_deref(), f.rule), (class, rule), "verdict of {f:?}");
        assert_eq!(f.source.as_deref(), class.map(|_| "static"));
    }
    let status = daemon.status().unwrap();
    assert_eq!(status.flow_table.stats.dscp_rewritten, 4 * N as u64, "DSCP rewrites counted: {:?}", status.flow_table);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
    drop(servers);
}

#[test]
fn observe_mode_classifies_but_changes_nothing() {
    if !require_root_or_skip("observe_mode_classifies_but_changes_nothing") {
        return;
    }
    let work = WorkDir::new("dp-observe").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, "observe", r#"["fiber"]"#)).unwrap();
    let _servers = echo_server(&lab, 7000);
    let cap = capture(&mut lab, Role::Isp1, 10);
    let s4 = IpAddr::V4(addr::SERVER_V4);
    let port = ping_pong(&lab, s4, 7000, 10, 100);
    let text = finish(&mut lab, cap);
    let seen = tos_seen(&text, 7000, false);
    assert_eq!(seen, vec![SENT_TOS; 10], "observe mode rewrote DSCP:\n{text}");
    let f = flows(&socket);
    let f = find(&f, port, s4, 7000);
    assert_eq!(f.class.as_deref(), Some("interactive"), "observe mode still classifies: {f:?}");
    assert_eq!(daemon.status().unwrap().mode, "observe");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn reload_swaps_rules_for_new_flows_and_refuses_bad_configs() {
    if !require_root_or_skip("reload_swaps_rules_for_new_flows_and_refuses_bad_configs") {
        return;
    }
    let work = WorkDir::new("dp-reload").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let cfg_path = work.path().join("inferlane.toml");
    let original = config(&socket, "enforce", r#"["fiber"]"#);
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &original).unwrap();
    let _servers = echo_server(&lab, 7000);
    let s4 = IpAddr::V4(addr::SERVER_V4);
    let reload = || Command::new(bin()).args(["reload", "--socket"]).arg(&socket).output().unwrap();

    // The old flow: a socket kept open across the reload.
    let old_sock = lab.ns(Role::Lan).run_in("bind", || UdpSocket::bind("0.0.0.0:0")).unwrap();
    old_sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    old_sock.send_to(b"before", (addr::SERVER_V4, 7000)).unwrap();
    old_sock.recv_from(&mut buf).unwrap();
    let old_port = old_sock.local_addr().unwrap().port();

    // Swap: UDP 7000 becomes bulk.
    std::fs::write(&cfg_path, original.replace(r#"ports = ["udp:7000", "tcp:5201"]"#, r#"ports = ["tcp:5201"]"#).replace(r#"ports = ["udp:7001"]"#, r#"ports = ["udp:7000", "udp:7001"]"#)).unwrap();
    let out = reload();
    assert!(out.status.success(), "reload refused: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2"));

    let new_port = ping_pong(&lab, s4, 7000, 3, 64);
    old_sock.send_to(b"after", (addr::SERVER_V4, 7000)).unwrap();
    old_sock.recv_from(&mut buf).unwrap();
    let f = match client::request(&socket, &Request::Flows) {
        Ok(Response::Flows { flows }) => flows,
        other => panic!("flows answered {other:?}; daemon log:\n{}", daemon.log_text()),
    };
    assert_eq!(find(&f, new_port, s4, 7000).class.as_deref(), Some("bulk"), "new flow got the new rules");
    let old = find(&f, old_port, s4, 7000);
    assert_eq!(old.class.as_deref(), Some("interactive"), "existing flow kept its verdict");
    assert_eq!(old.up_packets, 2);

    // An invalid config is refused whole; the running rules stay.
    std::fs::write(&cfg_path, original.replace("AF41", "AF99")).unwrap();
    let out = reload();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "invalid config applied");
    assert!(stderr.contains("AF99") && stderr.contains("inferlane.toml:"), "refusal does not locate the error: {stderr}");
    // So is a change that needs a restart, by SIGHUP this time.
    std::fs::write(&cfg_path, original.replace(r#"interfaces = ["lan0"]"#, r#"interfaces = ["lan0", "lan1"]"#)).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid().unwrap() as i32), nix::sys::signal::Signal::SIGHUP).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        let s = daemon.status().unwrap();
        if s.rules.reload_failures == 2 || std::time::Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((status.rules.generation, status.rules.reloads, status.rules.reload_failures), (2, 1, 2), "{:?}", status.rules);
    assert!(status.rules.last_reload_error.as_deref().unwrap_or("").contains("lan.interfaces"), "{:?}", status.rules);
    let third = ping_pong(&lab, s4, 7000, 1, 64);
    assert_eq!(find(&flows(&socket), third, s4, 7000).class.as_deref(), Some("bulk"), "generation 2 rules still in force");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

/// skb->mark steers through a fwmark rule (policy routing is the uplink module's
/// job; here the test builds it with iproute2 as scenery), and skb->priority
/// picks the HTB class directly.
#[test]
fn mark_and_priority_drive_policy_routing_and_htb() {
    if !require_root_or_skip("mark_and_priority_drive_policy_routing_and_htb") {
        return;
    }
    let work = WorkDir::new("dp-mark").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    // interactive prefers lte (uplink 2): classified | uplink 2 | class 1, whatever the
    // queue bits (rule mask 0x1fff0000).
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, "enforce", r#"["lte", "fiber"]"#)).unwrap();
    {
    let r = |args: &[&str]| lab.run(Role::Router, "ip", args).unwrap();
    r(&["route", "add", "default", "via", &addr::ISP2_DOWN_V4.addr.to_string(), "dev", "wwan0", "table", "100"]);
    r(&["rule", "add", "fwmark", "0x12010000/0x1fff0000", "table", "100", "priority", "100"]);
    r(&["-6", "route", "add", "default", "via", &addr::ISP2_DOWN_V6.addr.to_string(), "dev", "wwan0", "table", "100"]);
    r(&["-6", "rule", "add", "fwmark", "0x12010000/0x1fff0000", "table", "100", "priority", "100"]);
    }
    let tc = |lab: &Lab, args: &[&str]| lab.run(Role::Router, "tc", args).unwrap();
    tc(&lab, &["qdisc", "add", "dev", "wwan0", "root", "handle", "1a1:", "htb", "default", "20"]);
    for (minor, _) in [("10", "high"), ("20", "normal"), ("30", "low")] {
        tc(&lab, &["class", "add", "dev", "wwan0", "parent", "1a1:", "classid", &format!("1a1:{minor}"), "htb", "rate", "100mbit"]);
    }
    let _servers = echo_server(&lab, 7000);
    let cap = capture(&mut lab, Role::Isp2, 20);
    let s4 = IpAddr::V4(addr::SERVER_V4);
    let port = ping_pong(&lab, s4, 7000, 10, 100);
    let _ = ping_pong(&lab, IpAddr::V6(addr::SERVER_V6), 7000, 10, 100);
    let text = finish(&mut lab, cap);
    assert_eq!(tos_seen(&text, 7000, false).len(), 10, "interactive IPv4 flow did not leave by isp2:\n{text}");
    assert_eq!(tos_seen(&text, 7000, true).len(), 10, "interactive IPv6 flow did not leave by isp2:\n{text}");
    let f = flows(&socket);
    let f = find(&f, port, s4, 7000);
    assert_eq!(f.mark, 0x3201_0000, "queue high | classified | uplink lte | class 1: {f:?}");
    assert_eq!(f.priority, 0x01a1_0010, "{f:?}");
    let classes = tc(&lab, &["-s", "class", "show", "dev", "wwan0"]);
    // "class htb 1a1:10 root ..." followed by " Sent 2800 bytes 20 pkt ...".
    let packets = |id: &str| -> u64 {
        let at = classes.find(&format!("class htb {id} ")).unwrap_or_else(|| panic!("no class {id}: {classes}"));
        let sent = &classes[at..][classes[at..].find("Sent ").unwrap()..];
        sent.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    assert!(packets("1a1:10") >= 20, "high queue saw {} packets: {classes}", packets("1a1:10"));
    assert_eq!(packets("1a1:30"), 0, "low queue got interactive packets: {classes}");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

/// A token stream (many small chunks over more than a second, as server-sent
/// events arrive) is flagged streaming; a bulk response of the same bytes in one
/// go is not. Timing fields are filled for both.
#[test]
fn streaming_responses_are_flagged_and_timed() {
    if !require_root_or_skip("streaming_responses_are_flagged_and_timed") {
        return;
    }
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    let work = WorkDir::new("dp-stream").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, "enforce", r#"["fiber"]"#)).unwrap();
    let listener = lab.ns(Role::Inet).run_in("bind", || TcpListener::bind((addr::SERVER_V4, 8080))).unwrap();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().take(2).enumerate() {
            let mut conn = conn.unwrap();
            conn.set_nodelay(true).unwrap();
            let mut req = [0u8; 256];
            let _ = conn.read(&mut req);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
            if i == 0 {
                // 40 events of a few tokens, 40 ms apart: 1.6 s of streaming.
                for n in 0..40 {
                    let _ = conn.write_all(format!("data: {{\"token\": \"t{n:03}\"}}\n\n").as_bytes());
                    std::thread::sleep(Duration::from_millis(40));
                }
            } else {
                let _ = conn.write_all(&vec![b'x'; 40 * 30]);
            }
        }
    });
    let fetch = || {
        let mut c = lab
            .ns(Role::Lan)
            .run_in("connect", || TcpStream::connect_timeout(&SocketAddr::from((addr::SERVER_V4, 8080)), Duration::from_secs(2)))
            .unwrap();
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: lab\r\n\r\n").unwrap();
        let mut body = Vec::new();
        c.read_to_end(&mut body).unwrap();
        c.local_addr().unwrap().port()
    };
    let streamed = fetch();
    let bulk = fetch();
    let all = flows(&socket);
    let s = find(&all, streamed, IpAddr::V4(addr::SERVER_V4), 8080);
    let b = find(&all, bulk, IpAddr::V4(addr::SERVER_V4), 8080);
    assert!(s.streaming, "token stream not flagged: {s:?}");
    assert!(!b.streaming, "one-shot response flagged streaming: {b:?}");
    for f in [s, b] {
        assert!(f.handshake_rtt_us.is_some() && f.lan_rtt_us.is_some() && f.ttfb_us.is_some(), "timing missing: {f:?}");
    }
    assert!(s.response_ms.unwrap() >= 1400, "the stream lasted about 1.6 s: {s:?}");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

/// A block rule stops the flow at its first packet (the SYN): the server never
/// sees it, and the client gets a RST from the router at once ("connection
/// refused") instead of retrying for a minute. IPv4 and IPv6.
#[test]
fn blocked_tcp_flows_are_refused_at_the_syn() {
    if !require_root_or_skip("blocked_tcp_flows_are_refused_at_the_syn") {
        return;
    }
    use std::net::{TcpListener, TcpStream};
    let work = WorkDir::new("dp-block").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = config(&socket, "enforce", r#"["fiber"]"#)
        + &format!(
            "\n[[rules]]\naction = \"block\"\ndestinations = [\"{}/32\", \"{}/128\"]\nports = [\"tcp:7100\"]\n",
            addr::SERVER_V4,
            addr::SERVER_V6
        );
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    let mut listeners = Vec::new();
    for ip in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let l = lab.ns(Role::Inet).run_in("bind", move || TcpListener::bind((ip, 7100))).unwrap();
        l.set_nonblocking(true).unwrap();
        listeners.push(l);
    }
    for ip in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let started = std::time::Instant::now();
        let err = lab
            .ns(Role::Lan)
            .run_in("connect", move || TcpStream::connect_timeout(&SocketAddr::new(ip, 7100), Duration::from_secs(3)))
            .expect_err("a blocked connection was established");
        let elapsed = started.elapsed();
        assert!(err.to_string().contains("refused"), "{ip}: expected connection refused, got {err}");
        assert!(elapsed < Duration::from_millis(500), "{ip}: the refusal took {elapsed:?}");
    }
    for l in &listeners {
        assert!(l.accept().is_err(), "a blocked SYN reached the server");
    }
    let s = daemon.status().unwrap();
    assert!(s.flow_table.stats.blocked >= 2, "{:?}", s.flow_table.stats);
    let f = flows(&socket);
    assert_eq!(f.iter().filter(|x| x.blocked && x.remote_port == 7100).count(), 2, "{f:#?}");
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
