//! State-machine tests in simulated time. The simulator sends a round every
//! `round_interval()`, asks a scenario what each probe does (answered after an RTT, or
//! lost), judges the round at the first of "all answered" and the probe timeout in force
//! when it was sent, feeds rounds in order and late replies when they arrive — the same
//! contract the prober and monitor keep.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// splitmix64: a small seeded generator, so the random patterns are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[derive(Debug)]
enum Ev {
    Send,
    Done { round: u64, outcome: RoundOutcome },
    Late { rtt: Duration },
    Link(LinkEvent),
    Passive(u64),
}

struct Sim {
    m: HealthMachine,
    t0: Instant,
    transitions: Vec<Transition>,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    last_done: u64,
    next_round: u64,
    next_feed: u64,
    pending: std::collections::BTreeMap<u64, (u64, RoundOutcome)>,
    started: bool,
}

/// What a probe does: `Some(rtt)` if a reply comes back after `rtt`, `None` if lost.
type Scenario<'a> = dyn FnMut(u64 /*send ms*/, usize /*target*/) -> Option<u64> + 'a;

impl Sim {
    fn new(params: HealthParams) -> Sim {
        let t0 = Instant::now();
        Sim {
            m: HealthMachine::new(params, t0, true),
            t0,
            transitions: Vec::new(),
            heap: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            last_done: 0,
            next_round: 0,
            next_feed: 0,
            pending: Default::default(),
            started: false,
        }
    }

    fn at(&self, t: u64) -> Instant {
        self.t0 + ms(t)
    }

    fn ms_of(&self, i: Instant) -> u64 {
        i.duration_since(self.t0).as_millis() as u64
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.events.push(Some(ev));
        self.heap
            .push(Reverse((t, self.seq, self.events.len() - 1)));
        self.seq += 1;
    }

    fn record(&mut self, t: Option<Transition>) {
        if let Some(t) = t {
            self.transitions.push(t);
        }
    }

    /// Runs until `end_ms` with `targets` probes per round.
    fn run(&mut self, end_ms: u64, targets: usize, scenario: &mut Scenario<'_>) {
        if !self.started {
            self.started = true;
            self.push(0, Ev::Send);
        }
        while let Some(Reverse((t, _, idx))) = self.heap.peek().copied() {
            if t > end_ms {
                break;
            }
            self.heap.pop();
            let ev = self.events[idx].take().expect("event once");
            let now = self.at(t);
            match ev {
                Ev::Send => {
                    let timeout = self.m.probe_timeout().as_millis() as u64;
                    let mut outcome = RoundOutcome {
                        started: Some(now),
                        ..Default::default()
                    };
                    let mut all_in_time = true;
                    let mut slowest = 0;
                    for target in 0..targets {
                        outcome.bytes_sent += 72;
                        match scenario(t, target) {
                            Some(rtt) if rtt <= timeout => {
                                outcome.answered = true;
                                outcome.rtts.push(ms(rtt));
                                outcome.bytes_received += 36;
                                slowest = slowest.max(rtt);
                            }
                            Some(rtt) => {
                                all_in_time = false;
                                self.push(t + rtt, Ev::Late { rtt: ms(rtt) });
                            }
                            None => all_in_time = false,
                        }
                    }
                    let done = if all_in_time {
                        t + slowest
                    } else {
                        t + timeout
                    };
                    let done = done.max(self.last_done);
                    self.last_done = done;
                    let round = self.next_round;
                    self.next_round += 1;
                    self.push(done, Ev::Done { round, outcome });
                    let next = t + self.m.round_interval().as_millis() as u64;
                    self.push(next, Ev::Send);
                }
                Ev::Done { round, outcome } => {
                    self.pending.insert(round, (t, outcome));
                    while let Some((_, o)) = self.pending.remove(&self.next_feed) {
                        self.next_feed += 1;
                        let tr = self.m.on_round(now, &o);
                        self.record(tr);
                    }
                }
                Ev::Late { rtt } => self.m.on_late_reply(now, rtt, 36),
                Ev::Link(e) => {
                    let tr = self.m.on_link(now, e);
                    self.record(tr);
                }
                Ev::Passive(rx) => {
                    let rx = self.at(rx);
                    self.m.on_passive(rx);
                }
            }
        }
    }

