//! Benchmark: the CPU flow export costs, inferlane against softflowd, on the same lab
//! router and the same traffic. Run as root:
//!
//!     make bench     # or: cargo run --release --example bench_export -- --write BENCHMARKS.md
//!
//! Method (also written into BENCHMARKS.md):
//! - One lab (`Lab::build`). trafgen (netsniff-ng) in the `lan` namespace sends a fixed
//!   number of 64-byte frames (IPv4/UDP) to the router's `lan0` as fast as it can, over
//!   100,002 distinct 5-tuples (source ports 10000–60000 and destination ports
//!   20000–20001 advancing together), as bench_forwarding does.
//! - A: inferlane runs on the router, exporting IPFIX to nfcapd on the router's
//!   127.0.0.1 (active timeout 10 s, inactive 5 s). CPU = the daemon process's user +
//!   system time (/proc/PID/stat) from just before the traffic to after its stop (which
//!   exports everything in flight) + the run time of its eBPF programs
//!   (BPF_ENABLE_STATS, the switch behind kernel.bpf_stats_enabled, held by a file
//!   descriptor for the whole run).
//! - B: no inferlane; softflowd on `lan0` (`-m 262144` flows, the same timeouts),
//!   exporting IPFIX to nfcapd. CPU = softflowd's user + system time; the kernel's copy
//!   of each packet to its packet socket is not in it (softirq time is nobody's), so
//!   softflowd's figure is a lower bound.
//! - Packets seen: the packets in the records nfcapd stored (nfdump -I) out of the
//!   packets trafgen sent.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use inferlane::lab::scenario::{lab_config_base, DaemonProcess, WorkDir};
use inferlane::lab::{addr, Lab, LabOptions, Role};

const COMMAND: &str = "cargo run --release --example bench_export -- --write BENCHMARKS.md";
const SECTION: &str = "## Flow export CPU";
const SPORTS: (u16, u16) = (10_000, 60_000);
const DPORTS: (u16, u16) = (20_000, 20_001);
const FLOWS: u64 = 100_002;
const FRAME_LEN: usize = 64;
#[path = "common/mod.rs"]
mod common;

const COLLECTOR_PORT: u16 = 4739;

struct Args {
    write: Option<String>,
    packets: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { write: None, packets: 6_000_000 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{arg} needs a value"));
        match arg.as_str() {
            "--write" => a.write = Some(value()?),
            "--packets" => a.packets = value()?.parse().context("--packets")?,
            _ => bail!("bench_export [--write FILE] [--packets N (6000000)]"),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_export: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The path of `tool` on PATH, if any.
fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(tool)).find(|p| p.is_file())
}

fn log(start: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", start.elapsed().as_secs_f64(), msg.as_ref());
}

/// utime + stime of a process, in ns.
fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rfind(')').is_some_and(|i| s[i + 2..].starts_with('Z')))
        .unwrap_or(true)
}

/// Run time (ns) and run count of the programs with these ids.
fn bpf_run_ns(ids: &[u32]) -> (u64, u64) {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| ids.contains(&p.id()))
        .fold((0, 0), |(t, c), p| (t + p.run_time().as_nanos() as u64, c + p.run_count()))
}

fn trafgen_config(router_mac: &str) -> String {
    let payload = FRAME_LEN - 14 - 20 - 8;
    format!(
        "{{\n\teth(da={router_mac}, type=0x0800),\n\tipv4(saddr={src}, daddr={dst}, ttl=64),\n\
         \tudp(sp=dinc({}, {}), dp=dinc({}, {})),\n\tfill(0x00, {payload})\n}}\n",
        SPORTS.0,
        SPORTS.1,
        DPORTS.0,
        DPORTS.1,
        src = addr::LAN_CLIENT_V4.addr,
        dst = addr::SERVER_V4,
    )
}

