//! The lab: a network-namespace topology for `inferlane lab` and the integration tests.
//!
//! ```text
//! lan ── router ──┬── isp1 (fiber) ──┐
//!                 └── isp2 (LTE)  ───┴── inet (servers)
//! ```
//!
//! A [`Lab`] owns five uniquely named namespaces and every process it spawned. Dropping
//! it (also while unwinding from a panic) kills those processes and deletes the
//! namespaces, which takes their veths and qdiscs with them. Nothing is ever created in
//! the host namespace, and all addresses ([`addr`]) exist only inside the lab.
//!
//! The lab shells out to iproute2 and nft; that is allowed here because it only builds
//! scenery. The daemon itself talks netlink.

pub mod addr;
pub mod capture;
pub mod dns;
pub mod failover;
mod error;
mod icmp;
pub mod netns;
pub mod queues;
pub mod scenario;
pub mod topology;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

pub use error::{LabError, LabErrors};
pub use netns::Netns;
pub use topology::{Tbf, NAT_TABLE};

/// A place in the topology; each is one namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The LAN client.
    Lan,
    /// The box inferlane runs on.
    Router,
    /// Primary uplink ("fiber").
    Isp1,
    /// Backup uplink ("LTE").
    Isp2,
    /// The internet: servers answering as AI providers, DNS, bulk downloads.
    Inet,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Lan, Role::Router, Role::Isp1, Role::Isp2, Role::Inet];

    /// Short name, used as the suffix of the namespace name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Lan => "lan",
            Role::Router => "router",
            Role::Isp1 => "isp1",
            Role::Isp2 => "isp2",
            Role::Inet => "inet",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to vary between labs. The default is an unshaped topology.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabOptions {
    /// TBF bottleneck on isp1, both directions, in kbit/s (1000 bit/s).
    pub isp1_rate_kbit: Option<u64>,
    /// TBF bottleneck on isp2, both directions, in kbit/s (1000 bit/s).
    pub isp2_rate_kbit: Option<u64>,
}

/// Interface counters, from `ip -j -s link show`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// A process started by [`Lab::spawn_piped`], with the pipes to read its output.
#[derive(Debug)]
pub struct PipedChild {
    pub pid: u32,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// A background process the lab owns and stops at teardown.
#[derive(Debug)]
struct Spawned {
    child: Child,
    what: String,
    ns: String,
}

/// How long a spawned process gets between SIGTERM and SIGKILL at teardown: enough for
/// a server to close its sockets, short enough that tests do not crawl.
const TERM_GRACE: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(10);

/// Numbers labs made by this process, so several labs (parallel tests) never clash.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The topology. See the module documentation.
#[derive(Debug)]
pub struct Lab {
    id: String,
    /// Indexed by [`Role::index`] once built; filled in order while building.
    namespaces: Vec<Netns>,
    /// Keyed by pid.
    children: HashMap<u32, Spawned>,
    ping_seq: AtomicU16,
    torn_down: bool,
}

impl Lab {
    /// Builds the whole topology and checks that the LAN client reaches the servers over
    /// IPv4 and IPv6. Whatever was built is torn down again if a step fails.
    pub fn build(opts: &LabOptions) -> Result<Lab, LabError> {
        topology::validate(opts)?;
        let start = Instant::now();
        let id = unused_id();
        let mut lab = Lab {
            id,
            namespaces: Vec::with_capacity(Role::ALL.len()),
            children: HashMap::new(),
            ping_seq: AtomicU16::new(0),
            torn_down: false,
        };
        // From here on, an early return drops `lab`, and Drop removes what exists.
        for role in Role::ALL {
            let ns = Netns::add(&format!("{}-{}", lab.id, role))?;
            lab.namespaces.push(ns);
        }
        topology::configure(&lab, opts)?;
        tracing::debug!(lab = %lab.id, elapsed = ?start.elapsed(), "lab built");
        Ok(lab)
    }

    /// The short unique id every namespace name starts with, e.g. `il4821a`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace name of `role`, e.g. `il4821a-router`.
    pub fn netns(&self, role: Role) -> &str {
        self.ns(role).name()
    }

    /// Names of all of this lab's namespaces.
    pub fn netns_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }

    /// The namespace guard of `role`, for batch helpers (`ip_batch`, `nft`, `run_in`).
    pub fn ns(&self, role: Role) -> &Netns {
        &self.namespaces[role.index()]
    }

    /// `ip netns exec NS program`; add arguments and run it as you like. A process
    /// started this way is not tracked, but is still killed at teardown because it
    /// lives in one of the lab's namespaces.
    pub fn command(&self, role: Role, program: &str) -> Command {
        self.ns(role).command(program)
    }

    /// Runs `program args` in `role`'s namespace and returns its stdout; a non-zero exit
    /// is an error carrying stderr.
    pub fn run(&self, role: Role, program: &str, args: &[&str]) -> Result<String, LabError> {
        self.ns(role).exec(program, args)
    }

