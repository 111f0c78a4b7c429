//! The daemon's side of flow export: flow-table reports in, datagrams out to every
//! configured collector.
//!
//! A [`crate::flow::Report`] is one bidirectional flow-table entry over one period,
//! in kernel monotonic time. The exporter turns it into a [`FlowSummary`] (wall-clock
//! milliseconds, interface indexes, provider, DSCP as forwarded, timings), which
//! gives the upload and download records, and hands those to each
//! [`Collector`], which encodes them in its own format and sends them without
//! waiting. It is called from a blocking thread (the flow scan), once a second.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{Collector, EncoderOptions, ExportError, FlowRecord, FlowSummary};
use crate::bpf::abi;
use crate::classify::catalog::Catalog;
use crate::config::{Config, Export};
use crate::flow::Report;

/// How often interface indexes are looked up again: an LTE modem that appears after
/// start, or a LAN interface re-created, gets a new index.
const IFINDEX_REFRESH: Duration = Duration::from_secs(5);

/// What one collector has been sent, for `inferlane status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorStats {
    pub address: String,
    /// "ipfix", "netflow9" or "netflow5".
    pub format: String,
    /// Messages and flow records encoded.
    pub messages: u64,
    pub records: u64,
    /// Records this format cannot carry (IPv6 in NetFlow v5).
    pub skipped: u64,
    /// Datagrams that went out, and their bytes.
    pub sent: u64,
    pub bytes: u64,
    /// Datagrams not sent: the collector refused (nothing listens), the backlog
    /// was full, or another error.
    pub send_errors: u64,
    pub refused: u64,
    /// Sends that met a full socket buffer (retried from the backlog).
    pub would_block: u64,
    /// Of the errors: dropped because the pacing backlog was full.
    #[serde(default)]
    pub backlog_dropped: u64,
    /// Messages waiting for their turn now.
    #[serde(default)]
    pub backlog: u64,
}

/// The names a collector is told in options records, and the indexes records carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Tables {
    /// LAN and uplink interfaces present now: ifindex → name.
    interfaces: Vec<(u32, String)>,
    /// ifindex of each `[[uplinks]]` entry's interface (0 when absent), by position.
    uplinks: Vec<u32>,
    /// Provider id → catalog name.
    applications: Vec<(u32, String)>,
}

impl Tables {
    fn read(config: &Config, catalog: &Catalog) -> Tables {
        let (interfaces, uplinks) = read_interfaces(config);
        Tables {
            interfaces,
            uplinks,
            applications: catalog.providers().iter().map(|p| (u32::from(p.id), p.name.clone())).collect(),
        }
    }
}

/// The LAN and uplink interfaces present now (ifindex, name), and each uplink's
/// ifindex by position (0 when absent).
fn read_interfaces(config: &Config) -> (Vec<(u32, String)>, Vec<u32>) {
    let index = |name: &str| nix::net::if_::if_nametoindex(name).unwrap_or(0);
    let mut interfaces: Vec<(u32, String)> = Vec::new();
    for name in config.lan.interfaces.iter().chain(config.uplinks.iter().map(|u| &u.interface)) {
        let i = index(name);
        if i != 0 && !interfaces.iter().any(|(x, _)| *x == i) {
            interfaces.push((i, name.clone()));
        }
    }
    (interfaces, config.uplinks.iter().map(|u| index(&u.interface)).collect())
}

pub struct FlowExporter {
    collectors: Vec<Collector>,
    /// Kept to look interface indexes up again.
    config: Config,
    tables: Tables,
    tables_read: Instant,
}

impl std::fmt::Debug for FlowExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowExporter").field("collectors", &self.collectors).field("tables", &self.tables).finish()
    }
}