fn router_mac(lab: &Lab) -> Result<String> {
    let out = lab.run(Role::Router, "ip", &["-j", "link", "show", "dev", addr::ROUTER_LAN_IF])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v[0]["address"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no MAC on lan0"))
}

/// Sends `packets` frames with trafgen; returns the time it took.
fn send(lab: &mut Lab, cfg: &Path, packets: u64) -> Result<Duration> {
    let t = Instant::now();
    let n = packets.to_string();
    let cfg = cfg.display().to_string();
    let args = ["trafgen", "--cpus", "1", "--no-sock-mem", "--notouch-irq", "-t", "0", "-n", &n, "-i", &cfg, "-o", addr::LAN_IF];
    let out = lab.command(Role::Lan, "nice").args(["-n", "-20"]).args(args).output()?;
    if !out.status.success() {
        bail!("trafgen: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed())
}

fn terminate(lab: &mut Lab, pid: u32) -> Result<()> {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    lab.wait(pid, Duration::from_secs(30))?;
    Ok(())
}

fn lan_rx(lab: &Lab) -> Result<u64> {
    Ok(lab.link_stats(Role::Router, addr::ROUTER_LAN_IF)?.rx_packets)
}

fn inferlane_side(lab: &mut Lab, work: &WorkDir, bin: &Path, cfg: &Path, packets: u64, export: bool, start: Instant) -> Result<Side> {
    let tag = if export { "inferlane" } else { "inferlane-noexport" };
    let dir = work.path().join(tag);
    let nfcapd = common::start_nfcapd(lab, &dir, COLLECTOR_PORT)?;
    let socket = work.path().join("control.sock");
    let mut config = lab_config_base(&socket, "flow_table_size = 262144");
    if export {
        config += &format!(
            "\n[export]\ncollectors = [\"127.0.0.1:{COLLECTOR_PORT}\"]\nformat = \"ipfix\"\nactive_timeout = \"10s\"\ninactive_timeout = \"5s\"\n"
        );
    }
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let mut daemon = DaemonProcess::start(bin, lab, work, &config)?;
    let pid = daemon.pid().ok_or_else(|| anyhow!("daemon pid"))?;
    let ids: Vec<u32> = daemon.status()?.interfaces.iter().flat_map(|i| i.prog_ids.all()).filter(|&id| id != 0).collect();
    log(start, format!("{tag} pid {pid}, programs {ids:?}; sending {packets} packets"));
    let (c0, b0, r0) = (cpu_ns(pid)?, bpf_run_ns(&ids), lan_rx(lab)?);
    let send_time = send(lab, cfg, packets)?;
    std::thread::sleep(Duration::from_secs(2));
    let (b1, r1) = (bpf_run_ns(&ids), lan_rx(lab)?);
    // Where packets could go missing (diagnosis, in the log only).
    if let Ok(st) = daemon.status() {
        log(start, format!("{tag}: flow table {:?}; export {:?}", st.flow_table, st.export));
    }
    // The stop exports everything in flight; read the CPU until it exits.
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    let mut c1 = c0;
    while let Ok(c) = cpu_ns(pid) {
        c1 = c;
        if is_zombie(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = daemon.stop(Duration::from_secs(30));
    for line in daemon.log_text().lines().filter(|l| l.contains("WARN")) {
        log(start, format!("{tag} daemon: {line}"));
    }
    std::thread::sleep(Duration::from_secs(1));
    terminate(lab, nfcapd)?;
    let (seen, records) = if export {
        let c = common::collected(&dir)?;
        (c.packets, c.flows)
    } else {
        (0, 0)
    };
    log(start, format!("{tag}: sent in {send_time:?}, lan0 got {}, process {} ms, eBPF {} ms over {} runs, seen {seen}", r1 - r0, (c1 - c0) / 1_000_000, (b1.0 - b0.0) / 1_000_000, b1.1 - b0.1));
    Ok(Side {
        name: if export { "inferlane, IPFIX export" } else { "inferlane, no [export] (flow scan only)" },
        sent: packets,
        received: r1 - r0,
        send_time,
        process_ns: c1 - c0,
        bpf_ns: b1.0 - b0.0,
        seen,
        records,
    })
}

struct Side {
    name: &'static str,
    sent: u64,
    /// Packets the router's lan0 received (rx_packets): what an exporter there can see.
    received: u64,
    send_time: Duration,
    process_ns: u64,
    bpf_ns: u64,
    seen: u64,
    records: u64,
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    if !inferlane::lab::is_root() {
        bail!("needs root (network namespaces, eBPF)");
    }
    let bin = std::env::current_exe()?.parent().and_then(Path::parent).map(|d| d.join("inferlane")).ok_or_else(|| anyhow!("no target dir"))?;
    if !bin.is_file() {
        bail!("{} missing: cargo build --release first", bin.display());
    }
    // Without them the comparison would be written with an empty softflowd row.
    for tool in ["softflowd", "trafgen"] {
        if which(tool).is_none() {
            bail!("{tool} not found: `make bench` installs it (Debian packages softflowd, netsniff-ng)");
        }
    }
    let work = WorkDir::new("bench-export")?;
    let mut lab = Lab::build(&LabOptions::default())?;
    let cfg = work.path().join("trafgen.cfg");
    std::fs::write(&cfg, trafgen_config(&router_mac(&lab)?))?;
    let mut sides = Vec::new();

    // A: inferlane exporting; A0: inferlane with no [export] (the flow scan alone).
    sides.push(inferlane_side(&mut lab, &work, &bin, &cfg, args.packets, true, start)?);
    sides.push(inferlane_side(&mut lab, &work, &bin, &cfg, args.packets, false, start)?);

    // B: softflowd on the bare router.
    {
        let dir = work.path().join("softflowd");
        let nfcapd = common::start_nfcapd(&mut lab, &dir, COLLECTOR_PORT)?;
        let ctl = work.path().join("softflowd.ctl");
        let pidfile = work.path().join("softflowd.pid");
        let sf = lab.spawn(
            Role::Router,
            "softflowd",
            &[
                "-d", "-i", addr::ROUTER_LAN_IF, "-n", &format!("127.0.0.1:{COLLECTOR_PORT}"), "-v", "10", "-m", "262144",
                "-t", "maxlife=10", "-t", "udp=5", "-t", "general=5", "-c", &ctl.display().to_string(), "-p", &pidfile.display().to_string(),
            ],
        )?;
        std::thread::sleep(Duration::from_secs(1));
        let (c0, r0) = (cpu_ns(sf)?, lan_rx(&lab)?);
        log(start, format!("softflowd pid {sf}; sending {} packets", args.packets));
        let send_time = send(&mut lab, &cfg, args.packets)?;
        std::thread::sleep(Duration::from_secs(2));
        let r1 = lan_rx(&lab)?;
        // softflowd expires and exports every flow on SIGTERM.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(sf as i32), nix::sys::signal::Signal::SIGTERM);
        let mut c1 = c0;
        while let Ok(c) = cpu_ns(sf) {
            c1 = c;
            std::thread::sleep(Duration::from_millis(5));
            if lab.wait(sf, Duration::ZERO).is_ok() {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        terminate(&mut lab, nfcapd)?;
        let c = common::collected(&dir)?;
        let (seen, records) = (c.packets, c.flows);
        log(start, format!("softflowd: sent in {send_time:?}, process {} ms, seen {seen}", (c1 - c0) / 1_000_000));
        sides.push(Side { name: "softflowd, IPFIX export", sent: args.packets, received: r1 - r0, send_time, process_ns: c1 - c0, bpf_ns: 0, seen, records });
    }

    let section = render(&sides);
    print!("{section}");
    if let Some(path) = &args.write {
        write_section(path, &section)?;
        log(start, format!("wrote {path}"));
    }
    Ok(())
}

fn render(sides: &[Side]) -> String {
    let mut o = String::new();
    let kernel = Command::new("uname").arg("-r").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()).unwrap_or_default();
    let sf_version = Command::new("softflowd").arg("-h").output().map(|o| {
        let t = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
        t.lines().next().unwrap_or("").trim().to_owned()
    }).unwrap_or_default();
    let _ = writeln!(o, "{SECTION} (lab router, 64-byte UDP, {FLOWS} flows)\n");
    let _ = writeln!(o, "Command: `{COMMAND}` (as root; `make bench` runs it). Kernel {kernel}, {} CPUs; {sf_version}.\n", std::thread::available_parallelism().map_or(0, |n| n.get()));
    let _ = writeln!(
        o,
        "trafgen sends a fixed number of 64-byte IPv4/UDP frames to the router's lan0 over {FLOWS} 5-tuples, as fast as \
         the lab goes. inferlane: the daemon exporting IPFIX to nfcapd on the router's 127.0.0.1 (active 10 s, inactive 5 s); \
         CPU = daemon user+system time from before the traffic until it exits after its stop (which exports everything \
         in flight) + eBPF run time of its programs (BPF_ENABLE_STATS on for the whole run). softflowd: on lan0 of the \
         same router with no inferlane, `-m 262144 -t maxlife=10 -t udp=5 -v 10`, exporting to nfcapd; CPU = its user+system \
         time until it exits after SIGTERM (which exports everything). The kernel's copy of each packet to softflowd's \
         packet socket runs in softirq and is not in its figure: softflowd's cost is a lower bound. Packets seen = packets \
         in the records nfcapd stored (nfdump -I) / packets the router's lan0 received (rx_packets; trafgen's \
         excess is dropped before it). A third run, inferlane with no `[export]`, separates the daemon's \
         flow-table scan (once a second, whole table) from the export proper. One run of each.\n"
    );
    let _ = writeln!(o, "| configuration | packets sent | received by lan0 | rate received (pps) | process CPU (ms) | eBPF CPU (ms) | CPU per million packets received (ms) | packets seen | records |");
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|");
    for s in sides {
        let total = (s.process_ns + s.bpf_ns) as f64 / 1e6;
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {} | {} |",
            s.name,
            s.sent,
            s.received,
            s.received as f64 / s.send_time.as_secs_f64(),
            s.process_ns as f64 / 1e6,
            s.bpf_ns as f64 / 1e6,
            total / (s.received as f64 / 1e6),
            if s.name.contains("no [export]") { "-".to_string() } else { format!("{:.3}% ({})", s.seen as f64 * 100.0 / s.received as f64, s.seen) },
            s.records
        );
    }
    if let [a, _, b] = sides {
        let ca = (a.process_ns + a.bpf_ns) as f64 / a.received as f64;
        let cb = (b.process_ns + b.bpf_ns) as f64 / b.received as f64;
        let _ = writeln!(o, "\nsoftflowd / inferlane CPU per packet: {:.1}× (budget ≥ 10×).\n", cb / ca);
    }
    o
}

fn write_section(path: &str, section: &str) -> Result<()> {
    inferlane::lab::scenario::write_bench_section(std::path::Path::new(path), SECTION, section)
        .with_context(|| format!("write {path}"))
}
