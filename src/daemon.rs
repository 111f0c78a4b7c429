//! `inferlane run`: load the datapath, install the compiled rules, attach to the
//! LAN interfaces, serve the control socket, apply reloads, and on a signal tear
//! everything down in reverse order.
//!
//! The daemon never sits in the packet path: if it dies, the kernel drops its
//! links and forwarding carries on untouched (fail open).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::bpf::{BpfError, Datapath, LoadOptions};
use crate::classify::catalog::Catalog;
use crate::classify::compile::{self, CompiledRules};
use crate::classify::learn::{AddressBook, Learned};
use crate::config::{self, Config, ConfigErrors, Mode, PathSeg};
use crate::control::server::{ControlSocket, Handler};
use crate::control::{
    flows::FlowInfo, ControlError, FlowTableStatus, InterfaceStatus, ReloadResult, Request, Response, RulesStatus,
    Status,
};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("enter network namespace {name}: {reason}")]
    Netns { name: String, reason: String },
    #[error("start runtime: {0}")]
    Runtime(std::io::Error),
    /// Boxed: aya's errors are large, and this enum travels through every `?`.
    #[error(transparent)]
    Bpf(Box<BpfError>),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::control::metrics::MetricsError),
    #[error("flow export: {0}")]
    Export(#[from] crate::export::ExportError),
    #[error("teardown: {}", .0.join("; "))]
    Teardown(Vec<String>),
    #[error("queues: {0}")]
    Queues(crate::qos::QosError),
}

impl From<BpfError> for DaemonError {
    fn from(e: BpfError) -> Self {
        DaemonError::Bpf(Box::new(e))
    }
}

/// A config that passed every check `run` would make: parsed, validated, and its
/// rules compiled within the datapath's limits. `inferlane check`, `run` and reload
/// all go through [`prepare`], so what `check` accepts, `run` accepts.
pub struct Prepared {
    pub config: Config,
    pub rules: CompiledRules,
    pub catalog: Catalog,
}

pub fn prepare(path: &Path) -> Result<Prepared, ConfigErrors> {
    let (config, source) = config::load_with_source(path)?;
    let rules = compile::compile(&config).map_err(|errors| {
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| {
                    let mut at = vec![PathSeg::Key("rules"), PathSeg::Index(e.rule)];
                    if let Some(field) = e.field {
                        at.push(PathSeg::Key(field));
                        if let Some(item) = e.item {
                            at.push(PathSeg::Index(item));
                        }
                    }
                    source.error_at(&at, e.message)
                })
                .collect(),
        )
    })?;
    // Validation already checked the config's providers against the catalog.
    let catalog = Catalog::from_config(&config).map_err(|errors| {
        ConfigErrors(errors.into_iter().map(|e| source.error_at(&[PathSeg::Key("providers")], e.to_string())).collect())
    })?;
    Ok(Prepared { config, rules, catalog })
}

pub struct RunOptions {
    pub config: PathBuf,
    /// Enter this named network namespace (/run/netns/NAME) before anything else.
    /// The lab uses it; unlike `ip netns exec` it keeps the host's mount namespace,
    /// so the daemon's bpffs and sockets are the host's.
    pub netns: Option<String>,
}

pub fn run(opts: RunOptions) -> Result<crate::restart::Stopped, DaemonError> {
    let prepared = prepare(&opts.config).map_err(DaemonError::Config)?;
    if let Some(name) = &opts.netns {
        enter_netns(name)?;
    }
    // Two workers: the daemon does little per second; the datapath is in the kernel.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(prepared, opts.config))
}

