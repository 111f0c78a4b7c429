//! Uplink health: a pure, deterministic state machine. Time is passed in, nothing here
//! sends, sleeps or reads a clock, so every rule below is unit-tested in simulated time.
//!
//! # States
//! - `Unknown` — carrier is up but there is no evidence yet (daemon start). The first
//!   answered round makes it `Up` at once, without the hold: the hold protects against a
//!   link that has just *failed*, and at start there is no failure to distrust. So a
//!   healthy primary is usable one RTT after start (fast start), and nothing is ever
//!   declared `Down` on a guess (no false failover at start). `down_after` unanswered
//!   rounds make it `Down`, exactly as for a blackout. The orchestrator steers only to
//!   `Up` links; `Unknown` lasts at most `down_after` rounds.
//! - `Up`, `Down`.
//!
//! # Inputs
//! - **Probe rounds** ([`RoundOutcome`]): one probe to each target; a round is good if
//!   *any* target answered in time, so one dead target never fails a link.
//! - **Link events** ([`LinkEvent`]): carrier loss or the removal of the uplink's address
//!   make it `Down` at once, bypassing the counters. While the link is not usable, rounds
//!   are ignored. Carrier (and address) back: good rounds start counting from zero and
//!   the ordinary hold applies.
//! - **Late replies**: a reply to a round already counted lost (the caller's prober
//!   recognises it by ICMP id/seq, DNS id, or connect attempt) resets the miss count and
//!   feeds the RTT estimator. This is what keeps a sudden latency rise from failing a
//!   link: e.g. RTT jumping from 10 ms to 800 ms with a 300 ms interval: the first two
//!   rounds time out, the 800 ms reply of the first one arrives before the third timeout,
//!   the counter goes back to zero and the timeout has grown past 800 ms.
//! - **Passive evidence** ([`HealthMachine::on_passive`]): the time the datapath last saw
//!   a packet arrive on this uplink. It counts only when *fresh*: received after the
//!   probes of the round being judged were sent. Packets that were queued or in flight
//!   before a blackout therefore never count, and in a two-way blackout nothing fresh
//!   arrives, so detection time is unchanged. Fresh evidence is *neutral*, never good: a
//!   round whose probes were all lost but which saw fresh inbound traffic neither adds a
//!   miss nor counts towards coming up, and at most `passive_max_rounds` consecutive
//!   rounds can be covered this way. Reasons: inbound traffic alone does not prove the
//!   upstream direction works (servers keep retransmitting into a link whose upstream
//!   died, so inbound-only evidence is the signature of a one-way failure), and a link
//!   that is Down must prove itself with answers to our own probes. So passive evidence
//!   rides out a short burst of probe loss on a busy link (probes dropped in a full
//!   queue) and delays the detection of a one-way failure by at most
//!   `passive_max_rounds` rounds (3 × 300 ms by default).
//!
//! # Thresholds and timeouts
//! `Down` after `down_after` consecutive lost rounds, `Up` after `up_after` consecutive
//! good rounds (the hold: 100 × 300 ms = 30 s). A probe is lost only when no reply comes
//! within [`HealthMachine::probe_timeout`] = clamp(3·srtt + 4·rttvar, max(interval,
//! probe_timeout_min), probe_timeout_max); before the first RTT sample it is
//! `probe_timeout_initial` (1 s, as RFC 6298's initial RTO). Latency alone never fails a
//! link while it stays under the timeout cap (3 s) when it rises gradually, and under
//! about `down_after × interval` (0.9 s) when it jumps in one step; above that, a
//! latency step cannot be told from a blackout within the blackout budget.
//!
//! **Blackout detection** with interval 300 ms, down_after 3 and a small RTT (timeout =
//! interval): the three lost rounds are judged 300 ms after each is sent, so `Down`
//! comes between (down_after − 1)·interval + timeout = 0.9 s (blackout just before a
//! round is sent) and down_after·interval + timeout = 1.2 s (just after a round was
//! answered) after the blackout starts, plus the caller's scheduling. Tested below.
//!
//! # Flap damping
//! Each time the link goes `Down` within `damping_window` (5 min) of its last `Up`, the
//! damping factor doubles (capped at `max_damping_factor`, 16 → an 8 min hold); a `Down`
//! after a longer `Up` resets it to 1. While the factor is above 1 the link needs
//! `up_after × factor` good rounds *and* may not come `Up` before `damping_window` has
//! passed since its previous `Up`. Hence any two `Up` transitions are at least
//! `damping_window` apart (after a flap by that rule; after a stable period because the
//! link was `Up` for at least the window), so in a span T there are at most
//! ⌊T / window⌋ + 1 `Up` transitions, counting the start, and as many failovers
//! (`Up → Down`): at most one Down→Up→Down cycle per window under any loss pattern.
//!
//! # Metered standby
//! A metered uplink that carries no flows (the caller says so) is probed every
//! `standby_interval` (60 s) instead of `interval`. Good rounds are weighed by the
//! interval in effect, so the hold is a time (up_after × interval × factor): on standby
//! one clean round is 60 s of clean health and satisfies the 30 s hold. Down detection
//! on standby takes `down_after` standby rounds (3 min); the monitor probes at once and
//! at the full rate as soon as flows are put on the uplink.
//!
//! Bytes per 30-day month of an idle metered standby at the defaults (60 s, two targets,
//! IP level, both directions; [`standby_bytes_per_month`], asserted in the tests from the
//! prober's real packet sizes): two ICMPv4 targets 144 B/round → 6.2 MB; two ICMPv6
//! targets 224 B/round → 9.7 MB; both within the 10 MB budget. A TCP target costs a
//! handshake (212 B over IPv4, 292 B over IPv6) and a DNS target up to ~600 B, which at
//! 60 s would exceed the budget: use ICMP targets on metered uplinks, or set the standby
//! interval from [`standby_interval_for_budget`] with
//! `probe::round_bytes_upper_bound(&targets)`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::config::Health as HealthConfig;

