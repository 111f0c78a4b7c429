//! DNS learning through the lab: a resolver in `inet` answers the LAN client
//! (UDP and TCP, A and AAAA, through a CNAME), the datapath hands the answers to
//! the daemon, and the client's next connection to the answered address is
//! classified by provider at its first packet (the SYN). Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::Duration;

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};
use simple_dns::rdata::{RData, A, AAAA, CNAME};
use simple_dns::{Name, Packet, Question, ResourceRecord, CLASS, QTYPE, TYPE};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

/// A second server address for the CNAME'd provider, on inet's loopback.
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

fn config(socket: &Path) -> String {
    format!(
        r#"
[daemon]
control_socket = "{socket}"
flow_table_size = 4096

[lan]
interfaces = ["lan0"]

[[classes]]
name = "interactive"
dscp = "AF41"
queue = "high"

[[classes]]
name = "fast"
dscp = "EF"
queue = "high"

[[rules]]
class = "fast"
providers = ["openai"]
ports = ["tcp:443"]
"#,
        socket = socket.display()
    )
}

/// The zone: api.openai.com A/AAAA the lab server; api.anthropic.com is a CNAME
/// to a CDN name whose address is OTHER_V4.
fn answer(query: &[u8]) -> Vec<u8> {
    let q = Packet::parse(query).expect("a DNS query");
    let mut reply = Packet::new_reply(q.id());
    let question = q.questions[0].clone().into_owned();
    let name = question.qname.to_string();
    let qtype = question.qtype;
    reply.questions.push(question);
    let rr = |owner: &str, data: RData<'static>| {
        ResourceRecord::new(Name::new_unchecked(owner).into_owned(), CLASS::IN, 30, data)
    };
    match name.as_str() {
        "api.openai.com" if qtype == QTYPE::TYPE(TYPE::AAAA) => {
            reply.answers.push(rr("api.openai.com", RData::AAAA(AAAA { address: u128::from(addr::SERVER_V6) })))
        }
        "api.openai.com" => reply.answers.push(rr("api.openai.com", RData::A(A { address: u32::from(addr::SERVER_V4) }))),
        "api.anthropic.com" => {
            reply.answers.push(rr("api.anthropic.com", RData::CNAME(CNAME(Name::new_unchecked("edge.cdn.example").into_owned()))));
            reply.answers.push(rr("edge.cdn.example", RData::A(A { address: u32::from(OTHER_V4) })));
        }
        _ => {}
    }
    reply.build_bytes_vec().expect("reply builds")
}

fn query(id: u16, name: &str, qtype: TYPE) -> Vec<u8> {
    let mut q = Packet::new_query(id);
    q.questions.push(Question::new(Name::new_unchecked(name), QTYPE::TYPE(qtype), CLASS::IN.into(), false));
    q.build_bytes_vec().unwrap()
}

/// DNS over UDP and TCP on DNS_V4:53 in inet, answering until the sockets close.
fn resolver(lab: &Lab) {
    let udp = lab.ns(Role::Inet).run_in("bind dns", || UdpSocket::bind((addr::DNS_V4, 53))).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&answer(&buf[..n]), from);
        }
    });
    let tcp = lab.ns(Role::Inet).run_in("bind dns tcp", || TcpListener::bind((addr::DNS_V4, 53))).unwrap();
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if conn.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if conn.read_exact(&mut q).is_err() {
                continue;
            }
            let a = answer(&q);
            let mut out = (a.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&a);
            let _ = conn.write_all(&out);
        }
    });
}

fn resolve_udp(lab: &Lab, name: &str, qtype: TYPE) -> Vec<IpAddr> {
    let sock = lab.ns(Role::Lan).run_in("bind", || UdpSocket::bind("0.0.0.0:0")).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&query(1, name, qtype), (addr::DNS_V4, 53)).unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("DNS answer over UDP");
    addresses(&buf[..n])
}

fn resolve_tcp(lab: &Lab, name: &str, qtype: TYPE) -> Vec<IpAddr> {
    let mut conn = lab
        .ns(Role::Lan)
        .run_in("connect dns", || TcpStream::connect_timeout(&SocketAddr::from((addr::DNS_V4, 53)), Duration::from_secs(2)))
        .unwrap();
    let q = query(2, name, qtype);
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    conn.write_all(&out).unwrap();
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).unwrap();
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut a).unwrap();
    addresses(&a)
}

