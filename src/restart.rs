//! Restart and upgrade: how the daemon stops, and what a handover passes to its
//! successor.
//!
//! Three kinds of stop:
//! - **clean** (SIGTERM, SIGINT): everything the daemon created goes, pins
//!   included;
//! - **handover** (`inferlane restart`, SIGUSR2): the XDP and TCX links are
//!   pinned next to the maps, qdiscs, routes, rules and rp_filter stay, what the
//!   flow tracker already exported goes to `<control_socket>.handover`, and the
//!   process exits with [`EXIT_HANDOVER`] (75, EX_TEMPFAIL) so that systemd
//!   starts the successor at once;
//! - **SIGKILL** (or a crash): nothing is pinned but the maps; the kernel
//!   detaches the programs when the process's fds close and traffic flows
//!   unclassified (fail open). The next start adopts the maps and replaces the
//!   leftover routing and qdiscs.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bpf::abi::FlowKey;
use crate::flow::{Carried, Delta};

/// Exit status of a handover (EX_TEMPFAIL): the unit's `SuccessExitStatus=75`
/// and `RestartForceExitStatus=75` make systemd start the successor.
pub const EXIT_HANDOVER: u8 = 75;

/// How the daemon stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Clean,
    Handover,
}

/// The state file: `<control_socket>.handover`.
pub fn state_path(control_socket: &Path) -> PathBuf {
    let mut s = control_socket.as_os_str().to_owned();
    s.push(".handover");
    PathBuf::from(s)
}

/// What a handover passes on. Version 1.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    /// The daemon that wrote it.
    pub pid: u32,
    /// CLOCK_MONOTONIC when written (the flows' clock; same boot only).
    pub written_ns: u64,
    pub boot_id: String,
    /// Per live flow: counters already exported and the start of the period not
    /// yet exported.
    pub flows: Vec<CarriedFlow>,
    /// Tracker totals, so `status` continues.
    pub reported: u64,
    pub deleted: u64,
    pub vanished: u64,
    pub pressure_evictions: u64,
    /// rp_filter values the predecessor changed: (sysctl path, value to restore
    /// at a clean stop).
    pub rp_filter: Vec<(String, String)>,
}

pub const HANDOVER_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFlow {
    pub client: IpAddr,
    pub remote: IpAddr,
    pub client_port: u16,
    pub remote_port: u16,
    pub proto: u8,
    /// up packets, up bytes, down packets, down bytes already exported.
    pub base: [u64; 4],
    pub start_ns: u64,
}

impl CarriedFlow {
    pub fn of(c: &Carried) -> CarriedFlow {
        CarriedFlow {
            client: crate::bpf::abi::addr_from_bytes(c.key.client, c.key.family),
            remote: crate::bpf::abi::addr_from_bytes(c.key.remote, c.key.family),
            client_port: u16::from_be(c.key.client_port),
            remote_port: u16::from_be(c.key.remote_port),
            proto: c.key.proto,
            base: [c.base.up_packets, c.base.up_bytes, c.base.down_packets, c.base.down_bytes],
            start_ns: c.start_ns,
        }
    }

