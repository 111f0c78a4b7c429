//! The configuration's shape: serde structs, one per table, and the assembly of the
//! document from its top-level sections.
//!
//! Every struct denies unknown fields, so a misspelt key is an error rather than a
//! silently ignored option. Value types (rates, DSCPs, CIDRs, ...) deserialize
//! themselves, so their errors carry the span of the offending string.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::units::{de_duration, Rate};
use super::values::{de_cidrs, de_socket_addr, Dscp, PortSpec, Probe};

/// The whole configuration. Parsed once and then immutable; a reload builds a new one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub daemon: Daemon,
    pub lan: Lan,
    pub routing: Routing,
    pub uplinks: Vec<Uplink>,
    pub classes: Vec<Class>,
    pub rules: Vec<Rule>,
    pub providers: Vec<ProviderConfig>,
    pub export: Option<Export>,
    pub metrics: Option<Metrics>,
}

impl Config {
    pub fn uplink(&self, name: &str) -> Option<&Uplink> {
        self.uplinks.iter().find(|uplink| uplink.name == name)
    }

    pub fn class(&self, name: &str) -> Option<&Class> {
        self.classes.iter().find(|class| class.name == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Classify, mark, queue, route and block.
    #[default]
    Enforce,
    /// Classify, count and export; change nothing in the packet path.
    Observe,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Daemon {
    pub mode: Mode,
    pub control_socket: PathBuf,
    /// Entries of the eBPF flow table (fixed kernel memory, about 200 bytes each).
    pub flow_table_size: u32,
    /// Drop QUIC (UDP/443) to AI providers, so clients fall back to TCP, where the
    /// SNI is readable by anyone on the path and TCP queueing applies.
    pub block_ai_quic: bool,
    /// Where self-hosted inference servers listen: plaintext HTTP requests (and
    /// the HTTP/2 preface) to these ports are read to name the server kind.
    pub inference_ports: Vec<PortSpec>,
    /// Mount point of the BPF file system. The maps are pinned under
    /// `BPFFS/inferlane/INSTANCE/` so that a restart adopts them (flows and
    /// counters survive); a clean stop removes them.
    pub bpffs: PathBuf,
}

/// Ollama (11434), vLLM/TGI/llama.cpp and most OpenAI-compatible servers (8000,
/// 8080), Triton HTTP and gRPC (8000, 8001).
pub fn default_inference_ports() -> Vec<PortSpec> {
    ["tcp:11434", "tcp:8000-8001", "tcp:8080"].iter().map(|p| p.parse().expect("valid default")).collect()
}

/// Bounds of `flow_table_size`: below, a busy office evicts live flows; above, the
/// table alone takes more than 3 GiB of kernel memory.
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 16 * 1024 * 1024;

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            mode: Mode::Enforce,
            control_socket: PathBuf::from("/run/inferlane/control.sock"),
            flow_table_size: 262_144,
            block_ai_quic: false,
            inference_ports: default_inference_ports(),
            bpffs: PathBuf::from("/sys/fs/bpf"),
        }
    }
}

/// Empty by default so that a missing `[lan]` is reported by validation, which says
/// what to write, rather than by serde's bare "missing field".
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lan {
    pub interfaces: Vec<String>,
}

/// Policy routing: where inferlane's per-uplink tables and fwmark rules live, and
/// where unclassified flows go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Routing {
    /// Uplinks for flows no rule classified (yet: TLS flows wait for their SNI),
    /// in preference order. None: every uplink, by priority.
    pub default_uplinks: Option<Vec<String>>,
    /// Uplink number i (config order, from 0) routes through table `table_base + i`.
    pub table_base: u32,
    /// Its fwmark rules sit at priority `rule_priority + i`.
    pub rule_priority: u32,
}

/// Well clear of the tables iproute2 names (253-255) and of the small numbers
/// people pick by hand; the rules sit before `main` (32766) and after the
/// priorities `ip rule add` hands out from 32765 downwards on a busy box.
pub const ROUTING_TABLE_BASE: u32 = 20_000;
pub const ROUTING_RULE_PRIORITY: u32 = 20_000;

impl Default for Routing {
    fn default() -> Self {
        Routing {
            default_uplinks: None,
            table_base: ROUTING_TABLE_BASE,
            rule_priority: ROUTING_RULE_PRIORITY,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default)]
    pub metered: bool,
    /// Share of new flows among healthy uplinks of equal priority.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Next hops for the uplink's table, at most one per family. Empty: learned
    /// from the main table's default routes through the interface (DHCP, RA), or
    /// a direct route on a point-to-point link.
    #[serde(default)]
    pub gateways: Vec<std::net::IpAddr>,
    #[serde(default)]
    pub egress_rate: Option<Rate>,
    #[serde(default)]
    pub ingress_rate: Option<Rate>,
    #[serde(default)]
    pub health: Option<Health>,
}

