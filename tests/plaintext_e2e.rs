//! Self-hosted inference servers through the lab: the first plaintext request to
//! an inference port names the server kind (Ollama, OpenAI-compatible such as
//! vLLM, Triton gRPC by its HTTP/2 preface); other plaintext HTTP stays unknown.
//! Then curl, by name, against streaming Ollama and OpenAI-style servers over IPv4
//! and IPv6, with the DSCP checked on the wire. Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::capture::Capture;
use inferlane::lab::scenario::{DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

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
providers = ["ollama", "openai-compatible", "triton"]
"#,
        socket = socket.display()
    )
}

/// A server on SERVER_V4:port in inet that reads a request, answers a little
/// over a few writes (so the client sends ACKs after its request: the verdict is
/// applied at the flow's next upload packet), and closes.
fn serve(lab: &Lab, port: u16) {
    let listener = lab.ns(Role::Inet).run_in("bind", move || TcpListener::bind((addr::SERVER_V4, port))).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 2048];
            let _ = conn.read(&mut buf);
            for _ in 0..3 {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
}

fn request(lab: &Lab, port: u16, payload: &'static [u8]) -> u16 {
    let mut c = lab
        .ns(Role::Lan)
        .run_in("connect", move || TcpStream::connect_timeout(&SocketAddr::from((addr::SERVER_V4, port)), Duration::from_secs(2)))
        .unwrap();
    c.write_all(payload).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    c.local_addr().unwrap().port()
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

#[test]
fn first_requests_name_self_hosted_servers() {
    if !require_root_or_skip("first_requests_name_self_hosted_servers") {
        return;
    }
    let work = WorkDir::new("plain").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    for port in [11434, 8000, 8001, 8080, 9000] {
        serve(&lab, port);
    }
    let cases: [(u16, &'static [u8], Option<&str>); 5] = [
        (11434, b"POST /api/chat HTTP/1.1\r\nHost: gpu:11434\r\ncontent-length: 2\r\n\r\n{}", Some("ollama")),
        (8000, b"POST /v1/chat/completions HTTP/1.1\r\nHost: vllm:8000\r\ncontent-length: 2\r\n\r\n{}", Some("openai-compatible")),
        (8001, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some("triton")),
        // Plain web traffic on an inference port, and an inference path elsewhere.
        (8080, b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", None),
        (9000, b"POST /api/chat HTTP/1.1\r\nHost: x\r\n\r\n", None),
    ];
    let ports: Vec<u16> = cases.iter().map(|(port, payload, _)| request(&lab, *port, payload)).collect();
    let f = flows(&socket);
    for ((port, _, want), client_port) in cases.iter().zip(ports) {
        let x = f
            .iter()
            .find(|x| x.client_port == client_port && x.remote == IpAddr::V4(addr::SERVER_V4) && x.remote_port == *port)
            .unwrap_or_else(|| panic!("no flow to :{port} in {f:#?}"));
        assert!(!x.pending, "flow to :{port} still pending: {x:?}");
        assert_eq!(x.provider.as_deref(), *want, "flow to :{port}: {x:?}");
        if want.is_some() {
            assert_eq!((x.source.as_deref(), x.class.as_deref(), x.dscp), (Some("http"), Some("fast"), Some(46)), "{x:?}");
        } else {
            assert_eq!((x.class.as_deref(), x.dscp), (None, None), "{x:?}");
        }
    }
    assert_eq!(daemon.status().unwrap().learning.inference_requests, 3);
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}

/// An inference server in inet on `ip`:`port`: reads one HTTP/1.1 request (headers
/// and Content-Length body), thinks for THINK (an LLM's time to first token), then
/// streams its answer in three writes, as Ollama (NDJSON) or an OpenAI-compatible
/// server (server-sent events) do, and closes.
fn serve_streaming(lab: &Lab, ip: IpAddr, port: u16, chunks: [&'static str; 3], content_type: &'static str) {
    let listener = lab.ns(Role::Inet).run_in("bind", move || TcpListener::bind((ip, port))).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut length = 0usize;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; length.min(1 << 16)];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let mut conn = reader.into_inner();
                std::thread::sleep(THINK);
                let head = format!("HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(head.as_bytes());
                for chunk in chunks {
                    let _ = conn.write_all(chunk.as_bytes());
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
    });
}

/// How long the servers wait before their first byte, as a model does before its
/// first token. The verdict (a userspace round trip) lands well inside it, so every
/// client packet after the request is sent under the verdict.
const THINK: Duration = Duration::from_millis(50);

const OLLAMA_CHUNKS: [&str; 3] = [
    "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n",
    "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"lo\"},\"done\":false}\n",
    "{\"model\":\"llama3\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true}\n",
];
const OPENAI_CHUNKS: [&str; 3] = [
    "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
    "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\n",
    "data: [DONE]\n\n",
];

/// curl, by name, POSTing a chat request to Ollama's /api/chat and to an
/// OpenAI-compatible /v1/chat/completions, over IPv4 and IPv6: the streamed answer
/// arrives whole; `inferlane flows` shows the server kind as the provider, source
/// "http", the class and DSCP EF; on the wire (at the ISP, NATed) the request
/// leaves as sent and every client packet after it carries EF.
#[test]
fn curl_to_streaming_inference_servers_is_named_and_marked() {
    if !require_root_or_skip("curl_to_streaming_inference_servers_is_named_and_marked") {
        return;
    }
    let work = WorkDir::new("plaincurl").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config(&socket)).unwrap();
    for ip in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        serve_streaming(&lab, ip, 11434, OLLAMA_CHUNKS, "application/x-ndjson");
        serve_streaming(&lab, ip, 8000, OPENAI_CHUNKS, "text/event-stream");
    }
    let capture = Capture::start(&mut lab, Role::Isp1, addr::ISP_DOWN_IF, "tcp port 11434 or tcp port 8000").unwrap();

    let body = r#"{"model":"llama3","messages":[{"role":"user","content":"Hello"}],"stream":true}"#;
    // (host name, port, path, provider, what the answer must contain)
    let kinds = [
        ("ollama.lab", 11434, "/api/chat", "ollama", OLLAMA_CHUNKS.concat()),
        ("vllm.lab", 8000, "/v1/chat/completions", "openai-compatible", OPENAI_CHUNKS.concat()),
    ];
    let mut done = Vec::new();
    for server in [IpAddr::V4(addr::SERVER_V4), IpAddr::V6(addr::SERVER_V6)] {
        let at = if server.is_ipv6() { format!("[{server}]") } else { server.to_string() };
        for (host, port, path, provider, answer) in &kinds {
            let what = format!("{provider} {path} over {}", if server.is_ipv6() { "IPv6" } else { "IPv4" });
            let out = lab
                .command(Role::Lan, "curl")
                .args(["-sS", "--max-time", "5", "-N", "-w", "\n%{http_code} %{local_port}"])
                .args(["--resolve", &format!("{host}:{port}:{at}"), "-H", "Content-Type: application/json"])
                .args(["-d", body, &format!("http://{host}:{port}{path}")])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (answer_seen, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
            assert!(out.status.success(), "{what}: curl failed: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(answer_seen, answer.as_str(), "{what}: the streamed answer");
            let (code, local_port) = tail.split_once(' ').unwrap();
            assert_eq!(code, "200", "{what}");
            done.push((what, server, *port, *provider, local_port.parse::<u16>().unwrap()));
        }
    }

    let f = flows(&socket);
    for (what, server, port, provider, local_port) in &done {
        let x = f
            .iter()
            .find(|x| x.proto == "tcp" && x.remote == *server && x.remote_port == *port && x.client_port == *local_port)
            .unwrap_or_else(|| panic!("{what}: no flow from port {local_port} in {f:#?}"));
        assert!(!x.pending && !x.blocked, "{what}: {x:?}");
        assert_eq!(x.provider.as_deref(), Some(*provider), "{what}: {x:?}");
        assert_eq!((x.source.as_deref(), x.class.as_deref(), x.rule, x.dscp), (Some("http"), Some("fast"), Some(1), Some(46)), "{what}: {x:?}");
        assert_eq!(x.name.as_deref(), Some(format!("{provider} request").as_str()), "{what}: {x:?}");
    }
    assert_eq!(daemon.status().unwrap().learning.inference_requests, done.len() as u64);

    // On the wire: per connection (one per port and family here), the client's
    // packets up to and including its request leave as sent, every one after it
    // (ACKs of the stream, FIN) carries EF.
    // Once the last FIN/ACKs are in.
    let packets = capture.settled(Duration::from_millis(200), Duration::from_secs(5));
    let text = capture.stop(&mut lab).unwrap();
    let mut by: std::collections::BTreeMap<(bool, u16, u16), Vec<(u8, usize)>> = Default::default();
    for p in packets.iter().filter(|p| [11434, 8000].contains(&p.dst.port())) {
        by.entry((p.is_v6(), p.dst.port(), p.src.port())).or_default().push((p.dscp, p.payload));
    }
    assert_eq!(by.len(), done.len(), "one client connection per request expected in:\n{text}");
    for ((v6, port, nat), pkts) in &by {
        let request = pkts.iter().position(|(_, len)| *len > 0).unwrap_or_else(|| panic!("no request from :{nat} to :{port}: {pkts:?}"));
        let after: Vec<u8> = pkts[request + 1..].iter().map(|(d, _)| *d).collect();
        assert!(pkts[..=request].iter().all(|(d, _)| *d == 0), "IPv6 {v6}, :{port}: up to the request DSCP 0: {pkts:?}");
        assert!(!after.is_empty() && after.iter().all(|d| *d == 46), "IPv6 {v6}, :{port}: after the request EF on every client packet: {pkts:?}");
    }
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success());
}
