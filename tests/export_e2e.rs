//! Flow export end to end in the lab: the daemon exports to three nfcapd collectors
//! at once (IPFIX, NetFlow v9, NetFlow v5, one per collector) while known traffic
//! crosses the router: UDP streams of exact size over IPv4 and IPv6, echoed back, and a
//! TLS download whose SNI names a provider. The daemon is stopped (everything in
//! flight is exported), and what each collector stored is read back with nfdump:
//! per-flow totals, ports, protocol, DSCP, times, provider names, sequence numbers.
//! The export datagrams are captured on the router's loopback and decoded by tshark.
//!
//! The collectors, tcpdump and the daemon all run in the router namespace and talk
//! over its 127.0.0.1: nothing leaves the namespaces the test made. The lab, its
//! processes and the work directory are removed by their guards, also on failure.
//! Needs root.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response};
use inferlane::lab::scenario::{lab_config_base, DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const CDN: &str = "cdn-lfs.huggingface.co";
const UDP_PORT: u16 = 9000;
const DATAGRAMS: u64 = 400;
const PAYLOAD: u64 = 200;
/// AF41 (34) as the interactive class writes it, and LE (1) for bulk: the TOS byte.
const TOS_AF41: u8 = 34 << 2;
const TOS_LE: u8 = 1 << 2;
/// CS1 (8), which the UDP echo server in `inet` puts on its replies.
const TOS_CS1: u8 = 8 << 2;

/// (name, port, format) of each collector.
const COLLECTORS: [(&str, u16, &str); 3] = [("ipfix", 4739, "ipfix"), ("netflow9", 2055, "netflow9"), ("netflow5", 9995, "netflow5")];

fn wall_s() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("expected {cmd:?} to run, got: {e}"));
    assert!(out.status.success(), "expected {cmd:?} to succeed, stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until something in `role` listens on UDP/TCP `port` (ss filter).
fn wait_listening(lab: &Lab, role: Role, flags: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.run(role, "ss", &[flags, &format!("sport = :{port}")]).unwrap().trim().is_empty() {
        assert!(Instant::now() < deadline, "expected a listener on port {port} in {role:?} within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, then wait: nfcapd writes its file and tcpdump flushes on the way out.
fn terminate(lab: &mut Lab, pid: u32, what: &str) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let status = lab.wait(pid, Duration::from_secs(10)).unwrap_or_else(|e| panic!("expected {what} to exit on SIGTERM: {e}"));
    assert!(status.success() || status.code() == Some(0) || status.code().is_none(), "{what} exited with {status}");
}

/// Echoes every datagram on [::]:UDP_PORT in `inet` until `stop`; returns how many
/// it echoed per family (IPv4 first). The peer is the router's NAT address.
fn echo(lab: &Lab, stop: &AtomicBool) -> (u64, u64) {
    lab.ns(Role::Inet)
        .run_in("udp echo", || {
            let s = UdpSocket::bind(("::", UDP_PORT))?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            // The echoes carry CS1, set by the server: the download records must
            // report it (downloads are forwarded with the DSCP they came with).
            let sock = socket2::SockRef::from(&s);
            sock.set_tclass_v6(u32::from(TOS_CS1))?;
            sock.set_tos_v4(u32::from(TOS_CS1))?;
            let mut echoed = (0, 0);
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    if s.send_to(&buf[..n], from).is_ok() {
                        match from.ip().to_canonical() {
                            IpAddr::V4(_) => echoed.0 += 1,
                            IpAddr::V6(_) => echoed.1 += 1,
                        }
                    }
                }
            }
            Ok(echoed)
        })
        .unwrap_or_else(|e| panic!("expected the UDP echo to run, got: {e}"))
}

/// DATAGRAMS datagrams of PAYLOAD bytes from one socket (one flow) in `lan`, paced.
/// Returns the client port.
fn udp_stream(lab: &Lab, to: SocketAddr) -> u16 {
    lab.ns(Role::Lan)
        .run_in("udp stream", || {
            let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0".parse().unwrap() } else { "[::]:0".parse().unwrap() };
            let s = UdpSocket::bind(any)?;
            let payload = vec![0x42u8; PAYLOAD as usize];
            for _ in 0..DATAGRAMS {
                let n = s.send_to(&payload, to)?;
                assert_eq!(n as u64, PAYLOAD);
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(s.local_addr()?.port())
        })
        .unwrap_or_else(|e| panic!("expected the UDP stream to {to} to run, got: {e}"))
}

/// One record as nfdump prints it.
#[derive(Debug, Clone)]
struct Rec {
    key: String,
    proto: String,
    tos: u8,
    packets: u64,
    bytes: u64,
    start: f64,
    end: f64,
    provider: Option<String>,
}

fn key(sa: &str, da: &str, sp: u16, dp: u16) -> String {
    format!("{sa} {da} {sp} {dp}")
}

fn nfdump_records(file: &Path) -> Vec<Rec> {
    let out = run(Command::new("nfdump").arg("-r").arg(file).args([
        "-q",
        "-N",
        "-6",
        "-o",
        "fmt:%sa %da %sp %dp %pr %tos %pkt %byt %tsr %td %nbnam",
    ]));
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 10).then(|| Rec {
                // ICMP "ports" are type.code: keep them as text.
                key: format!("{} {} {} {}", w[0], w[1], w[2], w[3]),
                proto: w[4].to_owned(),
                tos: w[5].parse().unwrap_or_else(|_| panic!("tos in {l:?}")),
                packets: w[6].parse().unwrap_or_else(|_| panic!("packets in {l:?}")),
                bytes: w[7].parse().unwrap_or_else(|_| panic!("bytes in {l:?}")),
                start: w[8].parse().unwrap_or_else(|_| panic!("start in {l:?}")),
                // Start plus duration: nfdump 1.7.1's %ter prints the wrong
                // milliseconds (the end's seconds with another field's fraction).
                end: w[8].parse::<f64>().unwrap_or_else(|_| panic!("start in {l:?}"))
                    + w[9].parse::<f64>().unwrap_or_else(|_| panic!("duration in {l:?}")),
                provider: w.get(10).map(|s| s.to_string()),
            })
        })
        .collect()
}

