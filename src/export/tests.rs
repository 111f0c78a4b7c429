//! Golden messages and the rules every encoder keeps: sequence numbers, template
//! refresh, the size limit.
//!
//! How the goldens were checked: each expected message is typed field by field from
//! the layouts in RFC 7011 §3 (IPFIX), RFC 3954 §5 (v9) and Cisco's v5 record format,
//! with the numbers converted by hand (see the comments); then the same bytes were
//! written to a pcap and decoded with `tshark -V` (Wireshark 4.0.17), which showed
//! every field with the value the record holds, the provider name "openai" and no
//! expert warnings. tests/export_decode.rs does that decoding on every run, with nfcapd
//! as well.

use std::net::IpAddr;

use super::record::tests::summary_v4;
use super::*;

const NOW_MS: u64 = 1_700_000_010_000; // export time 1700000010 s = 0x6553f10a
const BOOT_MS: u64 = 1_700_000_000_000 - 3_600_000; // one hour before the flow

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

fn name(s: &str, len: usize) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.resize(len, 0);
    v
}

fn options() -> EncoderOptions {
    EncoderOptions { observation_domain: 7, ..EncoderOptions::default() }
}

fn upload() -> FlowRecord {
    summary_v4().records().remove(0)
}

fn assert_bytes(seen: &[u8], expected: &[u8]) {
    if seen != expected {
        let at = seen.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(seen.len().min(expected.len()));
        panic!(
            "expected {} bytes, saw {}; first difference at offset {at}:\nexpected {:02x?}\nseen     {:02x?}",
            expected.len(),
            seen.len(),
            &expected[at.saturating_sub(4)..(at + 12).min(expected.len())],
            &seen[at.saturating_sub(4)..(at + 12).min(seen.len())],
        );
    }
}

/// The upload record of `summary_v4` as IPFIX template 256 lays it out.
fn ipfix_record_v4() -> Vec<u8> {
    [
        "c0 a8 01 0a",             // sourceIPv4Address 192.168.1.10
        "cb 00 71 05",             // destinationIPv4Address 203.0.113.5
        "c3 50",                   // sourceTransportPort 50000
        "01 bb",                   // destinationTransportPort 443
        "06",                      // protocolIdentifier TCP
        "88",                      // ipClassOfService: AF41 (34) << 2
        "00 1b",                   // tcpControlBits FIN SYN PSH ACK
        "00 00 00 00 00 00 05 dc", // octetDeltaCount 1500
        "00 00 00 00 00 00 00 0a", // packetDeltaCount 10
        "00 00 01 8b cf e5 68 7b", // flowStartMilliseconds 1700000000123
        "00 00 01 8b cf e5 71 98", // flowEndMilliseconds 1700000002456
        "00 00 00 02",             // ingressInterface 2 (LAN)
        "00 00 00 03",             // egressInterface 3 (WAN)
        "00",                      // flowDirection ingress
        "03",                      // flowEndReason end detected
        "14 00 00 7e d9 00 00 00 07", // applicationId: engine 20, PEN 32473, selector 7
        "01",                      // classId
        "03",                      // classificationSource SNI
        "00 00 30 39",             // handshakeRtt 12345 us
        "00 03 d0 90",             // ttfb 250000 us
        "01",                      // streaming
    ]
    .map(hex)
    .concat()
}

fn ipfix_template_specs(src: &str, dst: &str) -> Vec<u8> {
    [
        src,
        dst,
        "00 07 00 02 00 0b 00 02 00 04 00 01 00 05 00 01 00 06 00 02",
        "00 01 00 08 00 02 00 08 00 98 00 08 00 99 00 08", // counts, 152, 153
        "00 0a 00 04 00 0e 00 04 00 3d 00 01 00 88 00 01 00 5f 00 09", // 10 14 61 136 95
        // enterprise bit | id, length, PEN 32473 (0x7ed9)
        "80 01 00 01 00 00 7e d9 80 02 00 01 00 00 7e d9 80 03 00 04 00 00 7e d9",
        "80 04 00 04 00 00 7e d9 80 05 00 01 00 00 7e d9",
    ]
    .map(hex)
    .concat()
}

