//! The control socket: `inferlane status` (and later flows, reload) talk to the
//! running daemon over a Unix stream socket, one JSON request line and one JSON
//! response line per connection. JSON because it is what `--json` prints anyway,
//! and operators can drive it with `socat` when the CLI is not at hand.

pub mod client;
pub mod flows;
pub mod metrics;
pub mod top;
pub mod server;

use serde::{Deserialize, Serialize};

use crate::bpf::abi::Counters;
use crate::bpf::{ProgIds, TcAttachMode, XdpAttachMode};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    Status,
    Flows,
    Reload,
    /// Hand over to a successor (see `restart`): pin the links, keep routing and
    /// queues, write the state file, exit 75.
    Restart,
}

/// [`Response::Flows`] in JSON is this, the flows separated by commas, and
/// [`FLOWS_JSON_END`]: the daemon writes it a batch of flows at a time.
pub const FLOWS_JSON_START: &str = "{\"response\":\"flows\",\"flows\":[";
pub const FLOWS_JSON_END: &str = "]}";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "lowercase")]
pub enum Response {
    Status(Status),
    Flows { flows: Vec<flows::FlowInfo> },
    Reload(ReloadResult),
    /// The daemon is handing over and exits with status 75.
    Restarting { pid: u32 },
    Error { message: String },
}

/// The answer to a reload: applied, or refused with the reason (the running
/// config stays).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadResult {
    pub applied: bool,
    /// Generation of the config in force after the attempt (1 = the one started with).
    pub generation: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowTableStatus {
    /// Entries the table holds (config daemon.flow_table_size).
    pub size: u32,
    pub live: u64,
    /// Flows pushed out to make room: by the daemon under pressure (reported
    /// first) and by the kernel's LRU (reported from the last scan's figures).
    pub evicted: u64,
    /// Of those, evicted by the kernel before the daemon could.
    #[serde(default)]
    pub evicted_by_kernel: u64,
    /// Flows that ended (FIN/RST, idle past retention) and were deleted.
    #[serde(default)]
    pub ended: u64,
    /// Flow records produced (export periods).
    #[serde(default)]
    pub records: u64,
    pub stats: crate::bpf::abi::FlowStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RulesStatus {
    pub rules: usize,
    pub destination_prefixes: usize,
    pub client_prefixes: usize,
    /// Rules naming providers: matched once DNS/SNI learning gives flows a provider.
    pub provider_rules: usize,
    pub generation: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<String>,
}

/// What `inferlane status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// "enforce" or "observe".
    pub mode: String,
    pub config: String,
    pub uptime_ms: u64,
    pub interfaces: Vec<InterfaceStatus>,
    pub flow_table: FlowTableStatus,
    pub rules: RulesStatus,
    pub learning: LearningStatus,
    /// Uplinks: state, why, what they carry (empty in observe mode).
    #[serde(default)]
    pub uplinks: Vec<crate::uplink::UplinkStatus>,
    /// Recent uplink switches, oldest first.
    #[serde(default)]
    pub switches: Vec<crate::uplink::Switch>,
    /// The qdisc trees inferlane maintains (None: observe mode, or a daemon
    /// from before the queues were wired in).
    #[serde(default)]
    pub queues: Option<crate::qos::QosStatus>,
    /// Flow export, one entry per collector (empty without `[export]`).
    #[serde(default)]
    pub export: Vec<crate::export::CollectorStats>,
    /// Pinned maps and what this start found of a previous run's.
    #[serde(default)]
    pub pins: crate::bpf::MapAdoption,
}

/// DNS learning: answers to clients read from the datapath, addresses of
/// provider names handed back to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LearningStatus {
    pub punts: u64,
    pub dns_answers: u64,
    pub dns_errors: u64,
    pub addresses_learned: u64,
    pub addresses_forgotten: u64,
    pub addresses_live: u64,
    /// ClientHellos (TLS and QUIC) read from pending flows, and those not understood.
    pub hellos: u64,
    pub hello_errors: u64,
    /// Plaintext requests that named a self-hosted inference server.
    pub inference_requests: u64,
    /// Providers in the catalog in force (built-in plus config).
    pub providers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InterfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub xdp: XdpAttachMode,
    pub tc: TcAttachMode,
    /// Kernel program ids (`bpftool prog show id N`).
    pub prog_ids: ProgIds,
    /// LAN client to router (XDP lan_ingress).
    pub upload: Counters,
    /// Router to LAN client (TC lan_egress).
    pub download: Counters,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another inferlane is already listening there")]
    InUse { path: String },
    #[error("control socket {path}: {op}: {source}")]
    Io { path: String, op: &'static str, source: std::io::Error },
    #[error("control socket {path}: bad message: {source}")]
    Protocol { path: String, source: serde_json::Error },
    #[error("control socket {path}: the daemon answered with an error: {message}")]
    Remote { path: String, message: String },
}

