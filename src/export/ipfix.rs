//! IPFIX (RFC 7011) messages over UDP, with IANA elements (RFC 7012), RFC 6759
//! application ids and inferlane's enterprise elements.
//!
//! A message is a 16-byte header and sets: template set (id 2) with the IPv4 and IPv6
//! data templates, one options template set (id 3) per options template (nfdump reads
//! only the first record of an options template set), options data sets for interface
//! names, application names and sampling, then data sets. No set padding: RFC 7011
//! makes it optional and every record here is fixed length.

use super::fields::{self, enterprise, ie, iana, ours, Field, Value};
use super::packer::{pack_records, DataSet, Item, Kind, Message, Packer, TemplateSchedule};
use super::record::FlowRecord;
use super::{check_max_len, EncoderOptions, EncoderStats, ExportError};

pub const VERSION: u16 = 10;
pub const HEADER_LEN: usize = 16;
pub const TEMPLATE_SET_ID: u16 = 2;
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const OPTIONS_INTERFACES: u16 = 258;
pub const OPTIONS_APPLICATIONS: u16 = 259;
pub const OPTIONS_SAMPLING: u16 = 260;

/// Fields after the addresses, the same for both families.
macro_rules! data_fields {
    ($src:expr, $dst:expr, $alen:expr) => {
        [
            iana($src, $alen, Value::SrcAddr),
            iana($dst, $alen, Value::DstAddr),
            iana(ie::SOURCE_TRANSPORT_PORT, 2, Value::SrcPort),
            iana(ie::DESTINATION_TRANSPORT_PORT, 2, Value::DstPort),
            iana(ie::PROTOCOL_IDENTIFIER, 1, Value::Protocol),
            iana(ie::IP_CLASS_OF_SERVICE, 1, Value::Tos),
            // unsigned16 since RFC 7125; the upper byte is never set here.
            iana(ie::TCP_CONTROL_BITS, 2, Value::TcpFlags),
            iana(ie::OCTET_DELTA_COUNT, 8, Value::Octets),
            iana(ie::PACKET_DELTA_COUNT, 8, Value::Packets),
            iana(ie::FLOW_START_MILLISECONDS, 8, Value::StartMs),
            iana(ie::FLOW_END_MILLISECONDS, 8, Value::EndMs),
            iana(ie::INGRESS_INTERFACE, 4, Value::Ingress),
            iana(ie::EGRESS_INTERFACE, 4, Value::Egress),
            iana(ie::FLOW_DIRECTION, 1, Value::Direction),
            iana(ie::FLOW_END_REASON, 1, Value::EndReason),
            iana(ie::APPLICATION_ID, fields::APPLICATION_ID_LEN, Value::ApplicationId),
            ours(enterprise::CLASS_ID, 1, Value::ClassId),
            ours(enterprise::CLASSIFICATION_SOURCE, 1, Value::Source),
            ours(enterprise::HANDSHAKE_RTT_US, 4, Value::HandshakeRtt),
            ours(enterprise::TTFB_US, 4, Value::Ttfb),
            ours(enterprise::STREAMING, 1, Value::Streaming),
        ]
    };
}

const FIELDS_V4: [Field; 21] = data_fields!(ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4);
const FIELDS_V6: [Field; 21] = data_fields!(ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16);

/// samplingAlgorithm 1: deterministic (1 out of N). With N = 1 every packet counts.
const SAMPLING_DETERMINISTIC: u8 = 1;

/// The IPFIX exporting process for one collector (one transport session) and one
/// observation domain.
#[derive(Debug, Clone)]
pub struct IpfixEncoder {
    domain: u32,
    schedule: TemplateSchedule,
    /// Data records sent before the next message, mod 2^32: flow records, and options
    /// data records when `count_options`.
    sequence: u32,
    count_options: bool,
    interfaces: Vec<(u32, String)>,
    applications: Vec<(u32, String)>,
    stats: EncoderStats,
}

impl IpfixEncoder {
    pub fn new(options: &EncoderOptions) -> IpfixEncoder {
        IpfixEncoder {
            domain: options.observation_domain,
            schedule: TemplateSchedule::new(options.template_every_packets, options.template_every_ms),
            sequence: 0,
            count_options: options.ipfix_sequence_counts_options,
            interfaces: Vec::new(),
            applications: Vec::new(),
            stats: EncoderStats::default(),
        }
    }

    /// ifindex → name, sent as options data with the templates. A change goes out
    /// with the next message.
    pub fn set_interfaces(&mut self, interfaces: Vec<(u32, String)>) {
        if interfaces != self.interfaces {
            self.interfaces = interfaces;
            self.schedule.force();
        }
    }