    fn downs(&self) -> Vec<u64> {
        self.transitions
            .iter()
            .filter(|t| t.to == State::Down)
            .map(|t| self.ms_of(t.at))
            .collect()
    }

    fn ups(&self) -> Vec<u64> {
        self.transitions
            .iter()
            // Failbacks only: the first Up after start is not a switch back.
            .filter(|t| t.to == State::Up && t.from == State::Down)
            .map(|t| self.ms_of(t.at))
            .collect()
    }

    fn failovers(&self) -> usize {
        self.transitions
            .iter()
            .filter(|t| t.from == State::Up && t.to == State::Down)
            .count()
    }
}

fn defaults() -> HealthParams {
    HealthParams::default()
}

#[test]
fn params_from_config_take_config_figures_and_defaults() {
    let cfg = HealthConfig {
        probes: vec![],
        interval: ms(200),
        down_after: 4,
        up_after: 50,
    };
    let p = HealthParams::from_config(&cfg, true);
    assert_eq!(
        (p.interval, p.down_after, p.up_after, p.metered),
        (ms(200), 4, 50, true)
    );
    assert_eq!(p.standby_interval, Duration::from_secs(60));
    assert_eq!(p.damping_window, Duration::from_secs(300));
}

#[test]
fn starts_unknown_and_is_up_at_the_first_answer() {
    let mut sim = Sim::new(defaults());
    assert_eq!(sim.m.state(), State::Unknown);
    sim.run(1_000, 2, &mut |_, _| Some(5));
    let first_up: Vec<u64> = sim.transitions.iter().filter(|t| t.to == State::Up).map(|t| sim.ms_of(t.at)).collect();
    assert_eq!(first_up, vec![5], "expected Up at the first answer (5 ms)");
    assert!(sim.ups().is_empty(), "the first Up is not a failback");
    assert_eq!(sim.transitions[0].reason, Reason::FirstAnswer);
    let down = HealthMachine::new(defaults(), Instant::now(), false);
    assert_eq!(
        down.state(),
        State::Down,
        "carrier down at start means Down"
    );
}

#[test]
fn dead_link_at_start_is_down_after_down_after_rounds() {
    let mut sim = Sim::new(defaults());
    sim.run(5_000, 2, &mut |_, _| None);
    // No RTT sample yet: the initial timeout (1 s) applies: rounds at 0, 300, 600 are
    // judged at 1000, 1300, 1600.
    assert_eq!(sim.downs(), vec![1_600]);
    assert_eq!(sim.transitions[0].reason, Reason::RoundsLost(3));
    assert_eq!(sim.transitions[0].reason.to_string(), "3 probe rounds lost");
}

/// Detection time of a silent blackout (both targets, everything dropped) starting at
/// every 10 ms offset within a round, RTT 2 ms.
#[test]
fn silent_blackout_is_detected_within_1_3_s() {
    let mut times = Vec::new();
    for offset in (0..300).step_by(10) {
        let start = 60_000 + offset;
        let mut sim = Sim::new(defaults());
        sim.run(start + 10_000, 2, &mut |t, _| {
            if t + 2 < start {
                Some(2)
            } else {
                None
            }
        });
        let downs = sim.downs();
        assert_eq!(downs.len(), 1, "expected one Down, saw {downs:?}");
        times.push(downs[0] - start);
    }
    let (min, max) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
    eprintln!("silent blackout detection: min {min} ms, max {max} ms");
    assert!(
        max <= 1_300,
        "expected detection <= 1.3 s, worst was {max} ms"
    );
    assert!(
        min >= 850,
        "detection faster than 3 rounds ({min} ms) means a bug"
    );
}

#[test]
fn steady_800_ms_latency_never_fails_over() {
    let mut sim = Sim::new(defaults());
    sim.run(30 * 60_000, 2, &mut |_, _| Some(800));
    assert!(
        sim.downs().is_empty(),
        "Down at {:?} with RTT 800 ms",
        sim.downs()
    );
    let f = sim.m.figures();
    assert_eq!(f.state, State::Up);
    assert!(f.probe_timeout > ms(800), "timeout {:?}", f.probe_timeout);
}