impl Status {
    /// The human view of `inferlane status`.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "inferlane {} (pid {}), mode {}, up {}", self.version, self.pid, self.mode, human_ms(self.uptime_ms));
        let _ = writeln!(out, "config {}", self.config);
        match &self.pins.dir {
            Some(dir) => {
                let how = if self.pins.adopted {
                    format!(
                        "adopted from the previous run ({} links, export state of {} flows carried over)",
                        self.pins.links_adopted, self.pins.flows_carried
                    )
                } else if let Some(reason) = &self.pins.discarded {
                    format!("fresh; the previous run's were discarded: {reason}")
                } else {
                    "fresh".to_string()
                };
                let _ = writeln!(out, "maps pinned at {dir}: {how}");
            }
            None => {
                let _ = writeln!(out, "maps not pinned (no bpffs): a restart starts empty");
            }
        }
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:<6} {:<8} {:>12} {:>14} {:>12} {:>14} {:>9}",
            "interface", "ifindex", "xdp", "tc", "up pkts", "up bytes", "down pkts", "down bytes", "malformed"
        );
        for i in &self.interfaces {
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:<6} {:<8} {:>12} {:>14} {:>12} {:>14} {:>9}",
                i.name,
                i.ifindex,
                format!("{:?}", i.xdp).to_lowercase(),
                format!("{:?}", i.tc).to_lowercase(),
                i.upload.packets,
                i.upload.bytes,
                i.download.packets,
                i.download.bytes,
                i.upload.malformed + i.download.malformed,
            );
        }
        let ft = &self.flow_table;
        let _ = writeln!(
            out,
            "flows: {} live of {}, {} created, {} ended, {} evicted ({} by the kernel), {} not tracked (insert failed), {} download packets without a flow, {} records",
            ft.live, ft.size, ft.stats.created, ft.ended, ft.evicted, ft.evicted_by_kernel, ft.stats.create_failed, ft.stats.download_unmatched, ft.records
        );
        let _ = writeln!(
            out,
            "datapath: {} packets DSCP-rewritten, {} flows demoted to bulk, {} dropped (blocked flows), {} would have been dropped (observe mode), fragments {} first / {} later / {} orphan",
            ft.stats.dscp_rewritten, ft.stats.demoted, ft.stats.blocked, ft.stats.would_block, ft.stats.frag_first, ft.stats.frag_nonfirst, ft.stats.frag_orphan
        );
        let r = &self.rules;
        let _ = writeln!(
            out,
            "rules: {} ({} destination prefixes, {} client prefixes, {} waiting for provider learning), generation {}, {} reloads, {} refused",
            r.rules, r.destination_prefixes, r.client_prefixes, r.provider_rules, r.generation, r.reloads, r.reload_failures
        );
        let l = &self.learning;
        let _ = writeln!(
            out,
            "learning: {} providers known, {} DNS answers read ({} not understood), {} addresses learned, {} live; {} ClientHellos read ({} not understood)",
            l.providers, l.dns_answers, l.dns_errors, l.addresses_learned, l.addresses_live, l.hellos, l.hello_errors
        );
        if let Some(e) = &r.last_reload_error {
            let _ = writeln!(out, "last reload refused: {e}");
        }
        if !self.uplinks.is_empty() {
            let _ = writeln!(
                out,
                "{:<10} {:<10} {:<5} {:>6} {:>7} {:>8} {:>12} {:>12}  {}",
                "uplink", "interface", "state", "table", "flows", "moved in", "up bytes", "down bytes", "carries / why"
            );
            for u in &self.uplinks {
                let _ = writeln!(
                    out,
                    "{:<10} {:<10} {:<5} {:>6} {:>7} {:>8} {:>12} {:>12}  {} / {} ({}){}",
                    u.name,
                    u.interface,
                    if u.up { "up" } else { "DOWN" },
                    u.table,
                    u.flows,
                    u.counters.moved,
                    u.counters.up_bytes,
                    u.counters.down_bytes,
                    if u.carries.is_empty() { "nothing".to_string() } else { u.carries.join(", ") },
                    u.reason,
                    u.gateway4.map(|g| g.to_string()).or(u.gateway6.map(|g| g.to_string())).unwrap_or_else(|| "no gateway".into()),
                    if u.metered { ", metered" } else { "" },
                );
            }
        }
        if let Some(q) = &self.queues {
            let _ = write!(out, "{q}");
        }
        for c in &self.export {
            let _ = writeln!(
                out,
                "export to {} ({}): {} records in {} messages, {} sent ({} bytes), {} waiting, {} send errors ({} refused, {} backlog full), {} buffer-full retries{}",
                c.address,
                c.format,
                c.records,
                c.messages,
                c.sent,
                c.bytes,
                c.backlog,
                c.send_errors,
                c.refused,
                c.backlog_dropped,
                c.would_block,
                if c.skipped > 0 { format!(", {} records the format cannot carry", c.skipped) } else { String::new() }
            );
        }
        for s in &self.switches {
            let _ = writeln!(
                out,
                "switch at {}: {} {} ({}){}",
                s.at_ms,
                s.uplink,
                if s.up { "up" } else { "down" },
                s.reason,
                if s.flows_ended > 0 { format!(", {} flows ended", s.flows_ended) } else { String::new() }
            );
        }
        out
    }
}

fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{:03}s", s, ms % 1000),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flows_answer_written_in_pieces_is_serde_s() {
        let key = crate::bpf::abi::FlowKey { client_port: 40000u16.to_be(), proto: 6, family: 6, ..Default::default() };
        let flow = crate::bpf::abi::Flow { up_packets: 3, down_bytes: 9000, ..Default::default() };
        let config = crate::config::Config::default();
        let a = flows::FlowInfo::from_entry(&key, &flow, 5, &config, &[]);
        let b = flows::FlowInfo { name: Some("api.openai.com".into()), ..a.clone() };
        for list in [vec![], vec![a.clone()], vec![a, b]] {
            let pieces: Vec<String> = list.iter().map(|f| serde_json::to_string(f).unwrap()).collect();
            let streamed = format!("{FLOWS_JSON_START}{}{FLOWS_JSON_END}", pieces.join(","));
            assert_eq!(streamed, serde_json::to_string(&Response::Flows { flows: list }).unwrap());
        }
    }
}
