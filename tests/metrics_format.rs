//! The Prometheus exposition rendered from a hand-built snapshot: exact metric
//! lines, the cumulative latency histograms, the Prometheus-text form, request
//! routing, and `promtool check metrics` (Debian package `prometheus`) and the
//! OpenMetrics parser of python3-prometheus-client on the output.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use inferlane::bpf::abi::{Counters, FlowStats, UplinkCounters};
use inferlane::bpf::{ProgIds, TcAttachMode, XdpAttachMode};
use inferlane::control::flows::FlowInfo;
use inferlane::control::metrics::{render, route, to_prometheus_text, Exporter, Route};
use inferlane::control::{FlowTableStatus, InterfaceStatus, LearningStatus, RulesStatus, Status};
use inferlane::uplink::{Switch, UplinkStatus};

fn uplink(name: &str, iface: &str, up: bool, reason: &str, c: UplinkCounters, flows: u64, downs: u64) -> UplinkStatus {
    UplinkStatus {
        name: name.into(),
        interface: iface.into(),
        priority: 10,
        metered: false,
        up,
        carrier: up,
        reason: reason.into(),
        since_ms: 0,
        table: 1000,
        gateway4: None,
        gateway6: None,
        flows,
        counters: c,
        carries: vec![],
        downs,
        health: None,
    }
}

fn status() -> Status {
    Status {
        version: "0.1.0".into(),
        pid: 42,
        mode: "enforce".into(),
        config: "/etc/inferlane/inferlane.toml".into(),
        uptime_ms: 5000,
        interfaces: vec![InterfaceStatus {
            name: "lan0".into(),
            ifindex: 3,
            xdp: XdpAttachMode::Driver,
            tc: TcAttachMode::Tcx,
            prog_ids: ProgIds::default(),
            upload: Counters { packets: 10, bytes: 1500, malformed: 1, ..Default::default() },
            download: Counters { packets: 20, bytes: 30000, ..Default::default() },
        }],
        flow_table: FlowTableStatus {
            size: 65536,
            live: 3,
            evicted: 7,
            evicted_by_kernel: 1,
            ended: 0,
            records: 0,
            stats: FlowStats { created: 10, blocked: 4, moved: 2, frag_first: 1, ..Default::default() },
        },
        rules: RulesStatus {
            rules: 5,
            destination_prefixes: 1,
            client_prefixes: 0,
            provider_rules: 2,
            generation: 2,
            reloads: 1,
            reload_failures: 0,
            last_reload_error: None,
        },
        learning: LearningStatus {
            punts: 9,
            dns_answers: 6,
            dns_errors: 0,
            addresses_learned: 3,
            addresses_forgotten: 1,
            addresses_live: 2,
            hellos: 4,
            hello_errors: 0,
            inference_requests: 1,
            providers: 47,
        },
        uplinks: vec![
            uplink(
                "fiber",
                "wan0",
                true,
                "carrier up",
                UplinkCounters { up_packets: 11, up_bytes: 1100, down_packets: 22, down_bytes: 22000, steered: 3, moved: 1 },
                2,
                1,
            ),
            uplink("lte", "wwan0", false, "carrier lost", UplinkCounters::default(), 0, 2),
        ],
        // The bounded history holds only the latest switch; the counter must
        // come from `downs`, not from here.
        switches: vec![Switch { at_ms: 1, uplink: "lte".into(), up: false, reason: "carrier lost".into(), flows_ended: 0 }],
        queues: None,
        export: Vec::new(),
        pins: Default::default(),
    }
}

fn flow(client_port: u16, class: Option<&str>, provider: Option<&str>, source: Option<&str>, up: u64, down: u64) -> FlowInfo {
    FlowInfo {
        client: "10.0.0.2".parse::<IpAddr>().unwrap(),
        client_port,
        remote: "192.0.2.10".parse::<IpAddr>().unwrap(),
        remote_port: 443,
        proto: "tcp".into(),
        interface: "lan0".into(),
        class: class.map(Into::into),
        provider: provider.map(Into::into),
        name: None,
        ech: false,
        pending: false,
        rule: None,
        source: source.map(Into::into),
        blocked: false,
        dscp: None,
        dscp_seen: 0,
        mark: 0,
        priority: 0,
        up_packets: up / 100,
        up_bytes: up,
        down_packets: down / 100,
        down_bytes: down,
        tcp_flags_up: 0,
        tcp_flags_down: 0,
        age_ms: 100,
        idle_ms: 0,
        handshake_rtt_us: None,
        lan_rtt_us: None,
        ttfb_us: None,
        response_ms: None,
        streaming: false,
    }
}

