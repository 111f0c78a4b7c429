//! The queue scenery shared by tests/queues_e2e.rs and examples/bench_queues.rs:
//! a bufferbloated fiber (TBF with a 100 ms buffer in isp1), a config that shapes
//! it a little below the TBF rate, a request/response server with a streamed reply
//! (the interactive client measures round trips), and iperf3 bulk transfers in
//! either direction through the same uplink.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::scenario::{iperf, ScenarioError, TrafficRun};
use super::{addr, Lab, Role};

/// The TBF bottleneck in isp1, both directions.
pub const TBF_KBIT: u64 = 20_000;
/// inferlane's shaping of the fiber upward (egress_rate): 95 % of the TBF rate.
/// Upload shaping sits before the bottleneck, so a little headroom is enough.
pub const SHAPE_UP: &str = "19mbit";
/// Downward (ingress_rate): 92.5 %. Download shaping acts after the bottleneck:
/// the sender's bursts still reach the ISP's buffer at line rate and drain only
/// at the gap between the link and our rate, so it needs the larger gap (the
/// same advice SQM gives for ingress). At 95 % the lab's download p99 under load
/// reached 20 ms; at 92.5 %, 3-4 ms on a quiet machine (2 ms at 90 %, where bulk
/// kept only 84 % of the link as goodput).
pub const SHAPE_DOWN: &str = "18500kbit";
/// The lte's rates (its download rate is what the LAN trees follow on failover).
pub const LTE_RATE: &str = "8mbit";
/// The interactive request/response port (a static rule makes it interactive).
pub const RR_PORT: u16 = 7000;
/// The bulk port: iperf3's (a static rule makes it bulk).
pub const BULK_PORT: u16 = 5201;
pub const REQUEST_BYTES: usize = 64;
/// The streamed reply: 4 writes of 1 KiB.
pub const REPLY_CHUNK: usize = 1024;
pub const REPLY_CHUNKS: usize = 4;
/// One request every 50 ms: 4 KiB each is 0.66 mbit/s, light next to the bulk.
pub const RR_INTERVAL: Duration = Duration::from_millis(50);

/// The config: enforce (queues on the fiber at `egress`/`ingress`) or observe
/// (classify and count, no qdiscs: "without inferlane's queues").
pub fn config(socket: &Path, enforce: bool, egress: &str, ingress: &str) -> String {
    format!(
        r#"[daemon]
mode = "{mode}"
control_socket = "{socket}"

[lan]
interfaces = ["{lan}"]

[[uplinks]]
name = "fiber"
interface = "{wan1}"
priority = 10
egress_rate = "{egress}"
ingress_rate = "{ingress}"

[[uplinks]]
name = "lte"
interface = "{wan2}"
priority = 20
metered = true
egress_rate = "{lte}"
ingress_rate = "{lte}"

[[classes]]
name = "interactive"
dscp = "AF41"
queue = "high"
uplinks = ["fiber", "lte"]

[[classes]]
name = "bulk"
dscp = "LE"
queue = "low"
uplinks = ["fiber"]

[[rules]]
class = "interactive"
ports = ["tcp:{rr}"]

[[rules]]
class = "bulk"
ports = ["tcp:{bulk}"]
"#,
        mode = if enforce { "enforce" } else { "observe" },
        socket = socket.display(),
        lan = addr::ROUTER_LAN_IF,
        wan1 = addr::ROUTER_WAN1_IF,
        wan2 = addr::ROUTER_WAN2_IF,
        lte = LTE_RATE,
        rr = RR_PORT,
        bulk = BULK_PORT,
    )
}

/// Runs `f` on a new thread inside the named network namespace.
fn spawn_in<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<JoinHandle<std::io::Result<T>>> {
    let file = std::fs::File::open(Path::new("/run/netns").join(netns))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
        f()
    }))
}

/// The request/response server in `inet`: for each 64-byte request, a 4 KiB
/// reply in four writes. Stops (and is joined) when dropped.
pub struct RrServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RrServer {
    pub fn start(lab: &Lab) -> Result<RrServer, ScenarioError> {
        let io = |source| ScenarioError::Io { what: "request/response server".into(), source };
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = spawn_in(lab.netns(Role::Inet), move || {
            let listener = TcpListener::bind(SocketAddr::new(addr::SERVER_V4.into(), RR_PORT));
            let listener = match listener {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return Err(e);
                }
            };
            listener.set_nonblocking(true)?;
            let mut conns = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let flag = flag.clone();
                        conns.push(std::thread::spawn(move || serve(conn, &flag)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
                    Err(e) => return Err(e),
                }
            }
            for c in conns {
                let _ = c.join();
            }
            Ok(())
        })
        .map_err(io)?;
        let server = RrServer { stop, thread: Some(thread) };
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => Err(ScenarioError::Traffic { what: "request/response server".into(), detail: e }),
            Err(_) => Err(ScenarioError::Traffic { what: "request/response server".into(), detail: "did not start".into() }),
        }
    }
}

