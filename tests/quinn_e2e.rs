//! A real QUIC server and client through the lab: a quinn server in `inet` holds a
//! lab certificate for api.openai.com (IPv4 and IPv6, UDP 443), a quinn client in
//! the LAN connects by that name through the router with the daemon running, and
//! a request/response round trip works. The daemon reads the client's Initials
//! and names the provider; `inferlane flows` shows openai, source "quic", the class
//! and DSCP EF, and on the wire (at the ISP, NATed) the client's datagrams carry
//! EF from the verdict on: all of them after the first round trip. With
//! `daemon.block_ai_quic`, the connection fails fast (within the client's 1.5 s
//! idle timeout, where a browser falls back to TCP): by the SNI verdict (no DNS)
//! the first Initial passes and the verdict drops what follows either way; after
//! a DNS lookup the very first Initial is dropped and the server hears nothing.
//! Needs root.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::capture::{Capture, Packet};
use inferlane::lab::dns::{self, DnsServer};
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TokioRuntime, TransportConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const NAME: &str = "api.openai.com";
const ALPN: &[u8] = b"inferlane-test";
const DSCP_EF: u8 = 46;
const WAIT: Duration = Duration::from_secs(5);
/// The client gives up on a silent server after this long.
const IDLE: Duration = Duration::from_millis(1500);
/// How long a blocked connection may keep working before the test calls it a
/// failure to block.
const GIVE_UP: Duration = Duration::from_secs(3);

fn config(socket: &Path, block_ai_quic: bool) -> String {
    format!(
        r#"
[daemon]
control_socket = "{socket}"
flow_table_size = 4096
block_ai_quic = {block_ai_quic}

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

/// Polls `f` every 10 ms until it gives Some; None when `WAIT` passed first.
fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A lab CA and a certificate it signed for NAME (webpki refuses a CA
/// certificate as the server's own): the CA for the client's roots, the leaf and
/// its key for the server.
fn certificate(work: &WorkDir) -> (CertificateDer<'static>, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let p = |f: &str| work.path().join(f).display().to_string();
    let ext = p("leaf.ext");
    std::fs::write(&ext, format!("subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let steps: [Vec<String>; 3] = [
        ["req", "-x509", "-days", "1", "-subj", "/CN=inferlane lab CA", "-keyout", &p("ca.key"), "-out", &p("ca.pem")]
            .iter()
            .map(|s| s.to_string())
            .chain(ec.iter().map(|s| s.to_string()))
            .collect(),
        ["req", "-subj", &format!("/CN={NAME}"), "-keyout", &p("key.pem"), "-out", &p("leaf.csr")]
            .iter()
            .map(|s| s.to_string())
            .chain(ec.iter().map(|s| s.to_string()))
            .collect(),
        ["x509", "-req", "-days", "1", "-in", &p("leaf.csr"), "-CA", &p("ca.pem"), "-CAkey", &p("ca.key")]
            .iter()
            .chain(["-CAcreateserial", "-extfile", &ext, "-out", &p("cert.pem")].iter())
            .map(|s| s.to_string())
            .collect(),
    ];
    for args in &steps {
        let out = Command::new("openssl").args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (
        CertificateDer::from_pem_file(p("ca.pem")).expect("the lab CA as PEM"),
        CertificateDer::from_pem_file(p("cert.pem")).expect("the server certificate as PEM"),
        PrivateKeyDer::from_pem_file(p("key.pem")).expect("the server key as PEM"),
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> quinn::ServerConfig {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).unwrap()))
}

fn client_config(ca: CertificateDer<'static>) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut c = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(IdleTimeout::try_from(IDLE).unwrap()));
    // A LAN-like first guess (quinn's default is 333 ms): a server that never
    // answers costs 3 probe timeouts, which would otherwise exceed IDLE.
    transport.initial_rtt(Duration::from_millis(100));
    c.transport_config(Arc::new(transport));
    c
}

/// What the servers saw: completed handshakes (with the client address as the
/// server saw it, NATed) and connection attempts (Initials that reached them).
#[derive(Default)]
struct ServerLog {
    attempts: AtomicUsize,
    connected: Mutex<Vec<SocketAddr>>,
}

/// quinn servers on SERVER_V4:443 and [SERVER_V6]:443 in inet. Each stream is a
/// request: the reply is "reply to " and the request, after the client finished it.
fn start_servers(lab: &Lab, rt: &tokio::runtime::Runtime, config: quinn::ServerConfig) -> (Vec<Endpoint>, Arc<ServerLog>) {
    let log = Arc::new(ServerLog::default());
    let mut endpoints = Vec::new();
    for ip in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let sock = lab.ns(Role::Inet).run_in("bind the QUIC server", || UdpSocket::bind(SocketAddr::new(ip, 443))).unwrap();
        let ep = {
            let _guard = rt.enter();
            Endpoint::new(EndpointConfig::default(), Some(config.clone()), sock, Arc::new(TokioRuntime)).unwrap()
        };
        let (accepting, log) = (ep.clone(), log.clone());
        rt.spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                log.attempts.fetch_add(1, Ordering::Relaxed);
                let log = log.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    log.connected.lock().unwrap().push(conn.remote_address());
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok(request) = recv.read_to_end(1 << 20).await else { return };
                            let mut reply = b"reply to ".to_vec();
                            reply.extend(request);
                            if send.write_all(&reply).await.is_ok() {
                                let _ = send.finish();
                                let _ = send.stopped().await;
                            }
                        });
                    }
                });
            }
        });
        endpoints.push(ep);
    }
    (endpoints, log)
}