fn flows() -> Vec<FlowInfo> {
    let mut a = flow(40000, Some("interactive"), Some("openai"), Some("sni"), 1000, 5000);
    a.handshake_rtt_us = Some(20_000);
    a.ttfb_us = Some(300_000);
    a.streaming = true;
    let mut b = flow(40001, Some("interactive"), Some("openai"), Some("dns"), 200, 800);
    b.handshake_rtt_us = Some(3_000);
    let c = flow(40002, None, None, None, 100, 0);
    vec![a, b, c]
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn assert_has(text: &str, want: &[&str]) {
    let have = lines(text);
    for w in want {
        assert!(have.contains(w), "expected the line\n  {w}\nin the exposition:\n{text}");
    }
}

#[test]
fn render_exact_lines() {
    let text = render(&status(), &flows());
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF:\n{text}");
    assert_has(
        &text,
        &[
            "# TYPE inferlane_build_info gauge",
            r#"inferlane_build_info{version="0.1.0",mode="enforce"} 1"#,
            "# TYPE inferlane_interface_bytes counter",
            "# UNIT inferlane_interface_bytes bytes",
            r#"inferlane_interface_bytes_total{interface="lan0",direction="upload"} 1500"#,
            r#"inferlane_interface_bytes_total{interface="lan0",direction="download"} 30000"#,
            r#"inferlane_interface_packets_total{interface="lan0",direction="download"} 20"#,
            r#"inferlane_interface_malformed_packets_total{interface="lan0",direction="upload"} 1"#,
            "inferlane_flow_table_flows 3",
            "inferlane_flow_table_size 65536",
            "inferlane_flow_table_evictions_total 7",
            "inferlane_flows_created_total 10",
            "inferlane_blocked_packets_total 4",
            "inferlane_flows_moved_total 2",
            r#"inferlane_fragments_total{kind="first"} 1"#,
            "inferlane_config_generation 2",
            "inferlane_config_reloads_total 1",
            "inferlane_dns_answers_total 6",
            "inferlane_learned_addresses_live 2",
            "inferlane_client_hellos_total 4",
            "inferlane_inference_requests_total 1",
            // Uplinks.
            r#"inferlane_uplink_up{uplink="fiber"} 1"#,
            r#"inferlane_uplink_up{uplink="lte"} 0"#,
            r#"inferlane_uplink_carrier{uplink="lte"} 0"#,
            r#"inferlane_uplink_reason_info{uplink="lte",reason="carrier lost"} 1"#,
            "# TYPE inferlane_uplink_bytes counter",
            r#"inferlane_uplink_bytes_total{uplink="fiber",direction="upload"} 1100"#,
            r#"inferlane_uplink_bytes_total{uplink="fiber",direction="download"} 22000"#,
            r#"inferlane_uplink_packets_total{uplink="fiber",direction="download"} 22"#,
            r#"inferlane_uplink_flows_steered_total{uplink="fiber"} 3"#,
            r#"inferlane_uplink_flows_moved_in_total{uplink="fiber"} 1"#,
            r#"inferlane_uplink_flows{uplink="fiber"} 2"#,
            "# TYPE inferlane_uplink_failovers counter",
            r#"inferlane_uplink_failovers_total{uplink="fiber"} 1"#,
            r#"inferlane_uplink_failovers_total{uplink="lte"} 2"#,
            // Live flows: gauges, summed per label set.
            "# TYPE inferlane_live_flow_bytes gauge",
            r#"inferlane_live_flow_bytes{class="interactive",provider="openai",direction="upload"} 1200"#,
            r#"inferlane_live_flow_bytes{class="interactive",provider="openai",direction="download"} 5800"#,
            r#"inferlane_live_flow_bytes{class="unclassified",provider="none",direction="upload"} 100"#,
            r#"inferlane_live_flow_packets{class="interactive",provider="openai",direction="download"} 58"#,
            r#"inferlane_live_flows{class="interactive",provider="openai",source="sni"} 1"#,
            r#"inferlane_live_flows{class="interactive",provider="openai",source="dns"} 1"#,
            r#"inferlane_live_flows{class="unclassified",provider="none",source="none"} 1"#,
            r#"inferlane_live_streaming_flows{provider="openai"} 1"#,
            // Histograms: 20 ms and 3 ms handshakes, one 300 ms TTFB.
            "# TYPE inferlane_flow_handshake_rtt_seconds histogram",
            "# UNIT inferlane_flow_handshake_rtt_seconds seconds",
            r#"inferlane_flow_handshake_rtt_seconds_count{provider="openai"} 2"#,
            r#"inferlane_flow_handshake_rtt_seconds_sum{provider="openai"} 0.023"#,
            r#"inferlane_flow_handshake_rtt_seconds_bucket{le="0.0025",provider="openai"} 0"#,
            r#"inferlane_flow_handshake_rtt_seconds_bucket{le="0.005",provider="openai"} 1"#,
            r#"inferlane_flow_handshake_rtt_seconds_bucket{le="0.025",provider="openai"} 2"#,
            r#"inferlane_flow_handshake_rtt_seconds_bucket{le="+Inf",provider="openai"} 2"#,
            r#"inferlane_flow_time_to_first_byte_seconds_count{provider="openai"} 1"#,
            r#"inferlane_flow_time_to_first_byte_seconds_bucket{le="0.25",provider="openai"} 0"#,
            r#"inferlane_flow_time_to_first_byte_seconds_bucket{le="0.5",provider="openai"} 1"#,
        ],
    );
    // The lte uplink has no bytes yet: its counters are still exposed (at 0),
    // so a rate over them exists from the first scrape.
    assert_has(&text, &[r#"inferlane_uplink_bytes_total{uplink="lte",direction="upload"} 0"#]);
    // No flow without a provider gets a latency series of its own.
    assert!(!text.contains(r#"rtt_seconds_count{provider="none"}"#), "{text}");
}

#[test]
fn latency_histograms_accumulate_and_never_go_down() {
    let exporter = Exporter::default();
    let st = status();
    let first = exporter.render(&st, &flows());
    assert_has(&first, &[r#"inferlane_flow_handshake_rtt_seconds_count{provider="openai"} 2"#]);
    // Same flows again: observed once each, not once per scrape.
    let again = exporter.render(&st, &flows());
    assert_has(&again, &[r#"inferlane_flow_handshake_rtt_seconds_count{provider="openai"} 2"#]);
    // The flows end and a new one appears: the histogram keeps what it saw.
    let mut d = flow(40100, Some("interactive"), Some("anthropic"), Some("sni"), 10, 10);
    d.handshake_rtt_us = Some(100_000);
    let later = exporter.render(&st, &[d.clone()]);
    assert_has(
        &later,
        &[
            r#"inferlane_flow_handshake_rtt_seconds_count{provider="openai"} 2"#,
            r#"inferlane_flow_handshake_rtt_seconds_count{provider="anthropic"} 1"#,
        ],
    );
    // A reused 5-tuple after the old flow was gone at a scrape is a new flow.
    let mut a2 = flows().remove(0);
    a2.handshake_rtt_us = Some(1_000);
    let reused = exporter.render(&st, &[d, a2]);
    assert_has(&reused, &[r#"inferlane_flow_handshake_rtt_seconds_count{provider="openai"} 3"#]);
}

#[test]
fn label_values_are_escaped() {
    let mut st = status();
    st.uplinks[0].reason = "probe \"icmp\" failed\\3 times".into();
    let text = render(&st, &[]);
    assert_has(&text, &[r#"inferlane_uplink_reason_info{uplink="fiber",reason="probe \"icmp\" failed\\3 times"} 1"#]);
}

#[test]
fn prometheus_text_names_counters_with_total() {
    let om = render(&status(), &flows());
    let text = to_prometheus_text(&om);
    assert_has(
        &text,
        &[
            "# TYPE inferlane_uplink_bytes_total counter",
            r#"inferlane_uplink_bytes_total{uplink="fiber",direction="upload"} 1100"#,
            "# TYPE inferlane_uplink_up gauge",
            "# TYPE inferlane_flow_handshake_rtt_seconds histogram",
        ],
    );
    assert!(!text.contains("# UNIT") && !text.contains("# EOF"), "{text}");
    // Every sample line is carried over unchanged.
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(String::from).collect::<Vec<_>>();
    assert_eq!(samples(&om), samples(&text));
}

#[test]
fn routes() {
    let om = "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5";
    assert_eq!(route(om), Route::Metrics { head_only: false, openmetrics: true });
    assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\nAccept: */*"), Route::Metrics { head_only: false, openmetrics: false });
    assert_eq!(route("HEAD /metrics HTTP/1.1"), Route::Metrics { head_only: true, openmetrics: false });
    assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
    assert_eq!(route("GET /metrics/x HTTP/1.1"), Route::NotFound);
    assert_eq!(route("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
    assert_eq!(route("DELETE /metrics HTTP/1.1"), Route::MethodNotAllowed);
    assert_eq!(route("GET /metrics"), Route::BadRequest);
    assert_eq!(route("GET /metrics SPDY/3"), Route::BadRequest);
    assert_eq!(route(""), Route::BadRequest);
}

/// Run a checker with `input` on stdin; (exit status, stdout + stderr).
fn run_checker(cmd: &str, args: &[&str], input: &str, package: &str) -> (bool, String) {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (install the Debian package {package}: make deps)"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// `promtool check metrics` on the Prometheus text; exit 0 and no findings.
pub fn promtool_clean(text: &str) {
    let (ok, out) = run_checker("promtool", &["check", "metrics"], text, "prometheus");
    assert!(ok && out.trim().is_empty(), "promtool check metrics found problems:\n{out}\nin:\n{text}");
}

const OPENMETRICS_PARSER: &str = "import sys\n\
from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
n = sum(1 for _ in text_string_to_metric_families(sys.stdin.read()))\n\
print(n)\n";

/// The strict OpenMetrics parser of python3-prometheus-client (Debian's
/// interpreter: the package installs for it, not for a python on PATH); returns the
/// number of metric families it read.
pub fn openmetrics_valid(text: &str) -> usize {
    let (ok, out) = run_checker("/usr/bin/python3", &["-c", OPENMETRICS_PARSER], text, "python3-prometheus-client");
    assert!(ok, "the OpenMetrics parser refused the exposition:\n{out}\nin:\n{text}");
    out.trim().parse().unwrap_or_else(|_| panic!("parser output: {out}"))
}

#[test]
fn promtool_finds_nothing_to_fix() {
    promtool_clean(&to_prometheus_text(&render(&status(), &flows())));
    // Also with nothing live and no uplinks (observe mode).
    let mut st = status();
    st.uplinks.clear();
    promtool_clean(&to_prometheus_text(&render(&st, &[])));
}

#[test]
fn openmetrics_parser_accepts_it() {
    let text = render(&status(), &flows());
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(openmetrics_valid(&text), families);
}

#[test]
fn top_frame_shows_uplinks_classes_providers_and_flows() {
    use inferlane::control::top::{render_text, Model};
    use std::time::{Duration, Instant};
    let mut model = Model::default();
    let t0 = Instant::now();
    let mut st = status();
    model.update(st.clone(), flows(), t0);
    // One second later the fiber has moved 1 MB more upload: 8 Mbit/s.
    st.uplinks[0].counters.up_bytes += 1_000_000;
    model.update(st, flows(), t0 + Duration::from_secs(1));
    let frame = render_text(&model, 160, 30);
    let row = |name: &str| {
        frame
            .lines()
            .find(|l| l.trim_start_matches('│').trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{frame}"))
            .to_string()
    };
    let fiber = row("fiber");
    for want in ["wan0", " up ", "8.0Mb/s", "carrier up"] {
        assert!(fiber.contains(want), "expected {want:?} in the fiber row {fiber:?}");
    }
    let lte = row("lte");
    assert!(lte.contains("DOWN") && lte.contains("carrier lost"), "{lte:?}");
    // Classes and providers share a line; interactive: 2 flows, 1.2k up, 5.8k down.
    let interactive = row("interactive");
    for want in ["interactive", "2", "1.2k", "5.8k", "openai", "11.5", "300.0"] {
        assert!(interactive.contains(want), "expected {want:?} in {interactive:?}");
    }
    // The busiest flow first: the 1000/5000-byte one.
    let flows_at = frame.find("busiest flows (3 live)").unwrap_or_else(|| panic!("{frame}"));
    let first = frame[flows_at..].lines().nth(2).unwrap();
    assert!(first.contains("10.0.0.2:40000") && first.contains("192.0.2.10:443") && first.contains("sni"), "{first:?}\n{frame}");
}

/// Uplinks with health probes get loss, RTT and probe-byte series; promtool and
/// the OpenMetrics parser accept them.
#[test]
fn probe_health_series() {
    let mut s = status();
    s.uplinks[0].health = Some(inferlane::uplink::HealthSummary {
        state: "up".into(),
        loss_ratio: 0.25,
        srtt_ms: Some(12.5),
        probe_interval_ms: 300,
        probes: 40,
        probe_bytes_sent: 3600,
        probe_bytes_received: 3400,
    });
    let name = s.uplinks[0].name.clone();
    let text = to_prometheus_text(&render(&s, &flows()));
    assert_has(
        &text,
        &[
            &format!("inferlane_uplink_probe_loss_ratio{{uplink=\"{name}\"}} 0.25"),
            &format!("inferlane_uplink_probe_rtt_seconds{{uplink=\"{name}\"}} 0.0125"),
            &format!("inferlane_uplink_probe_bytes_total{{uplink=\"{name}\",direction=\"sent\"}} 3600"),
            &format!("inferlane_uplink_probe_bytes_total{{uplink=\"{name}\",direction=\"received\"}} 3400"),
        ],
    );
    promtool_clean(&text);
    openmetrics_valid(&render(&s, &flows()));
}
