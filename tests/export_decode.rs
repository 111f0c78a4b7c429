//! The encoders' messages, sent over UDP to a real collector (nfcapd from Debian's
//! nfdump) and decoded by tshark: what the collectors people run make of them.
//!
//! Privileged: each test makes its own network namespace and talks only to 127.0.0.1
//! inside it, so nothing leaves the machine and parallel tests cannot meet. The
//! namespace guard and the process guard clean up also when an assertion fails. Under
//! INFERLANE_REQUIRE_PRIVILEGED=1 a non-root run fails instead of skipping.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inferlane::config::ExportFormat;
use inferlane::export::{
    max_len_for, Direction, Encoder, EncoderOptions, EndReason, FlowRecord, SendStats, UdpSender,
};
use inferlane::lab::{self, Netns};

static NS_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace named like the lab's (`il<pid><letters>-export`), so `make check-clean`
/// would catch a leak, with loopback up.
fn namespace() -> Netns {
    let n = NS_COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("il{}{}-export", std::process::id(), (b'a' + n as u8) as char);
    let ns = Netns::add(&name).unwrap_or_else(|e| panic!("expected to create namespace {name}, got: {e}"));
    ns.exec("ip", &["link", "set", "lo", "up"]).expect("lo up");
    ns
}

/// A process the test started; SIGTERM on drop (then SIGKILL), so a failing test never
/// leaves it behind. The namespace guard kills whatever still remains.
struct Proc {
    child: Option<Child>,
    what: &'static str,
}

