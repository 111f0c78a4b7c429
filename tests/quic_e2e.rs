//! QUIC through the lab: a LAN client sends real QUIC client Initials (a rustls
//! ClientHello for api.openai.com, sealed with the Initial keys of its own DCID) to
//! UDP port 443 in `inet`; the datapath copies the long-header datagrams out, the
//! daemon decrypts them, reassembles the ClientHello, names the provider from its SNI
//! and hands the verdict back; the flow's packets after that carry the class's DSCP
//! on the wire. IPv4 and IPv6, QUIC v1 in one Initial and QUIC v2 with a ClientHello
//! split over two. Needs root.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferlane::classify::quic::{QuicVersion, MIN_INITIAL_DATAGRAM};
use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const NAME: &str = "api.openai.com";
/// Datagrams each client sends after the verdict was handed to the datapath.
const AFTER: usize = 3;
/// DSCP EF (46) in the TOS / traffic class byte, ECN bits clear.
const TOS_EF: u8 = 46 << 2;
const WAIT: Duration = Duration::from_secs(5);

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
providers = ["openai"]
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

// ---------------------------------------------------------------------------------
// A QUIC client's first datagrams (the builder of tests/quic_initial.rs, trimmed)
// ---------------------------------------------------------------------------------

/// A QUIC variable-length integer (RFC 9000 §16), up to 4 bytes.
fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=0x3f => vec![v as u8],
        0x40..=0x3fff => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        _ => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
    }
}

/// A CRYPTO frame carrying `data` at stream offset `offset`.
fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x06];
    frame.extend(varint(offset as u64));
    frame.extend(varint(data.len() as u64));
    frame.extend(data);
    frame
}

fn rustls_version(version: QuicVersion) -> rustls::quic::Version {
    match version {
        QuicVersion::V1 => rustls::quic::Version::V1,
        QuicVersion::V2 => rustls::quic::Version::V2,
    }
}

/// The ClientHello a rustls QUIC client starts its CRYPTO stream with. A reserved
/// (GREASE) transport parameter of `grease_len` bytes makes it as large as wanted:
/// 1500 bytes gives a post-quantum browser's size, too big for one Initial.
fn client_hello(version: QuicVersion, grease_len: usize) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    let mut params = varint(0x04); // initial_max_data = 1 MiB
    params.extend(varint(4));
    params.extend(varint(1 << 20));
    params.extend(varint(27)); // a reserved parameter ID (31 * N + 27)
    params.extend(varint(grease_len as u64));
    params.extend(std::iter::repeat_n(0xa5, grease_len));
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let mut client = rustls::quic::ClientConnection::new(Arc::new(config), rustls_version(version), name, params).unwrap();
    let mut stream = Vec::new();
    client.write_hs(&mut stream);
    assert_eq!(stream.first(), Some(&0x01), "rustls starts with a ClientHello");
    stream
}

/// Seals `frames` into a client Initial the way a client does, with rustls' Initial
/// keys for `dcid`: long header (no token, 2-byte Length, 2-byte packet number),
/// PADDING up to a 1200-byte datagram, AES-128-GCM, then header protection.
fn seal_initial(version: QuicVersion, dcid: &[u8], packet_number: u16, frames: &[u8]) -> Vec<u8> {
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .unwrap();
    let keys = suite.keys(dcid, rustls::Side::Client, rustls_version(version));
    let scid = [0xc1, 0x1e, 0x47];
    // Long header, fixed bit, the Initial type (v2 renumbered it: RFC 9369 §3.2),
    // packet number length 2.
    let initial_type = match version {
        QuicVersion::V1 => 0b00,
        QuicVersion::V2 => 0b01,
    };
    let mut header = vec![0xc0 | initial_type << 4 | 0x01];
    header.extend(version.wire().to_be_bytes());
    header.push(dcid.len() as u8);
    header.extend(dcid);
    header.push(scid.len() as u8);
    header.extend(scid);
    header.push(0); // token length
    let length_at = header.len();
    header.extend([0, 0]);
    let pn_offset = header.len();
    header.extend(packet_number.to_be_bytes());

    let mut payload = frames.to_vec();
    let padded = MIN_INITIAL_DATAGRAM - header.len() - 16; // 16: the AEAD tag
    if payload.len() < padded {
        payload.resize(padded, 0); // PADDING frames
    }
    let length = (2 + payload.len() + 16) as u16;
    header[length_at..length_at + 2].copy_from_slice(&(length | 0x4000).to_be_bytes());
    let tag = keys
        .local
        .packet
        .encrypt_in_place(u64::from(packet_number), &header, &mut payload)
        .unwrap();
    let mut packet = header;
    packet.extend(payload);
    packet.extend(tag.as_ref());
    // Header protection: the sample starts 4 bytes after the packet number's start.
    let (head, rest) = packet.split_at_mut(pn_offset + 4);
    let (first, after_first) = head.split_at_mut(1);
    let pn = &mut after_first[pn_offset - 1..pn_offset + 1];
    keys.local.header.encrypt_in_place(&rest[..16], &mut first[0], pn).unwrap();
    packet
}

