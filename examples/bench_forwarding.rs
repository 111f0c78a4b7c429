//! Benchmark: forwarding rate of the lab router for small UDP packets, with inferlane
//! attached (10,000 rules, 100,000 live flows) against the same router with nothing
//! attached and against an nftables ruleset of the same meaning; plus the programs'
//! run time per packet from the kernel's bpf_stats. Run as root:
//!
//!     make bench     # or: cargo run --release --example bench_forwarding -- --write BENCHMARKS.md
//!
//! Method (also written into BENCHMARKS.md):
//! - One lab (`Lab::build`, NAT on as built). trafgen (netsniff-ng), one process pinned
//!   to CPU 0 in the `lan` namespace, sends 64-byte Ethernet frames (IPv4/UDP) to the
//!   router's `lan0` MAC for the whole run, toward the inet server on closed ports
//!   (inet answers with ICMP port unreachables, rate-limited by its kernel), with one
//!   blocking sendto per packet (see `run` for why not its TX_RING).
//!   100,002 distinct 5-tuples: source 10.77.0.2, source ports 10000–60000 and
//!   destination ports 20000–20001 advancing together (coprime periods).
//! - This process, the daemon and every helper command are pinned to the other CPUs, so
//!   CPU 0 carries the generator and the whole packet path (all veth hops run in the
//!   sender's softirq).
//! - Three configurations, alternated A B C per round: A nothing attached, B the daemon
//!   (restarted each round with the generator paused, the flow table warmed to ≥ 100,000
//!   live flows before the window, counted from its map), C an nftables table (prefix set, DSCP, mark, counter; removed after the
//!   round). Each: 1 s settle, then the router's `wan0` tx_packets over the window.
//! - bpf_stats: in each B round, after the rate window, a separate 1 s window with
//!   run-time statistics on (BPF_ENABLE_STATS: the switch behind
//!   kernel.bpf_stats_enabled, held by a file descriptor so the kernel turns it off
//!   again when we exit, however we exit). Kept out of the rate window because the
//!   accounting itself costs two clock reads per program run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use inferlane::lab::scenario::{self, DaemonProcess, WorkDir};
use inferlane::lab::{addr, Lab, LabError, LabOptions, Role};

/// Rules in the daemon's config and prefixes in the nftables set.
const RULES: usize = 10_000;
/// The daemon's flow table (the config default); ≥ 131072 as the issue asks, and
/// large enough that the LRU does not evict before it is full.
const FLOW_TABLE_SIZE: u32 = 262_144;
/// Source ports (inclusive) and destination ports (inclusive) of the generated flows.
/// Both advance by one per packet; the period is lcm(50001, 2) = 100,002 packets,
/// each a distinct 5-tuple. One source address, so NAT keeps the source ports and
/// never runs out of them (each tuple differs in its ports).
const SPORTS: (u16, u16) = (10_000, 60_000);
const DPORTS: (u16, u16) = (20_000, 20_001);
/// Live flows required before a B window.
const MIN_LIVE: u64 = 100_000;
const FRAME_LEN: usize = 64;
const SETTLE: Duration = Duration::from_secs(1);
const PREWARM: Duration = Duration::from_secs(2);
const STATS_WINDOW: Duration = Duration::from_secs(1);
const NFT_TABLE: &str = "inferlane_bench";
/// The CPU trafgen runs on (`--cpus 1` pins its one process to CPU 0).
const GEN_CPU: usize = 0;
const COMMAND: &str = "cargo run --release --example bench_forwarding -- --write BENCHMARKS.md";
const SECTION: &str = "## Forwarding rate";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Args {
    write: Option<String>,
    rounds: usize,
    window: Duration,
    bin: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { write: None, rounds: 5, window: Duration::from_secs(3), bin: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--write" => a.write = Some(value()?),
            "--rounds" => {
                a.rounds = value()?.parse().context("--rounds")?;
                if !(1..=20).contains(&a.rounds) {
                    bail!("--rounds must be 1 to 20");
                }
            }
            "--window" => {
                let s: u64 = value()?.parse().context("--window (seconds)")?;
                if !(1..=10).contains(&s) {
                    bail!("--window must be 1 to 10 seconds");
                }
                a.window = Duration::from_secs(s);
            }
            "--bin" => a.bin = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "bench_forwarding [--write FILE] [--rounds N (5)] [--window SECONDS (3)] [--bin PATH/TO/inferlane]\n\
                     Forwarding rate of the lab router: nothing attached / inferlane / nftables, alternated."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if INTERRUPTED.load(Ordering::SeqCst) {
                ExitCode::from(130)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Small helpers

fn log(start: Instant, msg: impl AsRef<str>) {
    println!("[{:>6.1}s] {}", start.elapsed().as_secs_f64(), msg.as_ref());
}

fn check(deadline: Instant) -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    if Instant::now() > deadline {
        bail!("run time budget exceeded; stopping (everything is torn down)");
    }
    Ok(())
}

fn sleep_checked(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// 1234567.8 → "1,234,568".
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map(|d| ("-", d)).unwrap_or(("", &s));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// Which source the daemon was built from: the commit, and whether the working tree
/// differed from it in the files that make the daemon.
fn tree_state() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let commit = sh("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    if commit.is_empty() {
        return "source tree not under git".into();
    }
    let dirty = sh("git", &["-C", dir, "status", "--porcelain", "--", "src", "ebpf", "build.rs", "Cargo.toml", "Cargo.lock"]);
    let n = dirty.lines().filter(|l| !l.trim().is_empty()).count();
    if n == 0 {
        format!("commit {commit}")
    } else {
        format!("commit {commit} plus uncommitted changes to {n} file(s) of the daemon's source")
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn sh(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn pin_self_off(cpu: usize) -> Result<Vec<usize>> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let current = sched_getaffinity(Pid::from_raw(0)).context("sched_getaffinity")?;
    let mut set = CpuSet::new();
    let mut cpus = Vec::new();
    for c in 0..CpuSet::count() {
        if c != cpu && current.is_set(c).unwrap_or(false) {
            set.set(c).ok();
            cpus.push(c);
        }
    }
    if cpus.is_empty() {
        return Ok(cpus);
    }
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")?;
    Ok(cpus)
}

/// The daemon binary next to this example (target/PROFILE/inferlane), built first when
/// we run under cargo so it is never stale.
fn daemon_binary(args: &Args, start: Instant) -> Result<PathBuf> {
    if let Some(b) = &args.bin {
        if !b.is_file() {
            bail!("--bin {}: no such file", b.display());
        }
        return Ok(b.clone());
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("cannot tell the target directory from {}", exe.display()))?;
    let bin = profile_dir.join("inferlane");
    if let Ok(cargo) = std::env::var("CARGO") {
        let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("release");
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--bin", "inferlane", "--manifest-path", manifest]);
        match profile {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        log(start, format!("building the daemon: {cmd:?}"));
        let status = cmd.status().context("run cargo build")?;
        if !status.success() {
            bail!("cargo build of the daemon failed ({status})");
        }
    }
    if !bin.is_file() {
        bail!("{} not found: run `cargo build --release` first (or pass --bin)", bin.display());
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this benchmark was built without --release");
    }
    Ok(bin)
}

// ---------------------------------------------------------------------------------
// What is measured

/// Router configuration of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Baseline,
    Inferlane,
    Nftables,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Baseline, Setup::Inferlane, Setup::Nftables];
    fn letter(self) -> &'static str {
        match self {
            Setup::Baseline => "A",
            Setup::Inferlane => "B",
            Setup::Nftables => "C",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Setup::Baseline => "nothing attached",
            Setup::Inferlane => "inferlane",
            Setup::Nftables => "nftables",
        }
    }
}

/// CPU time shares of one CPU over a window, from /proc/stat.
#[derive(Clone, Copy, Debug, Default)]
struct CpuShare {
    softirq: f64,
    steal: f64,
}

fn cpu_ticks(cpu: usize) -> Option<[u64; 8]> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).take(8).filter_map(|x| x.parse().ok()).collect();
    v.try_into().ok()
}

