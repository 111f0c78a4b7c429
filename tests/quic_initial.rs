//! QUIC Initial decryption and ClientHello reassembly (src/classify/quic.rs) against
//! the RFC 9001 / RFC 9369 sample packets, and against packets protected by an
//! independent implementation: rustls' QUIC Initial keys seal them, and rustls'
//! QUIC client writes the ClientHellos.

use std::sync::Arc;

use inferlane::classify::quic::{
    decrypt_initial, looks_like_initial, AssemblyResult, CryptoAssembler, InitialPacket, QuicError,
    QuicHello, QuicVersion, MIN_INITIAL_DATAGRAM,
};

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    assert!(s.len().is_multiple_of(2), "odd-length hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

// ---------------------------------------------------------------------------------
// RFC sample packets
// ---------------------------------------------------------------------------------

const RFC_DCID: &str = "8394c8f03e515708";

/// RFC 9001 A.2 and RFC 9369 A.2: the CRYPTO frame of the client Initial's payload
/// (followed there by 917 bytes of PADDING). Both RFCs use the same payload.
const RFC_CRYPTO_FRAME: &str = "
    060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
    04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
    616d706c652e636f6dff01000100000a00080006001d00170018001000070005
    04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
    baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
    0d0010000e0403050306030203080408050806002d00020101001c0002400100
    3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
    75300901100f088394c8f03e51570806048000ffff";

/// RFC 9001 A.2: the protected client Initial, 1200 bytes.
const RFC9001_CLIENT_INITIAL: &str = include_str!("vectors/rfc9001_client_initial.hex");

/// RFC 9369 A.2: the protected QUIC v2 client Initial, 1200 bytes.
const RFC9369_CLIENT_INITIAL: &str = "
    d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485
    dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04
    9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d
    250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a
    12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500
    cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68
    18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33
    12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3
    d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd
    6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520
    bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045
    636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f
    ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12
    16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5
    4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4
    fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b
    8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7
    14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9
    9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91
    abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd
    80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db
    848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18
    d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15
    c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc
    7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61
    f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710
    10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b
    3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e
    06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce
    8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1
    34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1
    e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd
    5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3
    8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89
    d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53
    6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19
    9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b
    a18b2faa745b6fe189cf772a9f84cbfc";

/// RFC 9001 A.3: the protected server Initial (DCID empty, SCID f067a5502a4262b5).
const RFC9001_SERVER_INITIAL: &str = "
    cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a
    5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3
    dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84
    022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4
    2158407dd074ee";

fn assert_rfc_client_initial(version: QuicVersion, protected: &str) {
    let datagram = hex(protected);
    assert_eq!(datagram.len(), 1200);
    assert!(
        looks_like_initial(&datagram),
        "{version:?}: looks_like_initial"
    );
    let packet = decrypt_initial(&datagram)
        .unwrap_or_else(|e| panic!("{version:?}: expected the RFC packet to decrypt, got {e}"));
    let frame = hex(RFC_CRYPTO_FRAME);
    let want = InitialPacket {
        version,
        dcid: hex(RFC_DCID),
        scid: vec![],
        packet_number: 2,
        crypto: vec![(0, frame[4..].to_vec())],
    };
    assert_eq!(packet, want, "{version:?}");
    let hello = QuicHello {
        sni: Some("example.com".into()),
        alpn: vec!["alpn".into()],
        ech: false,
    };
    assert_eq!(
        CryptoAssembler::new().push(&packet),
        AssemblyResult::Done(hello)
    );
}

#[test]
fn rfc9001_a2_client_initial() {
    assert_rfc_client_initial(QuicVersion::V1, RFC9001_CLIENT_INITIAL);
}

#[test]
fn rfc9369_a2_client_initial() {
    assert_rfc_client_initial(QuicVersion::V2, RFC9369_CLIENT_INITIAL);
}

#[test]
fn rfc9001_a3_server_initial_is_no_client_initial() {
    // A server Initial's keys come from the client's DCID, not from its own.
    let datagram = hex(RFC9001_SERVER_INITIAL);
    assert_eq!(decrypt_initial(&datagram), Err(QuicError::Decrypt));
    assert!(
        !looks_like_initial(&datagram),
        "135 bytes is no client Initial datagram"
    );
}

// ---------------------------------------------------------------------------------
// A client, played by rustls
// ---------------------------------------------------------------------------------

fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=0x3f => vec![v as u8],
        0x40..=0x3fff => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        0x4000..=0x3fff_ffff => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x06];
    frame.extend(varint(offset as u64));
    frame.extend(varint(data.len() as u64));
    frame.extend(data);
    frame
}