/// xorshift64: deterministic filler for the packets after the handshake.
struct XorShift(u64);

impl XorShift {
    fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u8
    }
}

// ---------------------------------------------------------------------------------
// The lab side
// ---------------------------------------------------------------------------------

/// One client connection to drive.
struct Case {
    what: &'static str,
    server: IpAddr,
    version: QuicVersion,
    /// The Initial datagrams, in the order they are sent.
    initials: Vec<Vec<u8>>,
}

fn case(what: &'static str, server: IpAddr, version: QuicVersion, split: bool, dcid_seed: u8) -> Case {
    let dcid: Vec<u8> = (0..8u8).map(|i| dcid_seed.wrapping_add(i.wrapping_mul(29))).collect();
    let initials = if split {
        let hello = client_hello(version, 1500);
        assert!(hello.len() > 1500, "ClientHello of {} bytes must need two Initials", hello.len());
        let cut = 1100;
        vec![
            seal_initial(version, &dcid, 0, &crypto_frame(0, &hello[..cut])),
            seal_initial(version, &dcid, 1, &crypto_frame(cut, &hello[cut..])),
        ]
    } else {
        vec![seal_initial(version, &dcid, 0, &crypto_frame(0, &client_hello(version, 0)))]
    };
    for d in &initials {
        assert_eq!(d.len(), MIN_INITIAL_DATAGRAM, "{what}: a client pads its Initial datagrams");
    }
    Case { what, server, version, initials }
}

/// Reads datagrams from a sink until `n` arrived (or the deadline passes) and
/// returns their sources. The sinks are plain UDP sockets: no QUIC server is needed,
/// since classification happens on the client's Initials alone.
fn drain(sink: &UdpSocket, n: usize) -> Vec<(SocketAddr, usize)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < n && Instant::now() < deadline {
        match sink.recv_from(&mut buf) {
            Ok((len, from)) => got.push((from, len)),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("sink recv: {e}"),
        }
    }
    got
}

/// Polls `f` every 10 ms until it is true; false when `WAIT` passed first.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The daemon's `flow_verdicts` map, found through its lan_ingress program.
fn verdict_map_id(lab: &Lab, lan_ingress: u32) -> u32 {
    let prog: serde_json::Value =
        serde_json::from_str(&lab.run(Role::Router, "bpftool", &["-j", "prog", "show", "id", &lan_ingress.to_string()]).unwrap())
            .unwrap();
    for id in prog["map_ids"].as_array().expect("map_ids").iter().filter_map(|v| v.as_u64()) {
        let map: serde_json::Value =
            serde_json::from_str(&lab.run(Role::Router, "bpftool", &["-j", "map", "show", "id", &id.to_string()]).unwrap())
                .unwrap();
        if map["name"] == "flow_verdicts" {
            return id as u32;
        }
    }
    panic!("lan_ingress (prog {lan_ingress}) uses no flow_verdicts map: {prog}");
}

fn verdicts_waiting(lab: &Lab, map_id: u32) -> usize {
    let out = lab.run(Role::Router, "bpftool", &["-j", "map", "dump", "id", &map_id.to_string()]).unwrap();
    serde_json::from_str::<serde_json::Value>(&out).unwrap().as_array().map_or(0, |a| a.len())
}

