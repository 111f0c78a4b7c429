//! Flow export: IPFIX (RFC 7011), NetFlow v9 (RFC 3954) and v5 encoders and the UDP sender.
//!
//! The encoders are pure: records and a clock reading in, datagrams out, so their
//! tests are byte-exact. They are written by hand: no maintained Rust crate encodes
//! IPFIX or NetFlow (the crates that exist parse them, for collectors). The flow
//! scanner turns flow-table entries into [`record::FlowSummary`] values, each of
//! which gives one [`record::FlowRecord`] per direction; a [`collector::Collector`]
//! per configured collector encodes them in its format and sends them.
//!
//! The enterprise elements, the application-id encoding and the sampling options are
//! documented in docs/export.md.

pub mod collector;
pub mod exporter;
mod fields;
pub mod ipfix;
pub mod netflow5;
pub mod netflow9;
mod packer;
pub mod record;
pub mod sender;

use std::io;
use std::net::SocketAddr;

pub use collector::Collector;
pub use exporter::{CollectorStats, FlowExporter};
pub use fields::{enterprise, PEN};
pub use ipfix::IpfixEncoder;
pub use netflow5::Netflow5Encoder;
pub use netflow9::Netflow9Encoder;
pub use record::{Direction, EndReason, FlowRecord, FlowSummary};
pub use sender::{SendStats, UdpSender};

use crate::config::ExportFormat;

/// The largest message for a 1500-byte path MTU: minus 20 (IPv4) or 40 (IPv6) and 8
/// (UDP) header bytes. A message never exceeds the path MTU, so it is never fragmented
/// (a lost fragment loses the whole message).
pub const MAX_LEN_IPV4: usize = 1472;
pub const MAX_LEN_IPV6: usize = 1452;

/// The message size limit for a collector address.
pub fn max_len_for(collector: SocketAddr) -> usize {
    if collector.is_ipv4() {
        MAX_LEN_IPV4
    } else {
        MAX_LEN_IPV6
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("message size limit {max_len} is below the {min} bytes one message needs")]
    MaxLenTooSmall { max_len: usize, min: usize },
    #[error("message size limit {max_len} is above the 65535 bytes a message length can say")]
    MaxLenTooLarge { max_len: usize },
    #[error("open a UDP socket to collector {collector}: {source}")]
    Socket { collector: SocketAddr, source: io::Error },
}

pub(crate) fn check_max_len(max_len: usize, min: usize) -> Result<(), ExportError> {
    if max_len < min {
        return Err(ExportError::MaxLenTooSmall { max_len, min });
    }
    if max_len > usize::from(u16::MAX) {
        return Err(ExportError::MaxLenTooLarge { max_len });
    }
    Ok(())
}

/// Settings shared by the encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderOptions {
    /// IPFIX observation domain id, NetFlow v9 source id; the low bytes are v5's engine
    /// id (and the byte above, its engine type).
    pub observation_domain: u32,
    /// Templates and options go out in the first message and again after this many
    /// messages ...
    pub template_every_packets: u32,
    /// ... or this many milliseconds, whichever comes first.
    pub template_every_ms: u64,
    /// IPFIX sequence numbers count options data records too, as RFC 7011 §3.1 says.
    /// Off by default: nfdump (through 1.7 at least) counts flow records only and would
    /// report a sequence failure at every template refresh (docs/export.md).
    pub ipfix_sequence_counts_options: bool,
}

impl Default for EncoderOptions {
    // 20 packets / 60 s: the defaults of softflowd and of Cisco's template refresh,
    // so a collector (re)started after the exporter knows the templates within a minute.
    fn default() -> Self {
        EncoderOptions {
            observation_domain: 0,
            template_every_packets: 20,
            template_every_ms: 60_000,
            ipfix_sequence_counts_options: false,
        }
    }
}

/// What an encoder has produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncoderStats {
    pub messages: u64,
    /// Flow records encoded.
    pub records: u64,
    /// Records no message of this format can carry: mixed address families, and IPv6
    /// flows in NetFlow v5.
    pub skipped: u64,
}

/// One encoder of the configured format.
#[derive(Debug, Clone)]
pub enum Encoder {
    Ipfix(IpfixEncoder),
    Netflow9(Netflow9Encoder),
    Netflow5(Netflow5Encoder),
}

impl Encoder {
    /// `boot_ms`: wall-clock time of the exporter's boot, the zero of NetFlow's sysUptime.
    pub fn new(format: ExportFormat, options: &EncoderOptions, boot_ms: u64) -> Encoder {
        match format {
            ExportFormat::Ipfix => Encoder::Ipfix(IpfixEncoder::new(options)),
            ExportFormat::Netflow9 => Encoder::Netflow9(Netflow9Encoder::new(options, boot_ms)),
            ExportFormat::Netflow5 => Encoder::Netflow5(Netflow5Encoder::new(options, boot_ms)),
        }
    }

    pub fn encode(&mut self, records: &[FlowRecord], now_ms: u64, max_len: usize) -> Result<Vec<Vec<u8>>, ExportError> {
        match self {
            Encoder::Ipfix(e) => e.encode(records, now_ms, max_len),
            Encoder::Netflow9(e) => e.encode(records, now_ms, max_len),
            Encoder::Netflow5(e) => e.encode(records, now_ms, max_len),
        }
    }

    /// NetFlow v5 has no options: names are dropped there.
    pub fn set_interfaces(&mut self, interfaces: Vec<(u32, String)>) {
        match self {
            Encoder::Ipfix(e) => e.set_interfaces(interfaces),
            Encoder::Netflow9(e) => e.set_interfaces(interfaces),
            Encoder::Netflow5(_) => {}
        }
    }

    pub fn set_applications(&mut self, applications: Vec<(u32, String)>) {
        match self {
            Encoder::Ipfix(e) => e.set_applications(applications),
            Encoder::Netflow9(e) => e.set_applications(applications),
            Encoder::Netflow5(_) => {}
        }
    }

    /// Re-anchors NetFlow's sysUptime (IPFIX carries epoch times and needs none).
    pub fn set_boot_ms(&mut self, boot_ms: u64) {
        match self {
            Encoder::Ipfix(_) => {}
            Encoder::Netflow9(e) => e.set_boot_ms(boot_ms),
            Encoder::Netflow5(e) => e.set_boot_ms(boot_ms),
        }
    }

    pub fn stats(&self) -> EncoderStats {
        match self {
            Encoder::Ipfix(e) => e.stats(),
            Encoder::Netflow9(e) => e.stats(),
            Encoder::Netflow5(e) => e.stats(),
        }
    }
}

#[cfg(test)]
mod tests;