fn cpu_share(a: [u64; 8], b: [u64; 8]) -> CpuShare {
    // user nice system idle iowait irq softirq steal
    let d: Vec<f64> = (0..8).map(|i| b[i].saturating_sub(a[i]) as f64).collect();
    let total: f64 = d.iter().sum();
    if total == 0.0 {
        return CpuShare::default();
    }
    CpuShare { softirq: (d[5] + d[6]) / total, steal: d[7] / total }
}

/// Processes whose CPU time is the packet path: everything in the `lan` namespace (the
/// generator; veth runs the whole path in the sender's softirq, which this kernel
/// charges to the task it interrupts, having no IRQ time accounting) and ksoftirqd of
/// the generator's CPU (softirq work the kernel deferred).
fn path_pids(lab: &Lab) -> Vec<i32> {
    let mut pids = lab.ns(Role::Lan).pids().unwrap_or_default();
    let ksoftirqd = format!("ksoftirqd/{GEN_CPU}");
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == ksoftirqd) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Sum of the CPU time (ns, /proc/PID/schedstat) of `pids`, by pid.
fn run_ns(pids: &[i32]) -> BTreeMap<i32, u64> {
    pids.iter()
        .filter_map(|&pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
            Some((pid, s.split_whitespace().next()?.parse().ok()?))
        })
        .collect()
}

/// One rate window.
#[derive(Clone, Copy, Debug)]
struct Window {
    /// Forwarded: the router's wan0 tx_packets per second.
    pps: f64,
    /// Sent by the generator (lan eth0 tx_packets) per second.
    offered_pps: f64,
    /// CPU time the packet path (generator, its softirq work, ksoftirqd) got, per
    /// second of the window: below 1.0 when other work on the machine took CPU 0.
    path_share: f64,
    cpu: CpuShare,
}

/// Counters of `role`'s `ifname` with the time they were read (midpoint of the call).
fn stats_at(lab: &Lab, role: Role, ifname: &str) -> Result<(Instant, inferlane::lab::LinkStats)> {
    let t0 = Instant::now();
    let s = lab.link_stats(role, ifname)?;
    let t1 = Instant::now();
    Ok((t0 + (t1 - t0) / 2, s))
}

fn measure(lab: &Lab, dur: Duration) -> Result<Window> {
    let pids = path_pids(lab);
    let c0 = cpu_ticks(GEN_CPU);
    let r0 = run_ns(&pids);
    let (t0, w0) = stats_at(lab, Role::Router, addr::ROUTER_WAN1_IF)?;
    let (u0, e0) = stats_at(lab, Role::Lan, addr::LAN_IF)?;
    sleep_checked(dur)?;
    let (t1, w1) = stats_at(lab, Role::Router, addr::ROUTER_WAN1_IF)?;
    let r1 = run_ns(&pids);
    let (u1, e1) = stats_at(lab, Role::Lan, addr::LAN_IF)?;
    let c1 = cpu_ticks(GEN_CPU);
    let secs = (t1 - t0).as_secs_f64();
    let forwarded = w1.tx_packets - w0.tx_packets;
    let path_ns: u64 = r1.iter().filter_map(|(pid, ns)| r0.get(pid).map(|n0| ns.saturating_sub(*n0))).sum();
    let path_secs = path_ns as f64 / 1e9;
    Ok(Window {
        pps: forwarded as f64 / secs,
        offered_pps: (e1.tx_packets - e0.tx_packets) as f64 / (u1 - u0).as_secs_f64(),
        path_share: path_secs / secs,
        cpu: match (c0, c1) {
            (Some(a), Some(b)) => cpu_share(a, b),
            _ => CpuShare::default(),
        },
    })
}

/// One program's bpf_stats over the stats window.
#[derive(Clone, Debug)]
struct ProgRun {
    name: String,
    runs: u64,
    run_ns: u64,
}

impl ProgRun {
    fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_ns as f64 / self.runs as f64)
    }
}

/// What a B round saw besides the rate.
#[derive(Clone, Debug, Default)]
struct InferlaneRound {
    xdp_mode: String,
    /// Flow table entries when the window starts, and after the statistics window.
    live: u64,
    live_after: u64,
    table_size: u32,
    /// Flows created from the start of the settle to the end of the stats window.
    created_during: u64,
    /// DSCP rewrites over the packets forwarded in the statistics window.
    rewrite_ratio: f64,
    start_secs: f64,
    warm_secs: f64,
    /// Programs by id.
    progs: BTreeMap<u32, ProgRun>,
    /// Packets forwarded (wan0 tx) during the stats window.
    stats_forwarded: u64,
    stats_pps: f64,
}

#[derive(Clone, Debug)]
struct Round {
    setup: Setup,
    round: usize,
    window: Window,
    inferlane: Option<InferlaneRound>,
    /// C: packets the nft rule matched during the window, over forwarded packets.
    nft_match_ratio: Option<f64>,
}

// ---------------------------------------------------------------------------------
// The three setups

fn daemon_config(socket: &Path) -> String {
    let mut c = format!(
        "# bench_forwarding: {RULES} destination rules, all class interactive.\n{}",
        scenario::lab_config_base(socket, &format!("flow_table_size = {FLOW_TABLE_SIZE}"))
    );
    for p in prefixes() {
        let _ = write!(c, "\n[[rules]]\nclass = \"interactive\"\ndestinations = [\"{p}\"]\n");
    }
    c
}

/// The rule prefixes: 9,999 /24s spread over 10.128.0.0/9 (every other /24, so no two
/// are adjacent and nothing merges), then the lab servers' prefix, which the benchmark
/// traffic matches. None overlaps the LAN (10.77.0.0/24) or the transit networks.
fn prefixes() -> Vec<String> {
    let mut v: Vec<String> = (0..RULES as u32 - 1)
        .map(|i| {
            let n = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + ((i * 2) << 8);
            format!("{}/24", Ipv4Addr::from(n))
        })
        .collect();
    let server_net = addr::network_v4(addr::SERVER_NET_V4);
    v.push(server_net.to_string());
    v
}