#[test]
fn latency_jump_from_10_to_800_ms_never_fails_over() {
    for jump_at in [60_000u64, 60_100, 60_200] {
        let mut sim = Sim::new(defaults());
        sim.run(10 * 60_000, 2, &mut |t, _| {
            Some(if t < jump_at { 10 } else { 800 })
        });
        assert!(
            sim.downs().is_empty(),
            "jump at {jump_at}: Down at {:?}",
            sim.downs()
        );
        assert!(sim.m.figures().late_replies >= 1, "expected late replies");
    }
}

#[test]
fn latency_with_jitter_up_to_1_5_s_never_fails_over_when_it_rises_gradually() {
    let mut rng = Rng(7);
    let mut sim = Sim::new(defaults());
    // RTT ramps from 20 ms to 1.2 s over 2 minutes, with ±300 ms jitter.
    sim.run(20 * 60_000, 2, &mut |t, _| {
        let base = 20 + (t.min(120_000) * 1_180 / 120_000);
        Some(base + rng.next() % 300)
    });
    assert!(sim.downs().is_empty(), "Down at {:?}", sim.downs());
}

#[test]
fn one_dead_target_of_two_never_fails_over() {
    let mut sim = Sim::new(defaults());
    sim.run(10 * 60_000, 2, &mut |_, target| (target == 0).then_some(5));
    assert!(sim.downs().is_empty());
    let f = sim.m.figures();
    assert_eq!(f.state, State::Up);
    assert_eq!(f.loss_ratio, 0.0, "rounds were all answered");
}

#[test]
fn carrier_down_is_immediate_and_carrier_up_waits_for_the_hold() {
    let mut sim = Sim::new(defaults());
    sim.push(10_000, Ev::Link(LinkEvent::CarrierDown));
    sim.push(12_000, Ev::Link(LinkEvent::CarrierUp));
    sim.run(60_000, 2, &mut |_, _| Some(3));
    let downs = sim.downs();
    assert_eq!(downs, vec![10_000], "Down exactly at carrier loss");
    let down = sim
        .transitions
        .iter()
        .find(|t| t.to == State::Down)
        .unwrap();
    assert_eq!(down.reason, Reason::CarrierDown);
    // First round after carrier up is sent at 12 000 ms; the 100th good one is
    // answered 99 × 300 + 3 ms later. The first Up after start is no failback, so
    // this first failure is not damped.
    let ups = sim.ups();
    assert_eq!(ups, vec![12_000 + 99 * 300 + 3], "ups {ups:?}");
    assert_eq!(sim.m.figures().damping_factor, 1);
}

#[test]
fn hold_before_up_is_100_good_rounds_after_a_long_stable_period() {
    let mut sim = Sim::new(defaults());
    // Up from ~0; blackout from 400 s to 405 s (after the 5-min window: no damping).
    sim.run(500_000, 2, &mut |t, _| {
        if (400_000..405_000).contains(&t) {
            None
        } else {
            Some(3)
        }
    });
    let downs = sim.downs();
    let ups = sim.ups();
    assert_eq!(downs.len(), 1);
    assert_eq!(ups.len(), 1, "failbacks {ups:?}");
    let recovered = ups[0];
    // First good round is the one sent at 405 000; the 100th is sent 99 rounds later.
    assert_eq!(recovered, 405_000 + 99 * 300 + 3);
    let up = sim.transitions.last().unwrap();
    assert_eq!(up.reason, Reason::RoundsGood(100));
    assert_eq!(up.reason.to_string(), "100 good rounds");
}

#[test]
fn address_removal_is_immediate() {
    let mut sim = Sim::new(defaults());
    sim.push(5_000, Ev::Link(LinkEvent::AddressRemoved));
    sim.run(8_000, 2, &mut |_, _| Some(3));
    assert_eq!(sim.downs(), vec![5_000]);
    assert_eq!(sim.transitions[1].reason, Reason::AddressRemoved);
    assert_eq!(sim.transitions[1].reason.to_string(), "address removed");
    assert_eq!(
        sim.m.state(),
        State::Down,
        "answers while the address is gone count nothing"
    );
}

