//! Restart and upgrade in the lab (issue 8, part 5): the real binary in the
//! router namespace under steady traffic from the LAN client.
//!
//! - A handover (`inferlane restart`) followed by a successor: no datagram lost,
//!   every one still marked AF41 (the programs never left the links), the
//!   largest gap at the receiver small, flow and interface counters continuing,
//!   and the IPFIX records of both daemons adding up to exactly what was sent
//!   (nothing exported twice).
//! - SIGKILL: forwarding continues unclassified (fail open), the next start
//!   adopts the pinned maps, and a clean stop leaves nothing.
//! - Pins from a different `flow_table_size` are discarded (the daemon starts
//!   with empty maps and says why).
//!
//! Traffic, collector and daemon stay inside the namespaces the test made; the
//! lab, the processes and the work directory are removed by their guards, also on
//! failure. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use inferlane::bpf::pins::PinDir;
use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response, Status};
use inferlane::lab::scenario::{self, lab_config_base, DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

const UDP_PORT: u16 = 9100;
const TCP_PORT: u16 = 9101;
/// One datagram per millisecond.
const UDP_INTERVAL: Duration = Duration::from_millis(1);
const UDP_PAYLOAD: usize = 100;
/// AF41 as the interactive class writes it: the TOS byte.
const TOS_AF41: u8 = 34 << 2;
const IPFIX_PORT: u16 = 4739;

/// Largest gap at the receiver we accept across a restart. The previous
/// implementation measured 4-20 ms (handover) and up to 6.4 ms (SIGKILL); a
/// program-less lab forwards anyway, so the DSCP check is what proves the
/// programs never left.
const MAX_GAP: Duration = Duration::from_millis(250);

fn config(socket: &Path, flow_table_size: u32, export: bool) -> String {
    let mut c = format!(
        "{}\n[[rules]]\nclass = \"interactive\"\ndestinations = [\"{}/32\"]\nports = [\"udp:{UDP_PORT}\", \"tcp:{TCP_PORT}\"]\n",
        lab_config_base(socket, &format!("flow_table_size = {flow_table_size}")),
        addr::SERVER_V4,
    );
    if export {
        // Short timeouts: both daemons export periods of the same flows.
        c.push_str(&format!(
            "\n[export]\ncollectors = [{{ address = \"127.0.0.1:{IPFIX_PORT}\", format = \"ipfix\" }}]\nactive_timeout = \"2s\"\ninactive_timeout = \"2s\"\n"
        ));
    }
    c
}

/// What the UDP receiver saw: (sequence number, arrival, TOS byte) per datagram.
struct Received {
    arrivals: Vec<(u64, Instant, u8)>,
}

impl Received {
    fn unique(&self) -> u64 {
        let mut seqs: Vec<u64> = self.arrivals.iter().map(|a| a.0).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len() as u64
    }

    /// The largest inter-arrival time, and when it ended.
    fn max_gap(&self) -> (Duration, Option<Instant>) {
        let mut times: Vec<Instant> = self.arrivals.iter().map(|a| a.1).collect();
        times.sort_unstable();
        times.windows(2).map(|w| (w[1] - w[0], Some(w[1]))).max_by_key(|g| g.0).unwrap_or((Duration::ZERO, None))
    }

    fn unmarked(&self) -> u64 {
        self.arrivals.iter().filter(|a| a.2 & 0xfc != TOS_AF41).count() as u64
    }
}

/// Receives datagrams on UDP_PORT in `inet` until `stop`, with their TOS byte
/// (IP_RECVTOS).
fn udp_receiver(lab: &Lab, ready: &AtomicBool, stop: &AtomicBool) -> Received {
    lab.ns(Role::Inet)
        .run_in("udp receiver", || {
            let s = UdpSocket::bind(("0.0.0.0", UDP_PORT))?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let on: libc::c_int = 1;
            // SAFETY: setsockopt with a valid pointer to an int and its size.
            let rc = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_RECVTOS,
                    &on as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_RECVTOS");
            ready.store(true, Ordering::SeqCst);
            let mut arrivals = Vec::with_capacity(20_000);
            let mut buf = [0u8; 2048];
            let mut cbuf = [0u64; 16];
            while !stop.load(Ordering::Relaxed) {
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
                // SAFETY: msghdr zeroed then pointed at live buffers owned by this frame.
                let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
                msg.msg_controllen = std::mem::size_of_val(&cbuf);
                // SAFETY: recvmsg on our socket with the buffers above.
                let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, 0) };
                if n < 8 {
                    continue;
                }
                let at = Instant::now();
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                let mut tos = 0u8;
                // SAFETY: walking the control messages the kernel wrote into cbuf.
                unsafe {
                    let mut c = libc::CMSG_FIRSTHDR(&msg);
                    while !c.is_null() {
                        if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_TOS {
                            tos = *libc::CMSG_DATA(c);
                        }
                        c = libc::CMSG_NXTHDR(&msg, c);
                    }
                }
                arrivals.push((seq, at, tos));
            }
            Ok(Received { arrivals })
        })
        .unwrap_or_else(|e| panic!("expected the UDP receiver to run, got: {e}"))
}

