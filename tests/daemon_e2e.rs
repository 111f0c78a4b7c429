//! End to end: the real `inferlane` binary in the lab's router namespace, real
//! traffic from the LAN client, counters checked against the kernel's, and a
//! check that every stop leaves nothing behind. Privileged: needs root.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use inferlane::bpf::{TcAttachMode, XdpAttachMode};
use inferlane::lab::scenario::{self, DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

#[test]
fn counters_match_the_interface_and_stop_leaves_nothing() {
    if !require_root_or_skip("counters_match_the_interface_and_stop_leaves_nothing") {
        return;
    }
    let work = WorkDir::new("e2e-counters").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &scenario::lab_config(&socket)).unwrap();

    let status = daemon.status().unwrap();
    assert_eq!(status.mode, "enforce");
    assert_eq!(status.interfaces.len(), 1, "one LAN interface expected, saw {:?}", status.interfaces);
    let lan = &status.interfaces[0];
    assert_eq!(lan.name, addr::ROUTER_LAN_IF);
    assert_eq!(lan.xdp, XdpAttachMode::Driver, "veth supports native XDP");
    assert_eq!(lan.tc, TcAttachMode::Tcx, "this kernel has TCX");

    // The leftover detector must see the programs while they are attached, or its
    // empty answer after the stop would prove nothing.
    let ids = scenario::prog_ids(&status);
    let attached = scenario::attached(&lab, &ids);
    assert!(attached.iter().any(|l| l.starts_with("xdp")), "XDP attachment not visible: {attached:?}");
    assert!(attached.iter().any(|l| l.starts_with("tcx")), "TCX link not visible: {attached:?}");

    scenario::start_iperf_server(&mut lab).unwrap();
    let before = (daemon.status().unwrap(), lab.link_stats(Role::Router, addr::ROUTER_LAN_IF).unwrap());
    let s4 = addr::SERVER_V4.to_string();
    let s6 = addr::SERVER_V6.to_string();
    let up = scenario::iperf(&lab, "tcp up v4", &["-c", &s4, "-t", "1"]).unwrap();
    let down = scenario::iperf(&lab, "tcp down v6", &["-c", &s6, "-R", "-t", "1"]).unwrap();
    let udp = scenario::iperf(&lab, "udp up v6", &["-c", &s6, "-u", "-b", "10M", "-t", "1"]).unwrap();
    let after = (daemon.status().unwrap(), lab.link_stats(Role::Router, addr::ROUTER_LAN_IF).unwrap());

    let cmp = scenario::compare((&before.0, &before.1), (&after.0, &after.1), addr::ROUTER_LAN_IF);
    assert_eq!(cmp.len(), 4);
    for c in &cmp {
        assert!(
            c.relative_error() <= scenario::TOLERANCE,
            "{}: daemon counted {}, the interface {} ({:.3}% apart, 1% allowed)",
            c.what,
            c.daemon,
            c.interface,
            c.relative_error() * 100.0
        );
        assert!(c.interface > 100, "{}: too little traffic to compare ({})", c.what, c.interface);
    }
    // The byte counts carry the traffic iperf3 reported, headers on top.
    let (d0, d1) = (&before.0.interfaces[0], &after.0.interfaces[0]);
    assert!(d1.upload.bytes - d0.upload.bytes >= up.bytes + udp.bytes, "upload bytes below what iperf3 sent");
    assert!(d1.download.bytes - d0.download.bytes >= down.bytes, "download bytes below what iperf3 received");
    // Both families were parsed: IPv4 upload, IPv6 download, nothing malformed.
    assert!(d1.upload.ipv4 - d0.upload.ipv4 > 1000, "IPv4 upload not recognised: {d1:?}");
    assert!(d1.download.ipv6 - d0.download.ipv6 > 1000, "IPv6 download not recognised: {d1:?}");
    assert!(d1.upload.ipv6 - d0.upload.ipv6 > 100, "IPv6 UDP upload not recognised: {d1:?}");
    assert_eq!(d1.upload.malformed + d1.download.malformed, 0, "well-formed traffic counted as malformed");

    let exit = daemon.stop(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "daemon exit {exit}; log:\n{}", daemon.log_text());
    let left = scenario::leftovers(&lab, &socket, &ids);
    assert!(left.is_empty(), "left behind after a clean stop: {left:?}");
    let names = lab.netns_names();
    lab.teardown().unwrap();
    let listed = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for n in names {
        assert!(!listed.contains(&n), "namespace {n} still listed after teardown");
    }
}

