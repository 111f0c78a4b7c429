//! `inferlane run`: attach the datapath to the LAN interfaces, serve the control
//! socket, wait for a signal, tear everything down in reverse order.
//!
//! The daemon never sits in the packet path: if it dies, the kernel drops its
//! links and forwarding carries on untouched (fail open).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::bpf::{BpfError, Datapath};
use crate::config::{self, Config, Mode};
use crate::control::server::{ControlSocket, Handler};
use crate::control::{ControlError, InterfaceStatus, Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(config::ConfigErrors),
    #[error("enter network namespace {name}: {reason}")]
    Netns { name: String, reason: String },
    #[error("start runtime: {0}")]
    Runtime(std::io::Error),
    /// Boxed: aya's errors are large, and this enum travels through every `?`.
    #[error(transparent)]
    Bpf(Box<BpfError>),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("teardown: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<String>),
}

impl From<BpfError> for DaemonError {
    fn from(e: BpfError) -> Self {
        DaemonError::Bpf(Box::new(e))
    }
}

pub struct RunOptions {
    pub config: PathBuf,
    /// Enter this named network namespace (/run/netns/NAME) before anything else.
    /// The lab uses it; unlike `ip netns exec` it keeps the host's mount namespace,
    /// so the daemon's bpffs and sockets are the host's.
    pub netns: Option<String>,
}

pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    let config = config::load(&opts.config).map_err(DaemonError::Config)?;
    if let Some(name) = &opts.netns {
        enter_netns(name)?;
    }
    // Two workers: the daemon does little per second; the datapath is in the kernel.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(config, opts.config))
}

/// setns() affects only the calling thread, so it must happen before the runtime
/// spawns its workers: they inherit this thread's namespace.
fn enter_netns(name: &str) -> Result<(), DaemonError> {
    let err = |reason: String| DaemonError::Netns { name: name.into(), reason };
    if name.contains('/') || name.is_empty() {
        return Err(err("not a namespace name".into()));
    }
    let file = std::fs::File::open(Path::new("/run/netns").join(name)).map_err(|e| err(e.to_string()))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err(e.to_string()))
}

struct State {
    datapath: Mutex<Datapath>,
    mode: Mode,
    config_path: String,
    started: Instant,
}

impl Handler for State {
    fn handle(&self, req: Request) -> Response {
        match req {
            Request::Status => match self.status() {
                Ok(s) => Response::Status(s),
                Err(e) => Response::Error { message: e.to_string() },
            },
        }
    }
}

impl State {
    fn status(&self) -> Result<Status, BpfError> {
        let dp = self.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let counters = dp.counters()?;
        let interfaces = dp
            .attachments()
            .into_iter()
            .map(|a| {
                let c = counters.get(&a.iface).cloned().unwrap_or_default();
                InterfaceStatus {
                    name: a.iface,
                    ifindex: a.ifindex,
                    xdp: a.xdp,
                    tc: a.tc,
                    xdp_prog_id: a.xdp_prog_id,
                    tc_prog_id: a.tc_prog_id,
                    upload: c.upload,
                    download: c.download,
                }
            })
            .collect();
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            mode: mode_name(self.mode).into(),
            config: self.config_path.clone(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            interfaces,
        })
    }
}

/// Load the programs and attach them to every LAN interface. On error the
/// partly attached datapath is dropped, which detaches it: nothing half-applied.
fn attach_all(config: &Config) -> Result<Datapath, DaemonError> {
    let mut datapath = Datapath::load()?;
    for iface in &config.lan.interfaces {
        let a = datapath.attach(iface)?;
        tracing::info!(iface = %a.iface, ifindex = a.ifindex, xdp = ?a.xdp, tc = ?a.tc, "attached");
    }
    Ok(datapath)
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Enforce => "enforce",
        Mode::Observe => "observe",
    }
}

async fn serve(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    // Signal handlers first: a SIGTERM that arrives while we attach must still
    // lead to a clean teardown, not to the default action.
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;

    // The control socket first: it is also the single-instance lock, so a second
    // daemon is refused before it touches any kernel object of the first.
    let mut socket = ControlSocket::bind(&config.daemon.control_socket)?;
    let datapath = match attach_all(&config) {
        Ok(dp) => dp,
        Err(e) => {
            if let Err(re) = socket.remove() {
                tracing::error!(error = %re, "remove control socket");
            }
            return Err(e);
        }
    };
    let state = Arc::new(State {
        datapath: Mutex::new(datapath),
        mode: config.daemon.mode,
        config_path: config_path.display().to_string(),
        started: Instant::now(),
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let handler: Arc<dyn Handler> = state.clone();
    let control = tokio::spawn(async move {
        socket.serve(handler, shutdown_rx).await;
        socket
    });

    // Readiness: programs attached, control socket answering.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(mode = mode_name(config.daemon.mode), socket = %config.daemon.control_socket.display(), "ready");

    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = sighup.recv() => {
                // Applying a new config without a restart arrives with the rule maps
                // (issue 3). Until then: check it, say so, keep running unchanged.
                match config::load(&config_path) {
                    Ok(_) => tracing::warn!("SIGHUP: config is valid, but live reload is not implemented yet; restart to apply"),
                    Err(e) => tracing::error!(errors = %e, "SIGHUP: config is invalid; keeping the running one"),
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);

    // Teardown in reverse order, past failures, reporting all of them: stop
    // answering, detach the datapath, then give up the socket (our instance lock).
    let mut errors = Vec::new();
    let _ = shutdown_tx.send(true);
    let socket = match control.await {
        Ok(socket) => Some(socket),
        Err(e) => {
            errors.push(format!("control task: {e}"));
            None
        }
    };
    match Arc::try_unwrap(state) {
        Ok(state) => {
            let mut dp = state.datapath.into_inner().unwrap_or_else(|p| p.into_inner());
            errors.extend(dp.detach_all().into_iter().map(|e| e.to_string()));
        }
        // A connection task still holds the state: the last holder's drop detaches
        // (Datapath::drop). Connections time out after 5 s.
        Err(_) => errors.push("control connection still open at shutdown; detached on its drop".into()),
    }
    if let Some(mut socket) = socket {
        if let Err(e) = socket.remove() {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        tracing::info!("stopped cleanly");
        Ok(())
    } else {
        Err(DaemonError::Teardown(errors))
    }
}