    /// Starts a background process in `role`'s namespace with output discarded. The lab
    /// owns it: it is stopped (SIGTERM, then SIGKILL) and reaped at teardown.
    pub fn spawn(&mut self, role: Role, program: &str, args: &[&str]) -> Result<u32, LabError> {
        let child = self.start(role, program, args, Stdio::null)?;
        Ok(child.id())
    }

    /// Like [`Lab::spawn`], but stdout and stderr are pipes handed to the caller, e.g. to
    /// wait for a server's "listening" line. Keep reading them (or drop them) so the
    /// process cannot block on a full pipe.
    pub fn spawn_piped(
        &mut self,
        role: Role,
        program: &str,
        args: &[&str],
    ) -> Result<PipedChild, LabError> {
        let pid = self.start(role, program, args, Stdio::piped)?.id();
        let spawned = self
            .children
            .get_mut(&pid)
            .ok_or(LabError::UnknownChild { pid })?;
        match (spawned.child.stdout.take(), spawned.child.stderr.take()) {
            (Some(stdout), Some(stderr)) => Ok(PipedChild {
                pid,
                stdout,
                stderr,
            }),
            _ => Err(LabError::Spawn {
                what: spawned.what.clone(),
                ns: spawned.ns.clone(),
                source: io::Error::other("child has no stdout/stderr pipe"),
            }),
        }
    }