/// A client endpoint on a socket in the LAN namespace.
fn client_endpoint(lab: &Lab, rt: &tokio::runtime::Runtime, v6: bool, config: quinn::ClientConfig) -> Endpoint {
    let any: SocketAddr = if v6 { "[::]:0".parse().unwrap() } else { "0.0.0.0:0".parse().unwrap() };
    let sock = lab.ns(Role::Lan).run_in("bind the QUIC client", || UdpSocket::bind(any)).unwrap();
    let _guard = rt.enter();
    let mut ep = Endpoint::new(EndpointConfig::default(), None, sock, Arc::new(TokioRuntime)).unwrap();
    ep.set_default_client_config(config);
    ep
}

async fn round_trip(conn: &quinn::Connection, request: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open stream: {e}"))?;
    send.write_all(request).await.map_err(|e| format!("write: {e}"))?;
    send.finish().map_err(|e| format!("finish: {e}"))?;
    recv.read_to_end(1 << 20).await.map_err(|e| format!("read: {e}"))
}

/// DSCPs of the client datagrams from `nat` (the client as the server sees it),
/// in the capture at the ISP.
fn dscps(packets: &[Packet], nat: SocketAddr) -> Vec<u8> {
    packets.iter().filter(|p| p.src == nat && p.dst.port() == 443).map(|p| p.dscp).collect()
}

/// The client's DSCPs once the capture stopped growing.
fn settled(capture: &Capture, nat: SocketAddr) -> Vec<u8> {
    dscps(&capture.settled(Duration::from_millis(200), WAIT), nat)
}

