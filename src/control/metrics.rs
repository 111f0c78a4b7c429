//! Prometheus metrics: the daemon's status and live flows rendered with
//! prometheus-client, and the tiny HTTP listener that serves them
//! (`[metrics] listen`).
//!
//! What is a counter and what is a gauge:
//! - Counters (`_total`) are only made from values the datapath or the daemon
//!   count up for as long as the daemon runs: interface and uplink counters,
//!   flow table statistics, learning and reload counters, failovers
//!   ([`UplinkStatus::downs`](crate::uplink::UplinkStatus)). They restart at zero
//!   with the daemon, which Prometheus' `rate()` handles as a counter reset.
//! - Per-class and per-provider bytes come from the flow table, which holds live
//!   flows only: when a flow ends its bytes leave the sum. They are gauges named
//!   `inferlane_live_flow_*` ("what the flows live now have carried so far"), not
//!   counters that would go backwards. Cumulative per-class totals need the
//!   flow-end accounting of the flow exporter; until then the uplink and
//!   interface counters are the monotonic byte totals.
//! - Handshake RTT and time-to-first-byte are cumulative histograms kept by the
//!   [`Exporter`]: each flow is observed once, at the first scrape that sees its
//!   value. A flow that starts and ends between two scrapes is not observed;
//!   API clients keep connections open across requests and streamed answers
//!   last seconds, so at a 15 s scrape interval most are. A histogram of the
//!   flows live at scrape time would go down when they end, which a Prometheus
//!   histogram must not do.
//! - Labels are bounded: class and uplink names come from the config, providers
//!   from the catalog, sources and directions are fixed sets. No addresses.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::flows::FlowInfo;
use super::Status;

/// What the encoder emits (OpenMetrics 1.0 text).
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format, served to clients that do not ask for
/// OpenMetrics (curl, promtool, older scrapers).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Handshake RTT buckets (seconds): a LAN-local server to a far continent.
const RTT_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Time-to-first-byte buckets (seconds): a cached answer to a long reasoning model.
const TTFB_BUCKETS: [f64; 12] = [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];