fn addresses(msg: &[u8]) -> Vec<IpAddr> {
    let p = Packet::parse(msg).unwrap();
    p.answers
        .iter()
        .filter_map(|rr| match &rr.rdata {
            RData::A(a) => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
            RData::AAAA(a) => Some(IpAddr::V6(Ipv6Addr::from(a.address))),
            _ => None,
        })
        .collect()
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

/// Open a TCP connection attempt to `to` from the client; only the SYN matters.
fn syn(lab: &Lab, to: SocketAddr) -> u16 {
    let stream = lab.ns(Role::Lan).run_in("connect", move || TcpStream::connect_timeout(&to, Duration::from_millis(300)));
    match stream {
        Ok(s) => s.local_addr().unwrap().port(),
        // No listener behind OTHER_V4: the SYN still went out; find it by remote.
        Err(_) => 0,
    }
}

fn wait_learned(daemon: &DaemonProcess, at_least: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let s = daemon.status().unwrap();
        if s.learning.addresses_learned >= at_least {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "only {} addresses learned: {:?}", s.learning.addresses_learned, s.learning);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dns_answers_classify_the_next_connection_at_its_syn() {
    if !require_root_or_skip("dns_answers_classify_the_next_connection_at_its_syn") {
        return;
    }
    let work = WorkDir::new("learn").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    lab.run(Role::Inet, "ip", &["addr", "add", &format!("{OTHER_V4}/32"), "dev", "lo"]).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    resolver(&lab);
    let https4 = lab.ns(Role::Inet).run_in("bind", || TcpListener::bind((addr::SERVER_V4, 443))).unwrap();
    let https6 = lab.ns(Role::Inet).run_in("bind", || TcpListener::bind((addr::SERVER_V6, 443))).unwrap();

    // Before any answer, a connection to the server is just traffic.
    let before = syn(&lab, SocketAddr::from((addr::SERVER_V4, 443)));
    let f = flows(&socket);
    let early = f.iter().find(|f| f.client_port == before && f.remote_port == 443).expect("flow before learning");
    assert_eq!((early.provider.as_deref(), early.class.as_deref()), (None, None), "{early:?}");

    // UDP, A record: api.openai.com -> SERVER_V4.
    assert_eq!(resolve_udp(&lab, "api.openai.com", TYPE::A), vec![IpAddr::V4(addr::SERVER_V4)]);
    // TCP, AAAA record: api.openai.com -> SERVER_V6.
    assert_eq!(resolve_tcp(&lab, "api.openai.com", TYPE::AAAA), vec![IpAddr::V6(addr::SERVER_V6)]);
    // A CNAME chain: the address record belongs to the CDN name.
    assert_eq!(resolve_udp(&lab, "api.anthropic.com", TYPE::A), vec![IpAddr::V4(OTHER_V4)]);
    wait_learned(&daemon, 3);

    let p4 = syn(&lab, SocketAddr::from((addr::SERVER_V4, 443)));
    let p6 = syn(&lab, SocketAddr::from((addr::SERVER_V6, 443)));
    let _ = syn(&lab, SocketAddr::from((OTHER_V4, 443)));
    let f = flows(&socket);
    let by = |remote: IpAddr, port: u16| {
        f.iter()
            .find(|x| x.remote == remote && x.remote_port == 443 && (port == 0 || x.client_port == port))
            .unwrap_or_else(|| panic!("no flow to {remote}:443 in {f:#?}"))
    };
    for (remote, port) in [(IpAddr::V4(addr::SERVER_V4), p4), (IpAddr::V6(addr::SERVER_V6), p6)] {
        let x = by(remote, port);
        assert_eq!(x.provider.as_deref(), Some("openai"), "{x:?}");
        assert_eq!((x.class.as_deref(), x.rule, x.source.as_deref()), (Some("fast"), Some(1), Some("dns")), "{x:?}");
        assert_eq!(x.dscp, Some(46), "EF on the provider's flow: {x:?}");
        assert!(x.up_packets >= 1);
    }
    // No rule names anthropic: its catalog class ("interactive") is a configured
    // class, so that is what its flows get.
    let x = by(IpAddr::V4(OTHER_V4), 0);
    assert_eq!(x.provider.as_deref(), Some("anthropic"), "{x:?}");
    assert_eq!((x.class.as_deref(), x.rule, x.source.as_deref()), (Some("interactive"), None, Some("dns")), "{x:?}");
    // The flow from before the answer kept its verdict.
    let f2 = flows(&socket);
    let early = f2.iter().find(|f| f.client_port == before && f.remote_port == 443).unwrap();
    assert_eq!(early.provider, None);

    let s = daemon.status().unwrap();
    assert!(s.learning.dns_answers >= 3 && s.learning.dns_errors == 0, "{:?}", s.learning);
    assert_eq!(s.learning.addresses_live, 3, "{:?}", s.learning);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
    drop((https4, https6));
}

/// With block_ai_quic, QUIC (UDP/443) to a learned provider address is dropped at
/// its first packet, so clients fall back to TCP; UDP/443 elsewhere passes.
#[test]
fn block_ai_quic_drops_udp_443_to_providers_only() {
    if !require_root_or_skip("block_ai_quic_drops_udp_443_to_providers_only") {
        return;
    }
    let work = WorkDir::new("learn-quic").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    lab.run(Role::Inet, "ip", &["addr", "add", &format!("{OTHER_V4}/32"), "dev", "lo"]).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = config(&socket).replace("flow_table_size = 4096", "flow_table_size = 4096\nblock_ai_quic = true");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    resolver(&lab);
    assert_eq!(resolve_udp(&lab, "api.openai.com", TYPE::A), vec![IpAddr::V4(addr::SERVER_V4)]);
    wait_learned(&daemon, 1);

    let sink = |ip: Ipv4Addr| {
        let s = lab.ns(Role::Inet).run_in("bind", move || UdpSocket::bind((ip, 443))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    };
    let (provider_sink, other_sink) = (sink(addr::SERVER_V4), sink(OTHER_V4));
    let client = lab.ns(Role::Lan).run_in("bind", || UdpSocket::bind("0.0.0.0:0")).unwrap();
    for _ in 0..3 {
        client.send_to(&[0xc0; 1200], (addr::SERVER_V4, 443)).unwrap();
        client.send_to(&[0xc0; 1200], (OTHER_V4, 443)).unwrap();
    }
    let mut buf = [0u8; 1500];
    assert!(provider_sink.recv_from(&mut buf).is_err(), "QUIC to a provider was forwarded");
    assert_eq!(other_sink.recv_from(&mut buf).unwrap().0, 1200, "QUIC elsewhere must pass");
    let f = flows(&socket);
    let blocked = f.iter().find(|x| x.remote == IpAddr::V4(addr::SERVER_V4) && x.remote_port == 443).unwrap();
    assert!(blocked.blocked && blocked.provider.as_deref() == Some("openai"), "{blocked:?}");
    assert_eq!(daemon.status().unwrap().flow_table.stats.blocked, 3);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