/// Defaults for what the config does not (yet) say.
pub const DEFAULT_STANDBY_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_DAMPING_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_DAMPING_FACTOR: u32 = 16;
pub const DEFAULT_PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(3);
pub const DEFAULT_PROBE_TIMEOUT_INITIAL: Duration = Duration::from_secs(1);
pub const DEFAULT_PASSIVE_MAX_ROUNDS: u32 = 3;
pub const DEFAULT_LOSS_WINDOW: usize = 100;
pub const DEFAULT_HISTORY_LEN: usize = 32;
/// Seconds in the 30-day month the probe byte budget is counted over.
pub const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// Everything the state machine needs to know, in one plain struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthParams {
    /// Round interval while the uplink is active (or not metered).
    pub interval: Duration,
    pub down_after: u32,
    pub up_after: u32,
    pub metered: bool,
    /// Round interval of a metered uplink that carries no flows.
    pub standby_interval: Duration,
    pub damping_window: Duration,
    pub max_damping_factor: u32,
    /// The probe timeout never goes below max(interval, this).
    pub probe_timeout_min: Duration,
    pub probe_timeout_max: Duration,
    /// Timeout before the first RTT sample.
    pub probe_timeout_initial: Duration,
    /// Consecutive all-lost rounds that fresh passive evidence may cover.
    pub passive_max_rounds: u32,
    /// Rounds in the loss-ratio window.
    pub loss_window: usize,
    /// Transitions kept in the history.
    pub history_len: usize,
}

impl HealthParams {
    /// The config's figures plus defaults for everything it does not have yet.
    pub fn from_config(health: &HealthConfig, metered: bool) -> HealthParams {
        HealthParams {
            interval: health.interval,
            down_after: health.down_after.max(1),
            up_after: health.up_after.max(1),
            metered,
            ..HealthParams::default()
        }
    }

    fn active_interval_ms(&self) -> u64 {
        (self.interval.as_millis() as u64).max(1)
    }
}