/// One datagram per UDP_INTERVAL from one socket (one flow) in `lan`, on a fixed
/// schedule, until `stop`. Returns (datagrams sent, client port).
fn udp_sender(lab: &Lab, stop: &AtomicBool, port: &std::sync::atomic::AtomicU16) -> u64 {
    lab.ns(Role::Lan)
        .run_in("udp sender", || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddr::from((addr::SERVER_V4, UDP_PORT)))?;
            port.store(s.local_addr()?.port(), Ordering::SeqCst);
            let mut payload = vec![0x42u8; UDP_PAYLOAD];
            let start = Instant::now();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                s.send(&payload)?;
                seq += 1;
                let next = start + UDP_INTERVAL * seq as u32;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(seq)
        })
        .unwrap_or_else(|e| panic!("expected the UDP sender to run, got: {e}"))
}

/// A TCP sink on TCP_PORT in `inet`: bytes received on one connection until EOF.
fn tcp_sink(lab: &Lab, ready: &AtomicBool) -> u64 {
    lab.ns(Role::Inet)
        .run_in("tcp sink", || {
            let l = TcpListener::bind(("0.0.0.0", TCP_PORT))?;
            ready.store(true, Ordering::SeqCst);
            let (mut c, _) = l.accept()?;
            c.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut total = 0u64;
            let mut buf = [0u8; 65536];
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    return Ok(total);
                }
                total += n as u64;
            }
        })
        .unwrap_or_else(|e| panic!("expected the TCP sink to run, got: {e}"))
}

/// 1 KiB every 2 ms on one connection from `lan` until `stop`; bytes written.
fn tcp_source(lab: &Lab, stop: &AtomicBool) -> u64 {
    lab.ns(Role::Lan)
        .run_in("tcp source", || {
            let mut c = TcpStream::connect_timeout(&SocketAddr::from((addr::SERVER_V4, TCP_PORT)), Duration::from_secs(5))?;
            let chunk = [0x17u8; 1024];
            let mut total = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.write_all(&chunk)?;
                total += chunk.len() as u64;
                std::thread::sleep(Duration::from_millis(2));
            }
            c.shutdown(std::net::Shutdown::Write)?;
            Ok(total)
        })
        .unwrap_or_else(|e| panic!("expected the TCP source to run, got: {e}"))
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

fn udp_flow(socket: &Path, client_port: u16) -> FlowInfo {
    let all = flows(socket);
    all.iter()
        .find(|f| f.remote_port == UDP_PORT && f.client_port == client_port)
        .unwrap_or_else(|| panic!("expected the UDP flow from port {client_port} in the table, saw {all:#?}"))
        .clone()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "expected {what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn prog_loaded(lab: &Lab, id: u32) -> bool {
    lab.run(Role::Router, "bpftool", &["prog", "show", "id", &id.to_string()]).is_ok()
}

