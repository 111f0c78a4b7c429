//! NetFlow v9 (RFC 3954) export packets.
//!
//! A packet is a 20-byte header and flowsets, each padded to 4 bytes: the template
//! flowset (id 0) with the IPv4 and IPv6 templates, one options template flowset (id 1)
//! per options template, options data, then data flowsets. Times are sysUptime
//! milliseconds (FIRST_SWITCHED / LAST_SWITCHED), converted from wall-clock time with
//! the boot-time anchor. v9 has no enterprise fields and no flowEndReason.

use super::fields::{self, ie, iana, Field, Value};
use super::packer::{pack_records, DataSet, Item, Kind, Message, Packer, TemplateSchedule};
use super::record::FlowRecord;
use super::{check_max_len, EncoderOptions, EncoderStats, ExportError};

pub const VERSION: u16 = 9;
pub const HEADER_LEN: usize = 20;
pub const TEMPLATE_FLOWSET_ID: u16 = 0;
pub const OPTIONS_TEMPLATE_FLOWSET_ID: u16 = 1;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const OPTIONS_INTERFACES: u16 = 258;
pub const OPTIONS_APPLICATIONS: u16 = 259;
pub const OPTIONS_SAMPLING: u16 = 260;

/// RFC 3954 §6.2 scope field types.
const SCOPE_SYSTEM: u16 = 1;
const SCOPE_INTERFACE: u16 = 2;

macro_rules! data_fields {
    ($src:expr, $dst:expr, $alen:expr) => {
        [
            iana($src, $alen, Value::SrcAddr),
            iana($dst, $alen, Value::DstAddr),
            iana(ie::SOURCE_TRANSPORT_PORT, 2, Value::SrcPort),
            iana(ie::DESTINATION_TRANSPORT_PORT, 2, Value::DstPort),
            iana(ie::PROTOCOL_IDENTIFIER, 1, Value::Protocol),
            iana(ie::IP_CLASS_OF_SERVICE, 1, Value::Tos),
            iana(ie::TCP_CONTROL_BITS, 1, Value::TcpFlags),
            // IN_BYTES/IN_PKTS: v9 allows N bytes; 8 so long flows never wrap.
            iana(ie::OCTET_DELTA_COUNT, 8, Value::Octets),
            iana(ie::PACKET_DELTA_COUNT, 8, Value::Packets),
            iana(ie::FIRST_SWITCHED, 4, Value::StartUptime),
            iana(ie::LAST_SWITCHED, 4, Value::EndUptime),
            iana(ie::INGRESS_INTERFACE, 4, Value::Ingress),
            iana(ie::EGRESS_INTERFACE, 4, Value::Egress),
            iana(ie::FLOW_DIRECTION, 1, Value::Direction),
            iana(ie::APPLICATION_ID, fields::APPLICATION_ID_LEN, Value::ApplicationId),
        ]
    };
}

const FIELDS_V4: [Field; 15] = data_fields!(ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4);
const FIELDS_V6: [Field; 15] = data_fields!(ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16);

const SAMPLING_DETERMINISTIC: u8 = 1;

#[derive(Debug, Clone)]
pub struct Netflow9Encoder {
    source_id: u32,
    boot_ms: u64,
    schedule: TemplateSchedule,
    /// Export packets sent before the next one, mod 2^32 (RFC 3954 §5.1).
    sequence: u32,
    interfaces: Vec<(u32, String)>,
    applications: Vec<(u32, String)>,
    stats: EncoderStats,
}

impl Netflow9Encoder {
    pub fn new(options: &EncoderOptions, boot_ms: u64) -> Netflow9Encoder {
        Netflow9Encoder {
            source_id: options.observation_domain,
            boot_ms,
            schedule: TemplateSchedule::new(options.template_every_packets, options.template_every_ms),
            sequence: 0,
            interfaces: Vec::new(),
            applications: Vec::new(),
            stats: EncoderStats::default(),
        }
    }

    /// Re-anchors sysUptime (the wall-clock time of boot moves when the clock is set).
    pub fn set_boot_ms(&mut self, boot_ms: u64) {
        self.boot_ms = boot_ms;
    }

    pub fn set_interfaces(&mut self, interfaces: Vec<(u32, String)>) {
        if interfaces != self.interfaces {
            self.interfaces = interfaces;
            self.schedule.force();
        }
    }

    pub fn set_applications(&mut self, applications: Vec<(u32, String)>) {
        if applications != self.applications {
            self.applications = applications;
            self.schedule.force();
        }
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats
    }