fn default_priority() -> u32 {
    10
}

fn default_weight() -> u32 {
    1
}

pub const WEIGHT_MAX: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Defaults to empty so validation can say "at least one probe".
    #[serde(default)]
    pub probes: Vec<Probe>,
    #[serde(default = "default_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    #[serde(default = "default_up_after")]
    pub up_after: u32,
}

// 300 ms × 3 misses detects a silent blackout in about 1 s, inside the 2 s budget;
// 100 good probes (30 s) before failing back keeps a flapping link from pulling
// traffic back and forth.
fn default_interval() -> Duration {
    Duration::from_millis(300)
}

fn default_down_after() -> u32 {
    3
}

fn default_up_after() -> u32 {
    100
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Queue {
    High,
    #[default]
    Normal,
    Low,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Class {
    pub name: String,
    /// Required: a default would silently re-mark (bleach) traffic.
    pub dscp: Dscp,
    #[serde(default)]
    pub queue: Queue,
    /// Preference order; empty means "follow the main routing table".
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// Bulk demotion: a flow of this class that has moved `after` bytes (both
    /// directions) and lasted `min_age`, or kept `rate` for `for`, moves to class
    /// `to` (its queue and DSCP; it keeps its uplink). Done once per flow, in the
    /// datapath.
    #[serde(default)]
    pub demote: Option<Demote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demote {
    /// Byte threshold, both directions together.
    #[serde(default)]
    pub after: Option<super::units::ByteSize>,
    /// With `after`: the flow must be at least this old too (a short burst of a
    /// big answer is not a bulk transfer). Default 0: the byte count alone decides.
    #[serde(default, deserialize_with = "de_duration")]
    pub min_age: Duration,
    /// Rate threshold, both directions together: a flow that keeps at least
    /// this rate for a whole window of `for` is bulk, whatever its size so far.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// The rate window (`for` in the file).
    #[serde(rename = "for", default = "default_demote_window", deserialize_with = "de_duration")]
    pub window: Duration,
    /// The class the flow moves to.
    pub to: String,
}

fn default_demote_window() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Classify,
    Block,
}

/// A rule matches when every matcher it has matches (AND); within one list any entry
/// may match (OR).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub action: Action,
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub providers: Vec<String>,
    #[serde(default, deserialize_with = "de_cidrs")]
    pub destinations: Vec<IpNet>,
    #[serde(default, deserialize_with = "de_cidrs")]
    pub clients: Vec<IpNet>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
}

/// A `[[providers]]` table: a provider added to the built-in catalog, or more hosts,
/// another class or another display name for a built-in one. Checked against the
/// catalog by validation; `classify::catalog::Catalog::from_config` applies it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// Shown in status output and flow records; a new provider defaults to its name.
    #[serde(default)]
    pub display: Option<String>,
    /// "interactive", "chat" or "bulk". A new provider defaults to "interactive"; a
    /// built-in one keeps its own unless this is set.
    #[serde(default)]
    pub class: Option<String>,
    /// Host patterns: "api.example.com", "*.example.com", "api.*.example.com".
    /// Required for a new provider.
    #[serde(default)]
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    #[default]
    Ipfix,
    Netflow9,
    Netflow5,
}

impl ExportFormat {
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Ipfix => "ipfix",
            ExportFormat::Netflow9 => "netflow9",
            ExportFormat::Netflow5 => "netflow5",
        }
    }
}

/// One collector: `"IP:PORT"`, which takes `[export] format`, or
/// `{ address = "IP:PORT", format = "netflow9" }` with its own format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorConfig {
    pub address: SocketAddr,
    /// None: the `[export]` table's format.
    pub format: Option<ExportFormat>,
}

impl<'de> Deserialize<'de> for CollectorConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = CollectorConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address like \"192.0.2.50:4739\" or a table like { address = \"192.0.2.50:2055\", format = \"netflow9\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<CollectorConfig, E> {
                let address = super::values::parse_socket_addr(v).map_err(E::custom)?;
                Ok(CollectorConfig { address, format: None })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CollectorConfig, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    #[serde(deserialize_with = "de_socket_addr")]
                    address: SocketAddr,
                    format: Option<ExportFormat>,
                }
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(CollectorConfig { address: t.address, format: t.format })
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    #[serde(default)]
    pub collectors: Vec<CollectorConfig>,
    /// The format of collectors that do not name their own.
    #[serde(default)]
    pub format: ExportFormat,
    #[serde(default = "default_active_timeout", deserialize_with = "de_duration")]
    pub active_timeout: Duration,
    #[serde(default = "default_inactive_timeout", deserialize_with = "de_duration")]
    pub inactive_timeout: Duration,
    /// Pace of each collector's messages: flows end in bursts, and a burst of
    /// datagrams overflows a collector's receive buffer silently.
    #[serde(default = "default_messages_per_second")]
    pub messages_per_second: u32,
}