#[test]
fn status_command_reads_the_running_daemon() {
    if !require_root_or_skip("status_command_reads_the_running_daemon") {
        return;
    }
    let work = WorkDir::new("e2e-status").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let config = scenario::lab_config(&socket);
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &config).unwrap();
    lab.ping(Role::Lan, addr::SERVER_V4.into(), Duration::from_secs(1)).unwrap();

    let out = Command::new(bin()).args(["status", "--json", "--socket"]).arg(&socket).output().unwrap();
    assert!(out.status.success(), "status --json failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["pid"].as_u64(), daemon.pid().map(u64::from));
    assert_eq!(v["interfaces"][0]["name"], addr::ROUTER_LAN_IF);
    assert!(v["interfaces"][0]["upload"]["packets"].as_u64().unwrap() >= 1, "the ping was not counted: {v}");

    // The config file names the socket too: `-c` must find the same daemon.
    let out = Command::new(bin()).args(["status", "-c"]).arg(work.path().join("inferlane.toml")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "status -c failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("mode enforce") && text.contains(addr::ROUTER_LAN_IF), "human status lacks mode/interface:\n{text}");

    daemon.stop(Duration::from_secs(10)).unwrap();
    // With the daemon gone, status says so and fails.
    let out = Command::new(bin()).args(["status", "--socket"]).arg(&socket).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is the daemon running"), "unhelpful error: {out:?}");
}

#[test]
fn a_failed_attach_leaves_nothing_half_applied() {
    if !require_root_or_skip("a_failed_attach_leaves_nothing_half_applied") {
        return;
    }
    let work = WorkDir::new("e2e-halfapplied").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    // lan0 attaches first, then the missing interface fails: lan0 must be detached.
    let config = scenario::lab_config(&socket).replace(r#"interfaces = ["lan0"]"#, r#"interfaces = ["lan0", "nosuch0"]"#);
    assert!(config.contains("nosuch0"));
    let path = work.path().join("inferlane.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(&path)
        .args(["--netns", lab.netns(Role::Router)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, got {:?}: {stderr}", out.status);
    assert!(stderr.contains("nosuch0") && stderr.contains("does not exist"), "error does not name the interface: {stderr}");
    let left = scenario::leftovers(&lab, &socket, &[]);
    assert!(left.is_empty(), "a failed start left things behind: {left:?}");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_and_a_stale_socket_is_replaced() {
    if !require_root_or_skip("a_second_daemon_on_the_same_socket_is_refused") {
        return;
    }
    let work = WorkDir::new("e2e-socket").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let config = scenario::lab_config(&socket);
    let mut first = DaemonProcess::start(bin(), &lab, &work, &config).unwrap();

    let out = Command::new(bin())
        .args(["run", "-c"])
        .arg(work.path().join("inferlane.toml"))
        .args(["--netns", lab.netns(Role::Router)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon started");
    assert!(stderr.contains("already listening"), "unclear refusal: {stderr}");
    // The refused daemon must not have detached the first one's programs.
    assert!(first.status().is_ok(), "first daemon stopped answering");
    let ids = scenario::prog_ids(&first.status().unwrap());
    assert_eq!(scenario::attached(&lab, &ids).len(), 3, "first daemon's programs vanished");
    first.stop(Duration::from_secs(10)).unwrap();

    // A socket file nobody listens on (a daemon killed with SIGKILL) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let mut second = DaemonProcess::start(bin(), &lab, &work, &config).unwrap();
    assert!(second.status().is_ok());
    let exit = second.stop(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "daemon exit {exit}; log:\n{}", second.log_text());
    assert!(!socket.exists(), "socket not removed on stop");
}

/// The pre-TCX path (kernels before 6.6): a clsact qdisc we add is removed at stop,
/// one that was there before is left alone.
#[test]
fn legacy_tc_attach_removes_only_the_clsact_it_created() {
    if !require_root_or_skip("legacy_tc_attach_removes_only_the_clsact_it_created") {
        return;
    }
    let netlink = [("INFERLANE_TC_ATTACH", "netlink")];
    let work = WorkDir::new("e2e-clsact").unwrap();
    let lab = Lab::build(&LabOptions::default()).unwrap();
    let socket = work.path().join("control.sock");
    let config = scenario::lab_config(&socket);
    let qdiscs = || lab.run(Role::Router, "tc", &["qdisc", "show", "dev", addr::ROUTER_LAN_IF]).unwrap();

    let mut daemon = DaemonProcess::start_with_env(bin(), &lab, &work, &config, &netlink).unwrap();
    assert_eq!(daemon.status().unwrap().interfaces[0].tc, TcAttachMode::Netlink);
    assert!(qdiscs().contains("clsact"), "clsact not added: {}", qdiscs());
    lab.ping(Role::Lan, addr::SERVER_V6.into(), Duration::from_secs(1)).unwrap();
    assert!(daemon.status().unwrap().interfaces[0].download.packets >= 1, "netlink-attached TC program counted nothing");
    let ids = scenario::prog_ids(&daemon.status().unwrap());
    let exit = daemon.stop(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "daemon exit {exit}; log:\n{}", daemon.log_text());
    assert!(!qdiscs().contains("clsact"), "our clsact was left behind: {}", qdiscs());
    let left = scenario::leftovers(&lab, &socket, &ids);
    assert!(left.is_empty(), "left behind after a netlink-mode stop: {left:?}");

    // Someone else's clsact (with their own filter) survives our start and stop.
    lab.run(Role::Router, "tc", &["qdisc", "add", "dev", addr::ROUTER_LAN_IF, "clsact"]).unwrap();
    let mut daemon = DaemonProcess::start_with_env(bin(), &lab, &work, &config, &netlink).unwrap();
    let exit = daemon.stop(Duration::from_secs(10)).unwrap();
    assert!(exit.success(), "daemon exit {exit}; log:\n{}", daemon.log_text());
    let after = qdiscs();
    assert!(after.contains("clsact"), "a clsact we did not create was removed: {after}");
    let filters = lab.run(Role::Router, "tc", &["filter", "show", "dev", addr::ROUTER_LAN_IF, "egress"]).unwrap();
    assert!(!filters.contains("lan_egress"), "our filter was left under the foreign clsact: {filters}");
}

#[test]
fn lab_command_runs_end_to_end() {
    if !require_root_or_skip("lab_command_runs_end_to_end") {
        return;
    }
    let out = Command::new(bin()).args(["lab", "--seconds", "1"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "inferlane lab failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("PASS") && stdout.contains("left behind: nothing"), "report:\n{stdout}");
}

/// Ctrl-C in a terminal sends SIGINT to the whole foreground process group:
/// `inferlane lab`, its daemon and iperf3. Everything must still be torn down.
#[test]
fn lab_command_cleans_up_on_ctrl_c() {
    if !require_root_or_skip("lab_command_cleans_up_on_ctrl_c") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let child = Command::new(bin())
        .args(["lab", "--seconds", "3"])
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("il{}", child.id());
    let netns = || String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    // Interrupt while traffic runs: the daemon answers once iperf3 has started.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !netns().contains(&format!("{prefix}a-router")) {
        assert!(std::time::Instant::now() < deadline, "lab namespaces never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "expected exit 130 after Ctrl-C: {stderr}");
    assert!(stderr.contains("interrupted"), "no word of the interrupt: {stderr}");
    let left = netns();
    assert!(!left.contains(&prefix), "namespaces left after Ctrl-C: {left}");
}