/// nfcapd on the router's loopback; returns (pid, directory).
fn collector(lab: &mut Lab, work: &WorkDir) -> (u32, PathBuf) {
    let dir = work.path().join("ipfix");
    std::fs::create_dir(&dir).unwrap();
    let pid = lab
        .spawn(Role::Router, "nfcapd", &["-b", "127.0.0.1", "-p", &IPFIX_PORT.to_string(), "-w", &dir.display().to_string(), "-t", "3600", "-I", "ipfix"])
        .unwrap_or_else(|e| panic!("expected nfcapd to start (apt-get install nfdump): {e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.run(Role::Router, "ss", &["-Hlun", &format!("sport = :{IPFIX_PORT}")]).unwrap().trim().is_empty() {
        assert!(Instant::now() < deadline, "expected nfcapd to listen within 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (pid, dir)
}

/// (packets, bytes, records) the collector holds for `sa:sp -> da:dp`.
fn collected(dir: &Path, sa: &str, da: &str, sp: u16, dp: u16) -> (u64, u64, usize) {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("nfcapd.2"))
        .unwrap_or_else(|| panic!("expected an nfcapd file in {}", dir.display()));
    let out = Command::new("nfdump").arg("-r").arg(&file).args(["-q", "-N", "-o", "fmt:%sa %da %sp %dp %pkt %byt"]).output().unwrap();
    assert!(out.status.success(), "nfdump: {}", String::from_utf8_lossy(&out.stderr));
    let want = format!("{sa} {da} {sp} {dp}");
    let mut sum = (0, 0, 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() >= 6 && format!("{} {} {} {}", w[0], w[1], w[2], w[3]) == want {
            sum.0 += w[4].parse::<u64>().unwrap();
            sum.1 += w[5].parse::<u64>().unwrap();
            sum.2 += 1;
        }
    }
    sum
}

/// Our rules and routes (proto 173) in the router namespace, sorted.
fn routing_of(lab: &Lab) -> (Vec<String>, Vec<String>) {
    let mut rules = Vec::new();
    let mut routes = Vec::new();
    for family in ["-4", "-6"] {
        let out = lab.run(Role::Router, "ip", &[family, "rule", "show"]).unwrap();
        rules.extend(out.lines().filter(|l| l.contains("proto 173")).map(|l| format!("{family} {}", l.trim())));
        let out = lab.run(Role::Router, "ip", &[family, "route", "show", "table", "all", "proto", "173"]).unwrap();
        routes.extend(out.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{family} {}", l.trim())));
    }
    rules.sort();
    routes.sort();
    (rules, routes)
}

/// Bytes sent through the HTB root `1a1:` on `iface` in the router namespace.
fn htb_sent(lab: &Lab, iface: &str) -> u64 {
    let out = lab.run(Role::Router, "tc", &["-s", "-j", "qdisc", "show", "dev", iface]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .find(|q| q["handle"] == "1a1:" && q["kind"] == "htb")
        .unwrap_or_else(|| panic!("expected the HTB root 1a1: on {iface}, saw {out}"))["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("bytes of 1a1: on {iface} in {out}"))
}

fn terminate(lab: &mut Lab, pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = lab.wait(pid, Duration::from_secs(10));
}

/// Removes the instance's pins on drop, so that a test failing between a
/// SIGKILL or a handover and the next clean stop leaves none behind (the lab's
/// namespaces, and with them any link still attached, go with the lab guard).
struct PinGuard(PinDir);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = self.0.remove_all();
    }
}

/// Nothing of the daemons whose programs are `ids` left in the lab (pins, state
/// file, routing, qdiscs, programs): `when` says after what.
fn assert_nothing_left(lab: &Lab, socket: &Path, ids: &[u32], when: &str) {
    let left = scenario::leftovers(lab, socket, ids);
    assert!(left.is_empty(), "left behind {when}: {left:?}");
}

fn status_of(d: &DaemonProcess) -> Status {
    d.status().unwrap_or_else(|e| panic!("expected the daemon to answer status: {e}\nlog:\n{}", d.log_text()))
}

#[test]
fn handover_under_traffic_loses_nothing_and_exports_each_packet_once() {
    if !require_root_or_skip("handover_under_traffic_loses_nothing_and_exports_each_packet_once") {
        return;
    }
    let work = WorkDir::new("restart-handover").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let (nfcapd, ipfix_dir) = collector(&mut lab, &work);
    let socket = work.path().join("control.sock");
    // Shaped, so that the queues' handover is exercised too (HTB 1a1: on both
    // uplinks and on the LAN interface).
    let cfg = config(&socket, 4096, true)
        .replace("priority = 10\n", "priority = 10\negress_rate = \"200mbit\"\ningress_rate = \"200mbit\"\n")
        .replace("priority = 20\n", "priority = 20\negress_rate = \"50mbit\"\ningress_rate = \"50mbit\"\n");
    assert!(cfg.contains("egress_rate = \"200mbit\""), "{cfg}");
    let pins = PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket);
    let _pin_guard = PinGuard(pins.clone());
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &[], "daemon-a.log").unwrap();
    let a_ids = scenario::prog_ids(&status_of(&a));

    let stop = AtomicBool::new(false);
    let (rx_ready, tcp_ready) = (AtomicBool::new(false), AtomicBool::new(false));
    let port = std::sync::atomic::AtomicU16::new(0);
    let mut b: Option<DaemonProcess> = None;
    let mut timeline = Vec::new();
    let (received, sent, tcp_sent, tcp_received) = std::thread::scope(|s| {
        let rx = s.spawn(|| udp_receiver(&lab, &rx_ready, &stop));
        let sink = s.spawn(|| tcp_sink(&lab, &tcp_ready));
        wait_for("the receivers to listen", Duration::from_secs(5), || rx_ready.load(Ordering::SeqCst) && tcp_ready.load(Ordering::SeqCst));
        let tx = s.spawn(|| udp_sender(&lab, &stop, &port));
        let tcp = s.spawn(|| tcp_source(&lab, &stop));
        // Long enough for the first daemon to export an active period (2 s).
        std::thread::sleep(Duration::from_millis(3000));
        let client_port = port.load(Ordering::SeqCst);
        let before = udp_flow(&socket, client_port);
        let status_a = status_of(&a);
        let htb_before = htb_sent(&lab, addr::ROUTER_WAN1_IF);

        let t_restart = Instant::now();
        let out = Command::new(bin()).args(["restart", "--socket"]).arg(&socket).output().unwrap();
        assert!(out.status.success(), "inferlane restart: {}", String::from_utf8_lossy(&out.stderr));
        let exit = a.wait_exit(Duration::from_secs(15)).unwrap();
        let t_exited = Instant::now();
        assert_eq!(exit.code(), Some(75), "a handover exits 75; log:\n{}", a.log_text());
        assert!(inferlane::restart::state_path(&socket).exists(), "expected the state file after the handover");
        let links = pins.pinned_links();
        assert_eq!(links.len(), 5, "expected 5 pinned links (3 on the LAN, wan_egress on 2 uplinks), saw {links:?}");
        // While no daemon runs, the old programs still forward and mark.
        std::thread::sleep(Duration::from_millis(300));

        let succ = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &[], "daemon-b.log").unwrap();
        let t_ready = Instant::now();
        let status_b = status_of(&succ);
        assert!(status_b.pins.adopted, "the successor must adopt the maps: {:?}\nlog:\n{}", status_b.pins, succ.log_text());
        assert_eq!(status_b.pins.links_adopted, 5, "expected every pinned link adopted: {:?}", status_b.pins);
        assert!(status_b.pins.flows_carried >= 2, "expected the UDP and TCP flows carried: {:?}", status_b.pins);
        assert!(pins.pinned_links().is_empty(), "the successor must remove the link pins, saw {:?}", pins.pinned_links());
        assert!(!inferlane::restart::state_path(&socket).exists(), "the successor must delete the state file");
        // Counters continue from where they were.
        assert!(
            status_b.flow_table.stats.created >= status_a.flow_table.stats.created,
            "flows created went back: {} before, {} after",
            status_a.flow_table.stats.created,
            status_b.flow_table.stats.created
        );
        let (ia, ib) = (&status_a.interfaces[0], &status_b.interfaces[0]);
        assert!(ib.upload.packets > ia.upload.packets, "interface upload counter reset: {} before, {} after", ia.upload.packets, ib.upload.packets);
        // The queues were kept and adopted, not rebuilt: their counters go on.
        let htb_after = htb_sent(&lab, addr::ROUTER_WAN1_IF);
        assert!(htb_after > htb_before, "the uplink's HTB root was rebuilt (sent {htb_before} bytes before, {htb_after} after)");
        let after = udp_flow(&socket, client_port);
        assert!(
            after.up_packets >= before.up_packets + 300,
            "the flow's counters must continue: {} packets before the handover, {} after",
            before.up_packets,
            after.up_packets
        );
        assert_eq!(after.class.as_deref(), Some("interactive"), "{after:?}");
        // The old programs are out of the links (replaced in place), so unloaded.
        let b_ids = scenario::prog_ids(&status_b);
        assert!(b_ids.iter().all(|id| !a_ids.contains(id)), "the successor runs its own programs: {a_ids:?} vs {b_ids:?}");
        wait_for("the predecessor's programs to be unloaded", Duration::from_secs(3), || !a_ids.iter().any(|id| prog_loaded(&lab, *id)));
        timeline.push(format!(
            "restart requested -> old daemon exited {:?}, successor ready {:?} after the exit (300 ms of it waiting on purpose)",
            t_exited - t_restart,
            t_ready - t_exited
        ));
        b = Some(succ);

        // Long enough for the successor to export an active period too.
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::SeqCst);
        let sent = tx.join().unwrap();
        let tcp_sent = tcp.join().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let tcp_received = sink.join().unwrap();
        (rx.join().unwrap(), sent, tcp_sent, tcp_received)
    });
    let mut b = b.expect("successor started");
    let client_port = port.load(Ordering::SeqCst);
    let last = udp_flow(&socket, client_port);
    assert_eq!(last.up_packets, sent, "the flow table must hold every datagram sent across the handover");
    let b_ids = scenario::prog_ids(&status_of(&b));
    let exit = b.stop(Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "successor exit {exit}; log:\n{}", b.log_text());
    std::thread::sleep(Duration::from_millis(500));
    terminate(&mut lab, nfcapd);

    let (gap, _) = received.max_gap();
    let lost = sent - received.unique();
    let unmarked = received.unmarked();
    let (pkts, bytes, records) =
        collected(&ipfix_dir, &addr::LAN_CLIENT_V4.ip().to_string(), &addr::SERVER_V4.to_string(), client_port, UDP_PORT);
    eprintln!(
        "restart_e2e handover: {sent} datagrams sent, {lost} lost, {unmarked} without AF41, largest gap {gap:?}; TCP {tcp_sent} bytes sent, {tcp_received} received; IPFIX: {records} records, {pkts} packets, {bytes} bytes; {}",
        timeline.join("; ")
    );
    assert_eq!(lost, 0, "expected no datagram lost across the handover");
    assert_eq!(unmarked, 0, "expected every datagram marked AF41 (a program on the LAN interface at every instant)");
    assert!(gap < MAX_GAP, "largest inter-arrival gap {gap:?}, expected below {MAX_GAP:?}");
    assert_eq!(tcp_received, tcp_sent, "the TCP connection must carry every byte across the handover");
    assert!(records >= 3, "expected periods exported by both daemons (active timeouts) and the final one, saw {records} records");
    assert_eq!(pkts, sent, "IPFIX records of both daemons must add up to the datagrams sent (nothing exported twice or lost)");
    assert_eq!(bytes, sent * (UDP_PAYLOAD as u64 + 28), "IPFIX byte total");

    let mut ids = a_ids.clone();
    ids.extend(b_ids);
    assert_nothing_left(&lab, &socket, &ids, "after the successor's clean stop");
    lab.teardown().unwrap();
}