impl Default for HealthParams {
    /// The config defaults (300 ms, 3, 100) and the defaults above.
    fn default() -> HealthParams {
        HealthParams {
            interval: Duration::from_millis(300),
            down_after: 3,
            up_after: 100,
            metered: false,
            standby_interval: DEFAULT_STANDBY_INTERVAL,
            damping_window: DEFAULT_DAMPING_WINDOW,
            max_damping_factor: DEFAULT_MAX_DAMPING_FACTOR,
            probe_timeout_min: DEFAULT_PROBE_TIMEOUT_MIN,
            probe_timeout_max: DEFAULT_PROBE_TIMEOUT_MAX,
            probe_timeout_initial: DEFAULT_PROBE_TIMEOUT_INITIAL,
            passive_max_rounds: DEFAULT_PASSIVE_MAX_ROUNDS,
            loss_window: DEFAULT_LOSS_WINDOW,
            history_len: DEFAULT_HISTORY_LEN,
        }
    }
}

/// Probe bytes (IP level, both directions) per 30-day month of an idle metered standby
/// that sends `bytes_per_round` per round, every `standby_interval`.
pub fn standby_bytes_per_month(params: &HealthParams, bytes_per_round: u64) -> u64 {
    let rounds = MONTH.as_millis() / params.standby_interval.as_millis().max(1);
    rounds as u64 * bytes_per_round
}

/// The shortest standby interval (whole seconds, at least the default 60 s) that keeps
/// an idle metered standby sending `bytes_per_round` under `budget_per_month` bytes.
pub fn standby_interval_for_budget(bytes_per_round: u64, budget_per_month: u64) -> Duration {
    let month = MONTH.as_secs();
    let secs = (month * bytes_per_round).div_ceil(budget_per_month.max(1));
    Duration::from_secs(secs).max(DEFAULT_STANDBY_INTERVAL)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Unknown,
    Up,
    Down,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
        })
    }
}

/// Why a transition happened; `Display` gives the operator's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    CarrierDown,
    AddressRemoved,
    /// `n` consecutive rounds without an answer.
    RoundsLost(u32),
    /// `n` consecutive good rounds (the hold, times the damping factor).
    RoundsGood(u32),
    /// First answer after start.
    FirstAnswer,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::CarrierDown => f.write_str("carrier down"),
            Reason::AddressRemoved => f.write_str("address removed"),
            Reason::RoundsLost(n) => write!(f, "{n} probe rounds lost"),
            Reason::RoundsGood(n) => write!(f, "{n} good rounds"),
            Reason::FirstAnswer => f.write_str("first probe answered"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub at: Instant,
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// Link-layer facts from netlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    CarrierUp,
    CarrierDown,
    /// The uplink's (last) address was added back / removed.
    AddressAdded,
    AddressRemoved,
}

/// One finished probe round, as the state machine sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// When the round's probes were sent (passive evidence must be newer).
    pub started: Option<Instant>,
    /// Any target answered within the timeout.
    pub answered: bool,
    /// RTTs of the timely answers.
    pub rtts: Vec<Duration>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// Figures for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthFigures {
    pub state: State,
    pub since: Instant,
    /// Rounds without a timely answer over the last `loss_window` rounds.
    pub loss_ratio: f64,
    pub rounds_in_window: usize,
    pub srtt: Option<Duration>,
    pub rttvar: Option<Duration>,
    pub probe_timeout: Duration,
    pub round_interval: Duration,
    pub consecutive_lost: u32,
    pub consecutive_good: u32,
    /// Good rounds (at the active interval) needed before the next `Up`.
    pub required_good_rounds: u32,
    pub damping_factor: u32,
    pub rounds: u64,
    pub late_replies: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub history: Vec<Transition>,
}

#[derive(Debug, Clone)]
pub struct HealthMachine {
    p: HealthParams,
    state: State,
    since: Instant,
    carrier: bool,
    address: bool,
    carrying_flows: bool,
    lost_streak: u32,
    good_streak: u32,
    /// Clean time (ms) accumulated by the current good streak, each round weighed by the
    /// interval in effect.
    good_ms: u64,
    passive_covered: u32,
    last_rx: Option<Instant>,
    srtt_us: Option<u64>,
    rttvar_us: u64,
    damping: u32,
    last_up: Option<Instant>,
    window: VecDeque<bool>,
    rounds: u64,
    late: u64,
    bytes_sent: u64,
    bytes_received: u64,
    history: VecDeque<Transition>,
}