#[test]
fn late_reply_resets_the_miss_count() {
    let t0 = Instant::now();
    let mut m = HealthMachine::new(defaults(), t0, true);
    let good = RoundOutcome {
        answered: true,
        rtts: vec![ms(5)],
        ..Default::default()
    };
    let lost = RoundOutcome::default();
    m.on_round(t0, &good);
    m.on_round(t0 + ms(300), &lost);
    m.on_round(t0 + ms(600), &lost);
    assert_eq!(m.figures().consecutive_lost, 2);
    m.on_late_reply(t0 + ms(700), ms(650), 36);
    assert_eq!(m.figures().consecutive_lost, 0);
    assert_eq!(m.on_round(t0 + ms(900), &lost), None);
    assert_eq!(m.state(), State::Up);
}

/// Checks the damping bound on one transition record: consecutive Ups at least a
/// window apart, and failovers <= floor(T / window) + 2.
fn assert_damping_bound(sim: &Sim, span_ms: u64, what: &str) {
    let window = sim.m.params().damping_window.as_millis() as u64;
    let ups = sim.ups();
    for pair in ups.windows(2) {
        assert!(
            pair[1] - pair[0] >= window,
            "{what}: Ups at {} and {} ms are closer than the damping window",
            pair[0],
            pair[1]
        );
    }
    // Failbacks are a window apart; each failover but the first follows one.
    let bound = (span_ms / window) as usize + 2;
    let failovers = sim.failovers();
    eprintln!(
        "{what}: {failovers} failovers, {} ups in {} min (bound {bound})",
        ups.len(),
        span_ms / 60_000
    );
    assert!(
        failovers <= bound,
        "{what}: expected at most {bound} failovers, saw {failovers}"
    );
}

const HALF_HOUR: u64 = 30 * 60_000;

#[test]
fn flap_damping_bounds_failovers_under_random_loss() {
    for (seed, p) in [(1u64, 0.3), (2, 0.5)] {
        // Independent loss per probe, two targets.
        let mut rng = Rng(seed);
        let mut sim = Sim::new(defaults());
        sim.run(HALF_HOUR, 2, &mut |_, _| (!rng.chance(p)).then_some(5));
        assert_damping_bound(&sim, HALF_HOUR, &format!("per-probe loss {p}"));
        // The whole round lost together (loss on the link itself).
        let mut rng = Rng(seed + 100);
        let mut sim = Sim::new(defaults());
        let mut round_lost = (0u64, false);
        sim.run(HALF_HOUR, 2, &mut |t, _| {
            if round_lost.0 != t + 1 {
                round_lost = (t + 1, rng.chance(p));
            }
            (!round_lost.1).then_some(5)
        });
        assert_damping_bound(&sim, HALF_HOUR, &format!("per-round loss {p}"));
        assert!(sim.failovers() >= 1, "loss {p} must take the link down");
    }
}

#[test]
fn flap_damping_bounds_failovers_under_intermittent_outages() {
    for (seed, p) in [(3u64, 0.3), (4, 0.5)] {
        // Each 10 s slot is an outage with probability p: a link that keeps coming back
        // long enough for the hold, then failing again — what damping is for.
        let mut rng = Rng(seed);
        let mut slots = Vec::new();
        for _ in 0..(HALF_HOUR / 10_000 + 1) {
            slots.push(rng.chance(p / 4.0));
        }
        let mut sim = Sim::new(defaults());
        sim.run(HALF_HOUR, 2, &mut |t, _| {
            (!slots[(t / 10_000) as usize]).then_some(5)
        });
        assert_damping_bound(&sim, HALF_HOUR, &format!("random outages {p}"));
    }
    // Deterministic worst case: a 2 s outage every 35 s (the hold is 30 s). Undamped
    // this would be 51 failovers in 30 minutes.
    let mut sim = Sim::new(defaults());
    sim.run(HALF_HOUR, 2, &mut |t, _| (t % 35_000 >= 2_000).then_some(5));
    assert_damping_bound(&sim, HALF_HOUR, "2 s outage every 35 s");
    assert!(
        sim.m.figures().damping_factor > 1,
        "damping must have grown"
    );
    // A 2 s outage every 4 minutes: each return is held longer and later.
    let mut sim = Sim::new(defaults());
    sim.run(HALF_HOUR, 2, &mut |t, _| {
        (t % 240_000 >= 2_000 || t < 10_000).then_some(5)
    });
    assert_damping_bound(&sim, HALF_HOUR, "2 s outage every 4 min");
    assert!(
        sim.failovers() >= 2,
        "expected the link to flap at least twice"
    );
}