#[test]
fn sigkill_under_traffic_fails_open_and_the_next_start_adopts() {
    if !require_root_or_skip("sigkill_under_traffic_fails_open_and_the_next_start_adopts") {
        return;
    }
    let work = WorkDir::new("restart-sigkill").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = config(&socket, 4096, false);
    let pins = PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket);
    let _pin_guard = PinGuard(pins.clone());
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &[], "daemon-a.log").unwrap();
    let a_ids = scenario::prog_ids(&status_of(&a));

    let stop = AtomicBool::new(false);
    let rx_ready = AtomicBool::new(false);
    let port = std::sync::atomic::AtomicU16::new(0);
    let mut b: Option<DaemonProcess> = None;
    let (received, sent) = std::thread::scope(|s| {
        let rx = s.spawn(|| udp_receiver(&lab, &rx_ready, &stop));
        wait_for("the receiver to listen", Duration::from_secs(5), || rx_ready.load(Ordering::SeqCst));
        let tx = s.spawn(|| udp_sender(&lab, &stop, &port));
        std::thread::sleep(Duration::from_millis(1500));
        let client_port = port.load(Ordering::SeqCst);
        let before = udp_flow(&socket, client_port);
        let status_a = status_of(&a);

        a.kill().unwrap();
        // The kernel detaches the programs with the last fd: fail open.
        wait_for("the killed daemon's programs to be unloaded", Duration::from_secs(3), || !a_ids.iter().any(|id| prog_loaded(&lab, *id)));
        assert!(!pins.pinned_maps().is_empty(), "the maps stay pinned after SIGKILL");
        assert!(pins.pinned_links().is_empty(), "SIGKILL pins no links: {:?}", pins.pinned_links());
        // The routing stays (forwarding goes on through it). Plant leftovers of
        // another config: an uplink 5's rule and table, which the next start
        // must remove while it keeps (replaces) its own.
        let (rules_before, routes_before) = routing_of(&lab);
        assert_eq!(rules_before.len(), 8, "2 uplinks x 2 rules x 2 families expected, saw {rules_before:#?}");
        lab.run(Role::Router, "ip", &["rule", "add", "pref", "20008", "fwmark", "0x5000000/0xf000000", "lookup", "20004", "proto", "173"]).unwrap();
        lab.run(Role::Router, "ip", &["route", "add", "unreachable", "default", "table", "20004", "proto", "173"]).unwrap();
        std::thread::sleep(Duration::from_millis(700));

        let succ = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &[], "daemon-b.log").unwrap();
        let status_b = status_of(&succ);
        assert!(status_b.pins.adopted, "the next start must adopt the maps: {:?}\nlog:\n{}", status_b.pins, succ.log_text());
        assert_eq!(status_b.pins.links_adopted, 0);
        let (rules_after, routes_after) = routing_of(&lab);
        assert_eq!(rules_after, rules_before, "the next start must keep its rules and remove the planted one");
        assert_eq!(routes_after, routes_before, "the next start must keep its routes and remove the planted table");
        assert!(status_b.flow_table.stats.created >= status_a.flow_table.stats.created, "flows created went back");
        assert!(status_b.interfaces[0].upload.packets > status_a.interfaces[0].upload.packets, "interface counters reset");
        std::thread::sleep(Duration::from_millis(500));
        let after = udp_flow(&socket, client_port);
        assert!(
            after.up_packets > before.up_packets,
            "the adopted flow must continue counting: {} before SIGKILL, {} after",
            before.up_packets,
            after.up_packets
        );
        b = Some(succ);
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        let sent = tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (rx.join().unwrap(), sent)
    });
    let (gap, _) = received.max_gap();
    let lost = sent - received.unique();
    let unmarked = received.unmarked();
    eprintln!("restart_e2e sigkill: {sent} datagrams sent, {lost} lost, {unmarked} forwarded unmarked while no program ran, largest gap {gap:?}");
    assert!(unmarked > 0, "expected datagrams forwarded unclassified while no daemon ran (fail open), saw none");
    assert_eq!(lost, 0, "expected forwarding to continue through SIGKILL and the next start");
    assert!(gap < MAX_GAP, "largest inter-arrival gap {gap:?}, expected below {MAX_GAP:?}");

    let mut b = b.expect("started");
    let b_ids = scenario::prog_ids(&status_of(&b));
    let exit = b.stop(Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "exit {exit}; log:\n{}", b.log_text());
    let mut ids = a_ids;
    ids.extend(b_ids);
    assert_nothing_left(&lab, &socket, &ids, "after the clean stop");
}