impl HealthMachine {
    /// A new machine: `Unknown` when the carrier is up, `Down` otherwise.
    pub fn new(params: HealthParams, now: Instant, carrier_up: bool) -> HealthMachine {
        HealthMachine {
            state: if carrier_up {
                State::Unknown
            } else {
                State::Down
            },
            since: now,
            carrier: carrier_up,
            address: true,
            carrying_flows: false,
            lost_streak: 0,
            good_streak: 0,
            good_ms: 0,
            passive_covered: 0,
            last_rx: None,
            srtt_us: None,
            rttvar_us: 0,
            damping: 1,
            last_up: None,
            window: VecDeque::with_capacity(params.loss_window),
            rounds: 0,
            late: 0,
            bytes_sent: 0,
            bytes_received: 0,
            history: VecDeque::with_capacity(params.history_len),
            p: params,
        }
    }

    pub fn params(&self) -> &HealthParams {
        &self.p
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    fn link_usable(&self) -> bool {
        self.carrier && self.address
    }

    /// The caller tells whether flows are pinned to this uplink (standby interval).
    pub fn set_carrying_flows(&mut self, carrying: bool) {
        self.carrying_flows = carrying;
    }

    pub fn carrying_flows(&self) -> bool {
        self.carrying_flows
    }

    /// Interval until the next round: `standby_interval` for an idle metered uplink.
    pub fn round_interval(&self) -> Duration {
        if self.p.metered && !self.carrying_flows {
            self.p.standby_interval
        } else {
            self.p.interval
        }
    }

    /// How long a probe sent now may take before it counts as lost.
    pub fn probe_timeout(&self) -> Duration {
        let floor = self.p.interval.max(self.p.probe_timeout_min);
        let cap = self.p.probe_timeout_max.max(floor);
        match self.srtt_us {
            None => self.p.probe_timeout_initial.clamp(floor, cap),
            Some(srtt) => Duration::from_micros(3 * srtt + 4 * self.rttvar_us).clamp(floor, cap),
        }
    }

    /// Good rounds at the active interval needed for the next `Up` from `Down`.
    pub fn required_good_rounds(&self) -> u32 {
        self.p.up_after.saturating_mul(self.damping)
    }

    fn required_good_ms(&self) -> u64 {
        self.required_good_rounds() as u64 * self.p.active_interval_ms()
    }

    /// RFC 6298 estimator (alpha 1/8, beta 1/4).
    fn rtt_sample(&mut self, rtt: Duration) {
        let r = rtt.as_micros() as u64;
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(s) => {
                self.rttvar_us = (3 * self.rttvar_us + s.abs_diff(r)) / 4;
                self.srtt_us = Some((7 * s + r) / 8);
            }
        }
    }

    fn transition(&mut self, now: Instant, to: State, reason: Reason) -> Option<Transition> {
        if self.state == to {
            return None;
        }
        let t = Transition {
            at: now,
            from: self.state,
            to,
            reason,
        };
        match to {
            State::Down => {
                let flapped = self
                    .last_up
                    .is_some_and(|up| now.saturating_duration_since(up) < self.p.damping_window);
                self.damping = if flapped {
                    (self.damping.saturating_mul(2)).min(self.p.max_damping_factor.max(1))
                } else {
                    1
                };
            }
            // Only a return from Down is a failback that damping spaces out; the
            // first Up after start is not, or a failure in the first minutes would
            // keep the primary out for the rest of the damping window.
            State::Up if self.state == State::Down => self.last_up = Some(now),
            State::Up | State::Unknown => {}
        }
        self.state = to;
        self.since = now;
        self.lost_streak = 0;
        self.good_streak = 0;
        self.good_ms = 0;
        self.passive_covered = 0;
        if self.history.len() == self.p.history_len.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(t);
        Some(t)
    }

