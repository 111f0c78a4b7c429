//! A named network namespace owned by the lab, removed when the guard is dropped.
//!
//! Namespaces are made with `ip netns add` so that they are visible to people debugging
//! (`ip netns list`, `ip netns exec`) exactly as the lab sees them.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::error::{LabError, LabErrors};

/// Where `ip netns add` bind-mounts namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Owns one named network namespace. Dropping it kills every process still inside and
/// deletes the namespace; deleting the namespace destroys its interfaces and qdiscs.
#[derive(Debug)]
pub struct Netns {
    name: String,
    removed: bool,
}

impl Netns {
    /// Creates the namespace. Fails (without touching it) if the name is taken, so a
    /// guard only ever owns a namespace it created itself.
    pub fn add(name: &str) -> Result<Netns, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "add", name]);
        run_command(cmd, &format!("ip netns add {name}"), name, None)?;
        Ok(Netns {
            name: name.to_owned(),
            removed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`: the program runs in this namespace (and, through
    /// `ip`, sees a /sys that matches it).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args` in the namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_command(cmd, &describe(program, args), &self.name, None)
    }

    /// Feeds `script` to `ip -n NAME -batch -`: one process for a whole list of
    /// link/addr/route commands, which keeps a lab build fast. `ip` stops at the first
    /// failing line and names it in the error.
    pub fn ip_batch(&self, script: &str) -> Result<(), LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        run_command(cmd, "ip -batch -", &self.name, Some(script))
            .map(drop)
            .map_err(|e| with_batch_line(e, script))
    }

    /// Same as [`Netns::ip_batch`] for `tc`.
    pub fn tc_batch(&self, script: &str) -> Result<(), LabError> {
        let mut cmd = Command::new("tc");
        cmd.args(["-n", &self.name, "-batch", "-"]);
        run_command(cmd, "tc -batch -", &self.name, Some(script))
            .map(drop)
            .map_err(|e| with_batch_line(e, script))
    }

    /// Loads an nftables ruleset (`nft -f -`) in the namespace; atomic, as nft applies a
    /// file as one transaction.
    pub fn nft(&self, ruleset: &str) -> Result<(), LabError> {
        let mut cmd = self.command("nft");
        cmd.args(["-f", "-"]);
        run_command(cmd, "nft -f -", &self.name, Some(ruleset)).map(drop)
    }

    /// Runs `f` on a fresh thread that has joined this namespace, so the caller's own
    /// threads never change namespace. Used for sysctl writes and ICMP probes, which need
    /// no process of their own.
    pub fn run_in<T, F>(&self, what: &str, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> io::Result<T> + Send,
        T: Send,
    {
        let io_err = |source| LabError::Io {
            what: what.to_owned(),
            ns: self.name.clone(),
            source,
        };
        let file = File::open(self.path()).map_err(io_err)?;
        // setns(CLONE_NEWNET) only affects the calling thread, and the thread ends
        // with the closure, so no other code ever runs in the wrong namespace.
        let result = thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                f()
            })
            .join()
        });
        match result {
            Ok(r) => r.map_err(io_err),
            Err(_) => Err(io_err(io::Error::other("thread panicked"))),
        }
    }

    /// Writes sysctls (names as in `sysctl`, e.g. `net.ipv4.ip_forward`) inside the
    /// namespace. /proc/sys/net resolves against the writing thread's namespace, so this
    /// needs no `sysctl` binary and no process per write.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> Result<(), LabError> {
        for &(key, value) in settings {
            let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
            self.run_in(&format!("sysctl {key}={value}"), || fs::write(&path, value))?;
        }
        Ok(())
    }

    /// Pids of every process whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "pids", &self.name]);
        let what = format!("ip netns pids {}", self.name);
        let out = run_command(cmd, &what, &self.name, None)?;
        out.split_whitespace()
            .map(|p| {
                p.parse::<i32>().map_err(|e| LabError::Parse {
                    what: what.clone(),
                    ns: self.name.clone(),
                    detail: format!("{p:?}: {e}"),
                })
            })
            .collect()
    }

    /// Kills what is left inside, then deletes the namespace. Reports every failure and
    /// keeps going: a namespace we could not empty is still deleted by name, and the
    /// kernel frees it once the last process in it exits.
    pub fn remove(mut self) -> Result<(), LabErrors> {
        self.remove_inner()
    }

    fn remove_inner(&mut self) -> Result<(), LabErrors> {
        if self.removed {
            return Ok(());
        }
        self.removed = true;
        let mut errors = LabErrors::default();
        if let Err(e) = self.kill_all() {
            errors.push(e);
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "del", &self.name]);
        if let Err(e) = run_command(
            cmd,
            &format!("ip netns del {}", self.name),
            &self.name,
            None,
        ) {
            // Already gone (someone ran `ip netns del` by hand) is what we wanted.
            if self.path().exists() {
                errors.push(e);
            }
        }
        errors.into_result()
    }

    /// SIGKILL for everything still inside: by now the owners had their chance to stop
    /// gracefully (the lab sends SIGTERM to its own children first).
    fn kill_all(&self) -> Result<(), LabError> {
        let me = std::process::id() as i32;
        for pid in self.pids()? {
            // Never ourselves: a thread of ours may be inside for a probe, and
            // `ip netns pids` would then list our pid.
            if pid == me {
                continue;
            }
            match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(LabError::Io {
                        what: format!("kill -KILL {pid}"),
                        ns: self.name.clone(),
                        source: e.into(),
                    })
                }
            }
        }
        Ok(())
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.remove_inner() {
            tracing::warn!(netns = %self.name, "removing lab namespace: {e}");
        }
    }
}

/// Lists the names of all named namespaces (`ip netns list`), for leak checks.
pub fn list() -> Result<Vec<String>, LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    let out = run_command(cmd, "ip netns list", "(host)", None)?;
    // Lines look like "name" or "name (id: 3)".
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Runs `cmd` to completion, optionally feeding `stdin`, and returns stdout. A non-zero
/// exit becomes [`LabError::Command`] carrying stderr.
pub(crate) fn run_command(
    mut cmd: Command,
    what: &str,
    ns: &str,
    stdin: Option<&str>,
) -> Result<String, LabError> {
    let spawn_err = |source| LabError::Spawn {
        what: what.to_owned(),
        ns: ns.to_owned(),
        source,
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Scripts are a few KiB, well under a pipe buffer, so this write cannot block on
        // the child filling its stdout. A write error shows up as the child's failure.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            what: what.to_owned(),
            ns: ns.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

pub(crate) fn describe(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ip`/`tc -batch` report a failure as "Command failed -:N"; put line N into the error
/// so it says which command failed, not just where.
fn with_batch_line(e: LabError, script: &str) -> LabError {
    match e {
        LabError::Command {
            what,
            ns,
            status,
            stderr,
        } => {
            let line = stderr
                .rsplit_once("Command failed -:")
                .and_then(|(_, n)| n.trim().parse::<usize>().ok())
                .and_then(|n| script.lines().nth(n.checked_sub(1)?));
            let what = match line {
                Some(l) => format!("{what} (line `{}`)", l.trim()),
                None => what,
            };
            LabError::Command {
                what,
                ns,
                status,
                stderr,
            }
        }
        other => other,
    }
}