#[test]
fn pins_of_another_flow_table_size_are_discarded_with_the_reason() {
    if !require_root_or_skip("pins_of_another_flow_table_size_are_discarded_with_the_reason") {
        return;
    }
    let work = WorkDir::new("restart-stale").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let _pin_guard = PinGuard(PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket));
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &config(&socket, 4096, false), &[], "daemon-a.log").unwrap();
    lab.ping(Role::Lan, addr::SERVER_V4.into(), Duration::from_secs(2)).unwrap();
    let a_ids = scenario::prog_ids(&status_of(&a));
    a.kill().unwrap();
    let pins = PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket);
    assert!(pins.pinned_maps().contains(&"flows".to_string()), "expected the flow table pinned, saw {:?}", pins.pinned_maps());

    let mut b = DaemonProcess::start_logged(bin(), &lab, &work, &config(&socket, 8192, false), &[], "daemon-b.log").unwrap();
    let st = status_of(&b);
    assert!(!st.pins.adopted, "maps of another flow_table_size must not be adopted: {:?}", st.pins);
    let reason = st.pins.discarded.clone().unwrap_or_default();
    assert!(reason.contains("flows") && reason.contains("max_entries 4096") && reason.contains("max_entries 8192"), "the reason must name the map and both sizes: {reason:?}");
    assert!(b.log_text().contains("do not fit"), "the log must say why the state was dropped:\n{}", b.log_text());
    assert_eq!(st.flow_table.size, 8192);
    // The fresh maps work: a new flow is counted and classified.
    lab.ping(Role::Lan, addr::SERVER_V4.into(), Duration::from_secs(2)).unwrap();
    let st = status_of(&b);
    assert!(st.interfaces[0].upload.packets >= 1, "{:?}", st.interfaces[0]);
    let b_ids = scenario::prog_ids(&st);

    // Same sizes, but the layout version differs (as after a change to a
    // struct that kept its size): discarded too.
    b.kill().unwrap();
    let abi = pins.map(inferlane::bpf::pins::MAP_ABI_VERSION).display().to_string();
    // On the host: `ip netns exec` would remount /sys and hide the bpffs.
    let out = Command::new("bpftool")
        .args(["map", "update", "pinned", &abi, "key", "0", "0", "0", "0", "value", "1", "0", "0", "0", "0", "0", "0", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "expected bpftool to rewrite {abi}: {}", String::from_utf8_lossy(&out.stderr));
    let mut c = DaemonProcess::start_logged(bin(), &lab, &work, &config(&socket, 8192, false), &[], "daemon-c.log").unwrap();
    let st = status_of(&c);
    assert!(!st.pins.adopted, "maps of another layout version must not be adopted: {:?}", st.pins);
    assert!(st.pins.discarded.as_deref().is_some_and(|r| r.contains("abi_version 0x0000000000000001")), "{:?}", st.pins);
    let c_ids = scenario::prog_ids(&st);
    assert!(c.stop(Duration::from_secs(15)).unwrap().success(), "log:\n{}", c.log_text());
    let mut ids = a_ids;
    ids.extend(b_ids);
    ids.extend(c_ids);
    assert_nothing_left(&lab, &socket, &ids, "after the clean stop");
}