type Labels = Vec<(&'static str, String)>;

/// Produces the OpenMetrics text of the daemon's state now, or says why it
/// cannot (a map read failed): the scrape then gets a 500, and Prometheus marks
/// it failed rather than storing an empty one.
pub type Snapshot = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn rtt_histogram() -> Histogram {
    Histogram::new(RTT_BUCKETS)
}

fn ttfb_histogram() -> Histogram {
    Histogram::new(TTFB_BUCKETS)
}

/// A flow's identity across scrapes: a 64-bit hash of its 5-tuple (random
/// keys), 8 bytes a flow instead of the tuple with its protocol name. Two live
/// flows with one hash (odds about 2^-34 among 100k) would share one
/// observation.
fn flow_id(state: &RandomState, f: &FlowInfo) -> u64 {
    state.hash_one((f.client, f.client_port, f.remote, f.remote_port, f.proto.as_str()))
}

/// Per observed flow: the last scrape that found it, and what it gave.
#[derive(Clone, Copy)]
struct Observed {
    scrape: u32,
    rtt: bool,
    ttfb: bool,
}

/// The state that makes latency histograms cumulative across scrapes.
struct Latency {
    rtt: HistogramFamily,
    ttfb: HistogramFamily,
    /// Flows with a value observed, while they live.
    seen: HashMap<u64, Observed>,
    state: RandomState,
    scrape: u32,
}

impl Latency {
    fn new() -> Self {
        Latency {
            rtt: Family::new_with_constructor(rtt_histogram as fn() -> Histogram),
            ttfb: Family::new_with_constructor(ttfb_histogram as fn() -> Histogram),
            seen: HashMap::new(),
            state: RandomState::new(),
            scrape: 0,
        }
    }

    /// A scrape's walk over the flows starts.
    fn begin(&mut self) {
        self.scrape = self.scrape.wrapping_add(1);
    }

    /// Observe every flow whose value is known and was not observed yet.
    fn observe(&mut self, flows: &[FlowInfo]) {
        for f in flows {
            let id = flow_id(&self.state, f);
            let known = f.handshake_rtt_us.is_some() || f.ttfb_us.is_some();
            let o = match self.seen.get_mut(&id) {
                Some(o) => o,
                None if known => self.seen.entry(id).or_insert(Observed { scrape: self.scrape, rtt: false, ttfb: false }),
                None => continue,
            };
            o.scrape = self.scrape;
            let labels = || vec![("provider", provider_label(f))];
            if let (Some(us), false) = (f.handshake_rtt_us, o.rtt) {
                o.rtt = true;
                self.rtt.get_or_create(&labels()).observe(us as f64 / 1e6);
            }
            if let (Some(us), false) = (f.ttfb_us, o.ttfb) {
                o.ttfb = true;
                self.ttfb.get_or_create(&labels()).observe(us as f64 / 1e6);
            }
        }
    }

    /// The walk is complete: forget flows that are gone (so the memory is
    /// bounded by the flow table).
    fn end(&mut self) {
        let scrape = self.scrape;
        self.seen.retain(|_, o| o.scrape == scrape);
    }
}

/// The live-flow gauges' sums, added up a batch of flows at a time.
#[derive(Default)]
struct LiveSums {
    /// (class, provider, source) → flows.
    flows: HashMap<(String, String, String), i64>,
    /// (class, provider, direction) → (bytes, packets).
    carried: HashMap<(String, String, &'static str), (i64, i64)>,
    /// provider → streaming flows.
    streaming: HashMap<String, i64>,
}

impl LiveSums {
    fn add(&mut self, flows: &[FlowInfo]) {
        for f in flows {
            let (class, provider) = (class_label(f), provider_label(f));
            *self.flows.entry((class.clone(), provider.clone(), source_label(f))).or_default() += 1;
            for (dir, b, p) in [("upload", f.up_bytes, f.up_packets), ("download", f.down_bytes, f.down_packets)] {
                let sum = self.carried.entry((class.clone(), provider.clone(), dir)).or_default();
                sum.0 += b as i64;
                sum.1 += p as i64;
            }
            if f.streaming {
                *self.streaming.entry(provider).or_default() += 1;
            }
        }
    }
}

/// The daemon's metrics renderer: snapshot values plus the cumulative latency
/// histograms. One per daemon; [`render`] is the stateless form.
pub struct Exporter {
    latency: Mutex<Latency>,
}

impl Default for Exporter {
    fn default() -> Self {
        Exporter { latency: Mutex::new(Latency::new()) }
    }
}

/// What [`Exporter::render_walk`]'s walk hands each batch of live flows to.
pub type FlowSink<'a> = dyn FnMut(&[FlowInfo]) + 'a;

impl Exporter {
    /// The OpenMetrics text for this snapshot; flows with a handshake RTT or
    /// TTFB not seen by an earlier call are added to the histograms.
    pub fn render(&self, status: &Status, flows: &[FlowInfo]) -> String {
        let walk = |add: &mut FlowSink<'_>| -> Result<(), std::convert::Infallible> {
            add(flows);
            Ok(())
        };
        match self.render_walk(status, walk) {
            Ok(text) => text,
            Err(never) => match never {},
        }
    }

    /// As [`Exporter::render`], with the live flows handed over by `walk` a
    /// batch at a time (the daemon walks the flow table, never holding all of
    /// it): the scrape's memory is a batch and the sums, whatever the number
    /// of flows. A failed walk renders nothing.
    pub fn render_walk<E>(&self, status: &Status, walk: impl FnOnce(&mut FlowSink<'_>) -> Result<(), E>) -> Result<String, E> {
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut sums = LiveSums::default();
        latency.begin();
        walk(&mut |flows: &[FlowInfo]| {
            latency.observe(flows);
            sums.add(flows);
        })?;
        latency.end();
        let mut registry = Registry::with_prefix("inferlane");
        snapshot_metrics(&mut registry, status, &sums);
        registry.register_with_unit(
            "flow_handshake_rtt",
            "Provider-side TCP handshake round trip (client SYN to server SYN-ACK at the router), one observation per flow",
            Unit::Seconds,
            latency.rtt.clone(),
        );
        registry.register_with_unit(
            "flow_time_to_first_byte",
            "Client's first payload byte to the server's first, one observation per flow",
            Unit::Seconds,
            latency.ttfb.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &registry).expect("writing to a String does not fail");
        Ok(out)
    }
}

/// Render one snapshot (pure: the latency histograms hold exactly the flows
/// given). The daemon uses an [`Exporter`] so that they accumulate.
pub fn render(status: &Status, flows: &[FlowInfo]) -> String {
    Exporter::default().render(status, flows)
}

fn class_label(f: &FlowInfo) -> String {
    f.class.clone().unwrap_or_else(|| "unclassified".into())
}

fn provider_label(f: &FlowInfo) -> String {
    f.provider.clone().unwrap_or_else(|| "none".into())
}

fn source_label(f: &FlowInfo) -> String {
    match (&f.source, f.pending) {
        (_, true) => "pending".into(),
        (Some(s), false) => s.clone(),
        (None, false) => "none".into(),
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, c),
        None => registry.register(name, help, c),
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(value as i64);
    registry.register(name, help, g);
}

fn counters(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, f.clone()),
        None => registry.register(name, help, f.clone()),
    }
    f
}