/// DSCP and mark the daemon gives the benchmark's flows, from inferlane's own config
/// parser and rule compiler, so the nftables ruleset writes exactly the same values.
fn meaning(config_text: &str) -> Result<(u8, u32)> {
    let config = inferlane::config::parse(config_text, "bench_forwarding.toml")
        .map_err(|e| anyhow!("generated config does not validate: {e}"))?;
    let compiled = inferlane::classify::compile::compile(&config)
        .map_err(|e| anyhow!("generated config does not compile: {e:?}"))?;
    let server_rule = compiled.rules.last().ok_or_else(|| anyhow!("no rules compiled"))?;
    if compiled.rules.len() != RULES {
        bail!("compiled {} rules, expected {RULES}", compiled.rules.len());
    }
    Ok((server_rule.dscp, server_rule.mark))
}

fn nft_ruleset(dscp: u8, mark: u32) -> String {
    let mut s = format!(
        "table ip {NFT_TABLE} {{\n\tset prefixes {{\n\t\ttype ipv4_addr; flags interval;\n\t\telements = {{\n"
    );
    let p = prefixes();
    for (i, pfx) in p.iter().enumerate() {
        let _ = writeln!(s, "\t\t\t{pfx}{}", if i + 1 < p.len() { "," } else { "" });
    }
    let _ = write!(
        s,
        "\t\t}}\n\t}}\n\tchain prerouting {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\t{}\n\t}}\n}}\n",
        nft_rule(dscp, mark)
    );
    s
}

fn nft_rule(dscp: u8, mark: u32) -> String {
    format!(
        "iif \"{}\" ip daddr @prefixes ip dscp set {dscp} meta mark set {mark:#010x} counter",
        addr::ROUTER_LAN_IF
    )
}

fn nft_counter(lab: &Lab) -> Result<u64> {
    let out = lab.run(Role::Router, "nft", &["-t", "-j", "list", "chain", "ip", NFT_TABLE, "prerouting"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
    fn find(v: &serde_json::Value) -> Option<u64> {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(c) = m.get("counter").and_then(|c| c.get("packets")).and_then(|p| p.as_u64()) {
                    return Some(c);
                }
                m.values().find_map(find)
            }
            serde_json::Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&v).ok_or_else(|| anyhow!("no counter in the nft chain"))
}

/// Nothing of ours in the router: no XDP program, no TCX program, no clsact qdisc on
/// its interfaces, no nft table but the lab's. Asked per interface inside the router
/// namespace (not `bpftool link show`, which walks every link on the machine and fails
/// when one disappears under it, as happens while other tests run).
fn assert_bare_router(lab: &Lab) -> Result<()> {
    use aya::programs::{tc::TcAttachType, SchedClassifier};
    let mut found = Vec::new();
    for ifname in [addr::ROUTER_LAN_IF, addr::ROUTER_WAN1_IF, addr::ROUTER_WAN2_IF] {
        let out = lab.run(Role::Router, "ip", &["-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        if !v[0]["xdp"].is_null() {
            found.push(format!("XDP on {ifname}: {}", v[0]["xdp"]));
        }
        let qdiscs = lab.run(Role::Router, "tc", &["qdisc", "show", "dev", ifname])?;
        if qdiscs.contains("clsact") {
            found.push(format!("clsact on {ifname}"));
        }
        for dir in [TcAttachType::Ingress, TcAttachType::Egress] {
            let ids = lab.ns(Role::Router).run_in("query tcx", || {
                SchedClassifier::query_tcx(ifname, dir)
                    .map(|(_, progs)| progs.iter().map(|p| p.id()).collect::<Vec<_>>())
                    .map_err(std::io::Error::other)
            })?;
            if !ids.is_empty() {
                found.push(format!("TCX {dir:?} on {ifname}: programs {ids:?}"));
            }
        }
    }
    let tables = lab.run(Role::Router, "nft", &["list", "tables"])?;
    for l in tables.lines().filter(|l| !l.trim().is_empty() && !l.contains(inferlane::lab::NAT_TABLE)) {
        found.push(format!("nft {l}"));
    }
    if !found.is_empty() {
        bail!("the router is not bare before a baseline/nftables round: {found:?}");
    }
    Ok(())
}

/// `scenario::leftovers`, asked again when a listing itself failed (its `bpftool link
/// show` walks every link on the machine and fails when one vanishes meanwhile).
fn leftovers(lab: &Lab, socket: &Path, ids: &[u32]) -> Vec<String> {
    let mut left = Vec::new();
    for _ in 0..3 {
        left = scenario::leftovers(lab, socket, ids);
        if !left.iter().any(|l| l.starts_with("could not")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    left
}

/// The daemon's kernel objects, found from the router's interfaces rather than through
/// `status`: `status` walks the whole flow table (two syscalls per flow), which took
/// longer than the control client's 5 s timeout here under other load, and the gate
/// before the window must not depend on it. The router is bare before each B round
/// (checked), so whatever is attached now is the daemon's.
struct DaemonObjects {
    /// lan_ingress (XDP), lan_ingress_tc, lan_egress: for the leftovers check.
    lan_ids: Vec<u32>,
    /// Every attached program, uplinks' wan_egress included.
    all_ids: BTreeSet<u32>,
    xdp_mode: String,
    flows: aya::maps::Map,
    flow_stats: aya::maps::Map,
    table_size: u32,
}

fn tcx_ids(lab: &Lab, ifname: &str, dir: aya::programs::tc::TcAttachType) -> Result<Vec<u32>> {
    use aya::programs::SchedClassifier;
    Ok(lab.ns(Role::Router).run_in("query tcx", || {
        SchedClassifier::query_tcx(ifname, dir)
            .map(|(_, progs)| progs.iter().map(|p| p.id()).collect::<Vec<_>>())
            .map_err(std::io::Error::other)
    })?)
}

impl DaemonObjects {
    fn find(lab: &Lab) -> Result<DaemonObjects> {
        use aya::maps::{Map, MapData, MapInfo};
        use aya::programs::tc::TcAttachType;
        let out = lab.run(Role::Router, "ip", &["-j", "link", "show", "dev", addr::ROUTER_LAN_IF])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
        let xdp = &v[0]["xdp"];
        let xdp_id = xdp["prog"]["id"].as_u64().ok_or_else(|| anyhow!("no XDP program on {}: {out}", addr::ROUTER_LAN_IF))? as u32;
        // IFLA_XDP_ATTACHED: 1 driver, 2 generic (skb), 3 offload.
        let xdp_mode = match xdp["mode"].as_u64() {
            Some(1) => "driver (native)",
            Some(2) => "generic (skb)",
            Some(3) => "offload",
            _ => "unknown",
        }
        .to_string();
        let mut lan_ids = vec![xdp_id];
        lan_ids.extend(tcx_ids(lab, addr::ROUTER_LAN_IF, TcAttachType::Ingress)?);
        lan_ids.extend(tcx_ids(lab, addr::ROUTER_LAN_IF, TcAttachType::Egress)?);
        let mut all_ids: BTreeSet<u32> = lan_ids.iter().copied().collect();
        for ifname in [addr::ROUTER_WAN1_IF, addr::ROUTER_WAN2_IF] {
            all_ids.extend(tcx_ids(lab, ifname, TcAttachType::Egress)?);
        }
        let info = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == xdp_id)
            .ok_or_else(|| anyhow!("XDP program {xdp_id} not found"))?;
        let map_ids = info.map_ids().context("map ids of lan_ingress")?.unwrap_or_default();
        let (mut flows, mut flow_stats, mut table_size) = (None, None, 0);
        for id in map_ids {
            let Ok(mi) = MapInfo::from_id(id) else { continue };
            match mi.name_as_str() {
                Some("flows") => {
                    table_size = mi.max_entries();
                    flows = Some(Map::from_map_data(MapData::from_id(id)?)?);
                }
                Some("flow_stats") => flow_stats = Some(Map::from_map_data(MapData::from_id(id)?)?),
                _ => {}
            }
        }
        Ok(DaemonObjects {
            lan_ids,
            all_ids,
            xdp_mode,
            flows: flows.ok_or_else(|| anyhow!("lan_ingress has no map named flows"))?,
            flow_stats: flow_stats.ok_or_else(|| anyhow!("lan_ingress has no map named flow_stats"))?,
            table_size,
        })
    }

    /// Entries in the flow table: what `status` reports as flow_table.live.
    fn live(&self) -> Result<u64> {
        use inferlane::bpf::abi::{Flow, FlowKey};
        let map: aya::maps::HashMap<&aya::maps::MapData, FlowKey, Flow> = aya::maps::HashMap::try_from(&self.flows)?;
        Ok(map.keys().filter(|k| k.is_ok()).count() as u64)
    }

    /// (created, dscp_rewritten), summed over CPUs.
    fn flow_stats(&self) -> Result<(u64, u64)> {
        use inferlane::bpf::abi::FlowStats;
        let array: aya::maps::PerCpuArray<&aya::maps::MapData, FlowStats> = aya::maps::PerCpuArray::try_from(&self.flow_stats)?;
        let values = array.get(&0, 0)?;
        Ok(values.iter().fold((0, 0), |(c, d), v| (c + v.created, d + v.dscp_rewritten)))
    }
}

fn prog_stats(ids: &BTreeSet<u32>) -> BTreeMap<u32, (String, u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| ids.contains(&p.id()))
        .map(|p| {
            let name = p.name_as_str().unwrap_or("?").to_string();
            (p.id(), (name, p.run_time().as_nanos() as u64, p.run_count()))
        })
        .collect()
}

fn wait_live(d: &DaemonObjects, min: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let live = d.live()?;
        if live >= min {
            return Ok(live);
        }
        if Instant::now() >= deadline {
            bail!("flow table has {live} live flows after {timeout:?}, expected ≥ {min}");
        }
        sleep_checked(Duration::from_millis(200))?;
    }
}

// ---------------------------------------------------------------------------------
// The generator

/// trafgen's packet: Ethernet to the router, IPv4/UDP to the inet server, 64 bytes.
fn trafgen_config(router_mac: &str) -> String {
    let payload = FRAME_LEN - 14 - 20 - 8;
    format!(
        "/* bench_forwarding: {FRAME_LEN}-byte frames, {} flows */\n{{\n\
         \teth(da={router_mac}, type=0x0800),\n\
         \tipv4(saddr={src}, daddr={dst}, ttl=64),\n\
         \tudp(sp=dinc({}, {}), dp=dinc({}, {})),\n\
         \tfill(0x00, {payload})\n}}\n",
        flows(),
        SPORTS.0,
        SPORTS.1,
        DPORTS.0,
        DPORTS.1,
        src = addr::LAN_CLIENT_V4.addr,
        dst = addr::SERVER_V4,
    )
}

fn flows() -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let a = u64::from(SPORTS.1 - SPORTS.0) + 1;
    let b = u64::from(DPORTS.1 - DPORTS.0) + 1;
    a / gcd(a, b) * b
}