#[test]
fn a_handover_to_another_flow_table_size_keeps_the_programs_attached_and_starts_empty() {
    if !require_root_or_skip("a_handover_to_another_flow_table_size_keeps_the_programs_attached_and_starts_empty") {
        return;
    }
    let work = WorkDir::new("restart-resize").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let pins = PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket);
    let _pin_guard = PinGuard(pins.clone());
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &config(&socket, 4096, false), &[], "daemon-a.log").unwrap();
    let a_ids = scenario::prog_ids(&status_of(&a));
    let stop = AtomicBool::new(false);
    let rx_ready = AtomicBool::new(false);
    let port = std::sync::atomic::AtomicU16::new(0);
    let mut b: Option<DaemonProcess> = None;
    let (received, sent) = std::thread::scope(|s| {
        let rx = s.spawn(|| udp_receiver(&lab, &rx_ready, &stop));
        wait_for("the receiver to listen", Duration::from_secs(5), || rx_ready.load(Ordering::SeqCst));
        let tx = s.spawn(|| udp_sender(&lab, &stop, &port));
        std::thread::sleep(Duration::from_millis(1000));
        let out = Command::new(bin()).args(["restart", "--socket"]).arg(&socket).output().unwrap();
        assert!(out.status.success(), "inferlane restart: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a.wait_exit(Duration::from_secs(15)).unwrap().code(), Some(75), "log:\n{}", a.log_text());
        let succ = DaemonProcess::start_logged(bin(), &lab, &work, &config(&socket, 8192, false), &[], "daemon-b.log").unwrap();
        let st = status_of(&succ);
        assert!(!st.pins.adopted, "maps of another size must not be adopted: {:?}", st.pins);
        assert!(st.pins.discarded.as_deref().is_some_and(|r| r.contains("max_entries 4096")), "{:?}", st.pins);
        assert_eq!(st.pins.links_adopted, 5, "the links are adopted all the same: {:?}", st.pins);
        assert!(succ.log_text().contains("handover state dropped with the maps"), "log:\n{}", succ.log_text());
        std::thread::sleep(Duration::from_millis(500));
        // The flow starts over in the new table, classified again.
        let f = udp_flow(&socket, port.load(Ordering::SeqCst));
        assert_eq!(f.class.as_deref(), Some("interactive"), "{f:?}");
        b = Some(succ);
        stop.store(true, Ordering::SeqCst);
        let sent = tx.join().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        (rx.join().unwrap(), sent)
    });
    let (gap, _) = received.max_gap();
    let lost = sent - received.unique();
    let unmarked = received.unmarked();
    eprintln!("restart_e2e resize: {sent} datagrams sent, {lost} lost, {unmarked} unmarked, largest gap {gap:?}");
    assert_eq!((lost, unmarked), (0, 0), "expected every datagram forwarded and marked across the handover");
    assert!(gap < MAX_GAP, "largest inter-arrival gap {gap:?}, expected below {MAX_GAP:?}");
    let mut b = b.expect("started");
    let mut ids = a_ids;
    ids.extend(scenario::prog_ids(&status_of(&b)));
    assert!(b.stop(Duration::from_secs(15)).unwrap().success(), "log:\n{}", b.log_text());
    assert_nothing_left(&lab, &socket, &ids, "after the clean stop");
}