fn sequence_failures(file: &Path) -> u64 {
    let out = run(Command::new("nfdump").arg("-r").arg(file).arg("-I"));
    let line = out
        .lines()
        .find(|l| l.starts_with("Sequence failures"))
        .unwrap_or_else(|| panic!("expected a 'Sequence failures' line in nfdump -I, saw:\n{out}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

fn capture_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("nfcapd.2") || n.starts_with("nfcapd.1")
        })
        .collect();
    assert_eq!(files.len(), 1, "expected one nfcapd file in {}, saw {files:?}", dir.display());
    files.into_iter().next().unwrap()
}

/// What one direction of one flow must add up to.
#[derive(Debug)]
struct Expect {
    key: String,
    proto: &'static str,
    /// Checked on upload records only: download leaves as it came.
    tos: Option<u8>,
    packets: u64,
    bytes: u64,
    ipv6: bool,
    provider: Option<&'static str>,
}

fn within(seen: u64, want: u64) -> bool {
    (seen as f64 - want as f64).abs() <= want as f64 * 0.001
}

#[test]
fn collectors_receive_exact_flows_in_three_formats() {
    if !require_root_or_skip("collectors_receive_exact_flows_in_three_formats") {
        return;
    }
    let work = WorkDir::new("export-e2e").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let t0 = wall_s();

    // Collectors and the capture, in the router namespace on its loopback.
    let mut dirs = Vec::new();
    let mut nfcapds = Vec::new();
    for (name, port, _) in COLLECTORS {
        let dir = work.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let d = dir.display().to_string();
        let pid = lab
            .spawn(Role::Router, "nfcapd", &["-b", "127.0.0.1", "-p", &port.to_string(), "-w", &d, "-t", "3600", "-I", name])
            .unwrap_or_else(|e| panic!("expected nfcapd to start (apt-get install nfdump): {e}"));
        nfcapds.push(pid);
        dirs.push(dir);
        wait_listening(&lab, Role::Router, "-Hlun", port);
    }
    let pcap = work.path().join("export.pcap");
    let filter = COLLECTORS.iter().map(|c| format!("udp dst port {}", c.1)).collect::<Vec<_>>().join(" or ");
    let tcpdump = lab
        .spawn(Role::Router, "tcpdump", &["-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", &pcap.display().to_string(), &filter])
        .unwrap();

    // The TLS server answering as the Hugging Face CDN.
    let (cert, keyf) = (work.path().join("cert.pem"), work.path().join("key.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={CDN}"), "-addext", &format!("subjectAltName=DNS:{CDN}")])
        .arg("-keyout")
        .arg(&keyf)
        .arg("-out")
        .arg(&cert));
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    const SIZE: u64 = 1024 * 1024;
    std::fs::write(www.join("model.safetensors"), vec![0x5au8; SIZE as usize]).unwrap();
    let (c, k) = (cert.display().to_string(), keyf.display().to_string());
    let server = format!("cd {} && exec openssl s_server -4 -quiet -accept 443 -cert {c} -key {k} -WWW", www.display());
    lab.spawn(Role::Inet, "sh", &["-c", &server]).unwrap();
    wait_listening(&lab, Role::Inet, "-Hltn", 443);

    let socket = work.path().join("control.sock");
    let collectors = COLLECTORS
        .iter()
        .map(|(_, port, format)| format!("{{ address = \"127.0.0.1:{port}\", format = \"{format}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = format!(
        "{}\n[[rules]]\nclass = \"interactive\"\ndestinations = [\"{}/32\", \"{}/128\"]\nports = [\"udp:{UDP_PORT}\"]\n\n\
         [export]\ncollectors = [{collectors}]\nactive_timeout = \"60s\"\ninactive_timeout = \"15s\"\n",
        lab_config_base(&socket, "flow_table_size = 4096"),
        addr::SERVER_V4,
        addr::SERVER_V6,
    );
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();

    // Traffic: two UDP flows (IPv4, IPv6) echoed back, and the TLS download.
    let stop = AtomicBool::new(false);
    let (ports, echoed) = std::thread::scope(|s| {
        let echo = s.spawn(|| echo(&lab, &stop));
        wait_listening(&lab, Role::Inet, "-Hlun", UDP_PORT);
        let p4 = udp_stream(&lab, SocketAddr::from((addr::SERVER_V4, UDP_PORT)));
        let p6 = udp_stream(&lab, SocketAddr::from((addr::SERVER_V6, UDP_PORT)));
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        ((p4, p6), echo.join().unwrap())
    });
    let out = lab
        .command(Role::Lan, "curl")
        .args(["-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "--cacert", &c])
        .args(["--resolve", &format!("{CDN}:443:{}", addr::SERVER_V4), &format!("https://{CDN}/model.safetensors")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("200 {SIZE}"), "curl: {}", String::from_utf8_lossy(&out.stderr));
    // The close handshake's last packets, then the flow table as the reference for
    // the TCP flow (its packet count is the kernel's to decide).
    std::thread::sleep(Duration::from_millis(1500));
    let flows: Vec<FlowInfo> = match client::request(daemon.socket(), &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    };
    let tls = flows
        .iter()
        .find(|f| f.remote_port == 443 && f.proto == "tcp")
        .unwrap_or_else(|| panic!("expected the TLS flow in the table, saw {flows:#?}"))
        .clone();
    assert_eq!(tls.provider.as_deref(), Some("huggingface-cdn"), "{tls:?}");
    assert!(tls.down_bytes > SIZE, "the download counted {} bytes of a {SIZE}-byte file: {tls:?}", tls.down_bytes);

    let status = daemon.status().unwrap();
    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success(), "daemon log:\n{}", daemon.log_text());
    let t1 = wall_s();
    std::thread::sleep(Duration::from_millis(500));
    for pid in nfcapds {
        terminate(&mut lab, pid, "nfcapd");
    }
    terminate(&mut lab, tcpdump, "tcpdump");
    assert_eq!(status.export.len(), 3, "expected three collectors in status, saw {:?}", status.export);

    let client4 = addr::LAN_CLIENT_V4.ip().to_string();
    let client6 = addr::LAN_CLIENT_V6.ip().to_string();
    let (s4, s6) = (addr::SERVER_V4.to_string(), addr::SERVER_V6.to_string());
    let (echo4, echo6) = echoed;
    assert_eq!((echo4, echo6), (DATAGRAMS, DATAGRAMS), "expected every datagram echoed");
    let (ip4, ip6) = (PAYLOAD + 8 + 20, PAYLOAD + 8 + 40);
    let expected = [
        Expect { key: key(&client4, &s4, ports.0, UDP_PORT), proto: "17", tos: Some(TOS_AF41), packets: DATAGRAMS, bytes: DATAGRAMS * ip4, ipv6: false, provider: None },
        Expect { key: key(&s4, &client4, UDP_PORT, ports.0), proto: "17", tos: Some(TOS_CS1), packets: echo4, bytes: echo4 * ip4, ipv6: false, provider: None },
        Expect { key: key(&client6, &s6, ports.1, UDP_PORT), proto: "17", tos: Some(TOS_AF41), packets: DATAGRAMS, bytes: DATAGRAMS * ip6, ipv6: true, provider: None },
        Expect { key: key(&s6, &client6, UDP_PORT, ports.1), proto: "17", tos: Some(TOS_CS1), packets: echo6, bytes: echo6 * ip6, ipv6: true, provider: None },
        Expect {
            key: key(&client4, &s4, tls.client_port, 443),
            proto: "6",
            tos: Some(TOS_LE),
            packets: tls.up_packets,
            bytes: tls.up_bytes,
            ipv6: false,
            provider: Some("huggingface-cdn"),
        },
        Expect {
            key: key(&s4, &client4, 443, tls.client_port),
            proto: "6",
            tos: None,
            packets: tls.down_packets,
            bytes: tls.down_bytes,
            ipv6: false,
            provider: Some("huggingface-cdn"),
        },
    ];

    for ((name, _, _), dir) in COLLECTORS.iter().zip(&dirs) {
        let file = capture_file(dir);
        let recs = nfdump_records(&file);
        let v5 = *name == "netflow5";
        for e in &expected {
            let mine: Vec<&Rec> = recs.iter().filter(|r| r.key == e.key).collect();
            if v5 && e.ipv6 {
                assert!(mine.is_empty(), "{name}: NetFlow v5 cannot carry IPv6, yet {} has records: {mine:?}", e.key);
                continue;
            }
            assert!(!mine.is_empty(), "{name}: expected records of {}, saw only:\n{recs:#?}", e.key);
            let (packets, bytes) = mine.iter().fold((0, 0), |(p, b), r| (p + r.packets, b + r.bytes));
            assert!(
                within(packets, e.packets) && within(bytes, e.bytes),
                "{name}: {} expected {} packets / {} bytes (±0.1%), the collector has {packets} / {bytes} in {mine:?}",
                e.key,
                e.packets,
                e.bytes
            );
            for r in &mine {
                assert_eq!(r.proto, e.proto, "{name}: protocol of {r:?}");
                if let Some(tos) = e.tos {
                    assert_eq!(r.tos, tos, "{name}: TOS of {r:?}, expected {tos}");
                }
                // Whole seconds around the window: the datapath's coarse clock and
                // nfdump's rounding are milliseconds, the window is the test's.
                assert!(
                    r.start >= t0.floor() - 1.0 && r.end <= t1.ceil() + 1.0 && r.start <= r.end,
                    "{name}: times of {r:?} outside the test's window {t0:.3}..{t1:.3}"
                );
                if !v5 {
                    if let Some(p) = e.provider {
                        assert_eq!(r.provider.as_deref(), Some(p), "{name}: provider of {r:?}");
                    }
                }
            }
        }
        let failures = sequence_failures(&file);
        assert_eq!(failures, 0, "{name}: expected no sequence failures in nfdump -I, saw {failures}");
    }

    // tshark decodes every captured export datagram, nothing malformed.
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(&pcap).arg("-V");
    for (_, port, _) in COLLECTORS {
        cmd.args(["-d", &format!("udp.port=={port},cflow")]);
    }
    let text = run(&mut cmd);
    let frames = text.lines().filter(|l| l.starts_with("Frame ")).count();
    let flows_pdus = text.lines().filter(|l| l.starts_with("Cisco NetFlow/IPFIX")).count();
    let sent: u64 = status.export.iter().map(|c| c.sent).sum();
    assert!(frames > 0 && frames as u64 >= sent, "expected at least the {sent} messages sent before the stop in the capture, saw {frames}");
    assert_eq!(flows_pdus, frames, "expected tshark to decode every frame as NetFlow/IPFIX");
    for bad in ["Malformed", "Expert Info (Error"] {
        assert!(!text.contains(bad), "expected no '{bad}' from tshark on the export capture");
    }
    assert!(text.contains("huggingface-cdn"), "expected tshark to decode the provider name");
    eprintln!(
        "export_e2e: {} frames decoded; UDP v4 {}/{} bytes up, TLS up {} pkts / {} bytes, down {} pkts / {} bytes",
        frames,
        DATAGRAMS,
        DATAGRAMS * ip4,
        tls.up_packets,
        tls.up_bytes,
        tls.down_packets,
        tls.down_bytes
    );
}