fn router_mac(lab: &Lab) -> Result<String> {
    let out = lab.run(Role::Router, "ip", &["-j", "link", "show", "dev", addr::ROUTER_LAN_IF])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v[0]["address"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no MAC for {}: {out}", addr::ROUTER_LAN_IF))
}

/// The generator: a lab-owned process (killed at teardown) whose stderr we keep.
struct Generator {
    pid: u32,
    output: Arc<Mutex<String>>,
}

impl Generator {
    fn start(lab: &mut Lab, args: &[&str]) -> Result<Generator> {
        let child = lab.spawn_piped(Role::Lan, "nice", args)?;
        let output = Arc::new(Mutex::new(String::new()));
        for mut pipe in [Box::new(child.stdout) as Box<dyn Read + Send>, Box::new(child.stderr)] {
            let out = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    if o.len() < 16 * 1024 {
                        o.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Ok(Generator { pid: child.pid, output })
    }

    /// Stops the generator's processes (SIGSTOP) until the guard is dropped.
    fn pause(&self, lab: &Lab) -> Result<Paused> {
        let pids = lab.ns(Role::Lan).pids()?;
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP);
        }
        Ok(Paused { pids })
    }

    fn check_alive(&self, lab: &mut Lab) -> Result<()> {
        match lab.wait(self.pid, Duration::ZERO) {
            Err(LabError::Timeout { .. }) => Ok(()),
            Ok(status) => {
                let out = self.output.lock().unwrap_or_else(|p| p.into_inner()).clone();
                bail!("trafgen exited ({status}):\n{out}")
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Resumes the paused generator (SIGCONT) when dropped, also on errors.
struct Paused {
    pids: Vec<i32>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// CPUs the generator's processes may run on (all processes in the lan namespace).
fn generator_cpus(lab: &Lab) -> String {
    let pids = lab.ns(Role::Lan).pids().unwrap_or_default();
    let mut seen = BTreeSet::new();
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if let Some(l) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            seen.insert(format!("{} pid {pid}: CPU {}", comm.trim(), l.split(':').nth(1).unwrap_or("").trim()));
        }
    }
    seen.into_iter().collect::<Vec<_>>().join(", ")
}

// ---------------------------------------------------------------------------------
// The run

struct Env {
    date: String,
    kernel: String,
    cpus: usize,
    loadavg: (String, String),
    tree: String,
    cpu_model: String,
    trafgen: String,
    trafgen_cmd: String,
    trafgen_cfg: String,
    control_cpus: Vec<usize>,
    generator_cpus: String,
    conntrack: u64,
    nft_rule: String,
    rounds: usize,
    window: Duration,
    total: Duration,
}

fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    if !inferlane::lab::is_root() {
        bail!("run as root (network namespaces, eBPF)");
    }
    {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { sigaction(sig, &action) }.context("install signal handler")?;
        }
    }
    // Before any thread or child exists, so all of them inherit it: keep this process,
    // the daemon and every helper off the generator's CPU.
    // SAFETY: sysconf has no preconditions.
    let online_cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0) as usize;
    let control_cpus = pin_self_off(GEN_CPU)?;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    log(start, format!("bench_forwarding {}", argv.join(" ")));
    log(start, format!("as `make bench` runs it: {COMMAND}"));
    if sh("sh", &["-c", "command -v trafgen"]).is_empty() {
        bail!("trafgen not found: install netsniff-ng (`make bench` does)");
    }
    let bin = daemon_binary(args, start)?;
    log(start, format!("daemon binary {}", bin.display()));
    // The budget counts from here: a build of the daemon may have taken any time.
    let budget = Duration::from_secs(45 + (16 + 3 * args.window.as_secs()) * args.rounds as u64);
    let measured_from = Instant::now();
    let deadline = measured_from + budget;
    let load_before = loadavg();
    log(start, format!("run time budget {budget:?}; load average {load_before}"));

    let work = WorkDir::new("bench-fwd")?;
    let config_text = daemon_config(&work.path().join("control.sock"));
    let (dscp, mark) = meaning(&config_text)?;
    let nft_text = nft_ruleset(dscp, mark);
    log(start, format!("{RULES} rules; server flows get DSCP {dscp} and mark {mark:#010x}; {} flows", flows()));
    if flows() < MIN_LIVE {
        bail!("the flow pattern gives only {} flows", flows());
    }

    log(start, "building the lab");
    let mut lab = Lab::build(&LabOptions::default())?;
    log(start, format!("lab {} built", lab.id()));
    let mac = router_mac(&lab)?;
    let tg_cfg = work.path().join("trafgen.cfg");
    std::fs::write(&tg_cfg, trafgen_config(&mac)).context("write trafgen config")?;
    let tg_cfg_s = tg_cfg.display().to_string();
    // nice -20: other work on the machine takes less of the generator's CPU. -t 0: one
    // blocking sendto per packet; the TX_RING's non-blocking flush fails with EAGAIN once
    // veth's XDP ring holds the socket's whole send buffer (B), and trafgen exits. Leave
    // the system's socket memory sysctls and IRQ affinity alone (long options: trafgen
    // 0.6.8 does not accept -A/-Q). -n 0: until stopped (at the end, or by the lab's
    // teardown on any error).
    let tg_args = ["-n", "-20", "trafgen", "--cpus", "1", "--no-sock-mem", "--notouch-irq", "-t", "0", "-n", "0", "-i", tg_cfg_s.as_str(), "-o", addr::LAN_IF];
    let trafgen_cmd = format!("ip netns exec {} nice {}", lab.netns(Role::Lan), tg_args.join(" "));
    log(start, format!("generator: {trafgen_cmd}\n{}", trafgen_config(&mac).trim_end()));
    let generator = Generator::start(&mut lab, &tg_args)?;
    sleep_checked(PREWARM)?;
    generator.check_alive(&mut lab)?;
    let gen_cpus = generator_cpus(&lab);
    let conntrack = lab
        .ns(Role::Router)
        .run_in("read nf_conntrack_count", || std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))?
        .trim()
        .parse::<u64>()
        .unwrap_or(0);
    log(start, format!("warm: {conntrack} conntrack entries in the router; {gen_cpus}; control on CPUs {control_cpus:?}"));

    let mut rounds: Vec<Round> = Vec::new();
    for round in 1..=args.rounds {
        for setup in Setup::ALL {
            check(deadline)?;
            generator.check_alive(&mut lab)?;
            let r = match setup {
                Setup::Baseline => {
                    assert_bare_router(&lab)?;
                    sleep_checked(SETTLE)?;
                    let window = measure(&lab, args.window)?;
                    Round { setup, round, window, inferlane: None, nft_match_ratio: None }
                }
                Setup::Nftables => {
                    assert_bare_router(&lab)?;
                    lab.ns(Role::Router).nft(&nft_text)?;
                    let result = (|| -> Result<Round> {
                        sleep_checked(SETTLE)?;
                        let counter_at = || -> Result<(Instant, u64)> {
                            let t = Instant::now();
                            let c = nft_counter(&lab)?;
                            Ok((t + t.elapsed() / 2, c))
                        };
                        let (t0, c0) = counter_at()?;
                        let window = measure(&lab, args.window)?;
                        let (t1, c1) = counter_at()?;
                        // Rates, not counts: the counter is read at other instants than wan0.
                        let ratio = (c1 - c0) as f64 / (t1 - t0).as_secs_f64() / window.pps;
                        Ok(Round { setup, round, window, inferlane: None, nft_match_ratio: Some(ratio) })
                    })();
                    lab.run(Role::Router, "nft", &["delete", "table", "ip", NFT_TABLE])?;
                    result?
                }
                Setup::Inferlane => inferlane_round(&lab, &generator, &bin, &work, &config_text, round, args.window, start)?,
            };
            let w = &r.window;
            let mut line = format!(
                "round {round}/{} {} ({}): {} pps forwarded (sent {}); the packet path had {:.0}% of CPU {GEN_CPU}, \
                 softirq {:.0}%, steal {:.0}%",
                args.rounds,
                setup.letter(),
                setup.name(),
                thousands(w.pps),
                thousands(w.offered_pps),
                w.path_share * 100.0,
                w.cpu.softirq * 100.0,
                w.cpu.steal * 100.0
            );
            if let Some(m) = r.nft_match_ratio {
                let _ = write!(line, "; rule matched {:.3} × forwarded", m);
            }
            if let Some(i) = &r.inferlane {
                let _ = write!(
                    line,
                    "; daemon up in {:.1}s, {} live flows {:.1}s later ({} after the statistics window), {} created during measurement, DSCP rewritten on {:.3} × forwarded",
                    i.start_secs, i.live, i.warm_secs, i.live_after, i.created_during, i.rewrite_ratio
                );
                for p in i.progs.values() {
                    let _ = write!(
                        line,
                        "; {} {} runs {}",
                        p.name,
                        p.runs,
                        p.ns_per_run().map(|n| format!("{n:.1} ns/run")).unwrap_or_default()
                    );
                }
            }
            log(start, line);
            rounds.push(r);
        }
    }

    log(start, "stopping the generator, tearing down");
    lab.stop(generator.pid)?;
    let names = lab.netns_names();
    lab.teardown().map_err(|e| anyhow!("lab teardown: {e}"))?;
    let present: Vec<String> = inferlane::lab::netns::list().unwrap_or_default();
    let left: Vec<&String> = names.iter().filter(|n| present.contains(n)).collect();
    if !left.is_empty() {
        bail!("namespaces left behind: {left:?}");
    }
    drop(work);

    let env = Env {
        date: sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpus: online_cpus,
        loadavg: (load_before, loadavg()),
        tree: tree_state(),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("")
            .trim()
            .to_string(),
        trafgen: sh("trafgen", &["--version"]).split_whitespace().take(2).collect::<Vec<_>>().join(" "),
        trafgen_cmd,
        trafgen_cfg: trafgen_config(&mac),
        control_cpus,
        generator_cpus: gen_cpus,
        conntrack,
        nft_rule: nft_rule(dscp, mark),
        rounds: args.rounds,
        window: args.window,
        total: measured_from.elapsed(),
    };
    let section = render(&env, &rounds);
    println!("\n{section}");
    if let Some(path) = &args.write {
        write_section(path, &section)?;
        log(start, format!("written to {path}"));
    }
    Ok(())
}