    /// Provider id → provider name (applicationId → applicationName).
    pub fn set_applications(&mut self, applications: Vec<(u32, String)>) {
        if applications != self.applications {
            self.applications = applications;
            self.schedule.force();
        }
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// Messages of at most `max_len` bytes carrying all `records` (except those whose
    /// addresses mix families, counted as skipped), led by templates and options when
    /// they are due. With no records, a templates-only message when they are due.
    pub fn encode(&mut self, records: &[FlowRecord], now_ms: u64, max_len: usize) -> Result<Vec<Vec<u8>>, ExportError> {
        let items = self.template_items();
        let largest_template = items.iter().map(|i| i.bytes.len()).max().unwrap_or(0);
        check_max_len(max_len, HEADER_LEN + 4 + largest_template.max(fields::record_len(&FIELDS_V6)))?;
        let mut p = Packer::new(max_len, HEADER_LEN, false);
        pack_records(
            &mut p,
            &mut self.schedule,
            &items,
            now_ms,
            records,
            &mut self.stats.skipped,
            (DataSet { set: TEMPLATE_V4, fields: &FIELDS_V4 }, DataSet { set: TEMPLATE_V6, fields: &FIELDS_V6 }),
            0,
        );
        Ok(self.finalize(p.finish(), now_ms))
    }

    /// Templates, options templates and options data, in the order they must arrive.
    fn template_items(&self) -> Vec<Item> {
        let mut items = Vec::new();
        for (id, fields) in [(TEMPLATE_V4, &FIELDS_V4[..]), (TEMPLATE_V6, &FIELDS_V6[..])] {
            let mut b = Vec::new();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for f in fields {
                fields::write_specifier(&mut b, f.id, f.len, f.pen);
            }
            items.push(Item { set: TEMPLATE_SET_ID, bytes: b, kind: Kind::Template, own_set: false });
        }
        let options: [(u16, &[(u16, u16)]); 3] = [
            (
                OPTIONS_INTERFACES,
                &[
                    (ie::INGRESS_INTERFACE, 4),
                    (ie::INTERFACE_NAME, fields::INTERFACE_NAME_LEN),
                    // The same name again: newer nfdump reads interface names from
                    // interfaceDescription, not interfaceName.
                    (ie::INTERFACE_DESCRIPTION, fields::INTERFACE_NAME_LEN),
                ],
            ),
            (
                OPTIONS_APPLICATIONS,
                &[
                    (ie::OBSERVATION_DOMAIN_ID, 4),
                    (ie::APPLICATION_ID, fields::APPLICATION_ID_LEN),
                    (ie::APPLICATION_NAME, fields::APPLICATION_NAME_LEN),
                ],
            ),
            (
                OPTIONS_SAMPLING,
                &[(ie::OBSERVATION_DOMAIN_ID, 4), (ie::SAMPLING_INTERVAL, 4), (ie::SAMPLING_ALGORITHM, 1)],
            ),
        ];
        for (id, specs) in options {
            let mut b = Vec::new();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&(specs.len() as u16).to_be_bytes());
            b.extend_from_slice(&1u16.to_be_bytes()); // scope field count: the first
            for &(ie, len) in specs {
                fields::write_specifier(&mut b, ie, len, None);
            }
            items.push(Item { set: OPTIONS_TEMPLATE_SET_ID, bytes: b, kind: Kind::Template, own_set: true });
        }
        for (ifindex, name) in &self.interfaces {
            let mut b = ifindex.to_be_bytes().to_vec();
            fields::write_fixed_str(&mut b, name, fields::INTERFACE_NAME_LEN);
            fields::write_fixed_str(&mut b, name, fields::INTERFACE_NAME_LEN);
            items.push(Item { set: OPTIONS_INTERFACES, bytes: b, kind: Kind::OptionsData, own_set: true });
        }
        for (id, name) in &self.applications {
            let mut b = self.domain.to_be_bytes().to_vec();
            b.extend_from_slice(&fields::application_id(*id));
            fields::write_fixed_str(&mut b, name, fields::APPLICATION_NAME_LEN);
            items.push(Item { set: OPTIONS_APPLICATIONS, bytes: b, kind: Kind::OptionsData, own_set: true });
        }
        let mut b = self.domain.to_be_bytes().to_vec();
        b.extend_from_slice(&1u32.to_be_bytes());
        b.push(SAMPLING_DETERMINISTIC);
        items.push(Item { set: OPTIONS_SAMPLING, bytes: b, kind: Kind::OptionsData, own_set: true });
        items
    }

    fn finalize(&mut self, messages: Vec<Message>, now_ms: u64) -> Vec<Vec<u8>> {
        let export_time = (now_ms / 1000) as u32;
        messages
            .into_iter()
            .map(|m| {
                let mut buf = m.buf;
                let len = buf.len() as u16;
                buf[0..2].copy_from_slice(&VERSION.to_be_bytes());
                buf[2..4].copy_from_slice(&len.to_be_bytes());
                buf[4..8].copy_from_slice(&export_time.to_be_bytes());
                buf[8..12].copy_from_slice(&self.sequence.to_be_bytes());
                buf[12..16].copy_from_slice(&self.domain.to_be_bytes());
                let counted = m.flow_data + if self.count_options { m.options_data } else { 0 };
                self.sequence = self.sequence.wrapping_add(counted);
                self.stats.messages += 1;
                self.stats.records += u64::from(m.flow_data);
                buf
            })
            .collect()
    }
}