    /// Carrier and address events act at once.
    pub fn on_link(&mut self, now: Instant, event: LinkEvent) -> Option<Transition> {
        match event {
            LinkEvent::CarrierDown => {
                self.carrier = false;
                self.transition(now, State::Down, Reason::CarrierDown)
            }
            LinkEvent::AddressRemoved => {
                self.address = false;
                self.transition(now, State::Down, Reason::AddressRemoved)
            }
            LinkEvent::CarrierUp | LinkEvent::AddressAdded => {
                if event == LinkEvent::CarrierUp {
                    self.carrier = true;
                } else {
                    self.address = true;
                }
                // Start counting afresh; the hold applies as after any Down.
                self.lost_streak = 0;
                self.good_streak = 0;
                self.good_ms = 0;
                self.passive_covered = 0;
                None
            }
        }
    }

    /// The datapath saw a packet arrive on this uplink at `rx_at`.
    pub fn on_passive(&mut self, rx_at: Instant) {
        if self.last_rx.is_none_or(|t| rx_at > t) {
            self.last_rx = Some(rx_at);
        }
    }

    /// A reply to a round already counted lost: the link is alive, only slow.
    pub fn on_late_reply(&mut self, _now: Instant, rtt: Duration, bytes_received: u64) {
        self.late += 1;
        self.bytes_received += bytes_received;
        self.rtt_sample(rtt);
        self.lost_streak = 0;
    }

    /// A finished round, fed in round order.
    pub fn on_round(&mut self, now: Instant, round: &RoundOutcome) -> Option<Transition> {
        self.rounds += 1;
        self.bytes_sent += round.bytes_sent;
        self.bytes_received += round.bytes_received;
        for &rtt in &round.rtts {
            self.rtt_sample(rtt);
        }
        if self.window.len() == self.p.loss_window.max(1) {
            self.window.pop_front();
        }
        self.window.push_back(!round.answered);

        if !self.link_usable() {
            return None;
        }
        if round.answered {
            self.lost_streak = 0;
            self.passive_covered = 0;
            self.good_streak = self.good_streak.saturating_add(1);
            self.good_ms += self.round_interval().as_millis() as u64;
            return match self.state {
                State::Up => None,
                State::Unknown => self.transition(now, State::Up, Reason::FirstAnswer),
                State::Down => {
                    let damped_gate = self.damping == 1
                        || self.last_up.is_none_or(|up| {
                            now.saturating_duration_since(up) >= self.p.damping_window
                        });
                    if self.good_ms >= self.required_good_ms() && damped_gate {
                        let n = self.good_streak;
                        self.transition(now, State::Up, Reason::RoundsGood(n))
                    } else {
                        None
                    }
                }
            };
        }

        self.good_streak = 0;
        self.good_ms = 0;
        let fresh = match (self.last_rx, round.started) {
            (Some(rx), Some(started)) => rx >= started,
            _ => false,
        };
        if fresh && self.state == State::Up && self.passive_covered < self.p.passive_max_rounds {
            self.passive_covered += 1;
            return None;
        }
        self.lost_streak = self.lost_streak.saturating_add(1);
        if self.state != State::Down && self.lost_streak >= self.p.down_after {
            let n = self.lost_streak;
            return self.transition(now, State::Down, Reason::RoundsLost(n));
        }
        None
    }

    pub fn figures(&self) -> HealthFigures {
        let lost = self.window.iter().filter(|&&l| l).count();
        HealthFigures {
            state: self.state,
            since: self.since,
            loss_ratio: if self.window.is_empty() {
                0.0
            } else {
                lost as f64 / self.window.len() as f64
            },
            rounds_in_window: self.window.len(),
            srtt: self.srtt_us.map(Duration::from_micros),
            rttvar: self.srtt_us.map(|_| Duration::from_micros(self.rttvar_us)),
            probe_timeout: self.probe_timeout(),
            round_interval: self.round_interval(),
            consecutive_lost: self.lost_streak,
            consecutive_good: self.good_streak,
            required_good_rounds: self.required_good_rounds(),
            damping_factor: self.damping,
            rounds: self.rounds,
            late_replies: self.late,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            history: self.history.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests;