const PING: u8 = 0x01;

fn rustls_version(version: QuicVersion) -> rustls::quic::Version {
    match version {
        QuicVersion::V1 => rustls::quic::Version::V1,
        QuicVersion::V2 => rustls::quic::Version::V2,
    }
}

/// The CRYPTO stream a rustls QUIC client starts with: its ClientHello. A reserved
/// (GREASE) transport parameter of `grease_len` bytes makes it as large as wanted;
/// 1500 bytes gives a ClientHello of a post-quantum browser's size, too big for one
/// Initial.
fn rustls_client_hello(version: QuicVersion, host: &str, grease_len: usize) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with the ring provider")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    let mut params = varint(0x04); // initial_max_data
    params.extend(varint(4));
    params.extend(varint(1 << 20));
    params.extend(varint(27)); // a reserved parameter ID (31 * N + 27)
    params.extend(varint(grease_len as u64));
    params.extend(std::iter::repeat_n(0xa5, grease_len));
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("server name");
    let mut client = rustls::quic::ClientConnection::new(
        Arc::new(config),
        rustls_version(version),
        name,
        params,
    )
    .expect("rustls QUIC client");
    let mut stream = Vec::new();
    client.write_hs(&mut stream);
    assert_eq!(
        stream.first(),
        Some(&0x01),
        "rustls starts with a ClientHello"
    );
    stream
}

/// Protects client Initials with rustls' Initial keys, the way a client does: long
/// header with a 2-byte Length, AES-128-GCM over the frames, then header protection.
#[derive(Clone)]
struct Sealer {
    version: QuicVersion,
    dcid: Vec<u8>,
    /// The DCID the keys come from, when not `dcid` (to test a wrong key).
    key_dcid: Option<Vec<u8>>,
    scid: Vec<u8>,
    pn_len: usize,
    /// Zero-pad the frames (PADDING) so the packet is this long; 0 for no padding.
    pad_to: usize,
}

impl Sealer {
    fn new(version: QuicVersion) -> Self {
        Self {
            version,
            dcid: vec![0x5c, 0x1e, 0x7f, 0x33, 0x02, 0x9a, 0xbb, 0x10],
            key_dcid: None,
            scid: vec![0xc1, 0x1e, 0x47],
            pn_len: 2,
            pad_to: MIN_INITIAL_DATAGRAM,
        }
    }