#[test]
fn quinn_connects_by_name_and_its_flow_is_classified_and_marked() {
    if !require_root_or_skip("quinn_connects_by_name_and_its_flow_is_classified_and_marked") {
        return;
    }
    let work = WorkDir::new("quinn").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ca, cert, key) = certificate(&work);
    let (servers, log) = start_servers(&lab, &rt, server_config(cert, key));
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, false)).unwrap();
    let capture = Capture::start(&mut lab, Role::Isp1, addr::ISP_DOWN_IF, "udp port 443").unwrap();

    let mut figures = Vec::new();
    for server in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let what = if server.is_ipv6() { "IPv6" } else { "IPv4" };
        let ep = client_endpoint(&lab, &rt, server.is_ipv6(), client_config(ca.clone()));
        let local_port = ep.local_addr().unwrap().port();
        let started = Instant::now();
        let conn = rt
            .block_on(async { ep.connect(SocketAddr::new(server, 443), NAME).unwrap().await })
            .unwrap_or_else(|e| panic!("{what}: the QUIC handshake with {NAME} failed: {e}\n{}", daemon.log_text()));
        let handshake = started.elapsed();
        let request = format!("POST /v1/chat/completions over QUIC, {what}").into_bytes();
        let reply = rt.block_on(round_trip(&conn, &request)).unwrap_or_else(|e| panic!("{what}: first round trip: {e}"));
        assert_eq!(reply, [b"reply to ".as_slice(), &request].concat(), "{what}: the server's reply");

        // The flow, as `inferlane flows` shows it: named by the client's Initials.
        let x = eventually(|| {
            flows(&socket).into_iter().find(|x| {
                x.proto == "udp" && x.remote == server && x.client_port == local_port && x.source.is_some()
            })
        })
        .unwrap_or_else(|| panic!("{what}: no classified flow from port {local_port}: {:#?}", flows(&socket)));
        assert_eq!(x.provider.as_deref(), Some("openai"), "{what}: {x:?}");
        assert_eq!(x.name.as_deref(), Some(NAME), "{what}: {x:?}");
        assert_eq!((x.source.as_deref(), x.class.as_deref(), x.rule), (Some("quic"), Some("fast"), Some(1)), "{what}: {x:?}");
        assert_eq!(x.dscp, Some(DSCP_EF), "{what}: {x:?}");
        assert!(!x.pending && !x.ech && !x.blocked, "{what}: {x:?}");

        // The client as the server saw it (NATed): its datagrams at the ISP.
        let nat = *log
            .connected
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.is_ipv6() == server.is_ipv6())
            .unwrap_or_else(|| panic!("{what}: the server saw no connection"));
        let before = settled(&capture, nat);
        // A second exchange after the verdict: every datagram of it carries EF.
        let request = vec![b'x'; 4000];
        let reply = rt.block_on(round_trip(&conn, &request)).unwrap_or_else(|e| panic!("{what}: second round trip: {e}"));
        assert_eq!(reply.len(), 9 + request.len(), "{what}: the second reply");
        conn.close(0u32.into(), b"done");
        rt.block_on(ep.wait_idle());
        let all = settled(&capture, nat);

        assert!(all.len() > before.len(), "{what}: no client datagrams of the second exchange captured: {all:?}");
        assert_eq!(all[0], 0, "{what}: the first Initial leaves as sent (DSCP 0), before any verdict: {all:?}");
        let first_ef = all.iter().position(|d| *d == DSCP_EF).unwrap_or(all.len());
        assert!(
            all[first_ef..].iter().all(|d| *d == DSCP_EF) && all[..first_ef].iter().all(|d| *d == 0),
            "{what}: DSCP 0 until the verdict, EF on every datagram after it; saw {all:?}"
        );
        assert!(first_ef <= before.len(), "{what}: the datagrams after the first round trip must all be EF: {all:?} ({} before)", before.len());
        figures.push(format!(
            "{what}: handshake {handshake:.1?}, {} client datagrams, EF from datagram {} on",
            all.len(),
            first_ef + 1
        ));
    }
    eprintln!("quinn_e2e: {}", figures.join("; "));
    capture.stop(&mut lab).unwrap();
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());

    // block_ai_quic: QUIC to a provider is dropped so clients fall back to TCP.
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket, true)).unwrap();
    let dns = DnsServer::start(&lab, &[(NAME, addr::SERVER_V4.into()), (NAME, addr::SERVER_V6.into())]).unwrap();
    let resolver = lab.ns(Role::Lan).run_in("bind the stub resolver", || UdpSocket::bind("0.0.0.0:0")).unwrap();
    resolver.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut figures = Vec::new();
    for (n, server) in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)].into_iter().enumerate() {
        for by_dns in [false, true] {
            let what = format!("{} {}", if server.is_ipv6() { "IPv6" } else { "IPv4" }, if by_dns { "after DNS" } else { "by SNI" });
            if by_dns {
                let answer = dns::lookup(&resolver, n as u16 + 1, NAME, server.is_ipv6()).unwrap();
                assert_eq!(answer, vec![server], "{what}: DNS answer");
                let learned = eventually(|| (daemon.status().unwrap().learning.addresses_learned >= n as u64 + 1).then_some(()));
                assert!(learned.is_some(), "{what}: the daemon learned no address: {:?}", daemon.status().unwrap().learning);
            }
            let attempts = log.attempts.load(Ordering::Relaxed);
            let connected = log.connected.lock().unwrap().len();
            let ep = client_endpoint(&lab, &rt, server.is_ipv6(), client_config(ca.clone()));
            let local_port = ep.local_addr().unwrap().port();
            let started = Instant::now();
            // Requests every 50 ms until one fails: by SNI, a loaded box may let a
            // first exchange through before the verdict lands; none after it.
            let mut exchanges = 0;
            let result: Result<(), String> = rt.block_on(async {
                let conn = ep.connect(SocketAddr::new(server, 443), NAME).unwrap().await.map_err(|e| format!("handshake: {e}"))?;
                while started.elapsed() < GIVE_UP {
                    round_trip(&conn, b"POST /v1/chat/completions").await?;
                    exchanges += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(())
            });
            let took = started.elapsed();
            rt.block_on(ep.wait_idle());
            let err = result.err().unwrap_or_else(|| {
                let flow = flows(&socket).into_iter().find(|x| x.proto == "udp" && x.client_port == local_port);
                panic!(
                    "{what}: {exchanges} exchanges worked for {GIVE_UP:?} although QUIC to {NAME} is blocked; \
                     flow {flow:?}; learning {:?}",
                    daemon.status().unwrap().learning
                )
            });
            assert!(took < IDLE + Duration::from_secs(1), "{what}: failed only after {took:?} ({err}; {exchanges} exchanges first)");
            if by_dns {
                assert_eq!(exchanges, 0, "{what}: blocked from the first packet, yet {exchanges} exchanges worked");
            }
            let server_completed = log.connected.lock().unwrap().len() > connected;
            let x = flows(&socket)
                .into_iter()
                .find(|x| x.proto == "udp" && x.remote == server && x.client_port == local_port)
                .unwrap_or_else(|| panic!("{what}: no flow from port {local_port}"));
            assert!(x.blocked && x.provider.as_deref() == Some("openai"), "{what}: {x:?}");
            if by_dns {
                // Blocked at its first packet: nothing reached the server.
                assert_eq!(x.source.as_deref(), Some("dns"), "{what}: {x:?}");
                assert_eq!(log.attempts.load(Ordering::Relaxed), attempts, "{what}: an Initial reached the server");
                assert!(!server_completed, "{what}: the server completed a handshake");
            } else {
                // The first Initial passes (nothing is known before its SNI); the
                // verdict blocks the flow in whichever direction comes next, usually
                // the server's first flight. On a slow box the client's Finished
                // may pass first; the request after it cannot.
                assert_eq!(x.source.as_deref(), Some("quic"), "{what}: {x:?}");
            }
            figures.push(format!(
                "{what}: failed after {took:.1?} ({err}; {exchanges} exchanges first; server handshake {})",
                if server_completed { "completed" } else { "never completed" }
            ));
        }
    }
    eprintln!("quinn_e2e, block_ai_quic: {}", figures.join("; "));
    drop(dns);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
    for ep in servers {
        ep.close(0u32.into(), b"bye");
    }
    drop(rt);
}