/// setns() affects only the calling thread, so it must happen before the runtime
/// spawns its workers: they inherit this thread's namespace.
fn enter_netns(name: &str) -> Result<(), DaemonError> {
    let err = |reason: String| DaemonError::Netns { name: name.into(), reason };
    if name.contains('/') || name.is_empty() {
        return Err(err("not a namespace name".into()));
    }
    let file = std::fs::File::open(Path::new("/run/netns").join(name)).map_err(|e| err(e.to_string()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err(e.to_string()))
}

/// What the control handlers and the reload path share.
struct State {
    datapath: Mutex<Datapath>,
    live: Mutex<Live>,
    book: Mutex<AddressBook>,
    learning: LearningCounters,
    hellos: Mutex<std::collections::HashMap<crate::bpf::abi::FlowKey, Hello>>,
    names: Mutex<std::collections::HashMap<crate::bpf::abi::FlowKey, String>>,
    /// Routing, health and failover of the uplinks (None in observe mode or
    /// with no uplinks configured).
    uplinks: Mutex<Option<crate::uplink::Uplinks>>,
    /// The qdisc trees (None in observe mode). Lock order: uplinks, live,
    /// queues, datapath.
    queues: Mutex<Option<crate::qos::Qos>>,
    /// What was reported of each live flow; decides ends and deletions.
    tracker: Mutex<crate::flow::FlowTracker>,
    /// Addresses found in addr_providers but not in the book at the last sweep.
    kernel_only: Mutex<std::collections::HashSet<std::net::IpAddr>>,
    /// Observe mode: the blocked flows already logged.
    would_block: Mutex<crate::flow::would_block::WouldBlock>,
    /// Flow records to the `[export]` collectors (None without `[export]`).
    exporter: Mutex<Option<crate::export::FlowExporter>>,
    /// `inferlane restart` asked for a handover.
    restart: tokio::sync::Notify,
    /// Set before the shutdown signal when the stop is a handover: the flows
    /// in flight are not reported as ended (the successor continues them).
    handing_over: std::sync::atomic::AtomicBool,
    /// Flows whose export state a handover carried to us.
    flows_carried: AtomicU64,
    config_path: PathBuf,
    started: Instant,
}

/// The config in force and the reload history.
struct Live {
    config: Config,
    catalog: Catalog,
    rules: compile::Summary,
    generation: u64,
    reloads: u64,
    reload_failures: u64,
    last_reload_error: Option<String>,
}

impl Handler for State {
    fn handle(&self, req: Request) -> Response {
        let result = match req {
            Request::Status => self.status().map(Response::Status),
            Request::Flows => self.flows().map(|flows| Response::Flows { flows }),
            Request::Reload => Ok(Response::Reload(self.reload())),
            Request::Restart => {
                tracing::info!("restart requested over the control socket: handing over");
                self.restart.notify_one();
                Ok(Response::Restarting { pid: std::process::id() })
            }
        };
        result.unwrap_or_else(|e| Response::Error { message: e.to_string() })
    }

    /// The flows answer (control::FLOWS_JSON_START ... END) a batch of the
    /// table at a time.
    fn flows_json(&self, out: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), String> {
        let mut buf: Vec<u8> = crate::control::FLOWS_JSON_START.as_bytes().to_vec();
        let mut first = true;
        let mut open = true;
        let mut error = None;
        self.for_each_flow_info(&mut |infos: &[FlowInfo]| {
            if !open || error.is_some() {
                return;
            }
            for info in infos {
                if !first {
                    buf.push(b',');
                }
                first = false;
                if let Err(e) = serde_json::to_writer(&mut buf, info) {
                    error = Some(e.to_string());
                    return;
                }
                if buf.len() >= FLOWS_JSON_PIECE {
                    open = out(&buf);
                    buf.clear();
                    if !open {
                        return;
                    }
                }
            }
            open = out(&buf);
            buf.clear();
        })
        .map_err(|e| e.to_string())?;
        if let Some(e) = error {
            return Err(e);
        }
        buf.extend_from_slice(crate::control::FLOWS_JSON_END.as_bytes());
        out(&buf);
        Ok(())
    }
}

impl State {
    fn datapath(&self) -> std::sync::MutexGuard<'_, Datapath> {
        self.datapath.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> Result<Status, BpfError> {
        // Lock order everywhere: uplinks, then the datapath.
        let uplinks_guard = self.uplinks.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.live();
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|q| q.describe());
        let dp = self.datapath();
        let counters = dp.counters()?;
        let stats = dp.flow_stats()?;
        // One byte a flow, read a batch at a time (not a copy of the table).
        let mut flow_uplinks: Vec<u8> = Vec::new();
        dp.flow_table()?.for_each_chunk(|_, flows| flow_uplinks.extend(flows.iter().map(|f| f.uplink)))?;
        let live_flows = flow_uplinks.len() as u64;
        let (uplinks, switches) = match uplinks_guard.as_ref() {
            Some(u) => (u.status(&dp, &flow_uplinks), u.history()),
            None => (Vec::new(), Vec::new()),
        };
        drop(uplinks_guard);
        let interfaces = dp
            .attachments()
            .into_iter()
            .map(|a| {
                let c = counters.get(&a.iface).cloned().unwrap_or_default();
                InterfaceStatus {
                    name: a.iface,
                    ifindex: a.ifindex,
                    xdp: a.xdp,
                    tc: a.tc,
                    prog_ids: a.prog_ids,
                    upload: c.upload,
                    download: c.download,
                }
            })
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            mode: mode_name(live.config.daemon.mode).into(),
            config: self.config_path.display().to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            interfaces,
            flow_table: {
                let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                FlowTableStatus {
                    size: dp.flow_table_size(),
                    live: live_flows,
                    evicted: t.pressure_evictions + t.vanished,
                    evicted_by_kernel: t.vanished,
                    ended: t.deleted - t.pressure_evictions,
                    records: t.reported,
                    stats,
                }
            },
            rules: RulesStatus {
                rules: live.rules.rules,
                destination_prefixes: live.rules.destination_prefixes,
                client_prefixes: live.rules.client_prefixes,
                provider_rules: live.rules.provider_rules,
                generation: live.generation,
                reloads: live.reloads,
                reload_failures: live.reload_failures,
                last_reload_error: live.last_reload_error.clone(),
            },
            learning: crate::control::LearningStatus {
                punts: self.learning.punts.load(Ordering::Relaxed),
                dns_answers: self.learning.dns_answers.load(Ordering::Relaxed),
                dns_errors: self.learning.dns_errors.load(Ordering::Relaxed),
                addresses_learned: self.learning.learned.load(Ordering::Relaxed),
                addresses_forgotten: self.learning.forgotten.load(Ordering::Relaxed),
                addresses_live: self.book.lock().unwrap_or_else(|p| p.into_inner()).len() as u64,
                hellos: self.learning.hellos.load(Ordering::Relaxed),
                hello_errors: self.learning.hello_errors.load(Ordering::Relaxed),
                inference_requests: self.learning.requests.load(Ordering::Relaxed),
                providers: live.catalog.providers().len(),
            },
            uplinks,
            switches,
            queues,
            export: self.exporter.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|e| e.stats()).unwrap_or_default(),
            pins: crate::bpf::MapAdoption { flows_carried: self.flows_carried.load(Ordering::Relaxed), ..dp.adoption().clone() },
        })
    }

    fn flows(&self) -> Result<Vec<FlowInfo>, BpfError> {
        let mut out = Vec::new();
        self.for_each_flow_info(&mut |infos: &[FlowInfo]| out.extend_from_slice(infos))?;
        Ok(out)
    }

    /// The live flows as `inferlane flows` shows them, a batch of the table at
    /// a time (metrics scrapes sum them up without holding them all).
    fn for_each_flow_info(&self, f: &mut crate::control::metrics::FlowSink<'_>) -> Result<(), BpfError> {
        let table = self.datapath().flow_table()?;
        let now = monotonic_ns();
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let live = self.live();
        let ifnames: Vec<(u32, String)> =
            self.datapath().attachments().into_iter().map(|a| (a.ifindex, a.iface)).collect();
        let mut infos: Vec<FlowInfo> = Vec::new();
        table.for_each_chunk(|keys, flows| {
            infos.clear();
            infos.extend(keys.iter().zip(flows).map(|(k, fl)| {
                let mut info = FlowInfo::from_entry(k, fl, now, &live.config, &ifnames);
                info.provider = live.catalog.by_id(fl.provider_id).map(|p| p.name.clone());
                info.name = names.get(k).cloned();
                info
            }));
            f(&infos);
        })
    }

    /// Re-read the config file and apply it atomically, or refuse it and keep the
    /// running one. Settings that cannot change without a restart are refused too.
    fn reload(&self) -> ReloadResult {
        let result = prepare(&self.config_path).map_err(|e| e.to_string()).and_then(|p| {
            // Lock order everywhere: uplinks, live, datapath.
            let mut uplinks = self.uplinks.lock().unwrap_or_else(|p| p.into_inner());
            let mut live = self.live();
            restart_only_changes(&live.config, &p.config)?;
            // New collectors are opened before anything is applied: a failure
            // refuses the whole reload.
            let new_exporter = exporter_for_reload(&live.config, &p)?;
            // Queues first: they can fail (a foreign root qdisc, netlink), and a
            // failure refuses the whole reload with the trees put back as they were.
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(q) = queues.as_mut() {
                if let Err(e) = update_queues(q, &p.config, uplinks.as_ref()) {
                    if let Err(re) = update_queues(q, &live.config, uplinks.as_ref()) {
                        tracing::error!(error = %re, "queues: putting back the running config's trees");
                    }
                    return Err(format!("queues: {e}; the previous config stays in force"));
                }
            }
            let mut dp = self.datapath();
            if let Err(e) = dp.set_dns_names(&p.catalog.kernel_names()) {
                tracing::warn!(error = %e, "provider names for the datapath's DNS reading; the daemon still learns");
            }
            if let Err(e) = dp.install_with(&p.rules.maps(), switches(&p.config)) {
                if let Some(q) = queues.as_mut() {
                    if let Err(re) = update_queues(q, &live.config, uplinks.as_ref()) {
                        tracing::error!(error = %re, "queues: putting back the running config's trees");
                    }
                }
                return Err(format!("install rules: {e}; the previous rules stay in force"));
            }
            drop(queues);
            if let Some(u) = uplinks.as_mut() {
                // Classes may list other uplinks now.
                if let Err(e) = u.reconfigure(&p.config, &mut dp) {
                    tracing::error!(error = %e, "steering after reload");
                }
            }
            drop(dp);
            self.tracker.lock().unwrap_or_else(|p| p.into_inner()).set_timeouts(flow_timeouts(&p.config));
            {
                let mut exporter = self.exporter.lock().unwrap_or_else(|p| p.into_inner());
                match new_exporter {
                    Some(e) => {
                        // A changed [export] starts new streams; what the old
                        // ones still had waiting (paced) goes with them.
                        let waiting = exporter.as_mut().map_or(0, |old| old.pump());
                        if waiting > 0 {
                            tracing::warn!(messages = waiting, "flow export: reload replaced the collectors with messages still waiting; they are dropped");
                        }
                        *exporter = e
                    }
                    None => exporter.iter_mut().for_each(|e| e.refresh(&p.config, &p.catalog)),
                }
            }
            live.config = p.config;
            live.catalog = p.catalog;
            live.rules = p.rules.summary;
            live.generation += 1;
            live.reloads += 1;
            live.last_reload_error = None;
            Ok(live.generation)
        });
        match result {
            Ok(generation) => {
                tracing::info!(generation, "reload applied");
                ReloadResult { applied: true, generation, message: "applied".into() }
            }
            Err(message) => {
                let mut live = self.live();
                live.reload_failures += 1;
                live.last_reload_error = Some(message.clone());
                tracing::error!(error = %message, "reload refused; the running config stays");
                ReloadResult { applied: false, generation: live.generation, message }
            }
        }
    }
}

impl State {
    /// A handover's state, on adopted maps: the tracker continues from what the
    /// predecessor reported, so no period is exported twice.
    fn take_over(&self, h: crate::restart::Handover) {
        let table = match self.datapath().flow_table() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "read the adopted flow table; handover state dropped");
                return;
            }
        };
        let carried: std::collections::HashMap<crate::bpf::abi::FlowKey, crate::flow::Carried> =
            h.flows.iter().map(crate::restart::CarriedFlow::carried).map(|c| (c.key, c)).collect();
        let total = carried.len();
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        // A batch at a time, like the scans: no copy of the whole table.
        let walk = table.for_each_chunk(|keys, flows| n += tracker.adopt_chunk(&carried, keys, flows));
        if let Err(e) = walk {
            tracing::warn!(error = %e, "read the adopted flow table; some flows may be exported twice");
        }
        tracker.reported = h.reported;
        tracker.deleted = h.deleted;
        tracker.vanished = h.vanished;
        tracker.pressure_evictions = h.pressure_evictions;
        self.flows_carried.store(n as u64, Ordering::Relaxed);
        tracing::info!(flows = n, gone = total - n, "flow export continues from the handover");
    }

    /// Adopted maps hold provider addresses a previous run learned: the book
    /// gets them with a fresh TTL (the previous TTLs are not known), so expiry
    /// keeps working and does not take them for strays.
    fn seed_learned(&self) {
        let all = match self.datapath().learned_addresses() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "read adopted learned addresses");
                return;
            }
        };
        let now = Instant::now();
        let mut book = self.book.lock().unwrap_or_else(|p| p.into_inner());
        for (a, info) in &all {
            let v4 = a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
            let addr = crate::bpf::abi::addr_from_bytes(*a, if v4 { 4 } else { 6 });
            book.learn(addr, *info, ADOPTED_TTL_S, now);
        }
        if !all.is_empty() {
            tracing::info!(addresses = all.len(), "learned provider addresses adopted");
        }
    }
}