impl FlowExporter {
    /// Opens one socket per collector of `export` (the `[export]` table of `config`).
    /// Fails, opening nothing, when a socket cannot be opened.
    pub fn new(export: &Export, config: &Config, catalog: &Catalog) -> Result<FlowExporter, ExportError> {
        let options = EncoderOptions::default();
        let boot_ms = boot_ms(now_wall_ns(), crate::daemon::monotonic_ns());
        let collectors = export
            .collectors()
            .map(|(addr, format)| Collector::new(addr, format, &options, boot_ms, export.messages_per_second))
            .collect::<Result<Vec<_>, _>>()?;
        let mut exporter =
            FlowExporter { collectors, config: config.clone(), tables: Tables::default(), tables_read: Instant::now() };
        exporter.set_tables(Tables::read(config, catalog));
        Ok(exporter)
    }

    /// A reload that kept `[export]` as it was: new provider names, classes or
    /// interfaces go out with the next message; sequence numbers carry on.
    pub fn refresh(&mut self, config: &Config, catalog: &Catalog) {
        self.config = config.clone();
        self.set_tables(Tables::read(config, catalog));
    }

    fn set_tables(&mut self, tables: Tables) {
        if tables != self.tables {
            for c in &mut self.collectors {
                let e = c.encoder_mut();
                e.set_interfaces(tables.interfaces.clone());
                e.set_applications(tables.applications.clone());
            }
            self.tables = tables;
        }
        self.tables_read = Instant::now();
    }

    pub fn collectors(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.collectors.iter().map(|c| c.addr())
    }

    /// Sends `reports` to every collector. `now_mono_ns` is CLOCK_MONOTONIC, read
    /// just now; the wall clock is read here, and kernel times are placed relative
    /// to the pair, so a wall-clock step moves only records made after it.
    pub fn export(&mut self, reports: &[Report], now_mono_ns: u64) {
        let now_wall_ns = now_wall_ns();
        if self.tables_read.elapsed() >= IFINDEX_REFRESH {
            let (interfaces, uplinks) = read_interfaces(&self.config);
            self.set_tables(Tables { interfaces, uplinks, applications: self.tables.applications.clone() });
        }
        if reports.is_empty() {
            return;
        }
        let records = self.records(reports, now_mono_ns, now_wall_ns);
        let now_ms = now_wall_ns / 1_000_000;
        let boot = boot_ms(now_wall_ns, now_mono_ns);
        for c in &mut self.collectors {
            c.encoder_mut().set_boot_ms(boot);
            c.export(&records, now_ms);
        }
    }

    /// Both directions of every report, in wall-clock time.
    fn records(&self, reports: &[Report], now_mono_ns: u64, now_wall_ns: u64) -> Vec<FlowRecord> {
        let wall_ms = |t: u64| now_wall_ns.saturating_sub(now_mono_ns.saturating_sub(t)) / 1_000_000;
        let mut out = Vec::with_capacity(reports.len() * 2);
        for r in reports {
            out.extend(summary(r, &self.tables, wall_ms(r.start_ns), wall_ms(r.end_ns)).records());
        }
        out
    }

    /// Lets paced messages out (see `sender`); returns the messages still waiting
    /// over all collectors. The daemon calls it every few milliseconds while any
    /// wait.
    pub fn pump(&mut self) -> usize {
        let now = Instant::now();
        self.collectors.iter_mut().map(|c| c.pump(now)).sum()
    }

    pub fn stats(&self) -> Vec<CollectorStats> {
        self.collectors
            .iter()
            .map(|c| {
                let (e, s) = c.stats();
                CollectorStats {
                    address: c.addr().to_string(),
                    format: c.format().name().into(),
                    messages: e.messages,
                    records: e.records,
                    skipped: e.skipped,
                    sent: s.messages_sent,
                    bytes: s.bytes_sent,
                    send_errors: s.send_errors,
                    refused: s.refused,
                    would_block: s.would_block,
                    backlog_dropped: s.backlog_dropped,
                    backlog: s.backlog,
                }
            })
            .collect()
    }
}

