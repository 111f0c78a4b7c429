//! Self-hosted inference servers through the lab: the first plaintext request to
//! an inference port names the server kind (Ollama, OpenAI-compatible such as
//! vLLM, Triton gRPC by its HTTP/2 preface); other plaintext HTTP stays unknown.
//! Needs root.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
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