/// TTL given to learned addresses found in adopted maps (seconds).
const ADOPTED_TTL_S: u32 = 300;

/// A ClientHello being assembled from a pending flow's first packets.
struct Hello {
    started: Instant,
    /// Anchored at the segment that starts the stream (a TLS handshake record).
    tls: Option<crate::classify::tls::HelloAssembler>,
    /// TCP segments that reached us before the one starting the stream (the
    /// ring buffer does not keep the wire's order across CPUs): (seq, payload).
    early: Vec<(u32, Vec<u8>)>,
    quic: Option<crate::classify::quic::CryptoAssembler>,
}

/// Whether a TCP payload can start a TLS stream: a handshake record, TLS 1.x.
fn starts_tls_stream(payload: &[u8]) -> bool {
    payload.len() >= 2 && payload[0] == 0x16 && payload[1] == 0x03
}

/// Early segments kept per flow: the datapath punts at most 12 per flow.
const MAX_EARLY_SEGMENTS: usize = 12;

/// Hellos in assembly at once; more means flows that never finish theirs.
const MAX_PENDING_HELLOS: usize = 4096;
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Server names kept for `inferlane flows`.
const MAX_NAMES: usize = 65536;

#[derive(Default)]
struct LearningCounters {
    hellos: AtomicU64,
    requests: AtomicU64,
    hello_errors: AtomicU64,
    punts: AtomicU64,
    dns_answers: AtomicU64,
    dns_errors: AtomicU64,
    learned: AtomicU64,
    forgotten: AtomicU64,
}

impl State {
    /// One record from the punt ring buffer.
    fn handle_punt(&self, record: &[u8]) {
        self.learning.punts.fetch_add(1, Ordering::Relaxed);
        let header = 16;
        if record.len() < header {
            return;
        }
        let kind = u32::from_ne_bytes(record[0..4].try_into().expect("4 bytes"));
        let len = u32::from_ne_bytes(record[8..12].try_into().expect("4 bytes")) as usize;
        let frame = &record[header..(header + len).min(record.len())];
        match kind {
            crate::bpf::abi::PUNT_DNS => self.handle_dns(frame),
            crate::bpf::abi::PUNT_TLS | crate::bpf::abi::PUNT_QUIC => self.handle_hello(kind, frame),
            crate::bpf::abi::PUNT_HTTP => self.handle_http(frame),
            _ => {}
        }
    }

    /// A client's first segment(s) of a TLS or QUIC flow: assemble the ClientHello,
    /// name the provider from its SNI, and hand the verdict to the datapath.
    fn handle_hello(&self, kind: u32, frame: &[u8]) {
        use crate::classify::{quic, tls};
        let Some(pkt) = crate::classify::frame::client_packet(frame) else { return };
        let outcome = {
            let mut hellos = self.hellos.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: half-finished hellos of vanished flows go after a while.
            if hellos.len() >= MAX_PENDING_HELLOS {
                let now = Instant::now();
                hellos.retain(|_, h| now.duration_since(h.started) < HELLO_TIMEOUT);
            }
            if hellos.len() >= MAX_PENDING_HELLOS {
                return;
            }
            let entry = hellos.entry(pkt.key).or_insert_with(|| Hello {
                started: Instant::now(),
                tls: None,
                early: Vec::new(),
                quic: (kind == crate::bpf::abi::PUNT_QUIC).then(quic::CryptoAssembler::new),
            });
            let outcome = if kind == crate::bpf::abi::PUNT_TLS {
                // The datapath punts a flow only when its first payload starts a
                // TLS record, but a later segment may overtake it on the way here
                // (another CPU): keep such segments until the first one arrives.
                if entry.tls.is_none() && !starts_tls_stream(pkt.payload) {
                    if entry.early.len() < MAX_EARLY_SEGMENTS && !pkt.payload.is_empty() {
                        entry.early.push((pkt.seq, pkt.payload.to_vec()));
                    }
                    None
                } else {
                    let a = entry.tls.get_or_insert_with(|| tls::HelloAssembler::new(pkt.seq));
                    let mut result = a.push(pkt.seq, pkt.payload);
                    for (seq, payload) in std::mem::take(&mut entry.early) {
                        if result == tls::AssemblyResult::NeedMore {
                            result = a.push(seq, &payload);
                        }
                    }
                    match result {
                        tls::AssemblyResult::Done(info) => Some(Ok((info.sni, info.ech, crate::bpf::abi::SRC_SNI))),
                        tls::AssemblyResult::NeedMore => None,
                        tls::AssemblyResult::Failed(e) => Some(Err(e.to_string())),
                    }
                }
            } else if let Some(a) = entry.quic.as_mut() {
                match quic::decrypt_initial(pkt.payload) {
                    Ok(initial) => match a.push(&initial) {
                        quic::AssemblyResult::Done(h) => Some(Ok((h.sni, h.ech, crate::bpf::abi::SRC_QUIC))),
                        quic::AssemblyResult::NeedMore => None,
                        quic::AssemblyResult::Failed(e) => Some(Err(e.to_string())),
                    },
                    // Not a client Initial we can read (a later Initial under a new
                    // DCID, 0-RTT): wait for the next one, bounded by the datapath.
                    Err(e) => {
                        tracing::debug!(error = %e, "QUIC punt not decrypted");
                        None
                    }
                }
            } else {
                None
            };
            if outcome.is_some() {
                hellos.remove(&pkt.key);
            }
            outcome
        };
        let Some(outcome) = outcome else { return };
        let (sni, ech, source) = match outcome {
            Ok(x) => x,
            Err(e) => {
                self.learning.hello_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "ClientHello not understood");
                (None, false, crate::bpf::abi::SRC_NONE)
            }
        };
        let remote = crate::bpf::abi::addr_from_bytes(pkt.key.remote, pkt.key.family);
        let provider = sni.as_deref().and_then(|name| {
            let live = self.live();
            let p = live.catalog.lookup(name)?;
            // With ECH the visible name is the outer (public) one: it may only
            // confirm what DNS already said about this address, never name a
            // provider by itself.
            if ech && self.book.lock().unwrap_or_else(|p| p.into_inner()).provider(&remote) != Some(p.id) {
                return None;
            }
            Some(p.id)
        });
        if let Some(name) = &sni {
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            if names.len() >= MAX_NAMES {
                names.clear();
            }
            names.insert(pkt.key, name.clone());
        }
        // A verdict with provider 0 still ends the flow's wait in the datapath.
        let verdict = crate::bpf::abi::Verdict {
            provider_id: provider.unwrap_or(0),
            source,
            flags: if ech { crate::bpf::abi::FLOW_F_ECH } else { 0 },
            pad: 0,
        };
        if let Err(e) = self.datapath().set_verdict(pkt.key, verdict) {
            tracing::warn!(error = %e, "hand verdict to the datapath");
        }
        // Counted once the verdict is in the datapath: whoever watches the counter
        // (tests, operators) may rely on the verdict being there.
        if sni.is_some() {
            self.learning.hellos.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The first plaintext request of a TCP flow: on an inference port, the
    /// request line names the kind of self-hosted server.
    fn handle_http(&self, frame: &[u8]) {
        let Some(pkt) = crate::classify::frame::client_packet(frame) else { return };
        let port = u16::from_be(pkt.key.remote_port);
        let provider = {
            let live = self.live();
            let on_port = live
                .config
                .daemon
                .inference_ports
                .iter()
                .any(|p| p.contains(crate::config::L4Proto::Tcp, port));
            on_port
                .then(|| crate::classify::http::server_kind(pkt.payload))
                .flatten()
                .and_then(|kind| live.catalog.by_name(kind))
                .map(|p| (p.id, p.name.clone()))
        };
        if let Some((_, name)) = &provider {
            self.learning.requests.fetch_add(1, Ordering::Relaxed);
            let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
            if names.len() >= MAX_NAMES {
                names.clear();
            }
            names.insert(pkt.key, format!("{name} request"));
        }
        // Provider 0 ends the flow's wait: it is plain HTTP of another kind.
        let verdict = crate::bpf::abi::Verdict {
            provider_id: provider.map_or(0, |(id, _)| id),
            source: crate::bpf::abi::SRC_HTTP,
            flags: 0,
            pad: 0,
        };
        if let Err(e) = self.datapath().set_verdict(pkt.key, verdict) {
            tracing::warn!(error = %e, "hand verdict to the datapath");
        }
    }

    fn handle_dns(&self, frame: &[u8]) {
        let answers = match crate::classify::dns::message_of_frame(frame).and_then(crate::classify::dns::resolved) {
            Ok(a) => a,
            Err(e) => {
                self.learning.dns_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "DNS punt not understood");
                return;
            }
        };
        self.learning.dns_answers.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        for r in answers {
            // The name nearest the question that the catalog knows decides.
            let provider = {
                let live = self.live();
                r.names.iter().rev().find_map(|n| live.catalog.lookup(n)).map(|p| (p.id, p.name.clone()))
            };
            let Some((id, name)) = provider else { continue };
            let learned = self.book.lock().unwrap_or_else(|p| p.into_inner()).learn(r.addr, id, r.ttl, now);
            if learned != Learned::Refreshed {
                match self.datapath().learn_address(crate::bpf::abi::addr_bytes(r.addr), id) {
                    Ok(()) => {
                        self.learning.learned.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(addr = %r.addr, provider = %name, ttl = r.ttl, "learned");
                    }
                    Err(e) => tracing::warn!(addr = %r.addr, error = %e, "learn address"),
                }
            }
        }
    }

