//! Uplinks: per-uplink routing tables and fwmark rules ([`route`]), where new flows
//! go ([`steer`]), health ([`watch`]: carrier and address events), and the
//! failover state machine that ties them together ([`Uplinks`]).
//!
//! Order of a failover, so that nothing is stranded: the dead uplink is marked
//! unusable and the steering entries rewritten first (new flows and the next
//! packet of every flow pinned to it go elsewhere), then the conntrack entries of
//! the flows that were pinned to it are deleted, so their next packet is NATed
//! anew on the uplink it now leaves through. Flows on other uplinks are never
//! touched. Failback is the same without the second step: flows stay where they
//! are while that uplink lives (sticky), only new flows go back.

pub mod conntrack;
pub mod health;
pub mod monitor;
pub mod probe;
pub mod route;
pub mod steer;
pub mod watch;

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::bpf::abi::{FlowKey, UplinkCounters};
use crate::bpf::{BpfError, Datapath};
use crate::config::Config;

pub use route::{RouteError, Routing};

/// Switches remembered for `inferlane status`.
const HISTORY: usize = 32;

/// One change of an uplink's state, for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    /// Wall-clock milliseconds since the UNIX epoch.
    pub at_ms: u64,
    pub uplink: String,
    pub up: bool,
    pub reason: String,
    /// Flows pinned to it whose conntrack entries were deleted (going down).
    pub flows_ended: usize,
}

/// What the health probes say of an uplink (absent when it has none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthSummary {
    /// "unknown", "up" or "down", as the probes judge it.
    pub state: String,
    /// Rounds without a timely answer over the recent window.
    pub loss_ratio: f64,
    pub srtt_ms: Option<f64>,
    pub probe_interval_ms: u64,
    pub probes: u64,
    pub probe_bytes_sent: u64,
    pub probe_bytes_received: u64,
}

impl HealthSummary {
    pub fn of(report: &monitor::HealthReport) -> HealthSummary {
        let f = &report.figures;
        HealthSummary {
            state: f.state.to_string(),
            loss_ratio: f.loss_ratio,
            srtt_ms: f.srtt.map(|d| d.as_secs_f64() * 1000.0),
            probe_interval_ms: f.round_interval.as_millis() as u64,
            probes: report.probes.probes,
            probe_bytes_sent: report.probes.bytes_sent,
            probe_bytes_received: report.probes.bytes_received,
        }
    }
}

/// An uplink as `inferlane status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    pub interface: String,
    pub priority: u32,
    pub metered: bool,
    pub up: bool,
    pub carrier: bool,
    /// Why it is in its current state.
    pub reason: String,
    pub since_ms: u64,
    pub table: u32,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    /// Live flows pinned to it now.
    pub flows: u64,
    pub counters: UplinkCounters,
    /// Classes whose new flows go here now (shared ones included).
    pub carries: Vec<String>,
    /// Times it went down since the daemon started (monotonic, unlike the
    /// bounded switch history): the failover counter of the metrics.
    #[serde(default)]
    pub downs: u64,
    /// Health probes' figures (None: judged by carrier alone).
    #[serde(default)]
    pub health: Option<HealthSummary>,
}

struct State {
    health: Option<HealthSummary>,
    usable: bool,
    carrier: bool,
    reason: String,
    since: SystemTime,
    downs: u64,
}

/// The uplinks of the config in force: their routing, their state, and the
/// history of switches.
pub struct Uplinks {
    config: Config,
    routing: Routing,
    states: Vec<State>,
    history: VecDeque<Switch>,
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Bpf(#[from] BpfError),
}

impl Uplinks {
    /// Install routing for every uplink and steer by the current carrier state
    /// (an uplink whose interface is down or absent starts unusable). Observe
    /// mode installs nothing: it changes nothing in the packet path.
    pub async fn start(config: &Config, dp: &std::sync::Mutex<Datapath>) -> Result<Uplinks, UplinkError> {
        Self::start_adopting(config, dp, Vec::new()).await
    }