#[test]
fn damping_resets_after_a_stable_up_period() {
    let mut sim = Sim::new(defaults());
    // Outages at 100 s (flap relative to start), then at 1000 s, long after.
    sim.run(1_100_000, 2, &mut |t, _| {
        let out = (100_000..102_000).contains(&t) || (1_000_000..1_002_000).contains(&t);
        (!out).then_some(5)
    });
    let ups = sim.ups();
    assert_eq!(sim.failovers(), 2);
    // After the second outage (Up had lasted > window) the hold is 100 rounds again.
    assert_eq!(
        *ups.last().unwrap(),
        1_002_000 + 99 * 300 + 5,
        "ups {ups:?}"
    );
    assert_eq!(sim.m.figures().damping_factor, 1);
}

#[test]
fn fresh_passive_evidence_covers_a_few_lost_rounds_only() {
    let mut sim = Sim::new(defaults());
    // Probes lost from 60 s; inbound traffic keeps arriving every 50 ms (a one-way
    // failure: the server keeps sending).
    for t in (60_000..70_000).step_by(50) {
        sim.push(t, Ev::Passive(t));
    }
    sim.run(70_000, 2, &mut |t, _| (t < 60_000).then_some(2));
    let downs = sim.downs();
    assert_eq!(downs.len(), 1);
    let detect = downs[0] - 60_000;
    eprintln!("one-way failure with inbound traffic detected after {detect} ms");
    // Rounds sent at 60 000..: 3 covered, the next 3 count: judged 300 ms after the
    // sixth is sent.
    assert_eq!(detect, 5 * 300 + 300);
}

#[test]
fn stale_passive_evidence_does_not_hide_a_blackout() {
    let mut sim = Sim::new(defaults());
    // Packets arrive until the blackout starts (and some "arrive" in the same ms):
    // nothing after the first lost round was sent.
    for t in (0..=60_000).step_by(50) {
        sim.push(t, Ev::Passive(t));
    }
    sim.run(70_000, 2, &mut |t, _| (t < 60_000).then_some(2));
    let downs = sim.downs();
    assert_eq!(downs.len(), 1);
    // Round at 60 000 saw a packet at 60 000 (>= its start), so it is covered; the
    // others are not.
    let detect = downs[0] - 60_000;
    assert!(
        detect <= 1_300,
        "stale evidence delayed detection to {detect} ms"
    );
}

#[test]
fn passive_evidence_never_brings_a_link_up() {
    let t0 = Instant::now();
    let mut m = HealthMachine::new(defaults(), t0, false);
    m.on_link(t0, LinkEvent::CarrierUp);
    for i in 0..500u64 {
        let now = t0 + ms(300 * i);
        m.on_passive(now + ms(1));
        m.on_round(
            now + ms(300),
            &RoundOutcome {
                started: Some(now),
                ..Default::default()
            },
        );
    }
    assert_eq!(m.state(), State::Down);
}

#[test]
fn metered_standby_slows_rounds_and_the_hold_is_a_time() {
    let params = HealthParams {
        metered: true,
        ..defaults()
    };
    let mut sim = Sim::new(params);
    assert_eq!(sim.m.round_interval(), Duration::from_secs(60));
    sim.m.set_carrying_flows(true);
    assert_eq!(sim.m.round_interval(), ms(300));
    sim.m.set_carrying_flows(false);
    // Dead for the first 10 minutes, then answers.
    sim.run(30 * 60_000, 2, &mut |t, _| (t >= 600_000).then_some(40));
    let downs = sim.downs();
    let ups = sim.ups();
    assert_eq!(downs.len(), 1);
    // Standby rounds at 0, 60, 120 s (initial 1 s timeout): Down at 121 s.
    assert_eq!(downs[0], 121_000);
    // First good standby round (sent at 600 s) is worth 60 s >= the 30 s hold.
    assert_eq!(ups, vec![600_040]);
    assert_eq!(sim.m.figures().round_interval, Duration::from_secs(60));
}

