//! Benchmark: eBPF run time per packet of the LAN programs, measured by the kernel
//! through BPF_PROG_TEST_RUN (the average over `repeat` runs, as the kernel reports
//! it). Several rounds per case, the median quoted. Run as root:
//!
//!     make bench            # or: cargo run --release --example bench_datapath -- --write BENCHMARKS.md

use std::time::Duration;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use inferlane::bpf::Datapath;
use pnet::packet::ethernet::{EtherTypes, MutableEthernetPacket};
use pnet::packet::ip::IpNextHeaderProtocols;
use pnet::packet::ipv4::MutableIpv4Packet;
use pnet::packet::ipv6::MutableIpv6Packet;
use pnet::packet::udp::MutableUdpPacket;
use pnet::util::MacAddr;

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;

fn ipv4_udp(frame_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; frame_len];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
        eth.set_destination(MacAddr::new(2, 0, 0, 0, 0, 1));
        eth.set_source(MacAddr::new(2, 0, 0, 0, 0, 2));
        eth.set_ethertype(EtherTypes::Ipv4);
    }
    let ip_len = frame_len - 14;
    let mut ip = MutableIpv4Packet::new(&mut buf[14..]).unwrap();
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length(ip_len as u16);
    ip.set_ttl(64);
    ip.set_next_level_protocol(IpNextHeaderProtocols::Udp);
    ip.set_source([10, 77, 0, 2].into());
    ip.set_destination([192, 0, 2, 10].into());
    let mut udp = MutableUdpPacket::new(&mut buf[34..]).unwrap();
    udp.set_source(40000);
    udp.set_destination(443);
    udp.set_length((ip_len - 20) as u16);
    buf
}

fn ipv6_udp(frame_len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; frame_len];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
        eth.set_ethertype(EtherTypes::Ipv6);
    }
    let mut ip = MutableIpv6Packet::new(&mut buf[14..]).unwrap();
    ip.set_version(6);
    ip.set_payload_length((frame_len - 54) as u16);
    ip.set_next_header(IpNextHeaderProtocols::Udp);
    ip.set_hop_limit(64);
    ip.set_source("fd77::2".parse().unwrap());
    ip.set_destination("2001:db8:100::10".parse().unwrap());
    buf
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let write = std::env::args().skip_while(|a| a != "--write").nth(1);
    let mut dp = Datapath::load().expect("load the datapath (run as root)");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("IPv4 UDP, 64-byte frame", ipv4_udp(64)),
        ("IPv4 UDP, 1514-byte frame", ipv4_udp(1514)),
        ("IPv6 UDP, 78-byte frame", ipv6_udp(78)),
    ];
    let mut rows = Vec::new();
    for (name, pkt) in &cases {
        let mut xdp_runs = Vec::new();
        let mut tc_runs = Vec::new();
        for _ in 0..ROUNDS {
            let ebpf = dp.ebpf_mut();
            let xdp: &mut Xdp = ebpf.program_mut("lan_ingress").unwrap().try_into().unwrap();
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(pkt);
            opts.repeat = REPEAT;
            xdp_runs.push(xdp.test_run(opts).expect("XDP test run").duration);
            let tc: &mut SchedClassifier = ebpf.program_mut("lan_egress").unwrap().try_into().unwrap();
            let mut opts = TestRunOptions::new();
            opts.data_in = Some(pkt);
            opts.repeat = REPEAT;
            tc_runs.push(tc.test_run(opts).expect("TC test run").duration);
        }
        let row = (name.to_string(), median(xdp_runs), median(tc_runs));
        println!("{:<28} lan_ingress (XDP) {:>4} ns   lan_egress (TC) {:>4} ns", row.0, row.1.as_nanos(), row.2.as_nanos());
        rows.push(row);
    }
    let counted = dp.counters_test_run().expect("read counters");
    let expected = (cases.len() * ROUNDS) as u64 * REPEAT as u64;
    assert_eq!(counted.upload.packets, expected, "XDP runs not all counted");
    assert_eq!(counted.download.packets, expected, "TC runs not all counted");

    if let Some(path) = write {
        let mut md = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        if !md.contains("## eBPF run time per packet") && !md.ends_with("\n\n") {
            md.push('\n');
        }
        let start = md.find("## eBPF run time per packet").unwrap_or(md.len());
        let end = md[start..].find("\n## ").map(|i| start + i + 1).unwrap_or(md.len());
        let mut section = String::from("## eBPF run time per packet (BPF_PROG_TEST_RUN)\n\n");
        section.push_str(&format!(
            "Command: `make bench` (`cargo run --release --example bench_datapath -- --write BENCHMARKS.md`), as root.\n\
             Kernel {}, {} CPUs. Each figure: median of {ROUNDS} rounds of {REPEAT} runs, the kernel's average per run.\n\
             Programs: full datapath (parse L2-L4, flow table lookup, counters; the repeated packet is an established flow after its first run). The test run adds its own loop overhead.\n\n\
             | packet | lan_ingress (XDP) | lan_egress (TC) |\n|---|---|---|\n",
            kernel(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        ));
        for (name, x, t) in &rows {
            section.push_str(&format!("| {name} | {} ns | {} ns |\n", x.as_nanos(), t.as_nanos()));
        }
        section.push('\n');
        md.replace_range(start..end, &section);
        std::fs::write(&path, md).expect("write BENCHMARKS.md");
        println!("written to {path}");
    }
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}