    /// Forget learned addresses past TTL + grace that no recent flow uses, and
    /// verdicts that no flow will pick up any more.
    fn expire_learned(&self) {
        if let Err(e) = self.datapath().sweep_verdicts() {
            tracing::warn!(error = %e, "sweep stale verdicts");
        }
        let now_ns = monotonic_ns();
        let mut in_use: std::collections::HashSet<std::net::IpAddr> = std::collections::HashSet::new();
        // The table through its own handle: the Datapath lock is not held
        // during the walk (punts go on).
        let table = self.datapath().flow_table();
        let walk = table.and_then(|table| {
            table.for_each_chunk(|keys, flows| {
                in_use.extend(
                    keys.iter()
                        .zip(flows)
                        .filter(|(_, f)| now_ns.saturating_sub(f.last_ns) < IN_USE_NS)
                        .map(|(k, _)| crate::bpf::abi::addr_from_bytes(k.remote, k.family)),
                )
            })
        });
        if let Err(e) = walk {
            tracing::warn!(error = %e, "read flows for expiry; trying later");
            return;
        }
        let mut gone = self.book.lock().unwrap_or_else(|p| p.into_inner()).expire(Instant::now(), &in_use);
        // Addresses the datapath installed from an answer the daemon did not
        // learn (a full ring buffer, an answer it refused): nobody would expire
        // them. Removed when two sweeps in a row (10 s apart) find them unknown
        // and unused, so that one the daemon is about to learn is left alone.
        match self.datapath().learned_addresses() {
            Ok(all) => {
                let book = self.book.lock().unwrap_or_else(|p| p.into_inner());
                let unknown: std::collections::HashSet<std::net::IpAddr> = all
                    .into_iter()
                    .map(|(a, _)| {
                        let v4 = a[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
                        crate::bpf::abi::addr_from_bytes(a, if v4 { 4 } else { 6 })
                    })
                    .filter(|a| book.provider(a).is_none() && !in_use.contains(a))
                    .collect();
                drop(book);
                let mut suspects = self.kernel_only.lock().unwrap_or_else(|p| p.into_inner());
                gone.extend(unknown.intersection(&suspects).copied());
                *suspects = unknown;
            }
            Err(e) => tracing::warn!(error = %e, "read learned addresses"),
        }
        for addr in gone {
            if let Err(e) = self.datapath().forget_address(crate::bpf::abi::addr_bytes(addr)) {
                tracing::warn!(%addr, error = %e, "forget address");
            }
            self.learning.forgotten.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Bytes of JSON handed to the control socket at a time by `flows_json`.
const FLOWS_JSON_PIECE: usize = 128 * 1024;

/// A flow that saw a packet this recently keeps its address learned.
const IN_USE_NS: u64 = 120_000_000_000;

/// Read the punt ring buffer until shutdown.
async fn consume_punts(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    // SAFETY: the ring buffer owns its fd and outlives the registration: both
    // live in `fd` and are dropped together.
    let mut fd = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "punt ring buffer: no learning from DNS");
            return;
        }
    };
    let mut sweep = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = sweep.tick() => {
                let st = state.clone();
                let _ = tokio::task::spawn_blocking(move || st.expire_learned()).await;
            }
            ready = fd.readable_mut() => {
                let mut guard = match ready {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::error!(error = %e, "punt ring buffer poll");
                        break;
                    }
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    state.handle_punt(&item);
                }
                guard.clear_ready();
            }
        }
    }
}

/// The flow timeouts: export's active and inactive timeouts where configured.
fn flow_timeouts(config: &Config) -> crate::flow::Timeouts {
    let mut t = crate::flow::Timeouts::default();
    if let Some(e) = &config.export {
        t.active = e.active_timeout;
        t.inactive = e.inactive_timeout;
    }
    t
}

/// How often paced export messages are let out while some wait (the bucket of
/// `export::sender::BURST` refills within it at the default pace).
const EXPORT_PUMP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// How long a stop waits for the paced export of what was in flight: a full
/// default flow table (~3,400 messages) takes 0.34 s at the default pace.
const EXPORT_DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Scan the flow table every second (less often when it is big, see
/// `flow::Timeouts::next_scan`): report ended flows, then delete them. At stop,
/// everything still unreported is reported (forced end).
async fn flow_lifecycle(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let next = tokio::time::sleep(crate::flow::SCAN_INTERVAL);
    tokio::pin!(next);
    // Paced export (export::sender): while messages wait, let them out every
    // EXPORT_PUMP_INTERVAL; otherwise this timer stays quiet.
    let mut pump = tokio::time::interval(EXPORT_PUMP_INTERVAL);
    pump.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting = 0;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = &mut next => {
                let st = state.clone();
                let delay = tokio::task::spawn_blocking(move || st.scan_flows()).await.unwrap_or(crate::flow::SCAN_INTERVAL);
                next.as_mut().reset(tokio::time::Instant::now() + delay);
                waiting = state.pump_export();
            }
            _ = pump.tick(), if waiting > 0 => waiting = state.pump_export(),
        }
    }
    // A handover reports nothing as ended: the successor continues the flows
    // from what the state file says was reported.
    if !state.handing_over.load(Ordering::SeqCst) {
        let st = state.clone();
        let _ = tokio::task::spawn_blocking(move || st.finish_flows()).await;
    }
    // Everything in flight goes out at its pace, for as long as the stop allows.
    let deadline = tokio::time::Instant::now() + EXPORT_DRAIN_LIMIT;
    loop {
        let waiting = state.pump_export();
        if waiting == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(messages = waiting, "flow export: stop left messages unsent after {EXPORT_DRAIN_LIMIT:?}");
            break;
        }
        tokio::time::sleep(EXPORT_PUMP_INTERVAL).await;
    }
}

impl State {
    /// One scan, a batch of the table at a time: each batch's ended flows are
    /// exported, then deleted, before the next batch is read, so the scan's
    /// memory is one batch whatever the table's size. Returns how long to wait
    /// before the next.
    fn scan_flows(&self) -> std::time::Duration {
        let began = std::time::Instant::now();
        let now = monotonic_ns();
        let (table, size) = {
            let dp = self.datapath();
            match dp.flow_table() {
                Ok(t) => (t, dp.flow_table_size()),
                Err(e) => {
                    tracing::warn!(error = %e, "flow table scan");
                    return crate::flow::SCAN_INTERVAL;
                }
            }
        };
        let observe = self.live().config.daemon.mode == Mode::Observe;
        let mut would_block = self.would_block.lock().unwrap_or_else(|p| p.into_inner());
        let mut blocked = crate::flow::would_block::WouldBlockScan::default();
        if observe {
            would_block.begin();
        }
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let mut pass = tracker.pass(now);
        let walk = table.for_each_chunk(|keys, flows| {
            if observe {
                would_block.chunk(keys, flows, &mut blocked);
            }
            pass.chunk(keys, flows);
            self.report_and_delete(&table, &mut pass.reports, &mut pass.delete);
        });
        if let Err(e) = walk {
            // The flows not reached stay as they were; the next scan goes on.
            tracing::warn!(error = %e, "flow table scan");
            return crate::flow::SCAN_INTERVAL;
        }
        let pressed = pass.pressed(size);
        let vanished = pass.finish(size, |reports, delete| self.report_and_delete(&table, reports, delete));
        let timeouts = tracker.timeouts();
        drop(tracker);
        if observe {
            would_block.end();
            drop(would_block);
            self.log_would_block(&blocked);
        }
        if vanished > 0 {
            tracing::warn!(flows = vanished, "flows evicted by the kernel before the daemon could report them; raise daemon.flow_table_size");
        }
        crate::mem::trim();
        timeouts.next_scan(began.elapsed(), pressed)
    }