#[test]
fn idle_metered_standby_stays_under_10_mb_a_month() {
    use crate::uplink::probe::icmp_echo_ip_bytes;
    let params = HealthParams {
        metered: true,
        ..defaults()
    };
    let budget = 10_000_000u64;
    for (what, targets) in [
        (
            "two IPv4 ICMP targets",
            [
                IpAddr::from(Ipv4Addr::new(192, 0, 2, 1)),
                Ipv4Addr::new(192, 0, 2, 2).into(),
            ],
        ),
        (
            "two IPv6 ICMP targets",
            [
                IpAddr::from(Ipv6Addr::LOCALHOST),
                Ipv6Addr::UNSPECIFIED.into(),
            ],
        ),
    ] {
        // Request and reply are the same size (the reply echoes the payload).
        let per_round: u64 = targets.iter().map(|&t| 2 * icmp_echo_ip_bytes(t)).sum();
        let month = standby_bytes_per_month(&params, per_round);
        eprintln!("{what}: {per_round} B per round, {month} B per 30-day month");
        assert!(month <= budget, "{what}: {month} B/month exceeds {budget}");
    }
}

#[test]
fn history_is_bounded_and_figures_add_up() {
    let mut sim = Sim::new(HealthParams {
        damping_window: ms(1),
        up_after: 1,
        ..defaults()
    });
    for i in 0..40u64 {
        sim.push(1_000 + i * 2_000, Ev::Link(LinkEvent::CarrierDown));
        sim.push(1_000 + i * 2_000 + 1, Ev::Link(LinkEvent::CarrierUp));
    }
    sim.run(200_000, 2, &mut |_, _| Some(4));
    let f = sim.m.figures();
    assert_eq!(f.history.len(), DEFAULT_HISTORY_LEN);
    assert_eq!(
        sim.transitions.len(),
        81,
        "start, then 40 × (carrier down, up)"
    );
    assert_eq!(f.history.last(), sim.transitions.last());
    assert_eq!(f.history[0], sim.transitions[81 - DEFAULT_HISTORY_LEN]);
    assert_eq!(f.srtt, Some(ms(4)));
    assert_eq!(f.rttvar, Some(Duration::ZERO));
    assert_eq!(f.loss_ratio, 0.0);
    assert_eq!(f.rounds_in_window, DEFAULT_LOSS_WINDOW);
    assert_eq!(f.bytes_sent, f.rounds * 2 * 72);
}

#[test]
fn loss_ratio_counts_the_last_window_of_rounds() {
    let t0 = Instant::now();
    let mut m = HealthMachine::new(defaults(), t0, true);
    for i in 0..200u32 {
        let outcome = RoundOutcome {
            answered: i % 4 != 0,
            rtts: if i % 4 != 0 { vec![ms(10)] } else { vec![] },
            ..Default::default()
        };
        m.on_round(t0 + ms(300 * i as u64), &outcome);
    }
    let f = m.figures();
    assert_eq!(f.rounds_in_window, 100);
    assert!((f.loss_ratio - 0.25).abs() < 1e-9, "loss {}", f.loss_ratio);
    assert_eq!(f.state, State::Up, "isolated losses never fail a link");
}

#[test]
fn standby_interval_for_budget_keeps_tcp_and_dns_targets_in_budget() {
    use crate::uplink::probe::round_bytes_upper_bound;
    use std::net::SocketAddr;
    let budget = 10_000_000u64;
    let targets = [
        crate::config::Probe::Tcp(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 443)),
        crate::config::Probe::Dns(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 53)),
    ];
    let per_round = round_bytes_upper_bound(&targets);
    let at_default = standby_bytes_per_month(&defaults(), per_round);
    assert!(
        at_default > budget,
        "{per_round} B/round: {at_default} B/month at 60 s"
    );
    let interval = standby_interval_for_budget(per_round, budget);
    let params = HealthParams {
        metered: true,
        standby_interval: interval,
        ..defaults()
    };
    let month = standby_bytes_per_month(&params, per_round);
    eprintln!("TCPv6 + DNSv4: {per_round} B/round, standby {interval:?} -> {month} B/month");
    assert!(month <= budget);
    assert!(interval > DEFAULT_STANDBY_INTERVAL);
    // ICMP-only targets keep the default.
    let icmp = [crate::config::Probe::Icmp(Ipv4Addr::LOCALHOST.into()); 2];
    assert_eq!(
        standby_interval_for_budget(round_bytes_upper_bound(&icmp), budget),
        DEFAULT_STANDBY_INTERVAL
    );
}