    /// `packet_number` must fit `pn_len` bytes: a client's first Initials are numbered
    /// from 0, so the truncated number on the wire is the whole number.
    fn seal_initial(&self, packet_number: u64, frames: &[u8]) -> Vec<u8> {
        assert!(
            packet_number >> (8 * self.pn_len) == 0,
            "pn {packet_number} in {} bytes",
            self.pn_len
        );
        let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .and_then(|suite| suite.quic_suite())
            .expect("AES-128-GCM QUIC suite");
        let key_dcid = self.key_dcid.as_deref().unwrap_or(&self.dcid);
        let keys = suite.keys(key_dcid, rustls::Side::Client, rustls_version(self.version));

        let initial_type = match self.version {
            QuicVersion::V1 => 0b00,
            QuicVersion::V2 => 0b01,
        };
        let mut header = vec![0xc0 | initial_type << 4 | (self.pn_len as u8 - 1)];
        header.extend(self.version.wire().to_be_bytes());
        header.push(self.dcid.len() as u8);
        header.extend(&self.dcid);
        header.push(self.scid.len() as u8);
        header.extend(&self.scid);
        header.push(0); // no token
        let length_at = header.len();
        header.extend([0, 0]);
        let pn_offset = header.len();
        header.extend(&packet_number.to_be_bytes()[8 - self.pn_len..]);

        let mut payload = frames.to_vec();
        // At least enough for the header-protection sample.
        let fill = self
            .pad_to
            .saturating_sub(header.len() + 16)
            .max(4 - self.pn_len);
        if payload.len() < fill {
            payload.resize(fill, 0);
        }
        let length = (self.pn_len + payload.len() + 16) as u16;
        assert!(length < 0x4000, "packet too long for a 2-byte Length");
        header[length_at..length_at + 2].copy_from_slice(&(length | 0x4000).to_be_bytes());

        let tag = keys
            .local
            .packet
            .encrypt_in_place(packet_number, &header, &mut payload)
            .unwrap();
        let mut packet = header;
        packet.extend(payload);
        packet.extend(tag.as_ref());

        let (head, rest) = packet.split_at_mut(pn_offset + 4);
        let (first, after_first) = head.split_at_mut(1);
        let pn = &mut after_first[pn_offset - 1..pn_offset - 1 + self.pn_len];
        keys.local
            .header
            .encrypt_in_place(&rest[..16], &mut first[0], pn)
            .unwrap();
        packet
    }
}

/// Feeds datagrams to one assembler and returns the last result.
fn assemble(datagrams: &[Vec<u8>]) -> AssemblyResult {
    let mut assembler = CryptoAssembler::new();
    let mut result = AssemblyResult::NeedMore;
    for (i, datagram) in datagrams.iter().enumerate() {
        let packet = decrypt_initial(datagram)
            .unwrap_or_else(|e| panic!("datagram {i}: expected it to decrypt, got {e}"));
        result = assembler.push(&packet);
        if i + 1 < datagrams.len() {
            assert_eq!(
                result,
                AssemblyResult::NeedMore,
                "datagram {i} of {}",
                datagrams.len()
            );
        }
    }
    result
}

fn openai_hello() -> QuicHello {
    QuicHello {
        sni: Some("api.openai.com".into()),
        alpn: vec!["h3".into()],
        ech: false,
    }
}

#[test]
fn rustls_initials_every_version_pn_length_and_dcid_length() {
    for version in [QuicVersion::V1, QuicVersion::V2] {
        let hello = rustls_client_hello(version, "api.openai.com", 0);
        for pn_len in 1..=4 {
            for dcid_len in [0, 1, 8, 20] {
                let sealer = Sealer {
                    pn_len,
                    dcid: (0..dcid_len as u8).map(|b| b.wrapping_mul(37)).collect(),
                    ..Sealer::new(version)
                };
                let pn = [0x2a, 0x1234, 0x12_3456, 0x1234_5678][pn_len - 1];
                let datagram = sealer.seal_initial(pn, &crypto_frame(0, &hello));
                let what = format!("{version:?} pn_len {pn_len} dcid_len {dcid_len}");
                assert!(looks_like_initial(&datagram), "{what}");
                let packet = decrypt_initial(&datagram)
                    .unwrap_or_else(|e| panic!("{what}: expected to decrypt, got {e}"));
                assert_eq!(packet.version, version, "{what}");
                assert_eq!(packet.packet_number, pn, "{what}");
                assert_eq!(packet.dcid, sealer.dcid, "{what}");
                assert_eq!(packet.scid, sealer.scid, "{what}");
                assert_eq!(packet.crypto, vec![(0, hello.clone())], "{what}");
                let result = CryptoAssembler::new().push(&packet);
                assert_eq!(result, AssemblyResult::Done(openai_hello()), "{what}");
            }
        }
    }
}