fn gauges(registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    match unit {
        Some(u) => registry.register_with_unit(name, help, u, f.clone()),
        None => registry.register(name, help, f.clone()),
    }
    f
}

fn l1(k: &'static str, v: &str) -> Labels {
    vec![(k, v.to_string())]
}

fn l2(k1: &'static str, v1: &str, k2: &'static str, v2: &str) -> Labels {
    vec![(k1, v1.to_string()), (k2, v2.to_string())]
}

fn snapshot_metrics(r: &mut Registry, s: &Status, sums: &LiveSums) {
    gauges(r, "build_info", "Version and mode of the running daemon (always 1)", None)
        .get_or_create(&l2("version", &s.version, "mode", &s.mode))
        .set(1);

    // LAN interfaces, as the datapath counts them (monotonic).
    let bytes = counters(r, "interface", "Bytes seen on a LAN interface (upload: XDP ingress, download: TC egress)", Some(Unit::Bytes));
    let packets = counters(r, "interface_packets", "Packets seen on a LAN interface", None);
    let malformed = counters(r, "interface_malformed_packets", "Packets the datapath could not parse", None);
    for i in &s.interfaces {
        for (dir, c) in [("upload", &i.upload), ("download", &i.download)] {
            let labels = l2("interface", &i.name, "direction", dir);
            bytes.get_or_create(&labels).inc_by(c.bytes);
            packets.get_or_create(&labels).inc_by(c.packets);
            malformed.get_or_create(&labels).inc_by(c.malformed);
        }
    }

    // Flow export, per collector (only with [export]).
    if !s.export.is_empty() {
        let records = counters(r, "export_records", "Flow records encoded for a collector", None);
        let messages = counters(r, "export_messages", "Export datagrams sent to a collector", None);
        let errors = counters(r, "export_send_errors", "Export datagrams not sent (collector refused, pacing backlog full, other)", None);
        let backlog = gauges(r, "export_backlog_messages", "Export datagrams waiting for their turn (paced)", None);
        for c in &s.export {
            let labels = l2("collector", &c.address, "format", &c.format);
            records.get_or_create(&labels).inc_by(c.records);
            messages.get_or_create(&labels).inc_by(c.sent);
            errors.get_or_create(&labels).inc_by(c.send_errors);
            backlog.get_or_create(&labels).set(i64::try_from(c.backlog).unwrap_or(i64::MAX));
        }
    }

    // The flow table (an eBPF LRU hash map).
    let ft = &s.flow_table;
    gauge(r, "flow_table_flows", "Entries in the eBPF flow table now", ft.live);
    gauge(r, "flow_table_size", "Entries the eBPF flow table holds at most", u64::from(ft.size));
    counter(r, "flow_table_evictions", "Flows pushed out of the full flow table by the LRU (created minus live)", None, ft.evicted);
    let st = &ft.stats;
    counter(r, "flows_created", "Flows the datapath created", None, st.created);
    counter(r, "flow_table_insert_failures", "Flows that could not be inserted into the flow table (not tracked)", None, st.create_failed);
    counter(r, "blocked_packets", "Packets dropped because their flow is blocked", None, st.blocked);
    counter(r, "would_block_packets", "Observe mode: packets a block verdict would have dropped", None, st.would_block);
    counter(r, "dscp_rewritten_packets", "Upload packets whose DSCP was rewritten", None, st.dscp_rewritten);
    counter(r, "download_unmatched_packets", "Download packets that matched no flow", None, st.download_unmatched);
    counter(r, "punted_packets", "Packets copied to the daemon for classification (DNS, TLS, QUIC, HTTP)", None, st.punted);
    counter(r, "punt_failures", "Packets not copied to the daemon because the ring buffer was full", None, st.punt_failed);
    counter(r, "no_uplink_packets", "Packets dropped because no uplink of their class is up", None, st.no_uplink);
    counter(r, "flows_moved", "Flows steered off an uplink that went down", None, st.moved);
    counter(r, "flows_demoted", "Flows moved to a lower class past their class's demote threshold", None, st.demoted);
    let frags = counters(r, "fragments", "IP fragments by kind (first, later, orphan: a later fragment with no first)", None);
    for (kind, v) in [("first", st.frag_first), ("later", st.frag_nonfirst), ("orphan", st.frag_orphan)] {
        frags.get_or_create(&l1("kind", kind)).inc_by(v);
    }

    // Rules and reloads.
    gauge(r, "rules", "Rules in the config in force", s.rules.rules as u64);
    gauge(r, "config_generation", "Generation of the config in force (1: the one started with)", s.rules.generation);
    counter(r, "config_reloads", "Config reloads applied", None, s.rules.reloads);
    counter(r, "config_reload_failures", "Config reloads refused", None, s.rules.reload_failures);

    // Learning.
    let l = &s.learning;
    counter(r, "dns_answers", "DNS answers to LAN clients read", None, l.dns_answers);
    counter(r, "dns_answer_errors", "DNS answers that could not be parsed", None, l.dns_errors);
    counter(r, "learned_addresses", "Provider addresses learned from DNS answers", None, l.addresses_learned);
    counter(r, "forgotten_addresses", "Learned provider addresses expired", None, l.addresses_forgotten);
    gauge(r, "learned_addresses_live", "Provider addresses known now", l.addresses_live);
    counter(r, "client_hellos", "TLS and QUIC ClientHellos read from pending flows", None, l.hellos);
    counter(r, "client_hello_errors", "ClientHellos that could not be parsed", None, l.hello_errors);
    counter(r, "inference_requests", "Plaintext requests that named a self-hosted inference server", None, l.inference_requests);

    // Uplinks (monotonic datapath counters per uplink).
    let up = gauges(r, "uplink_up", "1 when the uplink is usable for new flows, else 0", None);
    let carrier = gauges(r, "uplink_carrier", "1 when the uplink interface has carrier, else 0", None);
    let reason = gauges(r, "uplink_reason_info", "Why the uplink is in its current state (always 1; the reason is a label)", None);
    let ubytes = counters(r, "uplink", "Bytes of steered flows through the uplink (upload: LAN to uplink)", Some(Unit::Bytes));
    let upackets = counters(r, "uplink_packets", "Packets of steered flows through the uplink", None);
    let steered = counters(r, "uplink_flows_steered", "Flows steered to the uplink (first packet or moved)", None);
    let moved = counters(r, "uplink_flows_moved_in", "Flows moved to the uplink off one that went down", None);
    let pinned = gauges(r, "uplink_flows", "Live flows pinned to the uplink", None);
    let failovers = counters(r, "uplink_failovers", "Times the uplink went down (new flows moved elsewhere)", None);
    for u in &s.uplinks {
        let name = l1("uplink", &u.name);
        up.get_or_create(&name).set(i64::from(u.up));
        carrier.get_or_create(&name).set(i64::from(u.carrier));
        reason.get_or_create(&l2("uplink", &u.name, "reason", &u.reason)).set(1);
        for (dir, b, p) in [
            ("upload", u.counters.up_bytes, u.counters.up_packets),
            ("download", u.counters.down_bytes, u.counters.down_packets),
        ] {
            let labels = l2("uplink", &u.name, "direction", dir);
            ubytes.get_or_create(&labels).inc_by(b);
            upackets.get_or_create(&labels).inc_by(p);
        }
        steered.get_or_create(&name).inc_by(u.counters.steered);
        moved.get_or_create(&name).inc_by(u.counters.moved);
        pinned.get_or_create(&name).set(u.flows as i64);
        failovers.get_or_create(&name).inc_by(u.downs);
    }
    // Health probes, for uplinks that have them.
    let probed: Vec<_> = s.uplinks.iter().filter_map(|u| u.health.as_ref().map(|h| (u, h))).collect();
    if !probed.is_empty() {
        type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
        let loss = Family::<Labels, FloatGauge>::default();
        r.register("uplink_probe_loss_ratio", "Share of recent probe rounds without a timely answer", loss.clone());
        let rtt = Family::<Labels, FloatGauge>::default();
        r.register_with_unit("uplink_probe_rtt", "Smoothed probe round-trip time", Unit::Seconds, rtt.clone());
        let pbytes = counters(r, "uplink_probe", "IP bytes of health probes, by direction (sent, received)", Some(Unit::Bytes));
        for (u, h) in probed {
            let name = l1("uplink", &u.name);
            loss.get_or_create(&name).set(h.loss_ratio);
            if let Some(ms) = h.srtt_ms {
                rtt.get_or_create(&name).set(ms / 1000.0);
            }
            pbytes.get_or_create(&l2("uplink", &u.name, "direction", "sent")).inc_by(h.probe_bytes_sent);
            pbytes.get_or_create(&l2("uplink", &u.name, "direction", "received")).inc_by(h.probe_bytes_received);
        }
    }

    // Live flows (gauges: a flow's numbers leave the sums when it ends).
    let live = gauges(r, "live_flows", "Flows in the flow table now, by class, provider and how they were classified", None);
    let lbytes = gauges(r, "live_flow", "Bytes carried so far by the flows live now (not a counter: drops when flows end)", Some(Unit::Bytes));
    let lpackets = gauges(r, "live_flow_packets", "Packets carried so far by the flows live now (drops when flows end)", None);
    let streaming = gauges(r, "live_streaming_flows", "Live flows that look like token streams, by provider", None);
    for ((class, provider, source), n) in &sums.flows {
        live.get_or_create(&vec![("class", class.clone()), ("provider", provider.clone()), ("source", source.clone())]).set(*n);
    }
    for ((class, provider, dir), (b, p)) in &sums.carried {
        let labels = vec![("class", class.clone()), ("provider", provider.clone()), ("direction", dir.to_string())];
        lbytes.get_or_create(&labels).set(*b);
        lpackets.get_or_create(&labels).set(*p);
    }
    for (provider, n) in &sums.streaming {
        streaming.get_or_create(&l1("provider", provider)).set(*n);
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics exposition
/// from prometheus-client: counter families are named with their `_total`,
/// `unknown` is `untyped`, and the `# UNIT` and `# EOF` lines go. Samples are
/// the same lines in both formats.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                let tail = if p == "# TYPE " && tail == "unknown" { "untyped" } else { tail };
                let _ = writeln!(out, "{p}{name} {tail}");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Requests larger than this (request line and headers) are refused.
const MAX_REQUEST: usize = 8 * 1024;
/// A client gets this long to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes answered at once; more wait for a slot.
const MAX_CONCURRENT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener {addr}: bind: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Bind the metrics listener (done at start, so a taken port is a start error
/// like the control socket, not a silent absence of metrics).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(listen).await.map_err(|source| MetricsError::Bind { addr: listen, source })
}

/// Bind `listen` and serve until `shutdown` flips to true. See [`serve_listener`].
pub async fn serve_metrics(
    listen: SocketAddr,
    snapshot: Snapshot,
    shutdown: watch::Receiver<bool>,
) -> Result<(), MetricsError> {
    let listener = bind(listen).await?;
    serve_listener(listener, snapshot, shutdown).await;
    Ok(())
}

/// Answer `GET /metrics` (and `HEAD`) until `shutdown` flips to true;
/// `snapshot` returns the OpenMetrics text and runs on a blocking thread (it
/// reads eBPF maps).
///
/// The HTTP part is written here rather than taken from hyper: the endpoint
/// serves one fixed resource, never reads a body, never keeps a connection
/// alive and closes after each answer, so all there is to parse is the request
/// line and the `Accept` header, within a fixed 8 KiB and a 10 s deadline. hyper
/// 1.x would bring hyper-util, http-body-util and their dependencies into a
/// router binary for that, and still need the same limits configured.
pub async fn serve_listener(
    listener: TcpListener,
    snapshot: Snapshot,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().acquire_owned().await else { break };
                    let snapshot = snapshot.clone();
                    tokio::spawn(async move {
                        if tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, snapshot)).await.is_err() {
                            tracing::debug!("metrics client timed out");
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// What a request asks for, from its head (request line and headers).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD /metrics; `openmetrics`: the client accepts OpenMetrics.
    Metrics { head_only: bool, openmetrics: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Route a request head. Pure, for the tests.
pub fn route(head: &str) -> Route {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.to_ascii_lowercase().contains("application/openmetrics-text")
        })
    });
    Route::Metrics { head_only, openmetrics }
}

async fn answer(mut stream: TcpStream, snapshot: Snapshot) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = end.filter(|&e| e <= MAX_REQUEST) {
            break String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        if end.is_some() || buf.len() > MAX_REQUEST + 3 {
            let _ = respond(&mut stream, "431 Request Header Fields Too Large", "text/plain", b"request too large\n", false).await;
            // Read (and drop) what the client is still sending before closing:
            // closing with unread data sends a reset, which can destroy the
            // answer before the client reads it. Bounded by the client timeout.
            let _ = tokio::io::copy(&mut (&mut stream).take(1 << 20), &mut tokio::io::sink()).await;
            return;
        }
    };
    match route(&head) {
        Route::Metrics { head_only, openmetrics } => {
            let text = match tokio::task::spawn_blocking(move || snapshot()).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "metrics snapshot");
                    let _ = respond(&mut stream, "500 Internal Server Error", "text/plain", b"snapshot failed\n", false).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics snapshot");
                    let _ = respond(&mut stream, "500 Internal Server Error", "text/plain", b"snapshot failed\n", false).await;
                    return;
                }
            };
            let (body, ctype) = if openmetrics {
                (text, OPENMETRICS_CONTENT_TYPE)
            } else {
                (to_prometheus_text(&text), PROMETHEUS_CONTENT_TYPE)
            };
            let _ = respond(&mut stream, "200 OK", ctype, body.as_bytes(), head_only).await;
        }
        Route::NotFound => {
            let _ = respond(&mut stream, "404 Not Found", "text/plain", b"only /metrics is served here\n", false).await;
        }
        Route::MethodNotAllowed => {
            let _ = respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n", false).await;
        }
        Route::BadRequest => {
            let _ = respond(&mut stream, "400 Bad Request", "text/plain", b"bad request\n", false).await;
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    let allow = if status.starts_with("405") { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if !head_only {
        stream.write_all(body).await?;
    }
    stream.shutdown().await
}