impl Proc {
    /// SIGTERM and wait: nfcapd writes its file on the way out.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("expected {} to exit within 10 s of SIGTERM", self.what);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            thread::sleep(Duration::from_millis(200));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// nfcapd in the namespace, bound to 127.0.0.1:port, writing into dir. Returns once
/// its socket is bound (seen in /proc/net/udp of the namespace).
fn start_nfcapd(ns: &Netns, port: u16, dir: &Path) -> Proc {
    let mut cmd = ns.command("nfcapd");
    cmd.args(["-b", "127.0.0.1", "-p", &port.to_string(), "-w"])
        .arg(dir)
        .args(["-t", "3600", "-I", "inferlane-test"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(fs::File::create(dir.join("nfcapd.log")).unwrap()))
        .stderr(Stdio::from(fs::File::create(dir.join("nfcapd.err")).unwrap()));
    let child = cmd.spawn().unwrap_or_else(|e| panic!("expected nfcapd to start (apt-get install nfdump), got: {e}"));
    let proc = Proc { child: Some(child), what: "nfcapd" };
    let hex = format!(":{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let udp = ns.exec("cat", &["/proc/net/udp"]).expect("read /proc/net/udp");
        if udp.lines().any(|l| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(hex.trim()))) {
            return proc;
        }
        if Instant::now() > deadline {
            let err = fs::read_to_string(dir.join("nfcapd.err")).unwrap_or_default();
            panic!("expected nfcapd to bind 127.0.0.1:{port} within 5 s; its stderr: {err}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Sends from inside the namespace with the sender's own pacing, slow enough
/// (500 a second) that a 2-core machine's loopback never drops (a drop would
/// show as a sequence error, which is what we check).
fn send_in(ns: &Netns, collector: SocketAddr, messages: &[Vec<u8>]) -> SendStats {
    ns.run_in("send export messages", || {
        let mut s = UdpSender::new(collector, 500).map_err(std::io::Error::other)?;
        s.send(messages.to_vec());
        while s.pump(std::time::Instant::now()) > 0 {
            thread::sleep(Duration::from_millis(2));
        }
        Ok(s.stats())
    })
    .unwrap_or_else(|e| panic!("expected to send in the namespace, got: {e}"))
}

/// The one finished capture file nfcapd wrote (nfcapd.YYYYMMDDhhmm).
fn capture_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir)
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

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("expected {cmd:?} to run, got: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "expected {cmd:?} to succeed, got {}: {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Known traffic: a few flows per family, upload and download, with distinct counts.
fn records(n: usize, start_ms: u64) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| {
            let v6 = i % 3 == 2;
            let (client, remote): (IpAddr, IpAddr) = if v6 {
                (format!("2001:db8:1::{:x}", i + 1).parse().unwrap(), "2001:db8:2::5".parse().unwrap())
            } else {
                (
                    Ipv4Addr::new(192, 168, 1, (i % 250) as u8 + 1).into(),
                    Ipv4Addr::new(203, 0, 113, (i / 250) as u8 + 5).into(),
                )
            };
            let up = i % 2 == 0;
            FlowRecord {
                src: if up { client } else { remote },
                dst: if up { remote } else { client },
                src_port: if up { 40000 + i as u16 } else { 443 },
                dst_port: if up { 443 } else { 40000 + i as u16 },
                protocol: if i % 4 == 3 { 17 } else { 6 },
                tos: 0x88,
                tcp_flags: if i % 4 == 3 { 0 } else { 0x1b },
                octets: 1000 + 37 * i as u64,
                packets: 3 + i as u64,
                start_ms: start_ms + i as u64,
                end_ms: start_ms + 500 + i as u64,
                ingress_ifindex: if up { 2 } else { 3 },
                egress_ifindex: if up { 3 } else { 2 },
                direction: if up { Direction::Ingress } else { Direction::Egress },
                end_reason: EndReason::Idle,
                application_id: (i % 3) as u32 + 1,
                class_id: 1,
                source: 3,
                handshake_rtt_us: 1000,
                ttfb_us: 2000,
                streaming: 0,
            }
        })
        .collect()
}

const PROVIDERS: [(u32, &str); 3] = [(1, "openai"), (2, "anthropic"), (3, "mistral")];

/// One nfdump csv line's fields by the header's names.
fn nfdump_flows(file: &Path) -> Vec<HashMap<String, String>> {
    // Without -q: the first line names the columns; a "Summary" block follows the flows.
    let out = run(Command::new("nfdump").arg("-r").arg(file).args(["-N", "-o", "csv"]));
    let mut lines = out.lines().take_while(|l| !l.starts_with("Summary")).filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines.next().unwrap_or_default().split(',').map(str::to_owned).collect();
    assert!(header.iter().any(|h| h == "sa"), "expected nfdump's csv header first, saw {header:?}");
    lines
        .filter(|l| l.split(',').count() == header.len())
        .map(|l| header.iter().cloned().zip(l.split(',').map(str::to_owned)).collect())
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

/// A pcap of `messages` as UDP datagrams 127.0.0.1 → 127.0.0.1:port (LINKTYPE_RAW), for
/// tshark, which picks its decoder by port.
fn write_pcap(path: &Path, port: u16, messages: &[Vec<u8>]) {
    let mut f = fs::File::create(path).unwrap();
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&[0; 8]);
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&101u32.to_le_bytes()); // LINKTYPE_RAW: packets start at IP
    f.write_all(&hdr).unwrap();
    for (i, m) in messages.iter().enumerate() {
        let total = 20 + 8 + m.len();
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&(i as u16).to_be_bytes());
        let sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        let sum = (sum & 0xffff) + (sum >> 16);
        ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
        let mut udp = Vec::new();
        udp.extend_from_slice(&50000u16.to_be_bytes());
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&((8 + m.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]); // no checksum: allowed over IPv4
        let mut rec = Vec::new();
        rec.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        rec.extend_from_slice(&0u32.to_le_bytes());
        rec.extend_from_slice(&(total as u32).to_le_bytes());
        rec.extend_from_slice(&(total as u32).to_le_bytes());
        f.write_all(&rec).unwrap();
        f.write_all(&ip).unwrap();
        f.write_all(&udp).unwrap();
        f.write_all(m).unwrap();
    }
}

fn tshark(pcap: &Path, decode_as: Option<&str>) -> String {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).arg("-V");
    if let Some(d) = decode_as {
        cmd.args(["-d", d]);
    }
    run(&mut cmd)
}

/// Everything one format's test does: encode known records (enough for several
/// messages, with template refreshes between), send them to nfcapd, and check what it
/// stored against what was sent.
fn collect_and_check(format: ExportFormat, port: u16) {
    let test = format!("export_decode {format:?}");
    if !lab::require_root_or_skip(&test) {
        return;
    }
    let ns = namespace();
    let dir = tempfile::tempdir().unwrap();
    let mut nfcapd = start_nfcapd(&ns, port, dir.path());

    let start = now_ms();
    let boot_ms = start - 3_600_000;
    let options = EncoderOptions { observation_domain: 7, ..EncoderOptions::default() };
    let mut enc = Encoder::new(format, &options, boot_ms);
    enc.set_interfaces(vec![(2, "lan0".into()), (3, "wan0".into())]);
    enc.set_applications(PROVIDERS.iter().map(|&(i, n)| (i, n.to_owned())).collect());
    let collector = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let sent = records(600, start - 1000);
    // Several export rounds, as the daemon makes them, so sequence numbers carry over.
    let mut messages = Vec::new();
    for (round, chunk) in sent.chunks(150).enumerate() {
        let batch = enc.encode(chunk, start + round as u64 * 1000, max_len_for(collector)).expect("encode");
        assert!(batch.iter().all(|m| m.len() <= 1472), "expected no message over 1472 bytes");
        messages.extend(batch);
    }
    let st = send_in(&ns, collector, &messages);
    assert_eq!(
        (st.messages_sent, st.send_errors),
        (messages.len() as u64, 0),
        "expected every message sent without error, saw {st:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let status = nfcapd.stop();
    assert!(status.success(), "expected nfcapd to exit 0 on SIGTERM, got {status}");
    let file = capture_file(dir.path());

    // nfdump: every record, with its addresses, ports, protocol and counts.
    let flows = nfdump_flows(&file);
    let expected: Vec<&FlowRecord> = match format {
        ExportFormat::Netflow5 => sent.iter().filter(|r| r.src.is_ipv4()).collect(),
        _ => sent.iter().collect(),
    };
    assert_eq!(flows.len(), expected.len(), "expected {} flows in nfdump, saw {}", expected.len(), flows.len());
    let key = |sa: &str, da: &str, sp: &str, dp: &str| format!("{sa} {da} {sp} {dp}");
    let by_key: HashMap<String, &HashMap<String, String>> =
        flows.iter().map(|f| (key(&f["sa"], &f["da"], &f["sp"], &f["dp"]), f)).collect();
    for r in &expected {
        let k = key(&r.src.to_string(), &r.dst.to_string(), &r.src_port.to_string(), &r.dst_port.to_string());
        let f = by_key.get(&k).unwrap_or_else(|| panic!("expected nfdump to list {k}, it did not"));
        let seen = (f["pr"].as_str(), f["ipkt"].parse::<u64>().unwrap(), f["ibyt"].parse::<u64>().unwrap());
        let want = (if r.protocol == 6 { "TCP" } else { "UDP" }, r.packets, r.octets);
        assert_eq!(seen, want, "expected {k} as (proto, packets, bytes) {want:?}, saw {seen:?}");
    }
    if format != ExportFormat::Netflow5 {
        // The provider, from the applicationId of each record and the options record
        // that names it.
        let out = run(Command::new("nfdump").arg("-r").arg(&file).args(["-q", "-N", "-o", "fmt:%sa %da %sp %dp %nbnam"]));
        let names: HashMap<String, String> = out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 5).then(|| (key(w[0], w[1], w[2], w[3]), w[4..].join(" ")))
            })
            .collect();
        for r in &expected {
            let k = key(&r.src.to_string(), &r.dst.to_string(), &r.src_port.to_string(), &r.dst_port.to_string());
            let want = PROVIDERS.iter().find(|p| p.0 == r.application_id).unwrap().1;
            let seen = names.get(&k).map(String::as_str);
            assert_eq!(seen, Some(want), "expected nfdump to name the provider of {k}");
        }
    }
    let failures = sequence_failures(&file);
    assert_eq!(failures, 0, "expected nfdump to report no sequence failures, saw {failures}");

    // tshark: every message decodes, nothing malformed, the provider names are there.
    let pcap = dir.path().join("export.pcap");
    write_pcap(&pcap, port, &messages);
    let decode_as = format!("udp.port=={port},cflow");
    let text = tshark(&pcap, Some(&decode_as));
    for bad in ["Malformed", "Expert Info (Error"] {
        assert!(!text.contains(bad), "expected no '{bad}' from tshark, saw:\n{}", context(&text, bad));
    }
    if format != ExportFormat::Netflow5 {
        for (_, name) in PROVIDERS {
            assert!(text.contains(name), "expected tshark to decode provider name {name}");
        }
    }
    drop(nfcapd);
    ns.remove().expect("remove namespace");
}

fn context(text: &str, needle: &str) -> String {
    let at = text.find(needle).unwrap_or(0);
    let lo = text[..at].char_indices().rev().nth(3000).map_or(0, |(i, _)| i);
    text[lo..(at + 500).min(text.len())].to_owned()
}

#[test]
fn ipfix_decodes_in_nfcapd_and_tshark() {
    collect_and_check(ExportFormat::Ipfix, 4739);
}

#[test]
fn netflow9_decodes_in_nfcapd_and_tshark() {
    collect_and_check(ExportFormat::Netflow9, 2055);
}

#[test]
fn netflow5_decodes_in_nfcapd_and_tshark() {
    collect_and_check(ExportFormat::Netflow5, 9995);
}