/// A captured client datagram to port 443: (IPv6?, source port, TOS or traffic
/// class, UDP payload length). tcpdump -v prints the IP header on its own line for
/// IPv4 (addresses on the next line) and on the same line for IPv6; the UDP payload
/// length is taken from the IP header (tcpdump may dissect UDP/443 as QUIC).
fn client_datagrams(capture: &str) -> Vec<(bool, u16, u8, usize)> {
    let lines: Vec<&str> = capture.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let v6 = l.starts_with("IP6 ");
        if !v6 && !l.starts_with("IP ") {
            continue;
        }
        let field = |name: &str| -> Option<String> {
            let at = l.find(name)? + name.len();
            Some(l[at..].chars().take_while(|c| c.is_ascii_hexdigit()).collect())
        };
        let (tos, len) = if v6 {
            // tcpdump leaves out a traffic class of 0.
            let class = field("class 0x").or_else(|| Some("0".into()));
            (class, field("payload length: ").and_then(|s| s.parse::<usize>().ok()).map(|n| n - 8))
        } else {
            // The IP header's total length: the first "length " inside the parentheses.
            (field("tos 0x"), field(", length ").and_then(|s| s.parse::<usize>().ok()).map(|n| n - 28))
        };
        let (Some(tos), Some(len)) = (tos, len) else { continue };
        let addrs = if v6 { *l } else { lines.get(i + 1).copied().unwrap_or("") };
        let Some(gt) = addrs.find(" > ") else { continue };
        if !addrs[gt..].contains(".443: ") {
            continue;
        }
        let src = addrs[..gt].split_whitespace().last().unwrap_or("");
        let Ok(sport) = src.rsplit('.').next().unwrap_or("").parse() else { continue };
        out.push((v6, sport, u8::from_str_radix(&tos, 16).unwrap(), len));
    }
    out
}

