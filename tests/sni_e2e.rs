//! TLS SNI through the lab: curl in the LAN connects by name (no DNS: --resolve)
//! to a TLS server in `inet` holding a lab certificate for the provider's real
//! name; the datapath copies the ClientHello out, the daemon names the provider
//! from its SNI, and every client packet after the ClientHello carries the class's
//! DSCP on the wire. IPv4 and IPv6. Needs root.

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

const NAME: &str = "api.anthropic.com";

fn config(socket: &Path) -> String {
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
providers = ["anthropic"]
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

/// (tos, source port, payload length) of each captured TCP packet to port 443.
fn client_packets(capture: &str) -> Vec<(u8, u16, usize)> {
    let lines: Vec<&str> = capture.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let (Some(at), Some(next)) = (l.find("tos 0x").or_else(|| l.find("class 0x")), lines.get(i + 1)) else { continue };
        let field = if l[at..].starts_with("tos") { 6 } else { 8 };
        let hex: String = l[at + field..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let tos = u8::from_str_radix(&hex, 16).unwrap();
        // IPv6: addresses are on the same line as the header; IPv4: on the next.
        let addrs = if l.contains(" > ") { *l } else { *next };
        let Some(gt) = addrs.find(" > ") else { continue };
        if !addrs[gt..].contains(".443:") {
            continue;
        }
        let sport: u16 = addrs[..gt].rsplit('.').next().unwrap().trim().parse().unwrap_or(0);
        let len: usize = addrs.rsplit("length ").next().unwrap_or("0").trim().parse().unwrap_or(0);
        out.push((tos, sport, len));
    }
    out
}

#[test]
fn sni_names_the_provider_before_the_first_application_data() {
    if !require_root_or_skip("sni_names_the_provider_before_the_first_application_data") {
        return;
    }
    let work = WorkDir::new("sni").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let (cert, key) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={NAME}"), "-addext", &format!("subjectAltName=DNS:{NAME}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "openssl req: {}", String::from_utf8_lossy(&st.stderr));
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    // One server per family: s_server's wildcard listener is IPv6-only here.
    for family in ["-4", "-6"] {
        lab.spawn(Role::Inet, "openssl", &["s_server", family, "-quiet", "-accept", "443", "-cert", &c, "-key", &k, "-www"]).unwrap();
    }
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    // Wait for the TLS server.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lab.run(Role::Inet, "ss", &["-Hltn", "sport = :443"]).unwrap().lines().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }

    let tcpdump = lab
        .spawn_piped(Role::Isp1, "tcpdump", &["-i", addr::ISP_DOWN_IF, "-l", "-t", "-nn", "-v", "tcp port 443"])
        .unwrap();
    let mut err = std::io::BufReader::new(tcpdump.stderr);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut err, &mut line).unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    for server in [addr::SERVER_V4.to_string(), format!("[{}]", addr::SERVER_V6)] {
        let out = lab
            .command(Role::Lan, "curl")
            .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &c])
            .args(["--resolve", &format!("{NAME}:443:{server}"), &format!("https://{NAME}/")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl via {server}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(tcpdump.pid).unwrap();
    let mut text = String::new();
    let mut stdout = tcpdump.stdout;
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();

    let f = flows(&socket);
    let tls: Vec<&FlowInfo> = f.iter().filter(|x| x.remote_port == 443 && x.proto == "tcp").collect();
    assert_eq!(tls.len(), 2, "one TLS flow per family: {f:#?}");
    for x in &tls {
        assert_eq!(x.provider.as_deref(), Some("anthropic"), "{x:?}");
        assert_eq!(x.name.as_deref(), Some(NAME), "{x:?}");
        assert_eq!((x.source.as_deref(), x.class.as_deref(), x.rule), (Some("sni"), Some("fast"), Some(1)), "{x:?}");
        assert_eq!(x.dscp, Some(46), "{x:?}");
        assert!(!x.pending && !x.ech, "{x:?}");
        // Timing from the datapath's timestamps: all there, and plausible for a
        // lab of veths (well under a second).
        for (what, v) in [("handshake RTT", x.handshake_rtt_us), ("LAN RTT", x.lan_rtt_us), ("TTFB", x.ttfb_us)] {
            let us = v.unwrap_or_else(|| panic!("no {what}: {x:?}"));
            assert!(us < 1_000_000, "{what} {us} µs: {x:?}");
        }
        assert!(!x.streaming, "a short response is not streaming: {x:?}");
    }
    // On the wire (NATed, at the ISP): per connection, the first client payload
    // packet is the ClientHello, sent before any verdict; every one after it —
    // Finished and the HTTP request, the first application data — carries EF.
    let packets = client_packets(&text);
    let mut connections: std::collections::BTreeMap<u16, Vec<(u8, usize)>> = Default::default();
    for (tos, sport, len) in packets.iter().filter(|p| p.1 != 443) {
        connections.entry(*sport).or_default().push((*tos, *len));
    }
    assert_eq!(connections.len(), 2, "two client connections expected in:\n{text}");
    for (port, pkts) in &connections {
        let payload: Vec<u8> = pkts.iter().filter(|(_, len)| *len > 0).map(|(tos, _)| *tos).collect();
        assert!(payload.len() >= 2, "connection :{port} sent {payload:?}");
        assert!(
            payload[1..].iter().all(|t| *t == 0xb8),
            "connection :{port}: TOS of client payload packets {payload:x?}: after the ClientHello all must be EF (0xb8)"
        );
    }
    let s = daemon.status().unwrap();
    assert!(s.learning.hellos >= 2 && s.learning.hello_errors == 0, "{:?}", s.learning);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