    pub fn carried(&self) -> Carried {
        let family = if self.client.is_ipv4() { 4 } else { 6 };
        Carried {
            key: FlowKey {
                client: crate::bpf::abi::addr_bytes(self.client),
                remote: crate::bpf::abi::addr_bytes(self.remote),
                client_port: self.client_port.to_be(),
                remote_port: self.remote_port.to_be(),
                proto: self.proto,
                family,
                pad: 0,
            },
            base: Delta { up_packets: self.base[0], up_bytes: self.base[1], down_packets: self.base[2], down_bytes: self.base[3] },
            start_ns: self.start_ns,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{path}: {op}: {source}")]
    Io { path: String, op: &'static str, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

impl Handover {
    /// Write atomically (temporary file, rename), mode 0600.
    pub fn write(&self, path: &Path) -> Result<(), HandoverError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let p = path.display().to_string();
        let io = |op| {
            let p = p.clone();
            move |source| HandoverError::Io { path: p, op, source }
        };
        let tmp = {
            let mut s = path.as_os_str().to_owned();
            s.push(".tmp");
            PathBuf::from(s)
        };
        let text = serde_json::to_vec(self).map_err(|e| HandoverError::Invalid { path: p.clone(), reason: e.to_string() })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create"))?;
        f.write_all(&text).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename"))
    }

    /// Read and delete the state file. `Ok(None)` when there is none. A file
    /// from another boot, or of another version, is deleted and ignored.
    pub fn take(path: &Path) -> Result<Option<Handover>, HandoverError> {
        let h = Self::read(path);
        if !matches!(h, Ok(None)) {
            Self::remove(path)?;
        }
        h
    }

    /// Read the state file, leaving it in place (the daemon deletes it once
    /// its start succeeded: a failed start leaves it for the next attempt). A
    /// file that cannot be used is deleted.
    pub fn read(path: &Path) -> Result<Option<Handover>, HandoverError> {
        let result = Self::parse(path);
        if result.is_err() {
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Delete the state file (absent is fine).
    pub fn remove(path: &Path) -> Result<(), HandoverError> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(HandoverError::Io { path: path.display().to_string(), op: "remove", source }),
        }
    }

    fn parse(path: &Path) -> Result<Option<Handover>, HandoverError> {
        let p = path.display().to_string();
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HandoverError::Io { path: p, op: "read", source }),
        };
        let h: Handover =
            serde_json::from_slice(&text).map_err(|e| HandoverError::Invalid { path: p.clone(), reason: e.to_string() })?;
        if h.version != HANDOVER_VERSION {
            return Err(HandoverError::Invalid { path: p, reason: format!("version {} (this daemon reads {HANDOVER_VERSION})", h.version) });
        }
        if h.boot_id != boot_id() {
            return Err(HandoverError::Invalid { path: p, reason: "written before the last reboot".into() });
        }
        Ok(Some(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_round_trips_and_is_deleted_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("control.sock");
        let path = state_path(&sock);
        assert_eq!(path, dir.path().join("control.sock.handover"));
        let carried = Carried {
            key: FlowKey {
                client: crate::bpf::abi::addr_bytes("10.0.0.2".parse().unwrap()),
                remote: crate::bpf::abi::addr_bytes("192.0.2.1".parse().unwrap()),
                client_port: 40000u16.to_be(),
                remote_port: 443u16.to_be(),
                proto: 6,
                family: 4,
                pad: 0,
            },
            base: Delta { up_packets: 1, up_bytes: 2, down_packets: 3, down_bytes: 4 },
            start_ns: 5,
        };
        let v4 = carried;
        let h = Handover {
            version: HANDOVER_VERSION,
            pid: 1,
            boot_id: boot_id(),
            flows: vec![CarriedFlow::of(&v4)],
            rp_filter: vec![("net/ipv4/conf/wan0/rp_filter".into(), "1".into())],
            ..Handover::default()
        };
        h.write(&path).unwrap();
        let back = Handover::take(&path).unwrap().expect("written above");
        assert_eq!(back, h);
        assert_eq!(back.flows[0].carried(), v4);
        assert!(!path.exists(), "the state file must be deleted once read");
        assert!(Handover::take(&path).unwrap().is_none());
        // read() leaves a good file for a later attempt.
        h.write(&path).unwrap();
        assert_eq!(Handover::read(&path).unwrap().as_ref(), Some(&h));
        assert!(path.exists());
        Handover::remove(&path).unwrap();
        // Another boot's file is refused (and gone).
        Handover { boot_id: "other".into(), ..h }.write(&path).unwrap();
        assert!(Handover::take(&path).is_err());
        assert!(!path.exists());
    }
}
