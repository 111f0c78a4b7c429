//! The metrics endpoint and `inferlane top --once` against the real daemon in
//! the lab: scraped from inside the router namespace with curl, checked by
//! promtool and the OpenMetrics parser, compared with what the control socket
//! says, through a failover and back. Needs root.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use inferlane::control::flows::FlowInfo;
use inferlane::control::{client, Request, Response, Status};
use inferlane::lab::scenario::{iperf, lab_config, start_iperf_server, DaemonProcess, WorkDir};
use inferlane::lab::{addr, require_root_or_skip, Lab, LabOptions, Role};

/// Inside the router namespace only: nothing else can reach it.
const LISTEN: &str = "127.0.0.1:9464";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_inferlane"))
}

fn status(socket: &Path) -> Status {
    match client::request(socket, &Request::Status).unwrap() {
        Response::Status(s) => s,
        other => panic!("status answered {other:?}"),
    }
}

fn flows(socket: &Path) -> Vec<FlowInfo> {
    match client::request(socket, &Request::Flows).unwrap() {
        Response::Flows { flows } => flows,
        other => panic!("flows answered {other:?}"),
    }
}

/// curl in the router namespace: (HTTP status, content type, body).
fn curl(lab: &Lab, args: &[&str]) -> (u16, String, String) {
    let out = lab
        .command(Role::Router, "curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code} %{content_type}"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, ctype) = tail.split_once(' ').unwrap_or((tail, ""));
    (code.parse().unwrap(), ctype.to_string(), body.to_string())
}

fn scrape(lab: &Lab) -> String {
    let (code, ctype, body) = curl(lab, &[&format!("http://{LISTEN}/metrics")]);
    assert_eq!(code, 200, "GET /metrics: {body}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    body
}

/// The value of one series (`name{labels}` exactly as rendered).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().unwrap())
    })
}

fn must(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("expected series {series} in the scrape:\n{text}"))
}

/// Sum of every series of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn promtool_clean(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus: make deps)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\non the scrape:\n{text}");
}

fn openmetrics_valid(text: &str) {
    use std::io::Write;
    let script = "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                  list(text_string_to_metric_families(sys.stdin.read()))\n";
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "OpenMetrics parser (python3-prometheus-client): {}\n{text}", String::from_utf8_lossy(&out.stderr));
}