/// `systemctl restart` sends SIGTERM, like `systemctl stop`: the daemon asks
/// systemd for its unit's job. Here a fake systemd answers (no systemd boots on
/// the test machines): a stop job gives a clean stop, a restart job a handover
/// that the next start adopts.
#[test]
fn sigterm_hands_over_only_when_systemds_job_is_a_restart() {
    if !require_root_or_skip("sigterm_hands_over_only_when_systemds_job_is_a_restart") {
        return;
    }
    let work = WorkDir::new("restart-systemd").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let pins = PinDir::new(Path::new(inferlane::bpf::fs::BPFFS), &socket);
    let _pin_guard = PinGuard(pins.clone());
    let cfg = config(&socket, 4096, false);
    let bus = work.path().join("systemd-private");
    let bus_s = bus.display().to_string();
    let env = [("INVOCATION_ID", "0123456789abcdef0123456789abcdef"), ("INFERLANE_SYSTEMD_BUS", bus_s.as_str()), ("INFERLANE_SYSTEMD_UNIT", "inferlane.service")];
    let mut ids = Vec::new();

    // systemctl stop: a stop job.
    let server = inferlane::systemd::fake::fake_systemd(std::os::unix::net::UnixListener::bind(&bus).unwrap(), Some((41, "stop")));
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &env, "daemon-stop.log").unwrap();
    ids.extend(scenario::prog_ids(&status_of(&a)));
    let exit = a.stop(Duration::from_secs(15)).unwrap();
    assert_eq!(exit.code(), Some(0), "a stop job is a clean stop; log:\n{}", a.log_text());
    let asked = server.join().unwrap();
    assert!(!asked.is_empty(), "the daemon did not ask systemd for its job at SIGTERM; log:\n{}", a.log_text());
    assert_eq!(asked[0].0, "/org/freedesktop/systemd1/unit/inferlane_2eservice", "{asked:?}");
    assert!(a.log_text().contains("job=Some(\"stop\")"), "log:\n{}", a.log_text());
    assert_nothing_left(&lab, &socket, &ids, "after a clean stop");
    std::fs::remove_file(&bus).unwrap();

    // systemctl restart: a restart job.
    let server = inferlane::systemd::fake::fake_systemd(std::os::unix::net::UnixListener::bind(&bus).unwrap(), Some((42, "restart")));
    let mut a = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &env, "daemon-restart.log").unwrap();
    ids.extend(scenario::prog_ids(&status_of(&a)));
    let exit = a.stop(Duration::from_secs(15)).unwrap();
    assert_eq!(exit.code(), Some(75), "a restart job is a handover; log:\n{}", a.log_text());
    server.join().unwrap();
    assert_eq!(pins.pinned_links().len(), 5, "links pinned for the successor: {:?}", pins.pinned_links());
    assert!(inferlane::restart::state_path(&socket).exists(), "state file written");
    let mut b = DaemonProcess::start_logged(bin(), &lab, &work, &cfg, &[], "daemon-b.log").unwrap();
    let st = status_of(&b);
    assert!(st.pins.adopted && st.pins.links_adopted == 5, "{:?}\nlog:\n{}", st.pins, b.log_text());
    ids.extend(scenario::prog_ids(&st));
    // Outside systemd SIGTERM is a clean stop, as before.
    assert!(b.stop(Duration::from_secs(15)).unwrap().success(), "log:\n{}", b.log_text());
    assert_nothing_left(&lab, &socket, &ids, "after the clean stop");
}