fn now_wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Wall-clock milliseconds at CLOCK_MONOTONIC's zero (the host's boot): NetFlow's
/// sysUptime is then the host's uptime, as on any router, and every flow-table time
/// is after it.
fn boot_ms(now_wall_ns: u64, now_mono_ns: u64) -> u64 {
    now_wall_ns.saturating_sub(now_mono_ns) / 1_000_000
}

fn summary(r: &Report, tables: &Tables, start_ms: u64, end_ms: u64) -> FlowSummary {
    let (k, a) = (&r.key, &r.attrs);
    let wan_ifindex = usize::from(a.uplink).checked_sub(1).and_then(|i| tables.uplinks.get(i)).copied().unwrap_or(0);
    FlowSummary {
        client: abi::addr_from_bytes(k.client, k.family),
        remote: abi::addr_from_bytes(k.remote, k.family),
        client_port: u16::from_be(k.client_port),
        remote_port: u16::from_be(k.remote_port),
        protocol: k.proto,
        // The DSCP the upload was forwarded with (written, or the client's own).
        up_tos: (a.up_dscp & 0x3f) << 2,
        // The datapath rewrites upload only; download goes out as it came in, with
        // the DSCP lan_egress last saw.
        down_tos: (a.dscp_down & 0x3f) << 2,
        up_tcp_flags: a.tcp_flags_up,
        down_tcp_flags: a.tcp_flags_down,
        up_octets: r.delta.up_bytes,
        up_packets: r.delta.up_packets,
        down_octets: r.delta.down_bytes,
        down_packets: r.delta.down_packets,
        start_ms,
        end_ms: end_ms.max(start_ms),
        lan_ifindex: a.ifindex,
        wan_ifindex,
        end_reason: r.reason,
        application_id: u32::from(a.provider_id),
        class_id: a.class_id,
        source: a.source,
        handshake_rtt_us: a.handshake_rtt_us,
        ttfb_us: a.ttfb_us,
        streaming: a.streaming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::abi::{Flow, FlowKey};
    use crate::flow::Delta;
    use crate::export::EndReason;

    const S: u64 = 1_000_000_000;

    fn report(uplink: u8, dscp: u8) -> Report {
        let key = FlowKey {
            client: abi::addr_bytes("10.0.0.2".parse().unwrap()),
            remote: abi::addr_bytes("192.0.2.10".parse().unwrap()),
            client_port: 40000u16.to_be(),
            remote_port: 443u16.to_be(),
            proto: 6,
            family: 4,
            pad: 0,
        };
        let flow = Flow {
            first_ns: 100 * S,
            last_ns: 102 * S,
            ifindex: 7,
            uplink,
            dscp,
            dscp_seen: 10,
            provider_id: 3,
            class_id: 2,
            source: abi::SRC_SNI,
            tcp_flags_up: 0x1b,
            tcp_flags_down: 0x12,
            syn_ns: 100 * S,
            synack_ns: 100 * S + 12_345_000,
            first_up_payload_ns: 100 * S + 20_000_000,
            first_down_payload_ns: 100 * S + 270_000_000,
            ..Flow::default()
        };
        Report {
            key,
            attrs: crate::flow::FlowAttrs::of(&flow),
            delta: Delta { up_packets: 10, up_bytes: 1500, down_packets: 0, down_bytes: 0 },
            start_ns: 100 * S,
            end_ns: 102 * S + 500_000,
            reason: crate::flow::EndReason::EndDetected,
        }
    }

    fn tables() -> Tables {
        Tables { interfaces: vec![(7, "lan0".into()), (9, "wan0".into())], uplinks: vec![9], applications: vec![] }
    }

    #[test]
    fn a_report_becomes_a_summary_in_wall_clock_time() {
        let exporter = FlowExporter { collectors: vec![], config: Config::default(), tables: tables(), tables_read: Instant::now() };
        // Monotonic 105 s is wall 1_700_000_000.000 s: the flow started 5 s before.
        let now_wall = 1_700_000_000 * S;
        let recs = exporter.records(&[report(1, 34)], 105 * S, now_wall);
        assert_eq!(recs.len(), 1, "expected only the upload record (no download packets), got {recs:?}");
        let r = &recs[0];
        assert_eq!((r.start_ms, r.end_ms), (1_699_999_995_000, 1_699_999_997_000), "{r:?}");
        assert_eq!((r.src_port, r.dst_port, r.protocol), (40000, 443, 6));
        assert_eq!(r.src, "10.0.0.2".parse::<std::net::IpAddr>().unwrap());
        assert_eq!((r.ingress_ifindex, r.egress_ifindex), (7, 9), "upload enters at the LAN, leaves by the uplink");
        assert_eq!(r.tos, 34 << 2, "the DSCP written (AF41)");
        assert_eq!((r.octets, r.packets, r.tcp_flags), (1500, 10, 0x1b));
        assert_eq!((r.application_id, r.class_id, r.source), (3, 2, abi::SRC_SNI));
        assert_eq!((r.handshake_rtt_us, r.ttfb_us), (12_345, 250_000));
        assert_eq!(r.end_reason, EndReason::EndDetected);
    }

    #[test]
    fn kept_dscp_is_the_client_s_and_an_unknown_uplink_is_zero() {
        let s = summary(&report(0, abi::DSCP_KEEP), &tables(), 1, 2);
        assert_eq!((s.up_tos, s.wan_ifindex), (10 << 2, 0));
        let s = summary(&report(5, abi::DSCP_KEEP), &tables(), 1, 2);
        assert_eq!(s.wan_ifindex, 0, "an uplink index past the config's list is unknown");
    }

    #[test]
    fn the_download_carries_the_dscp_it_came_with() {
        let mut r = report(1, 34);
        r.attrs.dscp_down = 8; // CS1, as the server sent it
        let s = summary(&r, &tables(), 1, 2);
        assert_eq!((s.up_tos, s.down_tos), (34 << 2, 8 << 2), "upload as rewritten, download as it came");
    }

    #[test]
    fn every_collector_gets_every_record_in_its_format() {
        use std::net::UdpSocket;
        let rx: Vec<UdpSocket> = (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        let text = format!(
            "[lan]\ninterfaces = [\"lo\"]\n[export]\ncollectors = [\"{}\", {{ address = \"{}\", format = \"netflow9\" }}, {{ address = \"{}\", format = \"netflow5\" }}]\n",
            rx[0].local_addr().unwrap(),
            rx[1].local_addr().unwrap(),
            rx[2].local_addr().unwrap()
        );
        let config = crate::config::parse(&text, "t.toml").unwrap();
        let catalog = Catalog::from_config(&config).unwrap();
        let mut e = FlowExporter::new(config.export.as_ref().unwrap(), &config, &catalog).unwrap();
        let mut r = report(0, 34);
        r.delta.down_packets = 5;
        r.delta.down_bytes = 7000;
        e.export(&[r], crate::daemon::monotonic_ns());
        let mut buf = [0u8; 2000];
        let versions: Vec<u16> = rx
            .iter()
            .map(|s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let n = s.recv(&mut buf).unwrap();
                assert!(n > 20, "a {n}-byte message");
                u16::from_be_bytes([buf[0], buf[1]])
            })
            .collect();
        assert_eq!(versions, [10, 9, 5], "IPFIX, v9, v5 by collector");
        let st = e.stats();
        assert_eq!(st.iter().map(|s| s.records).collect::<Vec<_>>(), [2, 2, 2], "{st:?}");
        assert_eq!(st.iter().map(|s| s.format.as_str()).collect::<Vec<_>>(), ["ipfix", "netflow9", "netflow5"]);
        assert!(st.iter().all(|s| s.send_errors == 0 && s.sent >= 1), "{st:?}");
    }
}