#[test]
fn ipfix_golden_first_message() {
    let mut enc = IpfixEncoder::new(&options());
    enc.set_interfaces(vec![(2, "lan0".into())]);
    enc.set_applications(vec![(7, "openai".into())]);
    let msgs = enc.encode(&[upload()], NOW_MS, MAX_LEN_IPV4).unwrap();
    assert_eq!(msgs.len(), 1, "expected one message, saw {}", msgs.len());
    let expected = [
        // header: version 10, length 486, export time, sequence 0, domain 7
        hex("00 0a 01 e6 65 53 f1 0a 00 00 00 00 00 00 00 07"),
        // template set, 4 + 2 × 108 = 220 bytes: template 256, 21 fields; 257, 21 fields
        hex("00 02 00 dc 01 00 00 15"),
        ipfix_template_specs("00 08 00 04", "00 0c 00 04"),
        hex("01 01 00 15"),
        ipfix_template_specs("00 1b 00 10", "00 1c 00 10"),
        // options templates, one per set (22 bytes): id, 3 fields, 1 scope field
        hex("00 03 00 16 01 02 00 03 00 01 00 0a 00 04 00 52 00 10 00 53 00 10"),
        hex("00 03 00 16 01 03 00 03 00 01 00 95 00 04 00 5f 00 09 00 60 00 20"),
        hex("00 03 00 16 01 04 00 03 00 01 00 95 00 04 00 22 00 04 00 23 00 01"),
        // interface names: set 258, 4 + 36: ifindex 2, "lan0" as interfaceName and -Description
        hex("01 02 00 28 00 00 00 02"),
        name("lan0", 16),
        name("lan0", 16),
        // application names: set 259, 4 + 45: domain 7, applicationId, "openai"
        hex("01 03 00 31 00 00 00 07 14 00 00 7e d9 00 00 00 07"),
        name("openai", 32),
        // sampling: set 260, 4 + 9: domain 7, interval 1, algorithm 1 (deterministic)
        hex("01 04 00 0d 00 00 00 07 00 00 00 01 01"),
        // data set 256, 4 + 78
        hex("01 00 00 52"),
        ipfix_record_v4(),
    ]
    .concat();
    assert_bytes(&msgs[0], &expected);
}

#[test]
fn netflow9_golden_first_message() {
    let mut enc = Netflow9Encoder::new(&options(), BOOT_MS);
    enc.set_interfaces(vec![(2, "lan0".into())]);
    enc.set_applications(vec![(7, "openai".into())]);
    let msgs = enc.encode(&[upload()], NOW_MS, MAX_LEN_IPV4).unwrap();
    assert_eq!(msgs.len(), 1, "expected one packet, saw {}", msgs.len());
    let specs = |src: &str, dst: &str| {
        [
            src,
            dst,
            "00 07 00 02 00 0b 00 02 00 04 00 01 00 05 00 01 00 06 00 01", // TCP_FLAGS 1 byte
            "00 01 00 08 00 02 00 08 00 16 00 04 00 15 00 04", // IN_BYTES IN_PKTS FIRST LAST
            "00 0a 00 04 00 0e 00 04 00 3d 00 01 00 5f 00 09",
        ]
        .map(hex)
        .concat()
    };
    let expected = [
        // header: version 9, count 9 (2 templates, 3 options templates, 3 options
        // records, 1 flow), sysUptime 3610000 ms, unix secs, sequence 0, source id 7
        hex("00 09 00 09 00 37 15 90 65 53 f1 0a 00 00 00 00 00 00 00 07"),
        // template flowset, 4 + 2 × 64 = 132
        hex("00 00 00 84 01 00 00 0f"),
        specs("00 08 00 04", "00 0c 00 04"),
        hex("01 01 00 0f"),
        specs("00 1b 00 10", "00 1c 00 10"),
        // options templates: id, scope length 4, option length 8, scope, fields, 2 pad
        hex("00 01 00 18 01 02 00 04 00 08 00 02 00 04 00 52 00 10 00 53 00 10 00 00"),
        hex("00 01 00 18 01 03 00 04 00 08 00 01 00 04 00 5f 00 09 00 60 00 20 00 00"),
        hex("00 01 00 18 01 04 00 04 00 08 00 01 00 04 00 22 00 04 00 23 00 01 00 00"),
        // interface 2 named lan0 (4 + 36, no pad)
        hex("01 02 00 28 00 00 00 02"),
        name("lan0", 16),
        name("lan0", 16),
        // system 7: provider 7 is openai (4 + 45 + 3 pad)
        hex("01 03 00 34 00 00 00 07 14 00 00 7e d9 00 00 00 07"),
        name("openai", 32),
        hex("00 00 00"),
        // sampling 1 in 1 (4 + 9 + 3 pad)
        hex("01 04 00 10 00 00 00 07 00 00 00 01 01 00 00 00"),
        // data flowset 256: 4 + 57 + 3 pad
        hex("01 00 00 40"),
        hex("c0 a8 01 0a cb 00 71 05 c3 50 01 bb 06 88 1b"),
        hex("00 00 00 00 00 00 05 dc 00 00 00 00 00 00 00 0a"),
        // FIRST/LAST_SWITCHED: 123 ms and 2456 ms after 3600000 ms of uptime
        hex("00 36 ee fb 00 36 f8 18"),
        hex("00 00 00 02 00 00 00 03 00 14 00 00 7e d9 00 00 00 07"),
        hex("00 00 00"),
    ]
    .concat();
    assert_bytes(&msgs[0], &expected);
}