/// B: start the daemon with the generator paused (so its readiness check does not walk
/// a full flow table), resume, wait for ≥ MIN_LIVE flows, settle, the rate window, then
/// the bpf_stats window; stop the daemon and check it left nothing behind.
#[allow(clippy::too_many_arguments)]
fn inferlane_round(
    lab: &Lab,
    generator: &Generator,
    bin: &Path,
    work: &WorkDir,
    config_text: &str,
    round: usize,
    window: Duration,
    start: Instant,
) -> Result<Round> {
    let t = Instant::now();
    let mut daemon = {
        let _paused = generator.pause(lab)?;
        DaemonProcess::start_with_env(bin, lab, work, config_text, &[("RUST_LOG", "warn")])?
    };
    let start_secs = t.elapsed().as_secs_f64();
    let mut lan_ids: Vec<u32> = Vec::new();
    let result = (|| -> Result<Round> {
        let d = DaemonObjects::find(lab)?;
        lan_ids = d.lan_ids.clone();
        let t_warm = Instant::now();
        let live = wait_live(&d, MIN_LIVE, Duration::from_secs(20))?;
        let warm_secs = t_warm.elapsed().as_secs_f64();
        if round == 1 {
            log(
                start,
                format!(
                    "daemon up in {start_secs:.1}s (generator paused meanwhile), XDP {}, {live} live flows {warm_secs:.1}s after resuming; programs {:?}",
                    d.xdp_mode, d.all_ids
                ),
            );
        }
        let (created0, _) = d.flow_stats()?;
        sleep_checked(SETTLE)?;
        let w = measure(lab, window)?;
        // bpf_stats window: statistics on only while the fd is held.
        let (progs, stats_fwd, stats_secs, rewritten) = {
            let _fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
            let p0 = prog_stats(&d.all_ids);
            let (_, r0) = d.flow_stats()?;
            let (t0, w0) = stats_at(lab, Role::Router, addr::ROUTER_WAN1_IF)?;
            sleep_checked(STATS_WINDOW)?;
            let p1 = prog_stats(&d.all_ids);
            let (_, r1) = d.flow_stats()?;
            let (t1, w1) = stats_at(lab, Role::Router, addr::ROUTER_WAN1_IF)?;
            let mut out = BTreeMap::new();
            for (id, (name, ns1, n1)) in p1 {
                if let Some((_, ns0, n0)) = p0.get(&id) {
                    out.insert(id, ProgRun { name, runs: n1 - n0, run_ns: ns1 - ns0 });
                }
            }
            (out, w1.tx_packets - w0.tx_packets, (t1 - t0).as_secs_f64(), r1 - r0)
        };
        let (created1, _) = d.flow_stats()?;
        let live_after = d.live()?;
        Ok(Round {
            setup: Setup::Inferlane,
            round,
            window: w,
            nft_match_ratio: None,
            inferlane: Some(InferlaneRound {
                xdp_mode: d.xdp_mode.clone(),
                live,
                live_after,
                table_size: d.table_size,
                created_during: created1 - created0,
                rewrite_ratio: rewritten as f64 / stats_fwd.max(1) as f64,
                start_secs,
                warm_secs,
                progs,
                stats_forwarded: stats_fwd,
                stats_pps: stats_fwd as f64 / stats_secs,
            }),
        })
    })();
    if round == 1 && result.is_ok() {
        // For the record: how long the control socket's status takes with the full table.
        let t = Instant::now();
        match daemon.status() {
            Ok(s) => log(start, format!("status answered in {:.2}s: flow_table.live {}, size {}", t.elapsed().as_secs_f64(), s.flow_table.live, s.flow_table.size)),
            Err(e) => log(start, format!("status failed after {:.2}s: {e}", t.elapsed().as_secs_f64())),
        }
    }
    let stopped = daemon.stop(Duration::from_secs(10));
    let r = result?;
    let status = stopped?;
    if !status.success() {
        bail!("daemon exited with {status}; log:\n{}", daemon.log_text());
    }
    let left = leftovers(lab, daemon.socket(), &lan_ids);
    if !left.is_empty() {
        bail!("the daemon left things behind: {left:?}");
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------
// Report

fn render(env: &Env, rounds: &[Round]) -> String {
    let by = |s: Setup| -> Vec<&Round> { rounds.iter().filter(|r| r.setup == s).collect() };
    let med = |s: Setup, f: fn(&Window) -> f64| median(&by(s).iter().map(|r| f(&r.window)).collect::<Vec<_>>());
    let per_round = |s: Setup| -> Vec<f64> {
        let base = by(Setup::Baseline);
        by(s).iter()
            .filter_map(|r| base.iter().find(|x| x.round == r.round).map(|x| r.window.pps / x.window.pps))
            .collect()
    };
    let spread = |v: &[f64]| -> (f64, f64) {
        v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)))
    };
    let pps: fn(&Window) -> f64 = |w| w.pps;
    let (a, b, c) = (med(Setup::Baseline, pps), med(Setup::Inferlane, pps), med(Setup::Nftables, pps));
    let (rb, rc) = (per_round(Setup::Inferlane), per_round(Setup::Nftables));

    // bpf_stats: per program name, median over B rounds of ns/run and runs/forwarded.
    let binfo: Vec<&InferlaneRound> = by(Setup::Inferlane).iter().filter_map(|r| r.inferlane.as_ref()).collect();
    let mut names: Vec<String> = Vec::new();
    for i in &binfo {
        for p in i.progs.values() {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    let order = ["lan_ingress", "lan_ingress_tc", "wan_egress", "lan_egress"];
    names.sort_by_key(|n| order.iter().position(|o| o == n).unwrap_or(order.len()));
    struct ProgRow {
        name: String,
        ns: f64,
        ns_range: (f64, f64),
        runs_per_fwd: f64,
        runs: u64,
    }
    let mut prog_rows = Vec::new();
    for n in &names {
        // Several programs of one name (wan_egress on wan0 and wwan0): add them up.
        let per: Vec<(u64, u64, u64)> = binfo
            .iter()
            .map(|i| {
                let (runs, ns) = i.progs.values().filter(|p| &p.name == n).fold((0, 0), |(r, t), p| (r + p.runs, t + p.run_ns));
                (runs, ns, i.stats_forwarded)
            })
            .collect();
        let ns: Vec<f64> = per.iter().filter(|x| x.0 > 0).map(|x| x.1 as f64 / x.0 as f64).collect();
        let rpf: Vec<f64> = per.iter().map(|x| x.0 as f64 / x.2.max(1) as f64).collect();
        prog_rows.push(ProgRow {
            name: n.clone(),
            ns: median(&ns),
            ns_range: spread(&ns),
            runs_per_fwd: median(&rpf),
            runs: per.iter().map(|x| x.0).sum(),
        });
    }
    let forward_path = ["lan_ingress", "lan_ingress_tc", "wan_egress"];
    let path_ns: f64 = prog_rows.iter().filter(|r| forward_path.contains(&r.name.as_str()) && r.ns.is_finite()).map(|r| r.ns).sum();
    let ns_of = |name: &str| prog_rows.iter().find(|r| r.name == name).map(|r| r.ns).unwrap_or(f64::NAN);
    let total_per_fwd = median(
        &binfo
            .iter()
            .map(|i| i.progs.values().map(|p| p.run_ns).sum::<u64>() as f64 / i.stats_forwarded.max(1) as f64)
            .collect::<Vec<_>>(),
    );
    let stats_pps = median(&binfo.iter().map(|i| i.stats_pps).collect::<Vec<_>>());

    let mut o = String::new();
    let _ = writeln!(o, "{SECTION} (lab router, 64-byte UDP)\n");
    let _ = writeln!(o, "Command: `make bench` (`{COMMAND}`), as root.");
    let _ = writeln!(
        o,
        "Measured {} on {}, kernel {}, {} CPUs ({}), {} rounds in {:.0} s; load average {} before, {} after \
         (other sessions were building and testing on the same machine).\n",
        env.date,
        env.tree,
        env.kernel,
        env.cpus,
        if env.cpu_model.is_empty() { "unknown model" } else { &env.cpu_model },
        env.rounds,
        env.total.as_secs_f64(),
        env.loadavg.0,
        env.loadavg.1,
    );
    let _ = writeln!(o, "Method:\n");
    let _ = writeln!(
        o,
        "- One lab (`Lab::build`, default options: NAT on the router, no shaping). The generator runs in \
         `lan` for the whole benchmark: `{}` ({}, netsniff-ng). Each frame: 64 bytes of Ethernet \
         (IPv4/UDP, 22-byte payload) to the router's `lan0` MAC, to the inet server {} on closed UDP \
         ports (inet answers with ICMP port unreachables, which its kernel rate-limits to a few per \
         second). {} distinct 5-tuples: source {}, source ports {}–{} and destination ports {}–{} \
         advancing together, so consecutive packets belong to different flows and each flow recurs every \
         {} packets; all of them are in the router's conntrack ({} entries after a 2 s warm-up).",
        env.trafgen_cmd.split(" nice ").nth(1).map(|a| format!("nice {a}")).unwrap_or_default(),
        env.trafgen,
        addr::SERVER_V4,
        thousands(flows() as f64),
        addr::LAN_CLIENT_V4.addr,
        SPORTS.0,
        SPORTS.1,
        DPORTS.0,
        DPORTS.1,
        thousands(flows() as f64),
        thousands(env.conntrack as f64)
    );
    let _ = writeln!(o, "\n  The packet (trafgen's configuration language; the destination MAC is this run's `lan0`):\n");
    let _ = writeln!(o, "  ```c");
    for l in env.trafgen_cfg.lines() {
        let _ = writeln!(o, "  {l}");
    }
    let _ = writeln!(o, "  ```\n");
    let _ = writeln!(
        o,
        "- trafgen sends with one blocking `sendto` per packet (`-t 0`), not its TX_RING: with XDP on the \
         router's veth, frames waiting in veth's XDP ring stay charged to the generator's socket, the \
         ring's non-blocking flush then fails with EAGAIN and trafgen exits; a blocking send waits \
         instead (back-pressure). The socket buffer cannot be raised: `net.core.wmem_default` is \
         read-only inside a namespace on this kernel. `nice -n -20` keeps other work on the machine \
         from taking the generator's CPU."
    );
    let _ = writeln!(
        o,
        "- CPUs: trafgen pins its sending process to CPU {GEN_CPU} ({}); this benchmark, the daemon and \
         every helper command are pinned to CPU {:?}. veth hands a packet to its peer in the sender's \
         softirq, so CPU {GEN_CPU} runs the generator and the whole path lan → router → isp1 → inet: \
         the forwarded rate is what one CPU does while also generating, and a cost added in the router \
         shows up diluted by the generator's and the other namespaces' share of that CPU. Each window \
         also records the CPU time the packet path got (schedstat run time of the generator, which \
         carries the softirq work it triggers on this kernel without IRQ time accounting, plus \
         ksoftirqd/{GEN_CPU}) as a share of the window.",
        env.generator_cpus,
        env.control_cpus
    );
    let _ = writeln!(
        o,
        "- Forwarded rate: the router's `wan0` tx_packets over a {} s window, 1 s after each configuration \
         change, with the generator running throughout. Configurations alternate A B C in every round; \
         figures are medians of {} rounds.",
        env.window.as_secs(),
        env.rounds
    );
    let _ = writeln!(
        o,
        "- A: nothing attached (only the lab's NAT table). B: the release daemon, `inferlane run` in the \
         router namespace, restarted every round, {} rules (9,999 disjoint /24s in 10.128.0.0/9 and the \
         servers' {}, each its own `[[rules]]` entry, class interactive: DSCP AF41, queue high, mark as the \
         rule compiler gives it), flow_table_size {FLOW_TABLE_SIZE}; the daemon starts with the generator \
         paused (SIGSTOP), and the window starts once its flow table holds ≥ {} flows. C: nftables in the \
         router namespace, the same {} prefixes in an interval set, chain `type filter hook prerouting \
         priority mangle`, rule `{}` (DSCP and mark taken from inferlane's rule compiler); the table is \
         deleted after each C round.",
        thousands(RULES as f64),
        addr::network_v4(addr::SERVER_NET_V4),
        thousands(MIN_LIVE as f64),
        thousands(RULES as f64),
        env.nft_rule
    );
    let _ = writeln!(
        o,
        "- eBPF run time: kernel bpf_stats (run_time_ns / run_cnt) of the daemon's programs over a separate \
         1 s window right after each B rate window, with statistics enabled only for that window \
         (BPF_ENABLE_STATS, the switch behind `kernel.bpf_stats_enabled`, held by a file descriptor so the \
         kernel turns it off when the benchmark exits, however it exits). Every packet in it belongs to an \
         established flow.\n"
    );

    let _ = writeln!(o, "| configuration | forwarded (pps, median) | × A (ratio of medians) | × A per round: median (min–max) |");
    let _ = writeln!(o, "|---|---|---|---|");
    let _ = writeln!(o, "| A: nothing attached | {} | 1.000 | |", thousands(a));
    let (lo, hi) = spread(&rb);
    let _ = writeln!(
        o,
        "| B: inferlane, {} rules, ≥ {} live flows | {} | {:.3} | {:.3} ({lo:.3}–{hi:.3}) |",
        thousands(RULES as f64),
        thousands(MIN_LIVE as f64),
        thousands(b),
        b / a,
        median(&rb)
    );
    let (lo, hi) = spread(&rc);
    let _ = writeln!(
        o,
        "| C: nftables, {}-prefix set, DSCP + mark + counter | {} | {:.3} | {:.3} ({lo:.3}–{hi:.3}) |\n",
        thousands(RULES as f64),
        thousands(c),
        c / a,
        median(&rc)
    );

    let _ = writeln!(o, "Per round: forwarded pps (the packet path's share of CPU {GEN_CPU}):\n");
    let _ = writeln!(o, "| round | A | B | C | B/A | C/A |");
    let _ = writeln!(o, "|---|---|---|---|---|---|");
    for r in 1..=env.rounds {
        let get = |s: Setup| rounds.iter().find(|x| x.round == r && x.setup == s).map(|x| x.window);
        let cell = |w: Option<Window>| match w {
            Some(w) => format!("{} ({:.0}%)", thousands(w.pps), w.path_share * 100.0),
            None => "n/a".into(),
        };
        let ratio = |x: Option<Window>, y: Option<Window>| match (x, y) {
            (Some(x), Some(y)) => format!("{:.3}", x.pps / y.pps),
            _ => "n/a".into(),
        };
        let (ra, rb, rc) = (get(Setup::Baseline), get(Setup::Inferlane), get(Setup::Nftables));
        let _ = writeln!(o, "| {r} | {} | {} | {} | {} | {} |", cell(ra), cell(rb), cell(rc), ratio(rb, ra), ratio(rc, ra));
    }
    let _ = writeln!(o);

    let first = binfo.first();
    let _ = writeln!(
        o,
        "B rounds (medians): XDP mode {}; flow table entries when the window starts {} and after the \
         statistics window {} (table size {}; read from the daemon's `flows` map, the figure `status` \
         reports as flow_table.live); flows created from the settle to the end of the statistics window {}; \
         DSCP rewritten on {:.3} × the forwarded packets. C rounds: the rule matched {:.3} × the forwarded \
         packets (median). The generator sent {:.3} × (A), {:.3} × (B), {:.3} × (C) what was forwarded. \
         CPU {GEN_CPU} softirq share (median): A {:.0}%, B {:.0}%, C {:.0}%; steal {:.0}%.\n",
        first.map(|i| i.xdp_mode.as_str()).unwrap_or("?"),
        thousands(median(&binfo.iter().map(|i| i.live as f64).collect::<Vec<_>>())),
        thousands(median(&binfo.iter().map(|i| i.live_after as f64).collect::<Vec<_>>())),
        first.map(|i| i.table_size).unwrap_or(0),
        median(&binfo.iter().map(|i| i.created_during as f64).collect::<Vec<_>>()) as u64,
        median(&binfo.iter().map(|i| i.rewrite_ratio).collect::<Vec<_>>()),
        median(&by(Setup::Nftables).iter().filter_map(|r| r.nft_match_ratio).collect::<Vec<_>>()),
        med(Setup::Baseline, |w| w.offered_pps / w.pps),
        med(Setup::Inferlane, |w| w.offered_pps / w.pps),
        med(Setup::Nftables, |w| w.offered_pps / w.pps),
        med(Setup::Baseline, |w| w.cpu.softirq) * 100.0,
        med(Setup::Inferlane, |w| w.cpu.softirq) * 100.0,
        med(Setup::Nftables, |w| w.cpu.softirq) * 100.0,
        median(&rounds.iter().map(|r| r.window.cpu.steal).collect::<Vec<_>>()) * 100.0,
    );

    let _ = writeln!(
        o,
        "eBPF run time (bpf_stats, median of the B rounds; {} pps forwarded during the statistics windows):\n",
        thousands(stats_pps)
    );
    let _ = writeln!(o, "| program | hook | ns per run, median (min–max) | runs per forwarded packet |");
    let _ = writeln!(o, "|---|---|---|---|");
    for r in &prog_rows {
        let hook = match r.name.as_str() {
            "lan_ingress" => "XDP, lan0",
            "lan_ingress_tc" => "TC ingress, lan0",
            "lan_egress" => "TC egress, lan0",
            "wan_egress" => "TC egress, uplinks",
            _ => "?",
        };
        let ns = if r.runs == 0 {
            "not run".to_string()
        } else {
            format!("{:.1} ({:.0}–{:.0})", r.ns, r.ns_range.0, r.ns_range.1)
        };
        let per_fwd = if r.runs_per_fwd >= 0.01 {
            format!("{:.3}", r.runs_per_fwd)
        } else {
            format!("{:.4} ({} runs in all: ICMP errors back to the client)", r.runs_per_fwd, r.runs)
        };
        let _ = writeln!(o, "| {} | {hook} | {ns} | {per_fwd} |", r.name);
    }
    let _ = writeln!(o, "| **per forwarded packet** | lan_ingress + lan_ingress_tc + wan_egress | **{path_ns:.1}** | |\n");
    let _ = writeln!(
        o,
        "All programs' run time divided by the packets forwarded in the same windows: {total_per_fwd:.1} ns. \
         Each figure includes the accounting's own clock reads: wan_egress, a handful of instructions with \
         no map access, reads {:.1} ns, about the floor of one program run as bpf_stats sees it on this VM. \
         From the medians, one forwarded packet costs {:.0} ns of CPU {GEN_CPU} in A (generator and every \
         hop) and {:.0} ns in B: {:.0} ns more, against {path_ns:.0} ns of program run time.\n",
        ns_of("wan_egress"),
        1e9 / a,
        1e9 / b,
        1e9 / b - 1e9 / a,
    );

    let fwd_ok = b / a >= 0.95;
    let _ = writeln!(o, "Verdict against the budgets (DESIGN.md, Performance budgets):\n");
    let (lo, hi) = spread(&rb);
    let _ = writeln!(
        o,
        "- Forwarding with inferlane fully on (10,000 rules, 100,000 live flows) ≥ 0.95 × nothing attached: \
         **{}** — {:.3} × (ratio of the medians; per-round ratios {lo:.3}–{hi:.3}, median {:.3}). nftables \
         of the same meaning: {:.3} ×.",
        if fwd_ok { "met" } else { "not met" },
        b / a,
        median(&rb),
        c / a
    );
    let _ = writeln!(
        o,
        "- eBPF run time ≤ 100 ns per packet of an established flow: **{}** — {path_ns:.1} ns over the three \
         programs a forwarded packet passes; lan_ingress alone {:.1} ns.",
        if path_ns <= 100.0 { "met" } else { "not met" },
        ns_of("lan_ingress")
    );
    let (amin, amax) = spread(&by(Setup::Baseline).iter().map(|r| r.window.pps).collect::<Vec<_>>());
    let share_min = rounds.iter().map(|r| r.window.path_share).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        o,
        "- Limits: a {}-CPU VM on a shared host, with other sessions building and testing on it during the \
         measurement: A alone ranged from {} to {} pps between rounds ({:.2}×) while the packet path had \
         at least {}% of CPU {GEN_CPU}, so the machine's speed itself drifted; single-round ratios \
         mean little and the medians carry the result; the generator shares CPU {GEN_CPU} with the whole path, which dilutes the router's cost in \
         the ratios; the flows are visited round-robin, so every packet looks up a different flow (no cache \
         locality in the flow table or in conntrack), a worst case for per-flow state; the B rate window \
         excludes the bpf_stats window, whose accounting would slow B.\n",
        env.cpus,
        thousands(amin),
        thousands(amax),
        amax / amin,
        (share_min * 100.0).floor().min(100.0)
    );
    o
}

fn write_section(path: &str, section: &str) -> Result<()> {
    inferlane::lab::scenario::write_bench_section(std::path::Path::new(path), SECTION, section)
        .with_context(|| format!("write {path}"))
}
