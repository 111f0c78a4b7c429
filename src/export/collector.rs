//! One configured collector: its format's encoder and its socket. Each collector has
//! its own encoder because sequence numbers and template refreshes belong to one
//! stream (RFC 7011 §10.3: per transport session and observation domain).

use std::net::SocketAddr;

use super::record::FlowRecord;
use super::sender::{SendStats, UdpSender};
use super::{max_len_for, Encoder, EncoderOptions, EncoderStats, ExportError};
use crate::config::ExportFormat;

#[derive(Debug)]
pub struct Collector {
    format: ExportFormat,
    encoder: Encoder,
    sender: UdpSender,
    max_len: usize,
    /// Encoder failures (a message limit too small for a record); none are expected.
    encode_errors: u64,
}

impl Collector {
    pub fn new(
        addr: SocketAddr,
        format: ExportFormat,
        options: &EncoderOptions,
        boot_ms: u64,
        rate: u32,
    ) -> Result<Collector, ExportError> {
        Ok(Collector {
            format,
            encoder: Encoder::new(format, options, boot_ms),
            sender: UdpSender::new(addr, rate)?,
            max_len: max_len_for(addr),
            encode_errors: 0,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.sender.collector()
    }

    pub fn format(&self) -> ExportFormat {
        self.format
    }

    pub fn encoder_mut(&mut self) -> &mut Encoder {
        &mut self.encoder
    }

    /// Encodes and sends; never blocks, never fails (failures are counted).
    pub fn export(&mut self, records: &[FlowRecord], now_ms: u64) {
        match self.encoder.encode(records, now_ms, self.max_len) {
            Ok(messages) => self.sender.send(messages),
            Err(e) => {
                self.encode_errors += 1;
                tracing::warn!(collector = %self.addr(), "export encode: {e}");
            }
        }
    }

    /// Sends what the pace allows now; returns the messages still waiting.
    pub fn pump(&mut self, now: std::time::Instant) -> usize {
        self.sender.pump(now)
    }

    pub fn stats(&self) -> (EncoderStats, SendStats) {
        (self.encoder.stats(), self.sender.stats())
    }
}