#[test]
fn netflow5_golden_packet() {
    let mut enc = Netflow5Encoder::new(&options(), BOOT_MS);
    let msgs = enc.encode(&[upload()], NOW_MS + 250, MAX_LEN_IPV4).unwrap();
    let expected = [
        // version 5, count 1, sysUptime 3610250 (0x37168a), secs, nsecs 250000000,
        // flow_sequence 0, engine type 0, engine id 7, sampling 0
        hex("00 05 00 01 00 37 16 8a 65 53 f1 0a 0e e6 b2 80 00 00 00 00 00 07 00 00"),
        // src, dst, nexthop 0, input 2, output 3, packets 10, octets 1500
        hex("c0 a8 01 0a cb 00 71 05 00 00 00 00 00 02 00 03 00 00 00 0a 00 00 05 dc"),
        // first, last (uptime ms), ports, pad, flags, proto, tos, AS, masks, pad
        hex("00 36 ee fb 00 36 f8 18 c3 50 01 bb 00 1b 06 88 00 00 00 00 00 00 00 00"),
    ]
    .concat();
    assert_eq!(msgs.len(), 1);
    assert_bytes(&msgs[0], &expected);
}

/// Records with distinct source ports, every third IPv6.
fn many(n: usize) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| {
            let mut r = upload();
            r.src_port = i as u16;
            if i % 3 == 2 {
                r.src = "2001:db8::1".parse::<IpAddr>().unwrap();
                r.dst = "2001:db8::2".parse::<IpAddr>().unwrap();
            }
            r
        })
        .collect()
}

/// Walks a message's sets: (set id, record count, source ports of flow records).
/// Record lengths by template: the encoders' templates as the goldens pin them.
fn walk(msg: &[u8], header: usize, lens: &[(u16, usize)]) -> (Vec<(u16, usize)>, Vec<u16>) {
    let mut sets = Vec::new();
    let mut ports = Vec::new();
    let mut at = header;
    while at < msg.len() {
        let id = u16::from_be_bytes([msg[at], msg[at + 1]]);
        let len = u16::from_be_bytes([msg[at + 2], msg[at + 3]]) as usize;
        assert!(len >= 4 && at + len <= msg.len(), "set at {at} has length {len}, message {}", msg.len());
        let n = match lens.iter().find(|l| l.0 == id) {
            Some(&(_, rl)) => {
                let n = (len - 4) / rl;
                if id == 256 || id == 257 {
                    let port_at = if id == 256 { 8 } else { 32 };
                    for k in 0..n {
                        let p = at + 4 + k * rl + port_at;
                        ports.push(u16::from_be_bytes([msg[p], msg[p + 1]]));
                    }
                }
                n
            }
            None => 0,
        };
        sets.push((id, n));
        at += len;
    }
    (sets, ports)
}

const IPFIX_LENS: [(u16, usize); 5] = [(256, 78), (257, 102), (258, 36), (259, 45), (260, 13 - 4)];
const V9_LENS: [(u16, usize); 5] = [(256, 57), (257, 81), (258, 36), (259, 49 - 4), (260, 9)];

