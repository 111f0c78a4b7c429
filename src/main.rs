//! The `inferlane` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use inferlane::control::{self, Request, Response};

const DEFAULT_CONFIG: &str = "/etc/inferlane/inferlane.toml";
const DEFAULT_SOCKET: &str = "/run/inferlane/control.sock";

#[derive(Parser)]
#[command(name = "inferlane", version, about = "Recognise, queue, route and report AI traffic on a Linux router")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this).
    Run {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Enter this named network namespace first (used by the lab and tests).
        #[arg(long, value_name = "NAME")]
        netns: Option<String>,
    },
    /// Validate a config file: exit 0, or exit 2 printing FILE:LINE:COL: message.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the running daemon's state.
    Status {
        #[command(flatten)]
        target: SocketArgs,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the live flows, busiest first.
    Flows {
        #[command(flatten)]
        target: SocketArgs,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view of classes, providers, uplinks and the busiest flows (q quits).
    Top {
        #[command(flatten)]
        target: SocketArgs,
        /// Print one frame as plain text and exit (no raw mode: for scripts and tests).
        #[arg(long)]
        once: bool,
        /// Width and height of the --once frame.
        #[arg(long, value_name = "COLSxROWS", default_value = "160x40", value_parser = parse_size)]
        size: (u16, u16),
    },
    /// Make the running daemon re-read its config (as SIGHUP does); exit 1 if refused.
    Reload {
        #[command(flatten)]
        target: SocketArgs,
    },
    /// Hand the running daemon over to a successor: programs stay attached
    /// (pinned links), routing and queues stay, flow and export state carry over;
    /// the daemon exits with status 75 and systemd starts the new one.
    Restart {
        #[command(flatten)]
        target: SocketArgs,
    },
    /// Build a namespace lab, run the daemon in it, drive traffic, report, tear down.
    Lab {
        /// Seconds of traffic per test.
        #[arg(long, default_value_t = 2)]
        seconds: u32,
    },
}

#[derive(clap::Args)]
struct SocketArgs {
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
    /// Read the control socket's path from this config file.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

impl SocketArgs {
    fn resolve(&self) -> Result<PathBuf, ExitCode> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        let Some(path) = &self.config else { return Ok(PathBuf::from(DEFAULT_SOCKET)) };
        match inferlane::config::load(path) {
            Ok(c) => Ok(c.daemon.control_socket),
            Err(e) => {
                eprintln!("{e}");
                Err(ExitCode::from(2))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Check { config } => match inferlane::daemon::prepare(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, netns } => {
            // Before the runtime's threads exist (see inferlane::mem).
            inferlane::mem::tune();
            match inferlane::daemon::run(inferlane::daemon::RunOptions { config, netns }) {
                Ok(inferlane::restart::Stopped::Clean) => ExitCode::SUCCESS,
                Ok(inferlane::restart::Stopped::Handover) => ExitCode::from(inferlane::restart::EXIT_HANDOVER),
                Err(inferlane::daemon::DaemonError::Config(e)) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    let text = error_chain(&e);
                    tracing::error!("{text}");
                    eprintln!("inferlane: {text}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { target, json } => {
            let path = match target.resolve() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::client::request(&path, &Request::Status) {
                Ok(Response::Status(s)) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s).expect("status serialises"));
                    } else {
                        print!("{}", s.render());
                    }
                    ExitCode::SUCCESS
                }
                other => unexpected(other),
            }
        }
        Command::Flows { target, json } => {
            let path = match target.resolve() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::client::request(&path, &Request::Flows) {
                Ok(Response::Flows { flows }) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&flows).expect("flows serialise"));
                    } else {
                        print!("{}", control::flows::render(&flows));
                    }
                    ExitCode::SUCCESS
                }
                other => unexpected(other),
            }
        }
        Command::Top { target, once, size } => {
            let path = match target.resolve() {
                Ok(p) => p,
                Err(code) => return code,
            };
            if once {
                let mut model = control::top::Model::default();
                model.refresh(&path);
                if let Some(e) = &model.error {
                    eprintln!("inferlane: {e}");
                    return ExitCode::FAILURE;
                }
                print!("{}", control::top::render_text(&model, size.0, size.1));
                return ExitCode::SUCCESS;
            }
            match control::top::run(&path, std::time::Duration::from_secs(1)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("inferlane top: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload { target } => {
            let path = match target.resolve() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::client::request(&path, &Request::Reload) {
                Ok(Response::Reload(r)) if r.applied => {
                    println!("reloaded: generation {}", r.generation);
                    ExitCode::SUCCESS
                }
                Ok(Response::Reload(r)) => {
                    eprintln!("inferlane: reload refused, generation {} stays in force:\n{}", r.generation, r.message);
                    ExitCode::FAILURE
                }
                other => unexpected(other),
            }
        }
        Command::Restart { target } => {
            let path = match target.resolve() {
                Ok(p) => p,
                Err(code) => return code,
            };
            match control::client::request(&path, &Request::Restart) {
                Ok(Response::Restarting { pid }) => {
                    println!("daemon {pid} is handing over (exit 75); its successor adopts the datapath");
                    ExitCode::SUCCESS
                }
                other => unexpected(other),
            }
        }
        Command::Lab { seconds } => {
            let exe = match std::env::current_exe() {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("inferlane: cannot find my own binary: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match inferlane::lab::scenario::run_demo(&exe, seconds) {
                Ok(report) => {
                    print!("{}", report.render());
                    if report.ok() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(inferlane::lab::scenario::ScenarioError::Interrupted) => {
                    eprintln!("inferlane lab: interrupted; lab torn down");
                    ExitCode::from(130)
                }
                Err(e) => {
                    eprintln!("inferlane lab: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn parse_size(s: &str) -> Result<(u16, u16), String> {
    let (w, h) = s.split_once('x').ok_or("expected COLSxROWS, like 160x40")?;
    let n = |v: &str| v.parse::<u16>().ok().filter(|&n| (20..=1000).contains(&n)).ok_or(format!("{v}: 20 to 1000"));
    Ok((n(w)?, n(h)?))
}

fn unexpected(answer: Result<Response, control::ControlError>) -> ExitCode {
    match answer {
        Ok(other) => eprintln!("inferlane: unexpected answer from the daemon: {other:?}"),
        Err(e) => eprintln!("inferlane: {e}"),
    }
    ExitCode::FAILURE
}

/// The error and its sources, each added only when the message does not already
/// carry it (thiserror messages often embed their source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

/// Structured logs to stderr; journald captures them under systemd. RUST_LOG
/// overrides the level (default info).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        // Colour codes only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
