//! The health task of one uplink: runs probe rounds on schedule, feeds the state machine
//! with rounds, late replies, link events and passive evidence, and reports.
//!
//! Rounds start on the clock, not after the previous one finished: with a timeout that
//! has grown past the interval (a slow link), several rounds are in flight at once, and
//! results still reach the state machine in round order (the prober keeps it). If the
//! task falls behind (a stalled runtime), it skips the missed rounds rather than sending
//! a burst. A report goes out on every state change and every [`SNAPSHOT_INTERVAL`].

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::health::{HealthFigures, HealthMachine, HealthParams, LinkEvent, Transition};
use super::probe::{ProbeCounters, ProbeEvent, Prober};

/// How often a report is sent without a state change.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(5);

/// What the rest of the daemon tells the health task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkInput {
    /// From the netlink link/address watch.
    Link(LinkEvent),
    /// Whether flows are pinned to this uplink (a metered one is probed slowly when not).
    CarryingFlows(bool),
    /// The datapath saw a packet arrive on this uplink at this time.
    Passive(Instant),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReportKind {
    Transition(Transition),
    Snapshot,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    pub uplink: String,
    pub at: Instant,
    pub kind: ReportKind,
    pub figures: HealthFigures,
    pub probes: ProbeCounters,
}

/// Runs until `shutdown` turns true (or its sender is dropped) or `reports` is closed.
/// The machine starts `Unknown` (carrier assumed up): the caller sends
/// `Link(CarrierDown)` first if it is not.
pub async fn run(
    uplink: String,
    params: HealthParams,
    mut prober: Prober,
    mut inputs: mpsc::Receiver<UplinkInput>,
    mut shutdown: watch::Receiver<bool>,
    reports: mpsc::Sender<HealthReport>,
) {
    let mut machine = HealthMachine::new(params, Instant::now(), true);
    let mut next_round = tokio::time::Instant::now();
    let mut next_snapshot = tokio::time::Instant::now() + SNAPSHOT_INTERVAL;
    let mut inputs_open = true;
    let report = |machine: &HealthMachine, prober: &Prober, kind: ReportKind| HealthReport {
        uplink: uplink.clone(),
        at: Instant::now(),
        kind,
        figures: machine.figures(),
        probes: prober.counters(),
    };
    if *shutdown.borrow() {
        return;
    }
    loop {
        let transition = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                None
            }
            _ = tokio::time::sleep_until(next_round) => {
                prober.start_round(machine.probe_timeout());
                let now = tokio::time::Instant::now();
                next_round += machine.round_interval();
                if next_round <= now {
                    next_round = now + machine.round_interval();
                }
                None
            }
            _ = tokio::time::sleep_until(next_snapshot) => {
                next_snapshot += SNAPSHOT_INTERVAL;
                // A slow consumer loses snapshots, never transitions.
                let _ = reports.try_send(report(&machine, &prober, ReportKind::Snapshot));
                None
            }
            event = prober.next_event() => match event {
                ProbeEvent::Round(r) => machine.on_round(Instant::now(), &r.outcome()),
                ProbeEvent::Late(l) => {
                    machine.on_late_reply(Instant::now(), l.rtt, l.bytes_received);
                    None
                }
            },
            input = inputs.recv(), if inputs_open => match input {
                None => {
                    inputs_open = false;
                    None
                }
                Some(UplinkInput::Link(e)) => machine.on_link(Instant::now(), e),
                Some(UplinkInput::Passive(at)) => {
                    machine.on_passive(at);
                    None
                }
                Some(UplinkInput::CarryingFlows(carrying)) => {
                    let was = machine.round_interval();
                    machine.set_carrying_flows(carrying);
                    if machine.round_interval() < was {
                        // Leaving standby (failover onto this link): probe at once.
                        next_round = tokio::time::Instant::now();
                    }
                    None
                }
            },
        };
        if let Some(t) = transition {
            tracing::info!(uplink = %uplink, from = %t.from, to = %t.to, reason = %t.reason, "uplink health");
            if reports
                .send(report(&machine, &prober, ReportKind::Transition(t)))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