    /// As [`super::IpfixEncoder::encode`].
    pub fn encode(&mut self, records: &[FlowRecord], now_ms: u64, max_len: usize) -> Result<Vec<Vec<u8>>, ExportError> {
        let items = self.template_items();
        let largest_template = items.iter().map(|i| i.bytes.len()).max().unwrap_or(0);
        let largest = largest_template.max(fields::record_len(&FIELDS_V6));
        check_max_len(max_len, HEADER_LEN + (4 + largest).div_ceil(4) * 4)?;
        let mut p = Packer::new(max_len, HEADER_LEN, true);
        pack_records(
            &mut p,
            &mut self.schedule,
            &items,
            now_ms,
            records,
            &mut self.stats.skipped,
            (DataSet { set: TEMPLATE_V4, fields: &FIELDS_V4 }, DataSet { set: TEMPLATE_V6, fields: &FIELDS_V6 }),
            self.boot_ms,
        );
        Ok(self.finalize(p.finish(), now_ms))
    }

    fn template_items(&self) -> Vec<Item> {
        let mut items = Vec::new();
        for (id, fields) in [(TEMPLATE_V4, &FIELDS_V4[..]), (TEMPLATE_V6, &FIELDS_V6[..])] {
            let mut b = Vec::new();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&(fields.len() as u16).to_be_bytes());
            for f in fields {
                fields::write_specifier(&mut b, f.id, f.len, None);
            }
            items.push(Item { set: TEMPLATE_FLOWSET_ID, bytes: b, kind: Kind::Template, own_set: false });
        }
        // (template id, scope, option fields)
        let options: [(u16, (u16, u16), &[(u16, u16)]); 3] = [
            (
                OPTIONS_INTERFACES,
                (SCOPE_INTERFACE, 4),
                &[(ie::INTERFACE_NAME, fields::INTERFACE_NAME_LEN), (ie::INTERFACE_DESCRIPTION, fields::INTERFACE_NAME_LEN)],
            ),
            (
                OPTIONS_APPLICATIONS,
                (SCOPE_SYSTEM, 4),
                &[(ie::APPLICATION_ID, fields::APPLICATION_ID_LEN), (ie::APPLICATION_NAME, fields::APPLICATION_NAME_LEN)],
            ),
            (OPTIONS_SAMPLING, (SCOPE_SYSTEM, 4), &[(ie::SAMPLING_INTERVAL, 4), (ie::SAMPLING_ALGORITHM, 1)]),
        ];
        for (id, (scope, scope_len), specs) in options {
            let mut b = Vec::new();
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&4u16.to_be_bytes()); // option scope length, bytes
            b.extend_from_slice(&(4 * specs.len() as u16).to_be_bytes()); // option length, bytes
            fields::write_specifier(&mut b, scope, scope_len, None);
            for &(ie, len) in specs {
                fields::write_specifier(&mut b, ie, len, None);
            }
            items.push(Item { set: OPTIONS_TEMPLATE_FLOWSET_ID, bytes: b, kind: Kind::Template, own_set: true });
        }
        for (ifindex, name) in &self.interfaces {
            let mut b = ifindex.to_be_bytes().to_vec();
            fields::write_fixed_str(&mut b, name, fields::INTERFACE_NAME_LEN);
            fields::write_fixed_str(&mut b, name, fields::INTERFACE_NAME_LEN);
            items.push(Item { set: OPTIONS_INTERFACES, bytes: b, kind: Kind::OptionsData, own_set: true });
        }
        for (id, name) in &self.applications {
            let mut b = self.source_id.to_be_bytes().to_vec();
            b.extend_from_slice(&fields::application_id(*id));
            fields::write_fixed_str(&mut b, name, fields::APPLICATION_NAME_LEN);
            items.push(Item { set: OPTIONS_APPLICATIONS, bytes: b, kind: Kind::OptionsData, own_set: true });
        }
        let mut b = self.source_id.to_be_bytes().to_vec();
        b.extend_from_slice(&1u32.to_be_bytes());
        b.push(SAMPLING_DETERMINISTIC);
        items.push(Item { set: OPTIONS_SAMPLING, bytes: b, kind: Kind::OptionsData, own_set: true });
        items
    }

    fn finalize(&mut self, messages: Vec<Message>, now_ms: u64) -> Vec<Vec<u8>> {
        let uptime = fields::uptime(now_ms, self.boot_ms);
        let secs = (now_ms / 1000) as u32;
        messages
            .into_iter()
            .map(|m| {
                let count = m.records() as u16;
                let mut buf = m.buf;
                buf[0..2].copy_from_slice(&VERSION.to_be_bytes());
                // Count: every record of the packet, templates included (RFC 3954 §5.1).
                buf[2..4].copy_from_slice(&count.to_be_bytes());
                buf[4..8].copy_from_slice(&uptime.to_be_bytes());
                buf[8..12].copy_from_slice(&secs.to_be_bytes());
                buf[12..16].copy_from_slice(&self.sequence.to_be_bytes());
                buf[16..20].copy_from_slice(&self.source_id.to_be_bytes());
                self.sequence = self.sequence.wrapping_add(1);
                self.stats.messages += 1;
                self.stats.records += u64::from(m.flow_data);
                buf
            })
            .collect()
    }
}