    /// [`Uplinks::start`] after a handover: the predecessor's rp_filter changes
    /// (to restore at a clean stop). Routing is replaced in place either way.
    pub async fn start_adopting(
        config: &Config,
        dp: &std::sync::Mutex<Datapath>,
        rp_filter: Vec<(String, String)>,
    ) -> Result<Uplinks, UplinkError> {
        let ifaces: Vec<String> = config.uplinks.iter().map(|u| u.interface.clone()).collect();
        let carriers = watch::carriers(&ifaces).await.map_err(RouteError::Connect)?;
        let routing = Routing::install_adopting(config, rp_filter).await?;
        let now = SystemTime::now();
        let states = carriers
            .into_iter()
            .map(|carrier| {
                State {
                    health: None,
                    usable: carrier,
                    carrier,
                    reason: if carrier { "carrier up at start".into() } else { "no carrier at start".into() },
                    since: now,
                    downs: 0,
                }
            })
            .collect();
        let uplinks = Uplinks { config: config.clone(), routing, states, history: VecDeque::new() };
        let mut guard = dp.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = uplinks.publish(&mut guard) {
            drop(guard);
            for undo in uplinks.routing.remove().await {
                tracing::warn!("undoing routing after a failed start: {undo}");
            }
            return Err(e.into());
        }
        Ok(uplinks)
    }

    /// Write every uplink's usable state and the steering entries.
    fn publish(&self, dp: &mut Datapath) -> Result<(), BpfError> {
        for (i, s) in self.states.iter().enumerate() {
            dp.set_uplink_usable(i, s.usable)?;
        }
        dp.set_steering(&steer::steering(&self.config, &self.usable()))
    }

    /// A reloaded config (same uplinks and routing: those need a restart): the
    /// classes' uplink lists may differ, so the steering is written again.
    pub fn reconfigure(&mut self, config: &Config, dp: &mut Datapath) -> Result<(), BpfError> {
        self.config = config.clone();
        self.publish(dp)
    }

    fn usable(&self) -> Vec<bool> {
        self.states.iter().map(|s| s.usable).collect()
    }

    pub fn index_of_interface(&self, iface: &str) -> Option<usize> {
        self.config.uplinks.iter().position(|u| u.interface == iface)
    }

    pub fn interfaces(&self) -> Vec<String> {
        self.config.uplinks.iter().map(|u| u.interface.clone()).collect()
    }

    /// Record the carrier of uplink `index`; returns whether it changed.
    pub fn set_carrier(&mut self, index: usize, carrier: bool) -> bool {
        let Some(s) = self.states.get_mut(index) else { return false };
        let changed = s.carrier != carrier;
        s.carrier = carrier;
        changed
    }

    /// The latest figures of uplink `index`'s health probes.
    pub fn set_health(&mut self, index: usize, summary: HealthSummary) {
        if let Some(s) = self.states.get_mut(index) {
            s.health = Some(summary);
        }
    }

