//! What the benchmarks that export flows share (examples/soak.rs,
//! examples/bench_export.rs): included with `#[path]`, not an example itself.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use inferlane::lab::{Lab, Role};

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