#[test]
fn messages_are_filled_up_to_the_limit_and_carry_every_record() {
    for max_len in [MAX_LEN_IPV4, MAX_LEN_IPV6, 600] {
        let recs = many(1000);
        for (label, mut enc, header, lens) in [
            ("ipfix", Encoder::Ipfix(IpfixEncoder::new(&options())), 16, &IPFIX_LENS),
            ("netflow9", Encoder::Netflow9(Netflow9Encoder::new(&options(), BOOT_MS)), 20, &V9_LENS),
        ] {
            enc.set_applications((1..=40).map(|i| (i, format!("provider-{i}"))).collect());
            let msgs = enc.encode(&recs, NOW_MS, max_len).unwrap();
            let mut ports = Vec::new();
            for m in &msgs {
                assert!(m.len() <= max_len, "{label}: expected messages of at most {max_len} bytes, saw {}", m.len());
                let len = u16::from_be_bytes([m[2], m[3]]) as usize;
                if label == "ipfix" {
                    assert_eq!(len, m.len(), "ipfix: header length {len} for a {}-byte message", m.len());
                }
                ports.extend(walk(m, header, lens).1);
            }
            let mut want: Vec<u16> = (0..1000).collect();
            ports.sort_unstable();
            want.sort_unstable();
            assert_eq!(ports, want, "{label} at {max_len}: expected every record exactly once");
            // Full: no message but the last could have taken one more IPv6 record.
            let v6 = lens.iter().find(|l| l.0 == 257).unwrap().1;
            for m in &msgs[..msgs.len() - 1] {
                assert!(m.len() + v6 + 4 > max_len, "{label}: a {}-byte message had room for more", m.len());
            }
        }
        let mut v5 = Netflow5Encoder::new(&options(), BOOT_MS);
        let msgs = v5.encode(&recs, NOW_MS, max_len).unwrap();
        let per = ((max_len - 24) / 48).min(30);
        let v4 = recs.iter().filter(|r| r.src.is_ipv4()).count();
        assert_eq!(msgs.len(), v4.div_ceil(per), "v5 at {max_len}: expected {per} records a packet");
        assert!(msgs.iter().all(|m| m.len() <= max_len && (m.len() - 24) % 48 == 0));
        assert_eq!(v5.stats().skipped, (1000 - v4) as u64, "v5: expected the IPv6 records skipped and counted");
    }
}

#[test]
fn ipfix_sequence_counts_the_flow_records_sent_before() {
    let mut enc = IpfixEncoder::new(&options());
    enc.set_applications(vec![(1, "a".into()), (2, "b".into())]);
    let seq = |m: &Vec<u8>| u32::from_be_bytes([m[8], m[9], m[10], m[11]]);
    let mut expected = 0u32;
    for round in 0..3 {
        let msgs = enc.encode(&many(100), NOW_MS + round, MAX_LEN_IPV4).unwrap();
        for m in &msgs {
            assert_eq!(seq(m), expected, "expected sequence {expected}, saw {}", seq(m));
            let (sets, _) = walk(m, 16, &IPFIX_LENS);
            expected += sets.iter().filter(|s| s.0 == 256 || s.0 == 257).map(|s| s.1 as u32).sum::<u32>();
        }
    }
    assert_eq!(expected, 300);

    // RFC-strict: options data records count as well.
    let mut enc = IpfixEncoder::new(&EncoderOptions { ipfix_sequence_counts_options: true, ..options() });
    enc.set_applications(vec![(1, "a".into()), (2, "b".into())]);
    let first = enc.encode(&many(1), NOW_MS, MAX_LEN_IPV4).unwrap();
    let second = enc.encode(&many(1), NOW_MS, MAX_LEN_IPV4).unwrap();
    // first message: 2 application records + 1 sampling record + 1 flow record
    assert_eq!((seq(&first[0]), seq(&second[0])), (0, 4));
}

#[test]
fn netflow9_sequence_counts_packets_and_count_counts_records() {
    let mut enc = Netflow9Encoder::new(&options(), BOOT_MS);
    let mut all = Vec::new();
    for round in 0..3 {
        all.extend(enc.encode(&many(100), NOW_MS + round, MAX_LEN_IPV4).unwrap());
    }
    for (i, m) in all.iter().enumerate() {
        let seq = u32::from_be_bytes([m[12], m[13], m[14], m[15]]);
        assert_eq!(seq, i as u32, "expected packet {i} to carry sequence {i}, saw {seq}");
        let count = u16::from_be_bytes([m[2], m[3]]) as usize;
        let (sets, _) = walk(m, 20, &V9_LENS);
        let templates = sets.iter().filter(|s| s.0 == 1).count() + if sets.iter().any(|s| s.0 == 0) { 2 } else { 0 };
        let records: usize = sets.iter().map(|s| s.1).sum::<usize>() + templates;
        assert_eq!(count, records, "packet {i}: expected count {records}, saw {count}");
    }
}