#[test]
fn client_hello_split_over_two_initials() {
    for version in [QuicVersion::V1, QuicVersion::V2] {
        let hello = rustls_client_hello(version, "api.openai.com", 1500);
        assert!(hello.len() > 1500, "ClientHello of {} bytes", hello.len());
        let sealer = Sealer::new(version);
        let split = 1100;
        let first = sealer.seal_initial(0, &crypto_frame(0, &hello[..split]));
        let second = sealer.seal_initial(1, &crypto_frame(split, &hello[split..]));
        assert_eq!(first.len(), MIN_INITIAL_DATAGRAM);
        assert_eq!(second.len(), MIN_INITIAL_DATAGRAM);
        let done = AssemblyResult::Done(openai_hello());
        assert_eq!(
            assemble(&[first.clone(), second.clone()]),
            done,
            "{version:?} in order"
        );
        assert_eq!(
            assemble(&[second, first]),
            done,
            "{version:?} second packet first"
        );
    }
}

#[test]
fn chaos_protection_scattered_crypto_frames() {
    // Chrome-style: the ClientHello cut into pieces, the CRYPTO frames shuffled within
    // each packet and interleaved with PING and runs of PADDING, over two Initials.
    let hello = rustls_client_hello(QuicVersion::V1, "api.openai.com", 1500);
    let cuts = [0, 97, 300, 301, 702, 1000, 1313, hello.len()];
    let piece = |i: usize| crypto_frame(cuts[i], &hello[cuts[i]..cuts[i + 1]]);
    let mut first = vec![PING];
    first.extend(piece(3));
    first.extend([0; 7]);
    first.extend(piece(0));
    first.extend([PING, PING]);
    first.extend(piece(5));
    let mut second = piece(6);
    second.extend([0; 3]);
    second.extend(piece(1));
    second.push(PING);
    second.extend(piece(4));
    second.extend(piece(2));
    second.push(PING);

    let sealer = Sealer {
        pn_len: 1,
        ..Sealer::new(QuicVersion::V1)
    };
    let packets = [
        sealer.seal_initial(0, &first),
        sealer.seal_initial(1, &second),
    ];
    assert_eq!(assemble(&packets), AssemblyResult::Done(openai_hello()));
    let offsets: Vec<u64> = decrypt_initial(&packets[0])
        .unwrap()
        .crypto
        .iter()
        .map(|(offset, _)| *offset)
        .collect();
    assert_eq!(
        offsets,
        vec![301, 0, 1000],
        "frames are reported in packet order"
    );
}

#[test]
fn coalesced_datagram_decrypts_the_first_initial() {
    let hello = rustls_client_hello(QuicVersion::V1, "api.openai.com", 0);
    let sealer = Sealer {
        pad_to: 0,
        ..Sealer::new(QuicVersion::V1)
    };
    let initial = sealer.seal_initial(0, &crypto_frame(0, &hello));
    let alone = decrypt_initial(&initial).unwrap();

    let mut datagram = initial.clone();
    // A 0-RTT packet (v1 type 0b01) and a Handshake packet (0b10) after it, whose
    // contents we cannot and need not open, then zero padding to 1200 bytes.
    for first_byte in [0xd1, 0xe1] {
        datagram.push(first_byte);
        datagram.extend(QuicVersion::V1_WIRE.to_be_bytes());
        datagram.push(sealer.dcid.len() as u8);
        datagram.extend(&sealer.dcid);
        datagram.push(sealer.scid.len() as u8);
        datagram.extend(&sealer.scid);
        datagram.extend(varint(60));
        datagram.extend((0..60u8).map(|b| b.wrapping_mul(151)));
    }
    datagram.resize(MIN_INITIAL_DATAGRAM, 0);
    assert!(looks_like_initial(&datagram));
    assert_eq!(decrypt_initial(&datagram), Ok(alone.clone()));
    assert_eq!(
        CryptoAssembler::new().push(&alone),
        AssemblyResult::Done(openai_hello())
    );

    // The same Initial after something else is not looked for.
    let mut handshake_first = vec![0xe1];
    handshake_first.extend(&datagram[1..]);
    assert_eq!(
        decrypt_initial(&handshake_first),
        Err(QuicError::NotInitial)
    );
}