#[test]
fn quic_initial_names_the_provider_and_later_datagrams_carry_its_dscp() {
    if !require_root_or_skip("quic_initial_names_the_provider_and_later_datagrams_carry_its_dscp") {
        return;
    }
    let started = Instant::now();
    let work = WorkDir::new("quic").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    let lan_ingress = daemon.status().unwrap().interfaces[0].prog_ids.lan_ingress;
    let verdicts = verdict_map_id(&lab, lan_ingress);

    // The servers: sinks that only count what arrives (classification needs no answer).
    let v4: IpAddr = addr::SERVER_V4.into();
    let v6: IpAddr = addr::SERVER_V6.into();
    let sinks: BTreeMap<bool, UdpSocket> = [v4, v6]
        .into_iter()
        .map(|ip| {
            let sock = lab
                .ns(Role::Inet)
                .run_in("bind the UDP/443 sink", || {
                    let s = UdpSocket::bind(SocketAddr::new(ip, 443))?;
                    s.set_read_timeout(Some(Duration::from_millis(50)))?;
                    Ok(s)
                })
                .unwrap();
            (ip.is_ipv6(), sock)
        })
        .collect();

    let tcpdump = lab
        .spawn_piped(Role::Isp1, "tcpdump", &["-i", addr::ISP_DOWN_IF, "-l", "-t", "-nn", "-v", "udp port 443"])
        .unwrap();
    let mut err = BufReader::new(tcpdump.stderr);
    let mut line = String::new();
    err.read_line(&mut line).unwrap(); // "listening on down0 ...": capturing from here
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let captured = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (captured, mut stdout) = (captured.clone(), tcpdump.stdout);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                captured.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };

    let cases = [
        case("IPv4, QUIC v1", v4, QuicVersion::V1, false, 0x11),
        case("IPv6, QUIC v1", v6, QuicVersion::V1, false, 0x22),
        case("IPv4, QUIC v2, ClientHello over two Initials", v4, QuicVersion::V2, true, 0x33),
        case("IPv6, QUIC v2, ClientHello over two Initials", v6, QuicVersion::V2, true, 0x44),
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    // Per case: the client's port in the LAN, and its NATed port as the server saw it.
    let mut ports = Vec::new();
    for (n, c) in cases.iter().enumerate() {
        let before = daemon.status().unwrap().learning;
        let client = lab
            .ns(Role::Lan)
            .run_in("open the QUIC client socket", || {
                let any: IpAddr = if c.server.is_ipv6() { "::".parse().unwrap() } else { "0.0.0.0".parse().unwrap() };
                let s = UdpSocket::bind(SocketAddr::new(any, 0))?;
                s.connect(SocketAddr::new(c.server, 443))?;
                Ok(s)
            })
            .unwrap();
        for d in &c.initials {
            client.send(d).unwrap();
        }
        // The daemon read the ClientHello...
        assert!(
            eventually(|| daemon.status().unwrap().learning.hellos > before.hellos),
            "{}: the daemon read no ClientHello: {:?}\n{}",
            c.what,
            daemon.status().unwrap().learning,
            daemon.log_text()
        );
        // ...and handed the verdict to the datapath: it counts the hello before it
        // writes the verdict (src/daemon.rs handle_hello), so wait for the map entry
        // too, or a datagram could overtake the verdict and end the wait unclassified.
        assert!(eventually(|| verdicts_waiting(&lab, verdicts) == 1), "{}: no verdict in flow_verdicts", c.what);
        // Datagrams after the handshake: short headers (0x40, fixed bit) with opaque
        // bytes; the first applies the verdict, and it and all after it carry EF.
        for i in 0..AFTER {
            let mut d: Vec<u8> = (0..60 + 20 * i + n).map(|_| rng.byte()).collect();
            d[0] = 0x40;
            client.send(&d).unwrap();
        }
        let sent = c.initials.len() + AFTER;
        let got = drain(&sinks[&c.server.is_ipv6()], sent);
        assert_eq!(got.len(), sent, "{}: the sink received {got:?}", c.what);
        let nat = got[0].0;
        assert!(got.iter().all(|(from, _)| *from == nat), "{}: one source expected: {got:?}", c.what);
        assert_eq!(verdicts_waiting(&lab, verdicts), 0, "{}: the verdict was not taken", c.what);
        ports.push((client.local_addr().unwrap().port(), nat.port()));
    }

    // The flows, as `inferlane flows` shows them.
    let f = flows(&socket);
    for (c, (port, _)) in cases.iter().zip(&ports) {
        let x = f
            .iter()
            .find(|x| x.proto == "udp" && x.remote == c.server && x.remote_port == 443 && x.client_port == *port)
            .unwrap_or_else(|| panic!("{}: no flow from port {port} in {f:#?}", c.what));
        assert_eq!(x.provider.as_deref(), Some("openai"), "{}: {x:?}", c.what);
        assert_eq!(x.name.as_deref(), Some(NAME), "{}: {x:?}", c.what);
        assert_eq!((x.source.as_deref(), x.class.as_deref(), x.rule), (Some("quic"), Some("fast"), Some(1)), "{}: {x:?}", c.what);
        assert_eq!(x.dscp, Some(46), "{}: {x:?}", c.what);
        assert!(!x.pending && !x.ech && !x.blocked, "{}: {x:?}", c.what);
        assert_eq!((x.dscp_seen, x.up_packets), (0, (c.initials.len() + AFTER) as u64), "{}: {x:?}", c.what);
    }
    let s = daemon.status().unwrap();
    let initials: usize = cases.iter().map(|c| c.initials.len()).sum();
    assert_eq!((s.learning.hellos, s.learning.hello_errors), (cases.len() as u64, 0), "{:?}", s.learning);
    assert_eq!(s.learning.punts, initials as u64, "every Initial punted once, nothing else: {:?}", s.learning);

    // On the wire, NATed, at the ISP: per connection the Initials as the client sent
    // them (TOS 0), then EF on every datagram after the verdict.
    let expected: usize = initials + AFTER * cases.len();
    let complete = eventually(|| {
        let text = captured.lock().unwrap();
        client_datagrams(&text).len() >= expected
    });
    lab.stop(tcpdump.pid).unwrap();
    reader.join().unwrap();
    let text = captured.lock().unwrap().clone();
    assert!(complete, "{expected} client datagrams expected in the capture:\n{text}");
    let wire = client_datagrams(&text);
    for (c, (_, nat)) in cases.iter().zip(&ports) {
        let seen: Vec<(u8, usize)> =
            wire.iter().filter(|w| w.0 == c.server.is_ipv6() && w.1 == *nat).map(|w| (w.2, w.3)).collect();
        let mut want: Vec<(u8, usize)> = c.initials.iter().map(|d| (0, d.len())).collect();
        want.extend((0..AFTER).map(|i| (TOS_EF, 60 + 20 * i + cases.iter().position(|x| x.what == c.what).unwrap())));
        assert_eq!(seen, want, "{} ({:?}, NATed port {nat}): (TOS, length) on the wire\n{text}", c.what, c.version);
    }
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
    eprintln!("quic_e2e: {} connections checked in {:.1?}", cases.len(), started.elapsed());
}