fn serve(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut req = [0u8; REQUEST_BYTES];
    let chunk = [0x42u8; REPLY_CHUNK];
    while !stop.load(Ordering::Relaxed) {
        match conn.read_exact(&mut req) {
            Ok(()) => {
                for _ in 0..REPLY_CHUNKS {
                    if conn.write_all(&chunk).is_err() {
                        return;
                    }
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return,
        }
    }
}

impl Drop for RrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Round trips of the interactive client: one TCP connection from the LAN
/// client, a request every `interval`, for `duration`. A round trip is from
/// the request's write to the reply's last byte.
pub fn round_trips(lab: &Lab, duration: Duration, interval: Duration) -> Result<Rtts, ScenarioError> {
    let rtts = lab.ns(Role::Lan).run_in("interactive client", move || {
        let to = SocketAddr::new(addr::SERVER_V4.into(), RR_PORT);
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let req = [0x11u8; REQUEST_BYTES];
        let mut reply = vec![0u8; REPLY_CHUNK * REPLY_CHUNKS];
        let mut out = Vec::new();
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < duration {
            let t = Instant::now();
            s.write_all(&req)?;
            s.read_exact(&mut reply)?;
            out.push(t.elapsed());
            n += 1;
            if let Some(wait) = (start + interval * n).checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(out)
    })?;
    Ok(Rtts(rtts))
}

/// Measured round trips.
#[derive(Debug, Clone, Default)]
pub struct Rtts(pub Vec<Duration>);

impl Rtts {
    /// Nearest-rank percentile, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let mut v: Vec<Duration> = self.0.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort();
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1].as_secs_f64() * 1000.0
    }

    pub fn p50(&self) -> f64 {
        self.percentile_ms(50.0)
    }

    pub fn p99(&self) -> f64 {
        self.percentile_ms(99.0)
    }
}

/// Which way the bulk transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Upload,
    Download,
}

/// Round trips while an iperf3 bulk transfer saturates the fiber in `dir`: the
/// transfer runs `warmup + measure + 1 s`; round trips are taken after the
/// warm-up, once the queues have filled. Returns the round trips and the
/// transfer's throughput.
pub fn under_bulk(lab: &Lab, dir: Direction, warmup: Duration, measure: Duration) -> Result<(Rtts, TrafficRun), ScenarioError> {
    let secs = (warmup + measure).as_secs() + 1;
    let t = secs.to_string();
    let server = addr::SERVER_V4.to_string();
    std::thread::scope(|sc| {
        let bulk = sc.spawn(|| {
            // CUBIC, the default of most senders: loss-based, it fills whatever
            // buffer the bottleneck has (the hosts here default to BBR, which
            // keeps its own queue short and would hide the bufferbloat).
            let mut args = vec!["-c", server.as_str(), "-t", t.as_str(), "-p", "5201", "-C", "cubic"];
            if dir == Direction::Download {
                args.push("-R");
            }
            iperf(lab, &format!("bulk {dir:?}"), &args)
        });
        std::thread::sleep(warmup);
        let rtts = round_trips(lab, measure, RR_INTERVAL);
        let run = bulk.join().map_err(|_| ScenarioError::Traffic { what: "bulk".into(), detail: "panicked".into() })?;
        Ok((rtts?, run?))
    })
}

/// One configuration's figures.
#[derive(Debug, Clone)]
pub struct QueueFigures {
    pub idle: Rtts,
    pub upload: Rtts,
    pub upload_bps: f64,
    pub download: Rtts,
    pub download_bps: f64,
}

/// Idle, then bulk upload, then bulk download, measuring `measure` each.
pub fn figures(lab: &Lab, warmup: Duration, measure: Duration) -> Result<QueueFigures, ScenarioError> {
    let idle = round_trips(lab, measure, RR_INTERVAL)?;
    let (upload, up) = under_bulk(lab, Direction::Upload, warmup, measure)?;
    // Let the bottleneck drain between the runs.
    std::thread::sleep(Duration::from_millis(500));
    let (download, down) = under_bulk(lab, Direction::Download, warmup, measure)?;
    Ok(QueueFigures { idle, upload, upload_bps: up.bits_per_second, download, download_bps: down.bits_per_second })
}

/// Our root qdisc on `dev` in the router: (kind, the rate of class 1a1:1 in
/// bit/s, leaf classes 1a1:10/20/30/40 present), from `tc -j`. None: no `1a1:` root.
pub fn htb_tree(lab: &Lab, dev: &str) -> Result<Option<(String, u64, usize)>, ScenarioError> {
    let parse = |what: &str, text: String| -> Result<serde_json::Value, ScenarioError> {
        serde_json::from_str(&text).map_err(|e| ScenarioError::Traffic { what: what.into(), detail: format!("{e}: {text}") })
    };
    let qdiscs = parse("tc qdisc", lab.run(Role::Router, "tc", &["-j", "qdisc", "show", "dev", dev])?)?;
    let root = qdiscs
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["root"].as_bool() == Some(true) && q["handle"].as_str() == Some("1a1:"));
    let Some(root) = root else { return Ok(None) };
    let kind = root["kind"].as_str().unwrap_or_default().to_string();
    // `tc -j class show` prints no JSON for HTB classes here: read the text,
    // "class htb 1a1:1 root rate 18Mbit ceil 18Mbit ...".
    let text = lab.run(Role::Router, "tc", &["class", "show", "dev", dev])?;
    let classes: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    fn handle_of<'a>(c: &[&'a str]) -> Option<&'a str> {
        c.get(2).copied()
    }
    let rate = classes
        .iter()
        .find(|c| handle_of(c) == Some("1a1:1"))
        .and_then(|c| c.iter().position(|w| *w == "rate").and_then(|i| c.get(i + 1)))
        .and_then(|r| tc_rate_bits(r))
        .unwrap_or(0);
    let leaves = ["1a1:10", "1a1:20", "1a1:30", "1a1:40"]
        .iter()
        .filter(|h| classes.iter().any(|c| handle_of(c) == Some(**h)))
        .count();
    Ok(Some((kind, rate, leaves)))
}

/// A rate as tc prints it ("18Mbit", "7200Kbit", "500bit") in bit/s.
fn tc_rate_bits(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (num, unit) = text.split_at(split);
    let scale = match unit {
        "bit" => 1.0,
        "Kbit" => 1e3,
        "Mbit" => 1e6,
        "Gbit" => 1e9,
        _ => return None,
    };
    Some((num.parse::<f64>().ok()? * scale).round() as u64)
}