/// Poll the scrape until `series` has `want` (failover is asynchronous).
fn wait_for(lab: &Lab, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(lab);
        if sample(&text, series) == Some(want) {
            return text;
        }
        assert!(Instant::now() < deadline, "expected {series} {want} within 5 s, last scrape:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_and_top_from_the_lab_daemon() {
    if !require_root_or_skip("metrics_and_top_from_the_lab_daemon") {
        return;
    }
    let work = WorkDir::new("metrics").unwrap();
    let mut lab = Lab::build(&LabOptions::default()).unwrap();
    start_iperf_server(&mut lab).unwrap();
    let socket = work.path().join("control.sock");
    let cfg = format!("{}\n[metrics]\nlisten = \"{LISTEN}\"\n", lab_config(&socket));
    let mut daemon = DaemonProcess::start(bin(), &lab, &work, &cfg).unwrap();

    // Nothing but /metrics, GET and HEAD, is served; the listener is only in
    // the router namespace (the host's loopback has nothing there).
    let (code, _, _) = curl(&lab, &[&format!("http://{LISTEN}/")]);
    assert_eq!(code, 404);
    let (code, _, _) = curl(&lab, &["-X", "POST", &format!("http://{LISTEN}/metrics")]);
    assert_eq!(code, 405);
    let (code, _, _) = curl(&lab, &["-H", &format!("X-Pad: {}", "a".repeat(9000)), &format!("http://{LISTEN}/metrics")]);
    assert_eq!(code, 431, "an oversized request is refused");
    let before = scrape(&lab);
    assert_eq!(must(&before, r#"inferlane_uplink_up{uplink="fiber"}"#), 1.0);
    assert_eq!(must(&before, r#"inferlane_uplink_failovers_total{uplink="fiber"}"#), 0.0);

    // Interactive traffic (the lab rule: tcp:5201 to the server), IPv4 upload.
    let run = iperf(&lab, "upload", &["-c", &addr::SERVER_V4.to_string(), "-t", "1", "-b", "20M"]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let text = scrape(&lab);
    let (st, fl) = (status(&socket), flows(&socket));
    promtool_clean(&text);
    let (code, ctype, om) = curl(&lab, &["-H", "Accept: application/openmetrics-text;version=1.0.0", &format!("http://{LISTEN}/metrics")]);
    assert_eq!((code, ctype.as_str()), (200, "application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(om.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    openmetrics_valid(&om);

    // The class's live bytes: non-zero, at least what iperf3 moved, and the
    // same as the flows the control socket lists (no traffic since the scrape).
    let up = sum(&text, "inferlane_live_flow_bytes", &[r#"class="interactive""#, r#"direction="upload""#]);
    let want: u64 = fl.iter().filter(|f| f.class.as_deref() == Some("interactive")).map(|f| f.up_bytes).sum();
    assert!(up >= run.bytes as f64, "interactive upload {up} bytes < iperf3's {} bytes", run.bytes);
    assert_eq!(up, want as f64, "metrics and `inferlane flows` disagree on interactive upload bytes");
    let n = fl.iter().filter(|f| f.class.as_deref() == Some("interactive")).count();
    assert!(n >= 2, "iperf3's control and data connections: {fl:#?}");
    assert_eq!(sum(&text, "inferlane_live_flows", &[r#"class="interactive""#, r#"source="static""#]), n as f64);
    // The uplink counters are those of `inferlane status`, and carried it.
    let fiber = st.uplinks.iter().find(|u| u.name == "fiber").unwrap();
    assert!(fiber.counters.up_bytes >= run.bytes, "{fiber:?}");
    assert_eq!(must(&text, r#"inferlane_uplink_bytes_total{uplink="fiber",direction="upload"}"#), fiber.counters.up_bytes as f64);
    assert_eq!(must(&text, r#"inferlane_uplink_bytes_total{uplink="fiber",direction="download"}"#), fiber.counters.down_bytes as f64);
    assert_eq!(must(&text, "inferlane_flow_table_flows"), st.flow_table.live as f64);
    assert_eq!(must(&text, "inferlane_flow_table_size"), f64::from(st.flow_table.size));
    assert_eq!(must(&text, "inferlane_flows_created_total"), st.flow_table.stats.created as f64);
    let lan = st.interfaces.iter().find(|i| i.name == addr::ROUTER_LAN_IF).unwrap();
    assert!(lan.upload.bytes > 0);
    assert!(must(&text, r#"inferlane_interface_bytes_total{interface="lan0",direction="upload"}"#) >= lan.upload.bytes as f64 - 1e6);
    // TCP handshakes were timed: the histogram has them (no provider: a rule).
    assert!(must(&text, r#"inferlane_flow_handshake_rtt_seconds_count{provider="none"}"#) >= 2.0, "{text}");

    // `inferlane top --once` shows the uplinks and the flow.
    let out = Command::new(bin()).args(["top", "--once", "--size", "180x40", "--socket"]).arg(&socket).output().unwrap();
    let frame = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "top --once: {}", String::from_utf8_lossy(&out.stderr));
    for want in ["fiber", "lte", "wan0", "wwan0", "interactive", &format!("{}:5201", addr::SERVER_V4)] {
        assert!(frame.contains(want), "expected {want:?} in the top frame:\n{frame}");
    }
    assert!(frame.lines().any(|l| l.contains("fiber") && l.contains(" up ")), "fiber up in:\n{frame}");

    // Failover: the fiber's carrier goes and comes back. The counter counts
    // one down and stays there; up follows the state.
    lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "down"]).unwrap();
    let down = wait_for(&lab, r#"inferlane_uplink_up{uplink="fiber"}"#, 0.0);
    assert_eq!(must(&down, r#"inferlane_uplink_failovers_total{uplink="fiber"}"#), 1.0);
    assert_eq!(must(&down, r#"inferlane_uplink_reason_info{uplink="fiber",reason="carrier lost"}"#), 1.0);
    assert_eq!(must(&down, r#"inferlane_uplink_failovers_total{uplink="lte"}"#), 0.0);
    let out = Command::new(bin()).args(["top", "--once", "--socket"]).arg(&socket).output().unwrap();
    let frame = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(frame.lines().any(|l| l.contains("fiber") && l.contains("DOWN")), "fiber DOWN in:\n{frame}");
    lab.run(Role::Isp1, "ip", &["link", "set", addr::ISP_DOWN_IF, "up"]).unwrap();
    let back = wait_for(&lab, r#"inferlane_uplink_up{uplink="fiber"}"#, 1.0);
    assert_eq!(must(&back, r#"inferlane_uplink_failovers_total{uplink="fiber"}"#), 1.0);
    promtool_clean(&back);

    assert!(daemon.stop(Duration::from_secs(10)).unwrap().success(), "{}", daemon.log_text());
}