    fn start(
        &mut self,
        role: Role,
        program: &str,
        args: &[&str],
        output: fn() -> Stdio,
    ) -> Result<&Child, LabError> {
        let what = netns::describe(program, args);
        let ns = self.netns(role).to_owned();
        let mut cmd = self.command(role, program);
        // Same process group as us on purpose: Ctrl-C in a terminal then reaches these
        // children too, so nothing outlives an interrupted `inferlane lab`.
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output());
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            what: what.clone(),
            ns: ns.clone(),
            source,
        })?;
        // `ip netns exec` execs the program, so this pid is the program's own.
        let pid = child.id();
        let spawned = self
            .children
            .entry(pid)
            .or_insert(Spawned { child, what, ns });
        Ok(&spawned.child)
    }

    /// Waits up to `timeout` for a spawned process to exit and reaps it. On timeout the
    /// process keeps running and stays owned by the lab.
    pub fn wait(&mut self, pid: u32, timeout: Duration) -> Result<ExitStatus, LabError> {
        let spawned = self
            .children
            .get_mut(&pid)
            .ok_or(LabError::UnknownChild { pid })?;
        let deadline = Instant::now() + timeout;
        loop {
            match spawned.child.try_wait() {
                Ok(Some(status)) => {
                    self.children.remove(&pid);
                    return Ok(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
                Ok(None) => {
                    return Err(LabError::Timeout {
                        what: spawned.what.clone(),
                        ns: spawned.ns.clone(),
                        pid,
                        timeout,
                    })
                }
                Err(source) => {
                    return Err(LabError::Io {
                        what: format!("wait for {} (pid {pid})", spawned.what),
                        ns: spawned.ns.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// Stops one spawned process now (SIGTERM, SIGKILL after a short grace) and reaps it.
    pub fn stop(&mut self, pid: u32) -> Result<(), LabError> {
        let spawned = self
            .children
            .remove(&pid)
            .ok_or(LabError::UnknownChild { pid })?;
        match stop_all(vec![spawned]).0.pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends one ICMP echo from `role`'s namespace to `dst` and returns the round-trip
    /// time. In-process: no `ping` binary needed.
    pub fn ping(&self, role: Role, dst: IpAddr, timeout: Duration) -> Result<Duration, LabError> {
        let seq = self.ping_seq.fetch_add(1, Ordering::Relaxed);
        self.ns(role)
            .run_in(&format!("ping {dst}"), || icmp::echo(dst, seq, timeout))
    }

    /// Counters of interface `ifname` in `role`'s namespace.
    pub fn link_stats(&self, role: Role, ifname: &str) -> Result<LinkStats, LabError> {
        let ns = self.netns(role);
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns, "-j", "-s", "link", "show", "dev", ifname]);
        let what = format!("ip -j -s link show dev {ifname}");
        let out = netns::run_command(cmd, &what, ns, None)?;
        parse_link_stats(&out).map_err(|detail| LabError::Parse {
            what,
            ns: ns.to_owned(),
            detail,
        })
    }

    /// Tears everything down now, continuing past failures and reporting all of them:
    /// spawned processes first, then whatever else runs in the namespaces, then the
    /// namespaces themselves (which removes their veths and qdiscs).
    pub fn teardown(mut self) -> Result<(), LabErrors> {
        self.teardown_inner().into_result()
    }

    fn teardown_inner(&mut self) -> LabErrors {
        if self.torn_down {
            return LabErrors::default();
        }
        self.torn_down = true;
        let mut errors = stop_all(self.children.drain().map(|(_, s)| s).collect());
        // Reverse creation order; any order works, since each namespace is independent.
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = ns.remove() {
                errors.extend(e);
            }
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let errors = self.teardown_inner();
        if !errors.is_empty() {
            tracing::warn!(lab = %self.id, "{errors}");
        }
    }
}

/// SIGTERM to all, a shared grace period, SIGKILL to the rest, and reap everything so no
/// zombie is left behind.
fn stop_all(mut children: Vec<Spawned>) -> LabErrors {
    let mut errors = LabErrors::default();
    for s in &children {
        // ESRCH: it already exited and only awaits reaping.
        if let Err(e) = kill(Pid::from_raw(s.child.id() as i32), Signal::SIGTERM) {
            if e != nix::errno::Errno::ESRCH {
                errors.push(io_error(s, "kill -TERM", e.into()));
            }
        }
    }
    let deadline = Instant::now() + TERM_GRACE;
    while !children.is_empty() {
        children.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(_)) => false,
            Ok(None) => true,
            Err(e) => {
                errors.push(io_error(s, "wait", e));
                false
            }
        });
        if children.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    for mut s in children {
        // Child::kill sends SIGKILL; then wait() reaps.
        if let Err(e) = s.child.kill() {
            errors.push(io_error(&s, "kill -KILL", e));
        }
        if let Err(e) = s.child.wait() {
            errors.push(io_error(&s, "wait", e));
        }
    }
    errors
}

fn io_error(s: &Spawned, op: &str, source: io::Error) -> LabError {
    LabError::Io {
        what: format!("{op} {} (pid {})", s.what, s.child.id()),
        ns: s.ns.clone(),
        source,
    }
}

/// Picks a lab id whose namespace names are all free. Ids are the pid plus a per-process
/// counter, so labs of one process never clash and other processes differ by pid; the
/// check only skips namespaces left behind by a killed process whose pid got reused.
fn unused_id() -> String {
    let pid = std::process::id();
    loop {
        let id = format!(
            "il{pid}{}",
            letters(LAB_COUNTER.fetch_add(1, Ordering::Relaxed))
        );
        let taken = Role::ALL.iter().any(|r| {
            std::path::Path::new("/run/netns")
                .join(format!("{id}-{r}"))
                .exists()
        });
        if !taken {
            return id;
        }
    }
}

/// 0 → "a", 25 → "z", 26 → "ba": letters keep the counter apart from the decimal pid.
fn letters(mut n: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (n % 26) as u8);
        n /= 26;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

#[derive(Deserialize)]
struct IpLink {
    stats64: IpStats64,
}

#[derive(Deserialize)]
struct IpStats64 {
    rx: IpCounters,
    tx: IpCounters,
}

#[derive(Deserialize)]
struct IpCounters {
    bytes: u64,
    packets: u64,
}

fn parse_link_stats(json: &str) -> Result<LinkStats, String> {
    let links: Vec<IpLink> = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let [link] = <[IpLink; 1]>::try_from(links)
        .map_err(|l| format!("expected one link, got {}", l.len()))?;
    Ok(LinkStats {
        rx_packets: link.stats64.rx.packets,
        rx_bytes: link.stats64.rx.bytes,
        tx_packets: link.stats64.tx.packets,
        tx_bytes: link.stats64.tx.bytes,
    })
}

/// Whether we run with effective uid 0, which building a lab needs.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For privileged tests: true when root. Otherwise the test should return early: this
/// prints `SKIPPED (needs root): <test>` and returns false, unless
/// `INFERLANE_REQUIRE_PRIVILEGED=1` is set (as in CI), where a skip would hide a gap in
/// coverage, so it panics instead.
pub fn require_root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("INFERLANE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!(
            "privileged test {test} is required (INFERLANE_REQUIRE_PRIVILEGED=1) \
             but cannot run: it needs root (euid 0)"
        );
    }
    eprintln!("SKIPPED (needs root): {test}");
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_are_unique_and_short() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "ba");
        let all: std::collections::HashSet<_> = (0..2000).map(letters).collect();
        assert_eq!(all.len(), 2000);
    }

    #[test]
    fn parses_ip_json_link_stats() {
        let json = r#"[{"ifname":"down0","stats64":{"rx":{"bytes":10,"packets":1,"errors":0},
            "tx":{"bytes":20,"packets":2,"errors":0}}}]"#;
        assert_eq!(
            parse_link_stats(json).unwrap(),
            LinkStats {
                rx_packets: 1,
                rx_bytes: 10,
                tx_packets: 2,
                tx_bytes: 20
            }
        );
        assert!(parse_link_stats("[]")
            .unwrap_err()
            .contains("expected one link"));
    }
}