    /// Export `reports`, then delete `delete` from the table (in that order: no
    /// flow leaves the table unreported); both are emptied.
    fn report_and_delete(&self, table: &crate::bpf::maps::FlowTable, reports: &mut Vec<crate::flow::Report>, delete: &mut Vec<crate::bpf::abi::FlowKey>) {
        if !reports.is_empty() {
            self.report_flows(reports);
            reports.clear();
        }
        if !delete.is_empty() {
            if let Err(e) = table.delete(delete) {
                tracing::warn!(error = %e, "delete ended flows");
            }
            delete.clear();
        }
    }

    /// Observe mode: one log line per flow a block verdict would have stopped
    /// (the scan sees every flow before it is deleted), at most
    /// `would_block::MAX_PER_SCAN` a second.
    fn log_would_block(&self, scan: &crate::flow::would_block::WouldBlockScan) {
        let live = self.live();
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        for (k, f) in &scan.log {
            let client = std::net::SocketAddr::new(crate::bpf::abi::addr_from_bytes(k.client, k.family), u16::from_be(k.client_port));
            let destination =
                std::net::SocketAddr::new(crate::bpf::abi::addr_from_bytes(k.remote, k.family), u16::from_be(k.remote_port));
            let provider = live.catalog.by_id(f.provider_id).map_or("none", |p| p.name.as_str());
            // Blocks without a rule: block_ai_quic, or a provider whose class
            // blocks by default.
            let rule = if f.rule_id > 0 {
                f.rule_id.to_string()
            } else if live.config.daemon.block_ai_quic && k.proto == 17 && u16::from_be(k.remote_port) == 443 {
                "block_ai_quic".to_string()
            } else {
                "provider default".to_string()
            };
            tracing::info!(
                %client,
                %destination,
                proto = %crate::control::flows::proto_name(k.proto),
                provider = %provider,
                rule = %rule,
                source = %crate::control::flows::source_name(f.source).as_deref().unwrap_or("none"),
                name = names.get(k).map(String::as_str),
                "observe mode: flow would have been blocked"
            );
        }
        if scan.suppressed > 0 {
            tracing::info!(
                flows = scan.suppressed,
                "observe mode: more flows would have been blocked this second; not logged one by one"
            );
        }
    }

    /// At stop: everything not yet reported goes out as forced ends, a batch of
    /// the table at a time.
    fn finish_flows(&self) {
        let table = match self.datapath().flow_table() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "flow table read at stop");
                return;
            }
        };
        let mut tracker = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let mut reports = Vec::new();
        let walk = table.for_each_chunk(|keys, flows| {
            tracker.finish_chunk(keys, flows, &mut reports);
            self.report_flows(&reports);
            reports.clear();
        });
        if let Err(e) = walk {
            tracing::warn!(error = %e, "flow table read at stop");
        }
        tracker.clear();
    }

    /// Lets paced export messages out; returns how many still wait.
    fn pump_export(&self) -> usize {
        self.exporter.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map_or(0, |e| e.pump())
    }

    /// Hand flow records to the exporter (when one is configured).
    fn report_flows(&self, reports: &[crate::flow::Report]) {
        if let Some(e) = self.exporter.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            e.export(reports, monotonic_ns());
        }
    }
}

/// Carrier, address and route events for the uplinks, until shutdown. Health
/// probes feed the same state (see uplink::health).
async fn uplink_events(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    use crate::uplink::monitor::{ReportKind, UplinkInput};
    use crate::uplink::watch::Event;
    let Some(config) = state.uplinks.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|u| u.config().clone())
    else {
        let _ = shutdown.changed().await;
        return;
    };
    let (mut events, task) = match crate::uplink::watch::subscribe() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "uplink events: no netlink subscription; failover on carrier loss is off");
            let _ = shutdown.changed().await;
            return;
        }
    };
    // One health task per uplink with probes; their reports come back here.
    let (report_tx, mut reports) = tokio::sync::mpsc::channel(64);
    let mut inputs: Vec<Option<tokio::sync::mpsc::Sender<UplinkInput>>> = Vec::new();
    let mut monitors = Vec::new();
    for (i, uplink) in config.uplinks.iter().enumerate() {
        let Some(health) = uplink.health.as_ref().filter(|h| !h.probes.is_empty()) else {
            inputs.push(None);
            continue;
        };
        let cfg = crate::uplink::probe::ProberConfig::new(
            &uplink.name,
            &uplink.interface,
            crate::uplink::route::uplink_mark(i),
            health.probes.clone(),
        );
        match crate::uplink::probe::Prober::new(cfg) {
            Ok(prober) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                let params = crate::uplink::health::HealthParams::from_config(health, uplink.metered);
                if !state.uplinks.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|u| u.carrier(i)) {
                    let _ = tx.try_send(UplinkInput::Link(crate::uplink::health::LinkEvent::CarrierDown));
                }
                monitors.push(tokio::spawn(crate::uplink::monitor::run(
                    uplink.name.clone(),
                    params,
                    prober,
                    rx,
                    shutdown.clone(),
                    report_tx.clone(),
                )));
                inputs.push(Some(tx));
            }
            Err(e) => {
                tracing::error!(uplink = %uplink.name, error = %e, "health probes unavailable: judged by carrier alone");
                inputs.push(None);
            }
        }
    }
    drop(report_tx);
    let send = |i: usize, input: UplinkInput| {
        if let Some(Some(tx)) = inputs.get(i) {
            let _ = tx.try_send(input);
        }
    };
    // Passive evidence and "carrying flows", from the datapath's per-uplink
    // counters, once a second.
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last: Vec<crate::bpf::abi::UplinkCounters> = vec![Default::default(); config.uplinks.len()];
    // With no health task (no uplink has probes) the report channel is closed
    // from the start: a closed channel is always ready, so stop polling it.
    let mut reports_open = true;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tick.tick() => {
                let now = std::time::Instant::now();
                let counters: Vec<_> = {
                    let dp = state.datapath();
                    (0..config.uplinks.len()).map(|i| dp.uplink_counters(i).unwrap_or_default()).collect()
                };
                for (i, c) in counters.iter().enumerate() {
                    if c.down_packets > last[i].down_packets {
                        send(i, UplinkInput::Passive(now));
                    }
                    send(i, UplinkInput::CarryingFlows(c.up_packets > last[i].up_packets));
                }
                last = counters;
            }
            r = reports.recv(), if reports_open => {
                let Some(report) = r else {
                    reports_open = false;
                    continue;
                };
                let mut guard = state.uplinks.lock().unwrap_or_else(|p| p.into_inner());
                let Some(u) = guard.as_mut() else { continue };
                let Some(index) = config.uplinks.iter().position(|x| x.name == report.uplink) else { continue };
                u.set_health(index, crate::uplink::HealthSummary::of(&report));
                if let ReportKind::Transition(t) = &report.kind {
                    let up = t.to == crate::uplink::health::State::Up;
                    let down = t.to == crate::uplink::health::State::Down;
                    // Up needs the carrier too; Unknown (start) changes nothing.
                    if (up && u.carrier(index)) || down {
                        match u.set_usable(index, up, &t.reason.to_string(), &state.datapath) {
                            Ok(Some(_)) => state.follow_active_uplink(u),
                            Ok(None) => {}
                            Err(e) => {
                                tracing::error!(error = %e, uplink = %report.uplink, "uplink state");
                                state.follow_active_uplink(u);
                            }
                        }
                    }
                }
            }
            e = events.recv() => {
                let Some(event) = e else { break };
                match event {
                    Event::Link { iface, carrier } => {
                        if let Some(i) = config.uplinks.iter().position(|u| u.interface == iface) {
                            use crate::uplink::health::LinkEvent;
                            send(i, UplinkInput::Link(if carrier { LinkEvent::CarrierUp } else { LinkEvent::CarrierDown }));
                        }
                        state.uplink_carrier(&iface, carrier, if carrier { "carrier up" } else { "carrier lost" })
                    }
                    Event::Gone { iface } => state.uplink_carrier(&iface, false, "interface removed"),
                    Event::Address { ifindex, added } => {
                        let iface = nix::net::if_::if_indextoname(ifindex).ok().and_then(|n| n.into_string().ok());
                        if let Some(iface) = iface {
                            let index = config.uplinks.iter().position(|u| u.interface == iface);
                            if !added && crate::uplink::watch::global_addresses(ifindex).await.unwrap_or(1) == 0 {
                                if let Some(i) = index {
                                    send(i, UplinkInput::Link(crate::uplink::health::LinkEvent::AddressRemoved));
                                }
                                state.uplink_carrier(&iface, false, "last address removed");
                            } else if added {
                                if let Some(i) = index {
                                    send(i, UplinkInput::Link(crate::uplink::health::LinkEvent::AddressAdded));
                                }
                                // Undo an "address removed" down, if the link is up.
                                let carrier = crate::uplink::watch::carriers(std::slice::from_ref(&iface)).await.map(|c| c[0]).unwrap_or(false);
                                if carrier {
                                    state.uplink_carrier(&iface, true, "address back");
                                }
                            }
                        }
                    }
                    Event::Route => {
                        // Gateways may have changed (DHCP); cheap when nothing did.
                        let taken = state.uplinks.lock().unwrap_or_else(|p| p.into_inner()).take();
                        if let Some(mut u) = taken {
                            for i in 0..u.interfaces().len() {
                                if let Err(e) = u.refresh_routes(i).await {
                                    tracing::warn!(error = %e, "uplink gateway refresh");
                                }
                            }
                            *state.uplinks.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                        }
                    }
                }
            }
        }
    }
    task.abort();
    for m in monitors {
        let _ = m.await;
    }
}

