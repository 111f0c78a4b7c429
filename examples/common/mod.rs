//! What the benchmarks that export flows share (examples/soak.rs,
//! examples/bench_export.rs): included with `#[path]`, not an example itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
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