#[test]
fn netflow5_sequence_counts_flows_sent_before() {
    let mut enc = Netflow5Encoder::new(&options(), BOOT_MS);
    let mut expected = 0u32;
    for _ in 0..3 {
        for m in enc.encode(&many(100), NOW_MS, MAX_LEN_IPV4).unwrap() {
            let seq = u32::from_be_bytes([m[16], m[17], m[18], m[19]]);
            assert_eq!(seq, expected, "expected flow_sequence {expected}, saw {seq}");
            expected += u32::from(u16::from_be_bytes([m[2], m[3]]));
        }
    }
    assert_eq!(expected, 3 * 67, "expected the 67 IPv4 records of each round");
}

fn has_templates(m: &[u8], template_set: u16, header: usize) -> bool {
    u16::from_be_bytes([m[header], m[header + 1]]) == template_set
}

#[test]
fn templates_are_resent_by_count_and_by_time() {
    let opts = EncoderOptions { template_every_packets: 5, template_every_ms: 10_000, ..options() };
    for (label, mut enc, set, header) in [
        ("ipfix", Encoder::Ipfix(IpfixEncoder::new(&opts)), 2u16, 16usize),
        ("netflow9", Encoder::Netflow9(Netflow9Encoder::new(&opts, BOOT_MS)), 0, 20),
    ] {
        // One record a call, one message a call: templates in messages 0, 5, 10.
        let seen: Vec<bool> = (0..12)
            .map(|i| {
                let m = enc.encode(&many(1), NOW_MS + i, MAX_LEN_IPV4).unwrap();
                assert_eq!(m.len(), 1);
                has_templates(&m[0], set, header)
            })
            .collect();
        let want: Vec<bool> = (0..12).map(|i| i % 5 == 0).collect();
        assert_eq!(seen, want, "{label}: expected templates every 5 messages");
        // Message 12 was not due by count (2 since); 10 s after the last refresh it is.
        let m = enc.encode(&many(1), NOW_MS + 10 + 9_999, MAX_LEN_IPV4).unwrap();
        assert!(!has_templates(&m[0], set, header), "{label}: 9999 ms after the refresh: not yet");
        let m = enc.encode(&many(1), NOW_MS + 10 + 10_000, MAX_LEN_IPV4).unwrap();
        assert!(has_templates(&m[0], set, header), "{label}: 10 s after the refresh: expected templates");
        // A new application list goes out at once.
        enc.set_applications(vec![(1, "openai".into())]);
        let m = enc.encode(&[], NOW_MS + 10_011, MAX_LEN_IPV4).unwrap();
        assert_eq!(m.len(), 1, "{label}: expected a templates-only message after a change");
        assert!(m[0].windows(6).any(|w| w == b"openai"), "{label}: expected the new name sent");
        let m = enc.encode(&[], NOW_MS + 10_012, MAX_LEN_IPV4).unwrap();
        assert!(m.is_empty(), "{label}: expected nothing to send, saw {} messages", m.len());
    }
}

#[test]
fn a_limit_too_small_for_one_record_is_an_error() {
    let mut enc = IpfixEncoder::new(&options());
    match enc.encode(&many(1), NOW_MS, 100) {
        Err(ExportError::MaxLenTooSmall { max_len: 100, .. }) => {}
        other => panic!("expected MaxLenTooSmall, saw {other:?}"),
    }
    let mut v5 = Netflow5Encoder::new(&options(), BOOT_MS);
    assert!(v5.encode(&many(1), NOW_MS, 70_000).is_err(), "expected a limit over 65535 refused");
}

#[test]
fn mixed_families_are_skipped_and_counted() {
    let mut r = upload();
    r.dst = "2001:db8::2".parse().unwrap();
    let mut enc = IpfixEncoder::new(&options());
    let msgs = enc.encode(&[r, upload()], NOW_MS, MAX_LEN_IPV4).unwrap();
    let (sets, _) = walk(&msgs[0], 16, &IPFIX_LENS);
    assert!(sets.contains(&(256, 1)), "expected the good record encoded, saw sets {sets:?}");
    assert_eq!(enc.stats().skipped, 1);
}