impl State {
    /// A carrier (or address) change on an uplink interface. Down acts at once;
    /// up waits for health probes where the uplink has them (the hold), and is
    /// immediate where carrier is all it is judged by.
    fn uplink_carrier(&self, iface: &str, carrier: bool, reason: &str) {
        let mut guard = self.uplinks.lock().unwrap_or_else(|p| p.into_inner());
        let Some(u) = guard.as_mut() else { return };
        let Some(index) = u.index_of_interface(iface) else { return };
        let changed = u.set_carrier(index, carrier);
        if !carrier && u.is_usable(index) || carrier && changed && !u.has_probes(index) {
            match u.set_usable(index, carrier, reason, &self.datapath) {
                Ok(Some(_)) => self.follow_active_uplink(u),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, iface, "uplink state");
                    // The state changed even if the steering write failed.
                    self.follow_active_uplink(u);
                }
            }
        }
    }

    /// The LAN download queues follow the uplinks that carry unclassified
    /// traffic now ([`crate::uplink::Uplinks::carrying_default`]): their
    /// `ingress_rate`s. Called with the uplinks locked, right after a switch;
    /// one netlink round trip per class, well within a second.
    fn follow_active_uplink(&self, uplinks: &crate::uplink::Uplinks) {
        let config = self.live().config.clone();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(q) = queues.as_mut() else { return };
        let active = uplinks.carrying_default();
        let rate = download_rate(&config, Some(uplinks));
        match q.set_download_rate(rate) {
            Ok(()) => tracing::info!(active = ?active, rate = ?rate.map(|r| r.to_string()), "queues: download rate follows the active uplink"),
            Err(e) => tracing::error!(error = %e, active = ?active, "queues: download rate"),
        }
    }
}

/// The config and interfaces the queues are built from. LAN interfaces must
/// exist (the datapath is attached to them); an uplink whose interface is absent
/// (an LTE modem not plugged in) gets no upload tree, as it gets no wan_egress,
/// until a restart.
fn queue_view(config: &Config) -> Result<(Config, crate::qos::Links), crate::qos::QosError> {
    use crate::qos::{Link, Links};
    let lan = config.lan.interfaces.iter().map(|n| Link::by_name(n)).collect::<Result<_, _>>()?;
    let mut view = config.clone();
    let mut present = Vec::new();
    for u in &mut view.uplinks {
        match Link::by_name(&u.interface) {
            Ok(link) => present.push(link),
            Err(_) => {
                if u.egress_rate.take().is_some() {
                    tracing::warn!(uplink = %u.name, iface = %u.interface, "uplink interface absent: no upload queues on it");
                }
            }
        }
    }
    Ok((view, Links { lan, uplinks: present }))
}

/// The LAN download rate: the `ingress_rate`s of the uplinks carrying
/// unclassified traffic now; before routing exists, those of the best priority.
fn download_rate(config: &Config, uplinks: Option<&crate::uplink::Uplinks>) -> Option<crate::config::Rate> {
    match uplinks {
        Some(u) => {
            let names = u.carrying_default();
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            crate::qos::tree::download_rate_for(config, &names)
        }
        None => crate::qos::tree::initial_download_rate(config),
    }
}

/// Build the trees for `config` at the active uplink's download rate. On error
/// nothing of it is left behind.
fn start_queues(config: &Config, uplinks: Option<&crate::uplink::Uplinks>) -> Result<crate::qos::Qos, crate::qos::QosError> {
    let (view, links) = queue_view(config)?;
    let mut qos = crate::qos::Qos::apply(&view, &links)?;
    if let Err(e) = qos.set_download_rate(download_rate(&view, uplinks)) {
        if let Err(errors) = qos.remove() {
            for re in errors {
                tracing::warn!(error = %re, "queues: undoing a failed start");
            }
        }
        return Err(e);
    }
    Ok(qos)
}

/// Bring the trees to `config` (reload, or back to the running config).
fn update_queues(
    qos: &mut crate::qos::Qos,
    config: &Config,
    uplinks: Option<&crate::uplink::Uplinks>,
) -> Result<(), crate::qos::QosError> {
    let (view, links) = queue_view(config)?;
    qos.update(&view, &links)?;
    qos.set_download_rate(download_rate(&view, uplinks))
}

/// Settings a reload cannot apply: they would need programs re-attached, the flow
/// table resized or the socket moved. Refusing the whole reload keeps it atomic.
fn restart_only_changes(old: &Config, new: &Config) -> Result<(), String> {
    let mut changed = Vec::new();
    if old.lan.interfaces != new.lan.interfaces {
        changed.push("lan.interfaces");
    }
    if old.daemon.flow_table_size != new.daemon.flow_table_size {
        changed.push("daemon.flow_table_size");
    }
    if old.daemon.control_socket != new.daemon.control_socket {
        changed.push("daemon.control_socket");
    }
    // Rates only reshape the queues (reload applies them); anything else about
    // the uplinks changes routing.
    let without_rates = |c: &Config| -> Vec<crate::config::Uplink> {
        c.uplinks.iter().cloned().map(|mut u| {
            u.egress_rate = None;
            u.ingress_rate = None;
            u
        }).collect()
    };
    if without_rates(old) != without_rates(new) {
        changed.push("uplinks");
    }
    if old.routing != new.routing {
        changed.push("routing");
    }
    if old.metrics != new.metrics {
        changed.push("metrics");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} changed: these need a restart (systemctl restart inferlane)", changed.join(", ")))
    }
}

/// A reload's exporter: `Some(new)` when `[export]` changed (new sockets, new
/// sequence numbers and templates; `Some(None)` when it was removed), `None` when
/// it stayed and the running exporter only refreshes its names.
#[allow(clippy::type_complexity)]
fn exporter_for_reload(old: &Config, p: &Prepared) -> Result<Option<Option<crate::export::FlowExporter>>, String> {
    if old.export == p.config.export {
        return Ok(None);
    }
    match &p.config.export {
        Some(x) => crate::export::FlowExporter::new(x, &p.config, &p.catalog)
            .map(|e| Some(Some(e)))
            .map_err(|e| format!("export: {e}; the previous config stays in force")),
        None => Ok(Some(None)),
    }
}

fn switches(config: &Config) -> crate::bpf::maps::Switches {
    crate::bpf::maps::Switches {
        enforce: config.daemon.mode == Mode::Enforce,
        block_ai_quic: config.daemon.block_ai_quic,
    }
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    }
}

/// CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always there");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Load the programs, install the rules and attach them to every LAN interface.
/// On error the partly attached datapath is dropped, which detaches it: nothing
/// half-applied.
fn start_datapath(p: &Prepared, pins: Option<crate::bpf::pins::PinDir>) -> Result<Datapath, DaemonError> {
    let mut datapath = Datapath::load_with(LoadOptions { flow_table_size: p.config.daemon.flow_table_size, pins })?;
    // Rules before attaching: the first packet of every flow is classified.
    datapath.install_with(&p.rules.maps(), switches(&p.config))?;
    // Provider names the datapath reads in DNS answers itself (see lan_egress).
    datapath.set_dns_names(&p.catalog.kernel_names())?;
    for iface in &p.config.lan.interfaces {
        let a = datapath.attach(iface)?;
        tracing::info!(iface = %a.iface, ifindex = a.ifindex, xdp = ?a.xdp, tc = ?a.tc, "attached");
    }
    for uplink in &p.config.uplinks {
        match datapath.attach_uplink(&uplink.interface) {
            Ok(a) => tracing::info!(uplink = %uplink.name, iface = %a.iface, tc = ?a.tc, "attached wan_egress"),
            // An LTE modem may not be there at boot: an absent uplink is down, not a
            // config error. Its queues get no priorities until it is (uplink watch,
            // a later issue, attaches when it appears).
            Err(BpfError::NoInterface { iface }) => {
                tracing::warn!(uplink = %uplink.name, iface, "uplink interface absent; wan_egress not attached")
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(datapath)
}

/// A failed start removes the pins it made, and keeps those it found (a
/// predecessor's maps and links: the programs in pinned links keep forwarding
/// with their state, and the next start tries again).
fn undo_pins(pins: &Option<crate::bpf::pins::PinDir>, found_pins: bool) {
    if let (Some(dir), false) = (pins, found_pins) {
        for e in dir.remove_all() {
            tracing::error!(error = %e, "remove pins after a failed start");
        }
    }
}

async fn serve(prepared: Prepared, config_path: PathBuf) -> Result<crate::restart::Stopped, DaemonError> {
    // Signal handlers first: a SIGTERM that arrives while we attach must still
    // lead to a clean teardown, not to the default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).map_err(DaemonError::Signal)?;

    // The control socket first: it is also the single-instance lock, so a second
    // daemon is refused before it touches any kernel object of the first.
    let mut socket = ControlSocket::bind(&prepared.config.daemon.control_socket)?;
    // Pins need a bpffs. systemd mounts one at boot; elsewhere we do (nothing is
    // pinned yet, so a missing one is only a warning).
    let bpffs = match crate::bpf::fs::ensure(&prepared.config.daemon.bpffs) {
        Ok(fs) => {
            if fs.mounted_by_us {
                tracing::info!(path = %fs.path.display(), "mounted the bpffs");
            }
            Some(fs)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no bpffs: maps are not pinned, a restart starts with empty maps");
            None
        }
    };
    // Our pins, per instance (the socket is the instance lock, held now).
    let pins = bpffs.as_ref().map(|fs| crate::bpf::pins::PinDir::new(&fs.path, &prepared.config.daemon.control_socket));
    let found_pins = pins.as_ref().is_some_and(|d| !d.pinned_maps().is_empty() || !d.pinned_links().is_empty());
    // What a handover passed on (see restart); deleted once we are ready, so
    // that a failed start leaves it to the next attempt.
    let state_file = crate::restart::state_path(&prepared.config.daemon.control_socket);
    let handover = match crate::restart::Handover::read(&state_file) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "handover state ignored: flows in flight may be exported twice");
            None
        }
    };
    if let Some(h) = &handover {
        tracing::info!(pid = h.pid, flows = h.flows.len(), "taking over from a handover");
    } else if found_pins {
        tracing::info!(dir = %pins.as_ref().map(|d| d.root.display().to_string()).unwrap_or_default(), "pins of a previous run found (no handover: it was killed or crashed)");
    }
    // The metrics port too, before any kernel object: a taken port is a start error.
    let metrics_listener = match &prepared.config.metrics {
        Some(m) => match crate::control::metrics::bind(m.listen).await {
            Ok(l) => Some(l),
            Err(e) => {
                if let Err(re) = socket.remove() {
                    tracing::error!(error = %re, "remove control socket");
                }
                return Err(e.into());
            }
        },
        None => None,
    };
    // Collector sockets too: a collector address we cannot send to is a start error.
    let exporter = match prepared.config.export.as_ref().map(|x| crate::export::FlowExporter::new(x, &prepared.config, &prepared.catalog)) {
        Some(Err(e)) => {
            if let Err(re) = socket.remove() {
                tracing::error!(error = %re, "remove control socket");
            }
            if let Some(Err(re)) = bpffs.map(|fs| fs.release()) {
                tracing::error!(error = %re, "release the bpffs");
            }
            return Err(e.into());
        }
        Some(Ok(e)) => {
            tracing::info!(collectors = ?e.collectors().collect::<Vec<_>>(), "flow export");
            Some(e)
        }
        None => None,
    };
    let datapath = match start_datapath(&prepared, pins.clone()) {
        Ok(dp) => dp,
        Err(e) => {
            undo_pins(&pins, found_pins);
            if let Err(re) = socket.remove() {
                tracing::error!(error = %re, "remove control socket");
            }
            if let Some(Err(re)) = bpffs.map(|fs| fs.release()) {
                tracing::error!(error = %re, "release the bpffs");
            }
            return Err(e);
        }
    };
    let mut datapath = datapath;
    {
        let a = datapath.adoption();
        if a.adopted {
            tracing::info!(dir = ?a.dir, links = a.links_adopted, "adopted the pinned maps: flows and counters continue");
        } else if let Some(reason) = &a.discarded {
            tracing::warn!(dir = ?a.dir, %reason, "pinned maps discarded; started with empty maps");
        }
    }
    let adopted = datapath.adoption().adopted;
    let punts = datapath.take_punts();
    let summary = prepared.rules.summary;
    tracing::info!(
        rules = summary.rules,
        destination_prefixes = summary.destination_prefixes,
        client_prefixes = summary.client_prefixes,
        provider_rules = summary.provider_rules,
        "rules installed"
    );
    let mode = prepared.config.daemon.mode;
    let timeouts = flow_timeouts(&prepared.config);
    let socket_path = prepared.config.daemon.control_socket.clone();
    let state = Arc::new(State {
        datapath: Mutex::new(datapath),
        live: Mutex::new(Live {
            config: prepared.config,
            catalog: prepared.catalog,
            rules: summary,
            generation: 1,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
        }),
        config_path,
        started: Instant::now(),
        book: Mutex::new(AddressBook::new(crate::classify::learn::DEFAULT_GRACE)),
        learning: LearningCounters::default(),
        hellos: Mutex::new(std::collections::HashMap::new()),
        names: Mutex::new(std::collections::HashMap::new()),
        uplinks: Mutex::new(None),
        queues: Mutex::new(None),
        tracker: Mutex::new(crate::flow::FlowTracker::new(timeouts)),
        would_block: Mutex::new(Default::default()),
        kernel_only: Mutex::new(Default::default()),
        exporter: Mutex::new(exporter),
        restart: tokio::sync::Notify::new(),
        handing_over: std::sync::atomic::AtomicBool::new(false),
        flows_carried: AtomicU64::new(0),
    });
    let mut rp_filter = Vec::new();
    if let Some(h) = handover {
        rp_filter = h.rp_filter.clone();
        if adopted {
            state.take_over(h);
        } else {
            tracing::warn!(flows = h.flows.len(), "handover state dropped with the maps: those flows' last periods are not exported");
        }
    }
    if adopted {
        state.seed_learned();
    }
    // Routing and steering before readiness: the first flow already goes to the
    // right uplink. Observe mode changes nothing in the packet path.
    {
        let config = state.live().config.clone();
        if mode == Mode::Enforce && !config.uplinks.is_empty() {
            match crate::uplink::Uplinks::start_adopting(&config, &state.datapath, std::mem::take(&mut rp_filter)).await {
                Ok(u) => {
                    for s in u.status(&state.datapath(), &[]) {
                        tracing::info!(uplink = %s.name, up = s.up, table = s.table, gateway4 = ?s.gateway4, gateway6 = ?s.gateway6, "uplink routing installed");
                    }
                    *state.uplinks.lock().unwrap_or_else(|p| p.into_inner()) = Some(u);
                }
                Err(e) => {
                    tracing::error!(error = %e, "uplink routing");
                    let mut errors: Vec<String> = state.datapath().detach_all().into_iter().map(|e| e.to_string()).collect();
                    undo_pins(&pins, found_pins);
                    if let Err(re) = socket.remove() {
                        errors.push(re.to_string());
                    }
                    errors.insert(0, format!("uplinks: {e}"));
                    return Err(DaemonError::Teardown(errors));
                }
            }
        }
        // Queues last, once the programs that set skb->priority are attached
        // and routing is in place. A failure (a root qdisc we did not create,
        // netlink) is a start error: everything started so far is undone.
        if mode == Mode::Enforce {
            let uplinks = state.uplinks.lock().unwrap_or_else(|p| p.into_inner()).take();
            match start_queues(&config, uplinks.as_ref()) {
                Ok(q) => {
                    for line in q.describe().to_string().lines() {
                        tracing::info!("{line}");
                    }
                    *state.queues.lock().unwrap_or_else(|p| p.into_inner()) = Some(q);
                    *state.uplinks.lock().unwrap_or_else(|p| p.into_inner()) = uplinks;
                }
                Err(e) => {
                    tracing::error!(error = %e, "queues");
                    let mut errors: Vec<String> = state.datapath().detach_all().into_iter().map(|e| e.to_string()).collect();
                    undo_pins(&pins, found_pins);
                    if let Some(u) = uplinks {
                        errors.extend(u.stop().await.into_iter().map(|e| format!("uplink routing: {e}")));
                    }
                    if let Err(re) = socket.remove() {
                        errors.push(re.to_string());
                    }
                    if let Some(Err(re)) = bpffs.map(|fs| fs.release()) {
                        errors.push(re.to_string());
                    }
                    if errors.is_empty() {
                        return Err(DaemonError::Queues(e));
                    }
                    errors.insert(0, format!("queues: {e}"));
                    return Err(DaemonError::Teardown(errors));
                }
            }
        }
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let learner = match punts {
        Ok(ring) => Some(tokio::spawn(consume_punts(ring, state.clone(), shutdown_rx.clone()))),
        Err(e) => {
            tracing::error!(error = %e, "punt ring buffer unavailable: no learning from DNS");
            None
        }
    };
    // Uplink events on their own thread: the failover path does blocking map
    // and conntrack syscalls and must not wait behind anything else.
    let uplink_thread = {
        let st = state.clone();
        let rx = shutdown_rx.clone();
        std::thread::Builder::new()
            .name("uplinks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match rt {
                    Ok(rt) => rt.block_on(uplink_events(st, rx)),
                    Err(e) => tracing::error!(error = %e, "uplink event runtime"),
                }
            })
            .map_err(DaemonError::Runtime)?
    };
    let lifecycle = tokio::spawn(flow_lifecycle(state.clone(), shutdown_rx.clone()));
    let metrics = metrics_listener.map(|listener| {
        let st = state.clone();
        let exporter = crate::control::metrics::Exporter::default();
        let snapshot: crate::control::metrics::Snapshot = Arc::new(move || {
            let status = st.status().map_err(|e| e.to_string())?;
            // The flows a batch at a time: a scrape never holds the whole table.
            exporter.render_walk(&status, |add| st.for_each_flow_info(add)).map_err(|e| e.to_string())
        });
        tracing::info!(listen = ?listener.local_addr().ok(), "serving metrics");
        tokio::spawn(crate::control::metrics::serve_listener(listener, snapshot, shutdown_rx.clone()))
    });
    // Started (datapath, routing, queues): what a handover passed on has been
    // taken over. Before the socket answers, so that whoever sees us ready sees
    // the file gone.
    if let Err(e) = crate::restart::Handover::remove(&state_file) {
        tracing::warn!(error = %e, "remove the handover state file");
    }
    let handler: Arc<dyn Handler> = state.clone();
    let control = tokio::spawn(async move {
        socket.serve(handler, shutdown_rx).await;
        socket
    });

    // Readiness: programs attached, rules installed, control socket answering.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(mode = mode_name(mode), socket = %socket_path.display(), "ready");

    let stopped = loop {
        tokio::select! {
            _ = sigterm.recv() => {
                // `systemctl restart` sends the same SIGTERM as `systemctl stop`:
                // systemd's job for the unit tells them apart (see systemd.rs).
                match tokio::task::spawn_blocking(crate::systemd::restart_pending).await {
                    Ok(Ok(true)) => {
                        tracing::info!("SIGTERM for a systemctl restart: handing over");
                        break crate::restart::Stopped::Handover;
                    }
                    Ok(Ok(false)) => tracing::info!("SIGTERM: stopping"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "SIGTERM: could not ask systemd whether it restarts the unit; stopping cleanly"),
                    Err(e) => tracing::warn!(error = %e, "SIGTERM: systemd query failed; stopping cleanly"),
                }
                break crate::restart::Stopped::Clean;
            }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break crate::restart::Stopped::Clean; }
            _ = sigusr2.recv() => { tracing::info!("SIGUSR2: handing over"); break crate::restart::Stopped::Handover; }
            _ = state.restart.notified() => break crate::restart::Stopped::Handover,
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                let st = state.clone();
                // The reload does blocking map syscalls; keep them off the runtime.
                let _ = tokio::task::spawn_blocking(move || st.reload()).await;
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let handing_over = stopped == crate::restart::Stopped::Handover;
    state.handing_over.store(handing_over, Ordering::SeqCst);

    // Teardown in reverse order, past failures, reporting all of them: stop
    // answering, detach the datapath, then give up the socket (our instance lock).
    let mut errors = Vec::new();
    let _ = shutdown_tx.send(true);
    if let Some(learner) = learner {
        if let Err(e) = learner.await {
            errors.push(format!("learning task: {e}"));
        }
    }
    if let Some(Err(e)) = match metrics { Some(m) => Some(m.await), None => None } {
        errors.push(format!("metrics task: {e}"));
    }
    let socket = match control.await {
        Ok(socket) => Some(socket),
        Err(e) => {
            errors.push(format!("control task: {e}"));
            None
        }
    };
    if let Err(e) = lifecycle.await {
        errors.push(format!("flow lifecycle task: {e}"));
    }
    if uplink_thread.join().is_err() {
        errors.push("uplink thread panicked".into());
    }
    // Routing is removed after the programs are detached: until then they mark
    // packets for the uplink tables.
    let uplinks = state.uplinks.lock().unwrap_or_else(|p| p.into_inner()).take();
    let queues = state.queues.lock().unwrap_or_else(|p| p.into_inner()).take();
    if handing_over {
        // Handover: the links are pinned (the programs keep running on the
        // pinned maps), queues, routing and rp_filter stay; the successor
        // replaces them in place.
        drop(queues);
        errors.extend(state.datapath().pin_links().into_iter().map(|e| format!("handover: {e}")));
        let rp_filter = uplinks.map(crate::uplink::Uplinks::keep).unwrap_or_default();
        let tracker = state.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let h = crate::restart::Handover {
            version: crate::restart::HANDOVER_VERSION,
            pid: std::process::id(),
            written_ns: monotonic_ns(),
            boot_id: crate::restart::boot_id(),
            flows: tracker.carry().iter().map(crate::restart::CarriedFlow::of).collect(),
            reported: tracker.reported,
            deleted: tracker.deleted,
            vanished: tracker.vanished,
            pressure_evictions: tracker.pressure_evictions,
            rp_filter,
        };
        drop(tracker);
        match h.write(&state_file) {
            Ok(()) => tracing::info!(path = %state_file.display(), flows = h.flows.len(), "handover state written"),
            Err(e) => errors.push(format!("handover: {e}")),
        }
        drop(state);
    } else {
        // Queues before the programs: without our HTB root the priorities the
        // programs still set are ignored (the kernel default qdisc reads only the
        // low bits, band "best effort"), whereas programs gone under a live tree
        // would drop every flow, interactive ones too, into the default class.
        if let Some(Err(es)) = queues.map(crate::qos::Qos::remove) {
            errors.extend(es.into_iter().map(|e| format!("queues: {e}")));
        }
        // Detach under the lock rather than waiting to own the state: a control
        // connection task that has just answered may still hold a reference for a
        // moment. The programs and maps go with the last reference (or the process).
        errors.extend(state.datapath().detach_all().into_iter().map(|e| e.to_string()));
        drop(state);
        if let Some(u) = uplinks {
            errors.extend(u.stop().await.into_iter().map(|e| format!("uplink routing: {e}")));
        }
        // The pins go too (maps and any link pin), and the instance directory.
        if let Some(dir) = &pins {
            errors.extend(dir.remove_all().into_iter().map(|e| format!("pins: {e}")));
        }
    }
    if let Some(mut socket) = socket {
        if let Err(e) = socket.remove() {
            errors.push(e.to_string());
        }
    }
    // A handover keeps the bpffs mounted: the pins live in it.
    if !handing_over {
        if let Some(Err(e)) = bpffs.map(|fs| fs.release()) {
            errors.push(e.to_string());
        }
    }
    if handing_over {
        // Whatever could not be handed over (a netlink TC filter on an old
        // kernel cannot be pinned; a state file that could not be written) costs
        // the successor classification for a moment or exact export, not the
        // restart itself: still exit 75 so that it starts.
        for e in &errors {
            tracing::error!(error = %e, "handover incomplete");
        }
        tracing::info!("handed over: exiting with status {}", crate::restart::EXIT_HANDOVER);
        Ok(stopped)
    } else if errors.is_empty() {
        tracing::info!("stopped cleanly");
        Ok(stopped)
    } else {
        Err(DaemonError::Teardown(errors))
    }
}
