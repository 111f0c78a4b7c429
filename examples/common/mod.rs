//! What the benchmarks that export flows share (examples/soak.rs,
//! examples/bench_export.rs): included with `#[path]`, not an example itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use inferlane::lab::{addr, Lab, Role};

/// Starts nfcapd in the router namespace on 127.0.0.1:`port`, writing to `dir`,
/// and waits until it listens.
pub fn start_nfcapd(lab: &mut Lab, dir: &Path, port: u16) -> Result<u32> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display().to_string();
    let pid = lab.spawn(Role::Router, "nfcapd", &["-b", "127.0.0.1", "-p", &port.to_string(), "-w", &d, "-t", "3600", "-B", "8388608"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.run(Role::Router, "ss", &["-Hlun", &format!("sport = :{port}")])?.trim().is_empty() {
        if Instant::now() > deadline {
            bail!("nfcapd did not bind");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// What nfcapd stored: the totals `nfdump -I` reports for the one file it wrote
/// in `dir`.
pub struct Collected {
    pub flows: u64,
    pub packets: u64,
}

pub fn collected(dir: &Path) -> Result<Collected> {
    let file = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("nfcapd.2")))
        .ok_or_else(|| anyhow!("no nfcapd file in {}", dir.display()))?;
    let out = Command::new("nfdump").arg("-r").arg(&file).arg("-I").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| -> Result<u64> {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {k} in nfdump -I:\n{text}"))
    };
    Ok(Collected { flows: get("Flows")?, packets: get("Packets")? })
}

pub fn log(start: Instant, msg: impl AsRef<str>) {
    eprintln!("[{:6.1}s] {}", start.elapsed().as_secs_f64(), msg.as_ref());
}

/// utime + stime of a process, in ns.
pub fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow!("bad stat"))? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as u64;
    Ok(ticks * 1_000_000_000 / hz)
}

/// The MAC address of the router's LAN interface, where trafgen's frames go.
pub fn router_mac(lab: &Lab) -> Result<String> {
    let out = lab.run(Role::Router, "ip", &["-j", "link", "show", "dev", addr::ROUTER_LAN_IF])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    v[0]["address"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no MAC on lan0"))
}