/// 10,000 messages of up to ~1,400 bytes: about 110 Mbit/s, some 300,000 flows a
/// second, far above what a router ends, yet a pace a collector's default receive
/// buffer absorbs (see `export::sender`).
fn default_messages_per_second() -> u32 {
    10_000
}

// The common defaults of flow exporters (softflowd, Cisco's inactive timeout).
impl Export {
    /// Each collector with the format it gets.
    pub fn collectors(&self) -> impl Iterator<Item = (SocketAddr, ExportFormat)> + '_ {
        self.collectors.iter().map(|c| (c.address, c.format.unwrap_or(self.format)))
    }
}

fn default_active_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_inactive_timeout() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    #[serde(deserialize_with = "de_socket_addr")]
    pub listen: SocketAddr,
}

/// An error found while turning the document into a `Config`, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpannedError {
    pub(crate) span: Range<usize>,
    pub(crate) message: String,
}

const SECTIONS: &[&str] = &[
    "daemon",
    "lan",
    "routing",
    "uplinks",
    "classes",
    "rules",
    "providers",
    "export",
    "metrics",
];

/// Builds the `Config` section by section, and `[[array]]` element by element, rather
/// than with one derived `Deserialize`: serde stops at the first error, and this way
/// a mistake in one uplink does not hide a mistake in a rule further down.
pub(crate) fn from_document(doc: Spanned<DeTable<'_>>) -> Result<Config, Vec<SpannedError>> {
    let mut config = Config::default();
    let mut errors = Vec::new();
    for (key, value) in doc.into_inner() {
        let key_span = key.span();
        let mut collect = |result: Result<(), Vec<SpannedError>>| {
            if let Err(e) = result {
                errors.extend(e);
            }
        };
        match key.get_ref().as_ref() {
            "daemon" => collect(table(value, "daemon").map(|v| config.daemon = v)),
            "lan" => collect(table(value, "lan").map(|v| config.lan = v)),
            "routing" => collect(table(value, "routing").map(|v| config.routing = v)),
            "uplinks" => collect(array_of_tables(value, "uplinks").map(|v| config.uplinks = v)),
            "classes" => collect(array_of_tables(value, "classes").map(|v| config.classes = v)),
            "rules" => collect(array_of_tables(value, "rules").map(|v| config.rules = v)),
            "providers" => {
                collect(array_of_tables(value, "providers").map(|v| config.providers = v))
            }
            "export" => collect(table(value, "export").map(|v| config.export = Some(v))),
            "metrics" => collect(table(value, "metrics").map(|v| config.metrics = Some(v))),
            other => errors.push(SpannedError {
                span: key_span,
                message: format!(
                    "unknown section {other:?}, expected one of {}",
                    SECTIONS
                        .iter()
                        .map(|s| format!("{s:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        // Keys come out of the table sorted by name, not by position.
        errors.sort_by_key(|e| (e.span.start, e.span.end));
        Err(errors)
    }
}

fn table<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    name: &str,
) -> Result<T, Vec<SpannedError>> {
    if !value.get_ref().is_table() {
        return Err(vec![SpannedError {
            span: value.span(),
            message: format!(
                "{name:?} must be a table, found {}",
                value.get_ref().type_str()
            ),
        }]);
    }
    deserialize(value).map_err(|e| vec![e])
}

fn array_of_tables<T: DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
    name: &str,
) -> Result<Vec<T>, Vec<SpannedError>> {
    let span = value.span();
    let DeValue::Array(array) = value.into_inner() else {
        return Err(vec![SpannedError {
            span,
            message: format!("{name:?} must be an array of tables, written [[{name}]]"),
        }]);
    };
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for element in array {
        let result = if element.get_ref().is_table() {
            deserialize(element)
        } else {
            Err(SpannedError {
                span: element.span(),
                message: format!(
                    "each entry of {name:?} must be a table, found {}",
                    element.get_ref().type_str()
                ),
            })
        };
        match result {
            Ok(item) => items.push(item),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors)
    }
}

fn deserialize<T: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<T, SpannedError> {
    let span = value.span();
    T::deserialize(ValueDeserializer::from(value)).map_err(|e| SpannedError {
        // toml attaches a span to almost every error; the value's own span is the
        // nearest place for the rest.
        span: e.span().unwrap_or(span),
        message: e.message().to_owned(),
    })
}