#[test]
fn wrong_dcid_key_fails_to_decrypt() {
    let hello = rustls_client_hello(QuicVersion::V2, "api.openai.com", 0);
    let sealer = Sealer {
        key_dcid: Some(vec![0x11; 8]),
        ..Sealer::new(QuicVersion::V2)
    };
    let datagram = sealer.seal_initial(0, &crypto_frame(0, &hello));
    assert!(looks_like_initial(&datagram), "the header is fine");
    assert_eq!(decrypt_initial(&datagram), Err(QuicError::Decrypt));
}

#[test]
fn every_single_bit_flip_is_an_error() {
    // Header protection bits, packet number, connection IDs, Length, ciphertext and
    // tag: the AEAD covers all of it, so no flip may yield a packet.
    let hello = rustls_client_hello(QuicVersion::V1, "api.openai.com", 0);
    for pn_len in [1, 4] {
        let sealer = Sealer {
            pn_len,
            ..Sealer::new(QuicVersion::V1)
        };
        let datagram = sealer.seal_initial(3, &crypto_frame(0, &hello));
        assert!(decrypt_initial(&datagram).is_ok());
        for bit in 0..datagram.len() * 8 {
            let mut flipped = datagram.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = decrypt_initial(&flipped);
            assert!(
                result.is_err(),
                "pn_len {pn_len}, bit {bit} flipped: got {result:?}"
            );
        }
    }
}

#[test]
fn every_truncation_is_an_error() {
    let hello = rustls_client_hello(QuicVersion::V2, "api.openai.com", 0);
    let datagram = Sealer::new(QuicVersion::V2).seal_initial(0, &crypto_frame(0, &hello));
    for len in 0..datagram.len() {
        let result = decrypt_initial(&datagram[..len]);
        assert!(result.is_err(), "truncated to {len} bytes: got {result:?}");
        assert!(
            !looks_like_initial(&datagram[..len]),
            "truncated to {len} bytes"
        );
    }
    let rfc = hex(RFC9001_CLIENT_INITIAL);
    for len in 0..rfc.len() {
        assert!(
            decrypt_initial(&rfc[..len]).is_err(),
            "RFC packet truncated to {len}"
        );
    }
}

/// xorshift64: deterministic, seedable, good enough to pick mutations.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        match rng.below(7) {
            0 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(b) = bytes.get_mut(at) {
                    *b = rng.next() as u8;
                }
            }
            2 => bytes.truncate(at),
            3 => bytes.insert(at.min(bytes.len()), rng.next() as u8),
            4 => {
                if at < bytes.len() {
                    bytes.remove(at);
                }
            }
            // Values parsers trip on: length-ish extremes.
            5 => {
                let v = [0x00, 0x3f, 0x40, 0x7f, 0x80, 0xbf, 0xc0, 0xff][rng.below(8)];
                if let Some(b) = bytes.get_mut(at) {
                    *b = v;
                }
            }
            _ => {
                let len = rng.below(16);
                let from = rng.below(bytes.len());
                let chunk: Vec<u8> = bytes.iter().skip(from).take(len).copied().collect();
                let at = at.min(bytes.len());
                bytes.splice(at..at, chunk);
            }
        }
    }
}

