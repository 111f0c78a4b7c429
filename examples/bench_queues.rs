//! Interactive round trips under bulk, with and without inferlane's queues.
//!
//!     make bench            # or: cargo run --release --example bench_queues -- --write BENCHMARKS.md
//!
//! As root. The lab's fiber is a 20 mbit TBF with a 100 ms buffer in isp1; the
//! daemon shapes it at 18 mbit both ways (enforce) or builds no qdiscs (observe).
//! An interactive client (64-byte request, 4 KiB streamed reply, one every 50 ms)
//! measures round trips idle and while an iperf3 CUBIC transfer saturates the
//! fiber upward, then downward (see src/lab/queues.rs). `--rounds N` repeats the
//! whole measurement and reports the median of the per-round figures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use inferlane::lab::queues::{self, figures, QueueFigures, RrServer, SHAPE_DOWN, SHAPE_UP, TBF_KBIT};
use inferlane::lab::scenario::{start_iperf_server, DaemonProcess, WorkDir};
use inferlane::lab::{Lab, LabOptions};

const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(8);

fn daemon_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/examples/bench_queues -> target/<profile>/inferlane
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("inferlane");
    assert!(bin.exists(), "expected the daemon at {} (cargo build --release --bin inferlane)", bin.display());
    bin
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn run(enforce: bool, rounds: usize) -> Vec<QueueFigures> {
    let work = WorkDir::new(if enforce { "bench-queues-on" } else { "bench-queues-off" }).expect("work dir");
    let mut lab = Lab::build(&LabOptions { isp1_rate_kbit: Some(TBF_KBIT), isp2_rate_kbit: None }).expect("lab");
    start_iperf_server(&mut lab).expect("iperf3 server");
    let rr = RrServer::start(&lab).expect("request/response server");
    let socket = work.path().join("control.sock");
    let mut daemon = DaemonProcess::start(&daemon_bin(), &lab, &work, &queues::config(&socket, enforce, SHAPE_UP, SHAPE_DOWN))
        .expect("daemon");
    let mut out = Vec::new();
    for round in 0..rounds {
        let f = figures(&lab, WARMUP, MEASURE).expect("measure");
        println!(
            "{} round {round}: idle p50 {:.1} p99 {:.1} | up p50 {:.1} p99 {:.1} bulk {:.1} | down p50 {:.1} p99 {:.1} bulk {:.1}",
            if enforce { "with" } else { "without" },
            f.idle.p50(),
            f.idle.p99(),
            f.upload.p50(),
            f.upload.p99(),
            f.upload_bps / 1e6,
            f.download.p50(),
            f.download.p99(),
            f.download_bps / 1e6
        );
        out.push(f);
    }
    daemon.stop(Duration::from_secs(10)).expect("stop the daemon");
    drop(rr);
    lab.teardown().expect("lab teardown");
    out
}

struct Row {
    idle: (f64, f64),
    up: (f64, f64, f64),
    down: (f64, f64, f64),
}

fn summarize(f: &[QueueFigures]) -> Row {
    let m = |g: &dyn Fn(&QueueFigures) -> f64| median(f.iter().map(g).collect());
    Row {
        idle: (m(&|x| x.idle.p50()), m(&|x| x.idle.p99())),
        up: (m(&|x| x.upload.p50()), m(&|x| x.upload.p99()), m(&|x| x.upload_bps / 1e6)),
        down: (m(&|x| x.download.p50()), m(&|x| x.download.p99()), m(&|x| x.download_bps / 1e6)),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let write = args.iter().skip_while(|a| *a != "--write").nth(1).cloned();
    let rounds: usize = args.iter().skip_while(|a| *a != "--rounds").nth(1).and_then(|n| n.parse().ok()).unwrap_or(3);
    let without = summarize(&run(false, rounds));
    let with = summarize(&run(true, rounds));
    let link = TBF_KBIT as f64 / 1000.0;

    let mut table = String::from(
        "| interactive round trip (ms) | p50 | p99 |\n|---|---|---|\n",
    );
    let line = |name: &str, (p50, p99): (f64, f64)| format!("| {name} | {p50:.1} | {p99:.1} |\n");
    table.push_str(&line("idle (with inferlane)", with.idle));
    table.push_str(&line("idle (without)", without.idle));
    table.push_str(&line("upload bottleneck, bulk, without inferlane", (without.up.0, without.up.1)));
    table.push_str(&line("upload bottleneck, bulk, with inferlane", (with.up.0, with.up.1)));
    table.push_str(&line("download bottleneck, bulk, without inferlane", (without.down.0, without.down.1)));
    table.push_str(&line("download bottleneck, bulk, with inferlane", (with.down.0, with.down.1)));
    // iperf3 reports goodput; the link (the TBF) carries whole frames. Full
    // segments of the bulk stream are 1448 payload bytes in 1514-byte frames
    // (IP 20 + TCP with timestamps 32 + Ethernet 14), so the link's share is the
    // goodput times 1514/1448.
    let wire = |goodput: f64| 100.0 * goodput * (1514.0 / 1448.0) / link;
    table.push_str(&format!(
        "\n| bulk throughput (link {link:.0} mbit/s) | without: goodput | without: link share | with inferlane: goodput | with inferlane: link share |\n|---|---|---|---|---|\n\
         | upload | {:.1} mbit/s ({:.0} %) | {:.0} % | {:.1} mbit/s ({:.0} %) | {:.0} % |\n\
         | download | {:.1} mbit/s ({:.0} %) | {:.0} % | {:.1} mbit/s ({:.0} %) | {:.0} % |\n",
        without.up.2,
        100.0 * without.up.2 / link,
        wire(without.up.2),
        with.up.2,
        100.0 * with.up.2 / link,
        wire(with.up.2),
        without.down.2,
        100.0 * without.down.2 / link,
        wire(without.down.2),
        with.down.2,
        100.0 * with.down.2 / link,
        wire(with.down.2),
    ));
    println!("\n{table}");

    if let Some(path) = write {
        const TITLE: &str = "## Interactive round trips under bulk (queues)";
        let section = format!(
            "{TITLE}\n\n\
             Command: `make bench` (`cargo run --release --example bench_queues -- --write BENCHMARKS.md`), as root.\n\
             Kernel {}, {} CPUs, load average (1 min) {} at the end of the run (the machine is shared: \
             other work on it shows as outliers in the p99s, idle ones included). Lab fiber: TBF {link:.0} mbit with a 100 ms buffer in isp1 (bufferbloat). \
             With inferlane: enforce mode, fiber egress_rate = {SHAPE_UP}, ingress_rate = {SHAPE_DOWN} (HTB, leaf {}); without: observe mode (no qdiscs). \
             Interactive client: one TCP connection, 64-byte request, 4 KiB reply streamed in four writes, one every 50 ms, \
             classified interactive (queue high) by port; bulk: one iperf3 CUBIC stream, classified bulk (queue low) by port, \
             {}-s warm-up then {} s of round trips. Median of {rounds} rounds of each figure. \
             The high class's buckets hold 16 KiB, the others 1 ms of their rate (README, Queues). \
             Bulk throughput: iperf3's goodput (payload), and the share of the link its frames take (goodput x 1514/1448, \
             full segments); the link's rate counts frames, as the TBF does.\n\n{table}\n",
            kernel(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            load_average(),
            "bfifo (this kernel has neither fq_codel nor cake)",
            WARMUP.as_secs(),
            MEASURE.as_secs(),
        );
        inferlane::lab::scenario::write_bench_section(Path::new(&path), TITLE, &section).expect("write BENCHMARKS.md");
        println!("written to {path}");
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}