    pub fn carrier(&self, index: usize) -> bool {
        self.states.get(index).is_some_and(|s| s.carrier)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether health probes judge the uplink (else carrier alone does).
    pub fn has_probes(&self, index: usize) -> bool {
        self.config.uplinks.get(index).is_some_and(|u| u.health.as_ref().is_some_and(|h| !h.probes.is_empty()))
    }

    pub fn is_usable(&self, index: usize) -> bool {
        self.states.get(index).is_some_and(|s| s.usable)
    }

    /// Make uplink `index` usable or not. Going down: steering first, then the
    /// conntrack entries of the flows pinned to it are deleted (returns how many).
    /// Blocking syscalls: call from a blocking context.
    pub fn set_usable(
        &mut self,
        index: usize,
        usable: bool,
        reason: &str,
        dp: &std::sync::Mutex<Datapath>,
    ) -> Result<Option<Switch>, UplinkError> {
        let Some(s) = self.states.get_mut(index) else { return Ok(None) };
        if s.usable == usable {
            return Ok(None);
        }
        s.usable = usable;
        s.reason = reason.to_string();
        s.since = SystemTime::now();
        if !usable {
            s.downs += 1;
        }
        let name = self.config.uplinks[index].name.clone();
        let pinned = {
            let mut guard = dp.lock().unwrap_or_else(|p| p.into_inner());
            self.publish(&mut guard)?;
            if usable {
                Vec::new()
            } else {
                pinned_flows(&guard, index)?
            }
        };
        let mut flows_ended = 0;
        if !pinned.is_empty() {
            match conntrack::delete(&pinned) {
                Ok(d) => {
                    flows_ended = d.deleted;
                    tracing::info!(uplink = %name, deleted = d.deleted, absent = d.absent, failed = d.failed, "conntrack entries of its flows deleted");
                }
                Err(e) => tracing::warn!(uplink = %name, error = %e, "conntrack delete"),
            }
        }
        let switch = Switch {
            at_ms: epoch_ms(SystemTime::now()),
            uplink: name.clone(),
            up: usable,
            reason: reason.to_string(),
            flows_ended,
        };
        if usable {
            tracing::info!(uplink = %name, reason, "uplink up: new flows may use it");
        } else {
            tracing::warn!(uplink = %name, reason, flows_ended, "uplink down: new flows move on");
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(switch.clone());
        Ok(Some(switch))
    }

    /// The uplinks that carry unclassified (default) traffic now, by name: where
    /// the steering entry of class 0 sends new flows (all members when equal
    /// uplinks share it). When that entry has no usable choice (an explicit
    /// `default_uplinks` list that is all down, or left to the main table), the
    /// first usable uplink in priority order. Empty when none is usable. The
    /// LAN download queues follow the sum of their `ingress_rate`s.
    pub fn carrying_default(&self) -> Vec<String> {
        let usable = self.usable();
        let steering = steer::steering(&self.config, &usable);
        let mut names: Vec<String> = Vec::new();
        if let Some((_, st)) = steering.iter().find(|(class, _)| *class == 0) {
            for &slot in &st.slot[..] {
                if st.n == 0 || slot == 0 {
                    continue;
                }
                let name = &self.config.uplinks[usize::from(slot) - 1].name;
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        if names.is_empty() {
            let mut order: Vec<usize> = (0..self.config.uplinks.len()).filter(|&i| usable[i]).collect();
            order.sort_by_key(|&i| self.config.uplinks[i].priority);
            names.extend(order.first().map(|&i| self.config.uplinks[i].name.clone()));
        }
        names
    }

    /// Learn uplink `index`'s gateways again (route or address events).
    pub async fn refresh_routes(&mut self, index: usize) -> Result<bool, RouteError> {
        self.routing.refresh(index).await
    }

    pub fn history(&self) -> Vec<Switch> {
        self.history.iter().cloned().collect()
    }

    /// Status of every uplink; `flows` are the live flows' uplink numbers.
    pub fn status(&self, dp: &Datapath, flow_uplinks: &[u8]) -> Vec<UplinkStatus> {
        let steering = steer::steering(&self.config, &self.usable());
        self.config
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let routes = self.routing.uplinks.get(i);
                let s = &self.states[i];
                let mut carries: Vec<String> = steering
                    .iter()
                    .filter(|(_, st)| st.slot[..].contains(&(i as u8 + 1)) && st.n > 0)
                    .map(|(class, _)| match *class {
                        0 => "unclassified".to_string(),
                        c => self.config.classes[c as usize - 1].name.clone(),
                    })
                    .collect();
                carries.dedup();
                UplinkStatus {
                    name: u.name.clone(),
                    interface: u.interface.clone(),
                    priority: u.priority,
                    metered: u.metered,
                    up: s.usable,
                    carrier: s.carrier,
                    reason: s.reason.clone(),
                    since_ms: epoch_ms(s.since),
                    table: routes.map_or(0, |r| r.table),
                    gateway4: routes.and_then(|r| r.gateway4),
                    gateway6: routes.and_then(|r| r.gateway6),
                    flows: flow_uplinks.iter().filter(|&&n| usize::from(n) == i + 1).count() as u64,
                    counters: dp.uplink_counters(i).unwrap_or_default(),
                    carries,
                    downs: s.downs,
                    health: s.health.clone(),
                }
            })
            .collect()
    }

    /// Remove routing; continues past errors.
    pub async fn stop(self) -> Vec<RouteError> {
        self.routing.remove().await
    }

    /// Handover: routing stays for the successor; returns the rp_filter values
    /// it must restore at its clean stop.
    pub fn keep(self) -> Vec<(String, String)> {
        self.routing.keep()
    }
}

/// Conntrack tuples of the live flows pinned to uplink `index`.
fn pinned_flows(dp: &Datapath, index: usize) -> Result<Vec<conntrack::Tuple>, BpfError> {
    let want = index as u8 + 1;
    Ok(dp
        .flows()?
        .into_iter()
        .filter(|(_, f)| f.uplink == want)
        .map(|(k, _)| tuple_of(&k))
        .collect())
}

fn tuple_of(k: &FlowKey) -> conntrack::Tuple {
    let addr = |b: [u8; 16]| -> IpAddr {
        let v6 = Ipv6Addr::from(b);
        match (k.family, v6.to_ipv4_mapped()) {
            (4, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6),
        }
    };
    conntrack::Tuple {
        src: addr(k.client),
        dst: addr(k.remote),
        proto: k.proto,
        sport: u16::from_be(k.client_port),
        dport: u16::from_be(k.remote_port),
    }
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}