#[test]
fn fuzz_mutated_initials_never_panic() {
    let seed = std::env::var("QUIC_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    println!("QUIC fuzz seed {seed:#018x} (set QUIC_FUZZ_SEED to replay)");
    let mut rng = XorShift(seed | 1);

    // Plaintext frame payloads: a whole ClientHello, the two halves of a big one,
    // scattered fragments with PING/PADDING/ACK/CONNECTION_CLOSE.
    let small = rustls_client_hello(QuicVersion::V1, "api.openai.com", 0);
    let big = rustls_client_hello(QuicVersion::V2, "chatgpt.com", 1500);
    let mut scattered = vec![0x02, 0x00, 0x00, 0x00, 0x00, PING];
    scattered.extend(crypto_frame(200, &small[200..]));
    scattered.extend([0; 5]);
    scattered.extend(crypto_frame(0, &small[..200]));
    scattered.extend([0x1c, 0x00, 0x00, 0x00]);
    let payloads = [
        crypto_frame(0, &small),
        crypto_frame(0, &big[..1000]),
        crypto_frame(1000, &big[1000..]),
        scattered,
    ];
    let sealed: Vec<Vec<u8>> = payloads
        .iter()
        .enumerate()
        .map(|(i, frames)| {
            let version = if i % 2 == 0 {
                QuicVersion::V1
            } else {
                QuicVersion::V2
            };
            Sealer {
                pn_len: 1 + i % 4,
                ..Sealer::new(version)
            }
            .seal_initial(i as u64, frames)
        })
        .collect();

    let (mut decrypted, mut malformed_frames, mut done, mut failed) = (0, 0, 0, 0);
    for iteration in 0..30_000 {
        let pick = rng.below(payloads.len());
        let frames_mutated = iteration % 2 == 1;
        let datagram = if !frames_mutated {
            // Mutate the protected datagram: exercises the header parser and checks.
            let mut datagram = sealed[pick].clone();
            mutate(&mut rng, &mut datagram);
            datagram
        } else {
            // Mutate the frames, then seal: the payload decrypts and the frame parser,
            // the assembler and the ClientHello parser get the damage.
            let mut frames = payloads[pick].clone();
            mutate(&mut rng, &mut frames);
            frames.truncate(1150);
            let version = if rng.below(2) == 0 {
                QuicVersion::V1
            } else {
                QuicVersion::V2
            };
            let pn_len = 1 + rng.below(4);
            let sealer = Sealer {
                pn_len,
                ..Sealer::new(version)
            };
            sealer.seal_initial(rng.next() >> (64 - 8 * pn_len), &frames)
        };
        let _ = looks_like_initial(&datagram);
        let packet = match decrypt_initial(&datagram) {
            Ok(packet) => packet,
            Err(QuicError::Malformed(_)) if frames_mutated => {
                malformed_frames += 1;
                continue;
            }
            Err(e) => {
                assert!(
                    !frames_mutated,
                    "iteration {iteration}: a sealed packet gave {e}"
                );
                continue;
            }
        };
        if frames_mutated {
            decrypted += 1;
        } else {
            // Only bytes appended after the packet (coalesced junk) leave it intact.
            let original = &sealed[pick];
            assert_eq!(
                datagram.get(..original.len()),
                Some(&original[..]),
                "iteration {iteration}: a damaged packet decrypted"
            );
        }
        let mut assembler = CryptoAssembler::new();
        let mut result = assembler.push(&packet);
        // Complete the big ClientHello when only one half was damaged.
        if result == AssemblyResult::NeedMore {
            let other = if pick == 1 { &sealed[2] } else { &sealed[1] };
            if let Ok(other) = decrypt_initial(other) {
                result = assembler.push(&other);
            }
        }
        match result {
            AssemblyResult::Done(_) => done += 1,
            AssemblyResult::Failed(_) => failed += 1,
            AssemblyResult::NeedMore => {}
        }
    }
    println!(
        "QUIC fuzz: {decrypted} decrypted, {malformed_frames} with malformed frames, \
         {done} ClientHellos parsed, {failed} failed"
    );
    assert_eq!(
        decrypted + malformed_frames,
        15_000,
        "every frame-level mutant decrypts"
    );
    assert!(
        done > 0 && failed > 0,
        "both outcomes exercised: {done} done, {failed} failed"
    );
}