/// Reload under traffic (issue 8: "reload with valid and invalid configs under
/// traffic, no packet loss beyond the baseline"; budget: applied in ≤ 100 ms).
/// SIGHUP with a valid config (one rule more) is applied, timed from the signal to
/// the new generation in `status`; `inferlane reload` with an invalid one is
/// refused, counted, and the running config stays. The 1-per-ms stream through
/// the router loses nothing and stays AF41 throughout.
#[test]
fn reload_under_traffic_applies_a_valid_config_and_refuses_an_invalid_one_without_loss() {
    if !require_root_or_skip("reload_under_traffic_applies_a_valid_config_and_refuses_an_invalid_one_without_loss") {
        return;
    }
    let work = WorkDir::new("restart-reload").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = config(&socket, 4096, false);
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();
    let ids = scenario::prog_ids(&status_of(&daemon));
    let pid = daemon.pid().expect("daemon pid");
    let config_path = work.path().join("inferlane.toml");

    let stop = AtomicBool::new(false);
    let rx_ready = AtomicBool::new(false);
    let port = std::sync::atomic::AtomicU16::new(0);
    let (received, sent, applied_in) = std::thread::scope(|s| {
        let rx = s.spawn(|| udp_receiver(&lab, &rx_ready, &stop));
        wait_for("the receiver to listen", Duration::from_secs(5), || rx_ready.load(Ordering::SeqCst));
        let tx = s.spawn(|| udp_sender(&lab, &stop, &port));
        std::thread::sleep(Duration::from_millis(1000));

        // Valid: one rule more (bulk for a port nothing uses), by SIGHUP.
        let valid = format!("{cfg}\n[[rules]]\nclass = \"bulk\"\nports = [\"tcp:9999\"]\n");
        std::fs::write(&config_path, &valid).unwrap();
        let t = Instant::now();
        // SAFETY: kill(2) on the daemon we started.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0, "SIGHUP");
        let mut applied_in = None;
        while t.elapsed() < Duration::from_secs(5) {
            if status_of(&daemon).rules.generation == 2 {
                applied_in = Some(t.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(500));

        // Invalid: a class that does not exist, by `inferlane reload`.
        std::fs::write(&config_path, format!("{valid}\n[[rules]]\nclass = \"no-such-class\"\nports = [\"tcp:9998\"]\n")).unwrap();
        let out = Command::new(bin()).args(["reload", "--socket"]).arg(&socket).output().unwrap();
        assert!(!out.status.success(), "an invalid config must be refused: {}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::SeqCst);
        let sent = tx.join().unwrap();
        (rx.join().unwrap(), sent, applied_in)
    });
    let status = status_of(&daemon);
    let applied_in = applied_in.unwrap_or_else(|| panic!("the valid reload was not applied within 5 s: {:?}\n{}", status.rules, daemon.log_text()));
    let (gap, _) = received.max_gap();
    let lost = sent - received.unique();
    let unmarked = received.unmarked();
    eprintln!(
        "restart_e2e reload: applied {applied_in:?} after SIGHUP (status polled every 2 ms); {sent} datagrams sent, {lost} lost, {unmarked} without AF41, largest gap {gap:?}"
    );
    assert_eq!(
        (status.rules.generation, status.rules.reloads, status.rules.reload_failures),
        (2, 1, 1),
        "one reload applied, one refused: {:?}",
        status.rules
    );
    assert!(status.rules.last_reload_error.as_deref().unwrap_or("").contains("no-such-class"), "{:?}", status.rules);
    // A margin over the 100 ms budget (BENCHMARKS/README quote the measured time).
    assert!(applied_in < Duration::from_millis(500), "reload applied in {applied_in:?}");
    assert_eq!(lost, 0, "expected no datagram lost across the reloads");
    assert_eq!(unmarked, 0, "expected every datagram AF41 across the reloads");
    assert!(gap < MAX_GAP, "largest inter-arrival gap {gap:?}, expected below {MAX_GAP:?}");
    let exit = daemon.stop(Duration::from_secs(15)).unwrap();
    assert!(exit.success(), "exit {exit}; log:\n{}", daemon.log_text());
    assert_nothing_left(&lab, &socket, &ids, "after the clean stop");
    lab.teardown().unwrap();
}
