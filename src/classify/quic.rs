//! QUIC client Initial packets: enough of RFC 9000, RFC 9001 (v1) and RFC 9369 (v2) to
//! read the server name a client asks for.
//!
//! A client's Initial packets are encrypted, but with keys anyone can derive from the
//! packet itself: HKDF over the Destination Connection ID with a salt published per
//! version (RFC 9001 §5.2, RFC 9369 §3.3.1). So we do what the server does: derive the
//! client keys, remove header protection (an AES-128 ECB mask computed over a sample of
//! the ciphertext, RFC 9001 §5.4), open the AES-128-GCM payload (§5.3), walk the frames
//! and keep the CRYPTO data. The CRYPTO stream carries TLS handshake messages *without*
//! the record layer; its first message is the ClientHello, from which we read SNI,
//! ALPN and whether ECH is offered.
//!
//! It takes two steps because a ClientHello need not fit one packet:
//! - [`decrypt_initial`] turns one UDP payload into an [`InitialPacket`]: its CRYPTO
//!   fragments, each with its offset in the stream;
//! - a [`CryptoAssembler`] per flow puts fragments together by offset, across packets
//!   and in any order (Chrome splits a post-quantum ClientHello over two Initials, and
//!   its "chaos protection" scatters CRYPTO frames among PING and PADDING inside one),
//!   and parses the ClientHello once its bytes are contiguous.
//!
//! The CRYPTO stream has no TLS record layer, so the ClientHello is put in one
//! synthetic handshake record and read by [`tls::parse_client_hello`]: TCP and QUIC
//! flows get the same reading of SNI (validated as a DNS name), ALPN and ECH.
//!
//! # Bounds
//!
//! Everything here reads attacker-controlled bytes. Nothing panics on any input, work
//! is linear in the datagram, and an assembler holds at most [`MAX_CRYPTO_BYTES`] of
//! stream in at most [`MAX_CRYPTO_GAPS`] + 1 pieces and gives up after
//! [`MAX_INITIAL_PACKETS`] packets.

use std::ops::Range;

use ring::{aead, hkdf, hmac};
use thiserror::Error;

use super::tls;

/// The CRYPTO stream bytes an assembler keeps: a ClientHello longer than this is given
/// up on (post-quantum ClientHellos are about 1.8 KiB).
pub const MAX_CRYPTO_BYTES: usize = 16 * 1024;
/// Initial packets an assembler takes before it gives up.
pub const MAX_INITIAL_PACKETS: usize = 8;
/// Holes an assembler tolerates in the CRYPTO stream it has so far.
pub const MAX_CRYPTO_GAPS: usize = 64;
/// RFC 9000 §14.1: a client pads every datagram carrying an Initial to 1200 bytes.
pub const MIN_INITIAL_DATAGRAM: usize = 1200;

/// RFC 9000 §17.2: connection IDs in v1 (and v2) long headers are at most 20 bytes.
const MAX_CID_LEN: usize = 20;
/// RFC 9001 §5.4.2: the header-protection sample is 16 bytes, taken 4 bytes after the
/// start of the Packet Number field, whatever the packet number's length.
const SAMPLE_LEN: usize = 16;
const SAMPLE_OFFSET: usize = 4;
/// AES-128-GCM tag.
const TAG_LEN: usize = 16;
/// RFC 9000 §16: largest value a variable-length integer can hold.
const MAX_VARINT: u64 = (1 << 62) - 1;

/// TLS handshake type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// TLS record content type of handshake records.
const TLS_RECORD_HANDSHAKE: u8 = 22;

/// QUIC versions whose Initial packets we can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuicVersion {
    /// RFC 9000, version 0x00000001.
    V1,
    /// RFC 9369, version 0x6b3343cf.
    V2,
}

impl QuicVersion {
    /// The version field of a QUIC v1 long header.
    pub const V1_WIRE: u32 = 0x0000_0001;
    /// The version field of a QUIC v2 long header.
    pub const V2_WIRE: u32 = 0x6b33_43cf;

    /// The version a long header's version field names, if we support it.
    pub fn from_wire(version: u32) -> Option<Self> {
        match version {
            Self::V1_WIRE => Some(Self::V1),
            Self::V2_WIRE => Some(Self::V2),
            _ => None,
        }
    }

    /// The long header's version field for this version.
    pub fn wire(self) -> u32 {
        match self {
            Self::V1 => Self::V1_WIRE,
            Self::V2 => Self::V2_WIRE,
        }
    }

    /// The Long Packet Type bits (bits 4 and 5 of the first byte) of an Initial: v2
    /// renumbers the packet types so that middleboxes cannot ossify on v1's (RFC 9369
    /// §3.2).
    pub fn initial_packet_type(self) -> u8 {
        match self {
            Self::V1 => 0b00,
            Self::V2 => 0b01,
        }
    }

    /// RFC 9001 §5.2 and RFC 9369 §3.3.1.
    fn initial_salt(self) -> &'static [u8; 20] {
        match self {
            Self::V1 => &[
                0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8,
                0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
            ],
            Self::V2 => &[
                0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26,
                0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9,
            ],
        }
    }

    /// HKDF labels for the packet key, IV and header-protection key (RFC 9001 §5.1,
    /// RFC 9369 §3.3.2).
    fn key_labels(self) -> [&'static [u8]; 3] {
        match self {
            Self::V1 => [b"quic key", b"quic iv", b"quic hp"],
            Self::V2 => [b"quicv2 key", b"quicv2 iv", b"quicv2 hp"],
        }
    }
}

/// Why a datagram yielded no Initial, or a flow no ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuicError {
    #[error("read QUIC packet: not a long-header packet")]
    NotQuic,
    #[error("read QUIC packet: not an Initial")]
    NotInitial,
    #[error("read QUIC packet: version {0:#010x} not supported")]
    UnsupportedVersion(u32),
    #[error("read QUIC Initial: truncated")]
    Truncated,
    #[error("decrypt QUIC Initial: authentication failed (not a client Initial, or corrupted)")]
    Decrypt,
    #[error("read QUIC Initial: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> QuicError {
    QuicError::Malformed(what.into())
}

/// A decrypted client Initial packet: who it is addressed to and its CRYPTO data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialPacket {
    pub version: QuicVersion,
    pub dcid: Vec<u8>,
    pub scid: Vec<u8>,
    /// The packet number as sent, without reconstruction against earlier packets: a
    /// client's Initials are numbered from 0, so this is the full number in practice.
    pub packet_number: u64,
    /// CRYPTO frames in the order they appear in the packet: (stream offset, data).
    /// Empty frames are left out.
    pub crypto: Vec<(u64, Vec<u8>)>,
}

/// The keys of one direction of the Initial packet number space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketKeys {
    /// `client_initial_secret` or `server_initial_secret`.
    pub secret: [u8; 32],
    /// AES-128-GCM key.
    pub key: [u8; 16],
    /// AEAD IV, XORed with the packet number to form the nonce.
    pub iv: [u8; 12],
    /// AES-128 header-protection key.
    pub hp: [u8; 16],
}

/// The Initial key schedule for one Destination Connection ID (RFC 9001 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialSecrets {
    /// HKDF-Extract(initial_salt, client's DCID).
    pub initial_secret: [u8; 32],
    pub client: PacketKeys,
    pub server: PacketKeys,
}

/// Derives both directions' Initial keys for a client's first Destination Connection
/// ID. [`decrypt_initial`] only needs the client's; the rest is here for tests and
/// tools.
pub fn initial_secrets(version: QuicVersion, dcid: &[u8]) -> InitialSecrets {
    let initial_secret = hkdf_extract(version.initial_salt(), dcid);
    InitialSecrets {
        initial_secret,
        client: packet_keys(version, hkdf_expand_label(&initial_secret, b"client in")),
        server: packet_keys(version, hkdf_expand_label(&initial_secret, b"server in")),
    }
}

fn client_keys(version: QuicVersion, dcid: &[u8]) -> PacketKeys {
    let initial_secret = hkdf_extract(version.initial_salt(), dcid);
    packet_keys(version, hkdf_expand_label(&initial_secret, b"client in"))
}

fn packet_keys(version: QuicVersion, secret: [u8; 32]) -> PacketKeys {
    let [key, iv, hp] = version.key_labels();
    PacketKeys {
        key: hkdf_expand_label(&secret, key),
        iv: hkdf_expand_label(&secret, iv),
        hp: hkdf_expand_label(&secret, hp),
        secret,
    }
}

/// HKDF-Extract (RFC 5869 §2.2) is HMAC with the salt as key. ring's `hkdf::Salt`
/// keeps the PRK to itself; computing it with `hmac` lets tests compare it with RFC
/// 9001's `initial_secret`.
fn hkdf_extract(salt: &[u8], ikm: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, salt), ikm);
    let mut prk = [0; 32];
    prk.copy_from_slice(tag.as_ref());
    prk
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, as QUIC uses it.
fn hkdf_expand_label<const N: usize>(secret: &[u8; 32], label: &[u8]) -> [u8; N] {
    struct OutLen(usize);
    impl hkdf::KeyType for OutLen {
        fn len(&self) -> usize {
            self.0
        }
    }
    const PREFIX: &[u8] = b"tls13 ";
    let out_len = (N as u16).to_be_bytes();
    let label_len = [(PREFIX.len() + label.len()) as u8];
    let info: [&[u8]; 5] = [&out_len, &label_len, PREFIX, label, &[0]];
    let mut out = [0; N];
    hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, secret)
        .expand(&info, OutLen(N))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-Expand output of at most 32 bytes is within 255 * HashLen");
    out
}

/// The header-protection mask for a sample (RFC 9001 §5.4.3).
fn header_mask(hp: &[u8; 16], sample: &[u8]) -> Result<[u8; 5], QuicError> {
    aead::quic::HeaderProtectionKey::new(&aead::quic::AES_128, hp)
        .and_then(|key| key.new_mask(sample))
        .map_err(|_| QuicError::Decrypt)
}

/// Opens an AES-128-GCM payload in place and returns the plaintext's length (RFC 9001
/// §5.3: nonce = IV XOR packet number, AAD = the unprotected header).
fn open_payload(
    keys: &PacketKeys,
    packet_number: u64,
    header: &[u8],
    payload: &mut [u8],
) -> Result<usize, QuicError> {
    let key = aead::UnboundKey::new(&aead::AES_128_GCM, &keys.key)
        .map(aead::LessSafeKey::new)
        .map_err(|_| QuicError::Decrypt)?;
    let nonce = aead::Nonce::assume_unique_for_key(packet_nonce(&keys.iv, packet_number));
    key.open_in_place(nonce, aead::Aad::from(header), payload)
        .map(|plain| plain.len())
        .map_err(|_| QuicError::Decrypt)
}

fn packet_nonce(iv: &[u8; 12], packet_number: u64) -> [u8; 12] {
    let mut nonce = *iv;
    for (n, p) in nonce[4..].iter_mut().zip(packet_number.to_be_bytes()) {
        *n ^= p;
    }
    nonce
}

/// A bounds-checked cursor; every read returns `None` past the end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn u8(&mut self) -> Option<u8> {
        let byte = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    fn bytes(&mut self, len: u64) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(usize::try_from(len).ok()?)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.bytes(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// RFC 9000 §16 variable-length integer.
    fn varint(&mut self) -> Option<u64> {
        let first = self.u8()?;
        let mut value = u64::from(first & 0x3f);
        for _ in 1..(1usize << (first >> 6)) {
            value = (value << 8) | u64::from(self.u8()?);
        }
        Some(value)
    }
}

/// The parts of an Initial's long header read before header protection is removed.
struct LongHeader<'a> {
    version: QuicVersion,
    dcid: &'a [u8],
    scid: &'a [u8],
    /// Offset of the (protected) Packet Number field in the datagram.
    pn_offset: usize,
    /// End of this packet in the datagram (`pn_offset` + the Length field): what
    /// follows is the next coalesced packet, or padding.
    end: usize,
}

/// RFC 9000 §17.2.2 Initial packet, up to and including the Length field.
fn parse_long_header(datagram: &[u8]) -> Result<LongHeader<'_>, QuicError> {
    let mut r = Reader::new(datagram);
    let first = r.u8().ok_or(QuicError::NotQuic)?;
    if first & 0x80 == 0 {
        return Err(QuicError::NotQuic);
    }
    // The fixed bit (0x40) is not checked: RFC 9287 lets endpoints grease it.
    let version = r.u32().ok_or(QuicError::Truncated)?;
    if version == 0 {
        // Version Negotiation, which only servers send.
        return Err(QuicError::NotInitial);
    }
    let version = QuicVersion::from_wire(version).ok_or(QuicError::UnsupportedVersion(version))?;
    if (first >> 4) & 0b11 != version.initial_packet_type() {
        return Err(QuicError::NotInitial);
    }
    let mut cid = |which: &str| -> Result<&[u8], QuicError> {
        let len = r.u8().ok_or(QuicError::Truncated)?;
        if usize::from(len) > MAX_CID_LEN {
            return Err(malformed(format!(
                "{which} of {len} bytes, more than {MAX_CID_LEN}"
            )));
        }
        r.bytes(len.into()).ok_or(QuicError::Truncated)
    };
    let dcid = cid("destination connection ID")?;
    let scid = cid("source connection ID")?;
    let token_len = r.varint().ok_or(QuicError::Truncated)?;
    r.bytes(token_len).ok_or(QuicError::Truncated)?;
    let length = r.varint().ok_or(QuicError::Truncated)?;
    let pn_offset = r.pos;
    // Header protection samples 16 bytes starting 4 bytes into the Packet Number field,
    // so no valid packet is shorter than that, whatever its packet number length.
    if length < (SAMPLE_OFFSET + SAMPLE_LEN) as u64 {
        return Err(malformed(format!(
            "Length {length} leaves no room for the sample"
        )));
    }
    let end = usize::try_from(length)
        .ok()
        .and_then(|length| pn_offset.checked_add(length))
        .filter(|&end| end <= datagram.len())
        .ok_or(QuicError::Truncated)?;
    Ok(LongHeader {
        version,
        dcid,
        scid,
        pn_offset,
        end,
    })
}

/// Whether a UDP payload is worth decrypting: a datagram of at least 1200 bytes
/// (RFC 9000 §14.1) starting with a v1 or v2 Initial whose Length fits the datagram.
pub fn looks_like_initial(udp_payload: &[u8]) -> bool {
    udp_payload.len() >= MIN_INITIAL_DATAGRAM && parse_long_header(udp_payload).is_ok()
}

/// Decrypts the client Initial at the start of a UDP payload, with the keys its own
/// Destination Connection ID gives. Packets coalesced after it (0-RTT, Handshake) and
/// trailing padding are ignored. The datagram's size is not checked here; see
/// [`looks_like_initial`].
///
/// Server Initials, and client Initials sent after the server's first Initial changed
/// the client's DCID, fail with [`QuicError::Decrypt`]: their keys come from another
/// connection ID.
pub fn decrypt_initial(udp_payload: &[u8]) -> Result<InitialPacket, QuicError> {
    let header = parse_long_header(udp_payload)?;
    let packet = udp_payload.get(..header.end).ok_or(QuicError::Truncated)?;
    let pn_offset = header.pn_offset;
    let keys = client_keys(header.version, header.dcid);

    let sample_start = pn_offset + SAMPLE_OFFSET;
    let sample = packet
        .get(sample_start..sample_start + SAMPLE_LEN)
        .ok_or(QuicError::Truncated)?;
    let mask = header_mask(&keys.hp, sample)?;
    let first = packet[0] ^ (mask[0] & 0x0f);
    let pn_len = usize::from(first & 0x03) + 1;
    let mut unprotected = packet
        .get(..pn_offset + pn_len)
        .ok_or(QuicError::Truncated)?
        .to_vec();
    unprotected[0] = first;
    let mut packet_number = 0u64;
    for (byte, m) in unprotected[pn_offset..].iter_mut().zip(&mask[1..]) {
        *byte ^= m;
        packet_number = (packet_number << 8) | u64::from(*byte);
    }

    let mut payload = packet
        .get(pn_offset + pn_len..)
        .ok_or(QuicError::Truncated)?
        .to_vec();
    if payload.len() < TAG_LEN {
        return Err(QuicError::Truncated);
    }
    let plain_len = open_payload(&keys, packet_number, &unprotected, &mut payload)?;
    // RFC 9000 §17.2: reserved bits set after a successful decryption are a protocol
    // violation.
    if first & 0x0c != 0 {
        return Err(malformed("reserved header bits set"));
    }
    let crypto = crypto_frames(&payload[..plain_len])?;
    Ok(InitialPacket {
        version: header.version,
        dcid: header.dcid.to_vec(),
        scid: header.scid.to_vec(),
        packet_number,
        crypto,
    })
}

/// Walks an Initial's frames (RFC 9000 §12.4: only PADDING, PING, ACK, CRYPTO and
/// CONNECTION_CLOSE may appear in one) and returns its CRYPTO data.
fn crypto_frames(payload: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, QuicError> {
    if payload.is_empty() {
        return Err(malformed("Initial without frames"));
    }
    let truncated = |frame: &str| malformed(format!("{frame} frame truncated"));
    let mut r = Reader::new(payload);
    let mut crypto = Vec::new();
    // Frame types are varints that must be minimally encoded, so every allowed type is
    // one byte and any other first byte is an error.
    while let Some(frame_type) = r.u8() {
        match frame_type {
            0x00 | 0x01 => {} // PADDING, PING
            0x02 | 0x03 => {
                // ACK: Largest Acknowledged, ACK Delay, ACK Range Count, First ACK
                // Range, then Range Count (Gap, ACK Range Length) pairs; 0x03 adds three
                // ECN counts. Each read takes a byte, so a huge count ends with the data.
                let ack = |r: &mut Reader| -> Option<()> {
                    r.varint()?;
                    r.varint()?;
                    let ranges = r.varint()?;
                    r.varint()?;
                    for _ in 0..ranges {
                        r.varint()?;
                        r.varint()?;
                    }
                    if frame_type == 0x03 {
                        for _ in 0..3 {
                            r.varint()?;
                        }
                    }
                    Some(())
                };
                ack(&mut r).ok_or_else(|| truncated("ACK"))?;
            }
            0x06 => {
                let offset = r.varint().ok_or_else(|| truncated("CRYPTO"))?;
                let len = r.varint().ok_or_else(|| truncated("CRYPTO"))?;
                let data = r.bytes(len).ok_or_else(|| truncated("CRYPTO"))?;
                if offset + len > MAX_VARINT {
                    return Err(malformed("CRYPTO frame past the largest stream offset"));
                }
                if !data.is_empty() {
                    crypto.push((offset, data.to_vec()));
                }
            }
            0x1c => {
                // CONNECTION_CLOSE: Error Code, Frame Type, Reason Phrase.
                let close = |r: &mut Reader| -> Option<()> {
                    r.varint()?;
                    r.varint()?;
                    let reason_len = r.varint()?;
                    r.bytes(reason_len).map(drop)
                };
                close(&mut r).ok_or_else(|| truncated("CONNECTION_CLOSE"))?;
            }
            other => return Err(malformed(format!("frame type {other:#04x} in an Initial"))),
        }
    }
    Ok(crypto)
}

/// What a flow's ClientHello says about where it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuicHello {
    /// The `host_name` of the server_name extension, lower-cased, without a trailing
    /// dot; `None` when absent or not a DNS name. With ECH this is the outer (public)
    /// name, not the destination.
    pub sni: Option<String>,
    /// ALPN protocols in the client's order (`h3` for HTTP/3).
    pub alpn: Vec<String>,
    /// Whether the encrypted_client_hello extension is present (real or GREASE; the
    /// two are indistinguishable by design).
    pub ech: bool,
}

/// The state of a flow's CRYPTO stream after a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssemblyResult {
    Done(QuicHello),
    NeedMore,
    Failed(QuicError),
}

/// Reassembles one flow's Initial CRYPTO stream and parses its ClientHello.
///
/// Feed it the decrypted client Initials of one flow in arrival order. Once it returns
/// [`AssemblyResult::Done`] or [`AssemblyResult::Failed`] it keeps returning that.
/// A packet with a Destination Connection ID other than the first packet's starts the
/// stream over: after a Retry the client sends its ClientHello again under the
/// connection ID the server chose.
#[derive(Debug, Default)]
pub struct CryptoAssembler {
    dcid: Option<Vec<u8>>,
    /// Stream bytes from offset 0; holes are zero until filled.
    stream: Vec<u8>,
    /// Which parts of `stream` have arrived: sorted, disjoint, not touching.
    filled: Vec<Range<usize>>,
    packets: usize,
    outcome: Option<AssemblyResult>,
}

impl CryptoAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, packet: &InitialPacket) -> AssemblyResult {
        if let Some(outcome) = &self.outcome {
            return outcome.clone();
        }
        let result = match self.absorb(packet) {
            Ok(Some(hello)) => AssemblyResult::Done(hello),
            Ok(None) if self.packets >= MAX_INITIAL_PACKETS => AssemblyResult::Failed(malformed(
                format!("no complete ClientHello in {MAX_INITIAL_PACKETS} Initial packets"),
            )),
            Ok(None) => AssemblyResult::NeedMore,
            Err(error) => AssemblyResult::Failed(error),
        };
        if result != AssemblyResult::NeedMore {
            self.outcome = Some(result.clone());
        }
        result
    }

    fn absorb(&mut self, packet: &InitialPacket) -> Result<Option<QuicHello>, QuicError> {
        self.packets += 1;
        if self.dcid.as_deref() != Some(packet.dcid.as_slice()) {
            self.dcid = Some(packet.dcid.clone());
            self.stream.clear();
            self.filled.clear();
        }
        for (offset, data) in &packet.crypto {
            self.insert(*offset, data)?;
        }
        self.client_hello()
    }

    fn insert(&mut self, offset: u64, data: &[u8]) -> Result<(), QuicError> {
        if data.is_empty() {
            return Ok(());
        }
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(data.len())?))
            .filter(|range| range.end <= MAX_CRYPTO_BYTES)
            .ok_or_else(|| {
                malformed(format!(
                    "CRYPTO data past the first {MAX_CRYPTO_BYTES} bytes"
                ))
            })?;
        if self.stream.len() < range.end {
            self.stream.resize(range.end, 0);
        }
        // Retransmitted bytes overwrite: RFC 9000 §19.6 has them identical.
        self.stream[range.clone()].copy_from_slice(data);

        let mut merged = range;
        let mut filled = Vec::with_capacity(self.filled.len() + 1);
        for have in self.filled.drain(..) {
            if have.end < merged.start || have.start > merged.end {
                filled.push(have);
            } else {
                merged = merged.start.min(have.start)..merged.end.max(have.end);
            }
        }
        let at = filled.partition_point(|have| have.start < merged.start);
        filled.insert(at, merged);
        self.filled = filled;
        if self.filled.len() > MAX_CRYPTO_GAPS + 1 {
            return Err(malformed(format!(
                "CRYPTO stream in more than {MAX_CRYPTO_GAPS} pieces"
            )));
        }
        Ok(())
    }

    /// The ClientHello, once the stream holds all of it from offset 0.
    fn client_hello(&self) -> Result<Option<QuicHello>, QuicError> {
        let contiguous = match self.filled.first() {
            Some(first) if first.start == 0 => first.end,
            _ => return Ok(None),
        };
        let stream = &self.stream[..contiguous];
        let Some(&[msg_type, l0, l1, l2]) = stream.get(..4) else {
            return Ok(None);
        };
        if msg_type != HANDSHAKE_CLIENT_HELLO {
            return Err(malformed(format!(
                "CRYPTO stream starts with handshake type {msg_type}, not a ClientHello"
            )));
        }
        let total = 4 + (usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2));
        if total > MAX_CRYPTO_BYTES {
            return Err(malformed(format!(
                "ClientHello of {total} bytes, more than {MAX_CRYPTO_BYTES}"
            )));
        }
        match stream.get(..total) {
            Some(message) => parse_client_hello(message).map(Some),
            None => Ok(None),
        }
    }
}

/// Reads SNI, ALPN and ECH from a complete ClientHello handshake message (type and
/// 24-bit length included, no record header) with the TLS classifier's parser, so
/// that TCP and QUIC flows get one reading of a ClientHello. That parser takes
/// records, so the message goes into one synthetic handshake record; it fits, since
/// [`MAX_CRYPTO_BYTES`] is the 2^14 bytes of a record fragment.
fn parse_client_hello(message: &[u8]) -> Result<QuicHello, QuicError> {
    let len = u16::try_from(message.len())
        .ok()
        .filter(|&len| usize::from(len) <= MAX_CRYPTO_BYTES)
        .ok_or_else(|| malformed(format!("ClientHello of {} bytes", message.len())))?;
    let mut record = Vec::with_capacity(5 + message.len());
    record.extend([TLS_RECORD_HANDSHAKE, 0x03, 0x01]);
    record.extend(len.to_be_bytes());
    record.extend(message);
    let info = tls::parse_client_hello(&record).map_err(|e| malformed(e.to_string()))?;
    Ok(QuicHello {
        sni: info.sni,
        alpn: info.alpn,
        ech: info.ech,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXT_SERVER_NAME: u16 = 0x0000;
    const EXT_ALPN: u16 = 0x0010;
    const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        assert!(s.len().is_multiple_of(2), "odd-length hex string");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    const RFC_DCID: &str = "8394c8f03e515708";

    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=0x3f => vec![v as u8],
            0x40..=0x3fff => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
            0x4000..=0x3fff_ffff => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06];
        f.extend(varint(offset));
        f.extend(varint(data.len() as u64));
        f.extend(data);
        f
    }

    /// Protects a client Initial the way a client does (RFC 9001 §5.3, §5.4): header
    /// with a 2-byte Length, AES-128-GCM over the frames, then the header-protection
    /// mask. `frames` is zero-padded so the packet fills `pad_to` bytes (when larger)
    /// and always has room for the sample. `reserved` sets the reserved bits.
    struct Seal<'a> {
        version: QuicVersion,
        dcid: &'a [u8],
        scid: &'a [u8],
        token: &'a [u8],
        pn_len: usize,
        pad_to: usize,
        reserved: u8,
    }

    impl Default for Seal<'_> {
        fn default() -> Self {
            Self {
                version: QuicVersion::V1,
                dcid: &[0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08],
                scid: &[],
                token: &[],
                pn_len: 4,
                pad_to: MIN_INITIAL_DATAGRAM,
                reserved: 0,
            }
        }
    }

    impl Seal<'_> {
        fn seal_initial(&self, packet_number: u64, frames: &[u8]) -> Vec<u8> {
            let keys = initial_secrets(self.version, self.dcid).client;
            let mut header = vec![
                0xc0 | self.version.initial_packet_type() << 4
                    | self.reserved << 2
                    | (self.pn_len as u8 - 1),
            ];
            header.extend(self.version.wire().to_be_bytes());
            header.push(self.dcid.len() as u8);
            header.extend(self.dcid);
            header.push(self.scid.len() as u8);
            header.extend(self.scid);
            header.extend(varint(self.token.len() as u64));
            header.extend(self.token);
            let length_at = header.len();
            header.extend([0, 0]);
            let pn_offset = header.len();
            header.extend(&packet_number.to_be_bytes()[8 - self.pn_len..]);

            let mut payload = frames.to_vec();
            let min_payload = SAMPLE_OFFSET + SAMPLE_LEN - self.pn_len - TAG_LEN;
            let fill = self
                .pad_to
                .saturating_sub(header.len() + TAG_LEN)
                .max(min_payload);
            if payload.len() < fill {
                payload.resize(fill, 0);
            }
            let length = (self.pn_len + payload.len() + TAG_LEN) as u16 | 0x4000;
            header[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());

            let key = aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_128_GCM, &keys.key).unwrap(),
            );
            let nonce = aead::Nonce::assume_unique_for_key(packet_nonce(&keys.iv, packet_number));
            key.seal_in_place_append_tag(nonce, aead::Aad::from(&header), &mut payload)
                .unwrap();

            let mut packet = header;
            packet.extend(payload);
            let sample = &packet[pn_offset + SAMPLE_OFFSET..][..SAMPLE_LEN];
            let mask = header_mask(&keys.hp, sample).unwrap();
            packet[0] ^= mask[0] & 0x0f;
            for i in 0..self.pn_len {
                packet[pn_offset + i] ^= mask[1 + i];
            }
            packet
        }
    }

    /// A TLS 1.3 ClientHello handshake message with the given extensions
    /// ((type, body) in order).
    fn client_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([0x5a; 32]); // random
        body.push(0); // legacy_session_id
        body.extend([0x00, 0x02, 0x13, 0x01]); // cipher_suites: TLS_AES_128_GCM_SHA256
        body.extend([0x01, 0x00]); // legacy_compression_methods: null
        let mut exts = Vec::new();
        for (ty, data) in extensions {
            exts.extend(ty.to_be_bytes());
            exts.extend((data.len() as u16).to_be_bytes());
            exts.extend(data);
        }
        body.extend((exts.len() as u16).to_be_bytes());
        body.extend(exts);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn sni_ext(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (EXT_SERVER_NAME, data)
    }

    fn alpn_ext(protocols: &[&str]) -> (u16, Vec<u8>) {
        let mut list = Vec::new();
        for p in protocols {
            list.push(p.len() as u8);
            list.extend(p.as_bytes());
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        (EXT_ALPN, data)
    }

    fn packet(dcid: &[u8], crypto: Vec<(u64, Vec<u8>)>) -> InitialPacket {
        InitialPacket {
            version: QuicVersion::V1,
            dcid: dcid.to_vec(),
            scid: vec![],
            packet_number: 0,
            crypto,
        }
    }

    #[test]
    fn rfc9001_a1_keys() {
        let s = initial_secrets(QuicVersion::V1, &hex(RFC_DCID));
        assert_eq!(
            s.initial_secret.to_vec(),
            hex("7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44"),
            "initial_secret"
        );
        assert_eq!(
            s.client.secret.to_vec(),
            hex("c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"),
            "client_initial_secret"
        );
        assert_eq!(
            s.client.key.to_vec(),
            hex("1f369613dd76d5467730efcbe3b1a22d"),
            "client key"
        );
        assert_eq!(
            s.client.iv.to_vec(),
            hex("fa044b2f42a3fd3b46fb255c"),
            "client iv"
        );
        assert_eq!(
            s.client.hp.to_vec(),
            hex("9f50449e04a0e810283a1e9933adedd2"),
            "client hp"
        );
        assert_eq!(
            s.server.secret.to_vec(),
            hex("3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"),
            "server_initial_secret"
        );
        assert_eq!(
            s.server.key.to_vec(),
            hex("cf3a5331653c364c88f0f379b6067e37"),
            "server key"
        );
        assert_eq!(
            s.server.iv.to_vec(),
            hex("0ac1493ca1905853b0bba03e"),
            "server iv"
        );
        assert_eq!(
            s.server.hp.to_vec(),
            hex("c206b8d9b9f0f37644430b490eeaa314"),
            "server hp"
        );
        assert_eq!(client_keys(QuicVersion::V1, &hex(RFC_DCID)), s.client);
    }

    #[test]
    fn rfc9369_a1_keys() {
        assert_eq!(
            QuicVersion::V2.initial_salt().to_vec(),
            hex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
        );
        let s = initial_secrets(QuicVersion::V2, &hex(RFC_DCID));
        assert_eq!(
            s.client.secret.to_vec(),
            hex("14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"),
            "client_initial_secret"
        );
        assert_eq!(
            s.client.key.to_vec(),
            hex("8b1a0bc121284290a29e0971b5cd045d"),
            "client key"
        );
        assert_eq!(
            s.client.iv.to_vec(),
            hex("91f73e2351d8fa91660e909f"),
            "client iv"
        );
        assert_eq!(
            s.client.hp.to_vec(),
            hex("45b95e15235d6f45a6b19cbcb0294ba9"),
            "client hp"
        );
        assert_eq!(
            s.server.secret.to_vec(),
            hex("0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1"),
            "server_initial_secret"
        );
        assert_eq!(
            s.server.key.to_vec(),
            hex("82db637861d55e1d011f19ea71d5d2a7"),
            "server key"
        );
        assert_eq!(
            s.server.iv.to_vec(),
            hex("dd13c276499c0249d3310652"),
            "server iv"
        );
        assert_eq!(
            s.server.hp.to_vec(),
            hex("edf6d05c83121201b436e16877593c3a"),
            "server hp"
        );
    }

    #[test]
    fn rfc_a2_header_protection_masks() {
        // RFC 9001 A.2 and RFC 9369 A.2: sample → mask with the client hp key.
        let v1 = initial_secrets(QuicVersion::V1, &hex(RFC_DCID)).client;
        let mask = header_mask(&v1.hp, &hex("d1b1c98dd7689fb8ec11d242b123dc9b")).unwrap();
        assert_eq!(mask.to_vec(), hex("437b9aec36"), "v1 mask");
        let v2 = initial_secrets(QuicVersion::V2, &hex(RFC_DCID)).client;
        let mask = header_mask(&v2.hp, &hex("ffe67b6abcdb4298b485dd04de806071")).unwrap();
        assert_eq!(mask.to_vec(), hex("94a0c95e80"), "v2 mask");
    }

    /// RFC 9001 A.2's unprotected payload: one CRYPTO frame (its padding left out).
    const RFC_A2_CRYPTO_FRAME: &str = "
        060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868
        04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578
        616d706c652e636f6dff01000100000a00080006001d00170018001000070005
        04616c706e000500050100000000003300260024001d00209370b2c9caa47fba
        baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400
        0d0010000e0403050306030203080408050806002d00020101001c0002400100
        3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000
        75300901100f088394c8f03e51570806048000ffff";

    #[test]
    fn rfc_a2_crypto_frame_holds_example_com() {
        let frame = hex(RFC_A2_CRYPTO_FRAME);
        let mut payload = frame.clone();
        payload.resize(1162, 0);
        let crypto = crypto_frames(&payload).unwrap();
        assert_eq!(crypto, vec![(0, frame[4..].to_vec())]);
        let hello = parse_client_hello(&crypto[0].1).unwrap();
        let want = QuicHello {
            sni: Some("example.com".into()),
            alpn: vec!["alpn".into()],
            ech: false,
        };
        assert_eq!(hello, want);
    }

    #[test]
    fn round_trip_v1_v2_every_packet_number_length() {
        let hello = client_hello(&[sni_ext(b"api.openai.com"), alpn_ext(&["h3"])]);
        for version in [QuicVersion::V1, QuicVersion::V2] {
            for pn_len in 1..=4 {
                let pn = [0x07, 0x1234, 0x12_3456, 0x1234_5678][pn_len - 1];
                let seal = Seal {
                    version,
                    pn_len,
                    scid: &[1, 2, 3, 4],
                    ..Seal::default()
                };
                let datagram = seal.seal_initial(pn, &crypto_frame(0, &hello));
                assert_eq!(datagram.len(), MIN_INITIAL_DATAGRAM);
                assert!(looks_like_initial(&datagram), "{version:?} pn_len {pn_len}");
                let p = decrypt_initial(&datagram)
                    .unwrap_or_else(|e| panic!("{version:?} pn_len {pn_len}: {e}"));
                assert_eq!(p.version, version);
                assert_eq!(p.packet_number, pn, "{version:?} pn_len {pn_len}");
                assert_eq!(p.dcid, seal.dcid);
                assert_eq!(p.scid, vec![1, 2, 3, 4]);
                assert_eq!(p.crypto, vec![(0, hello.clone())]);
            }
        }
    }

    #[test]
    fn token_and_empty_dcid() {
        let seal = Seal {
            token: &[9; 40],
            dcid: &[],
            ..Seal::default()
        };
        let p = decrypt_initial(&seal.seal_initial(1, &[0x01])).unwrap();
        assert!(p.dcid.is_empty() && p.crypto.is_empty());
    }

    #[test]
    fn smallest_packet_decrypts() {
        // pn_len 1 and a 3-byte payload: Length 20, the least that leaves a sample.
        let seal = Seal {
            pn_len: 1,
            pad_to: 0,
            ..Seal::default()
        };
        let datagram = seal.seal_initial(0, &[0x01]);
        assert!(decrypt_initial(&datagram).is_ok());
        assert!(!looks_like_initial(&datagram), "datagram under 1200 bytes");
    }

    #[test]
    fn reserved_bits_are_malformed() {
        for reserved in 1..=3 {
            let datagram = Seal {
                reserved,
                ..Seal::default()
            }
            .seal_initial(0, &[0x01]);
            assert!(
                matches!(decrypt_initial(&datagram), Err(QuicError::Malformed(_))),
                "reserved bits {reserved:#b}"
            );
        }
    }

    #[test]
    fn header_errors() {
        let good = Seal::default().seal_initial(0, &[0x01]);
        assert_eq!(decrypt_initial(&[]), Err(QuicError::NotQuic));
        assert_eq!(decrypt_initial(&[0x40, 1, 2, 3]), Err(QuicError::NotQuic));
        let mut d = good.clone();
        d[1..5].copy_from_slice(&0xff00_001du32.to_be_bytes());
        assert_eq!(
            decrypt_initial(&d),
            Err(QuicError::UnsupportedVersion(0xff00_001d))
        );
        d[1..5].copy_from_slice(&[0; 4]);
        assert_eq!(
            decrypt_initial(&d),
            Err(QuicError::NotInitial),
            "version negotiation"
        );
        for packet_type in 1..=3 {
            let mut d = good.clone();
            d[0] = (d[0] & 0xcf) | packet_type << 4;
            assert_eq!(
                decrypt_initial(&d),
                Err(QuicError::NotInitial),
                "v1 type {packet_type}"
            );
        }
        // The v1 Initial type under the v2 version is a v2 Retry.
        let mut d = good.clone();
        d[1..5].copy_from_slice(&QuicVersion::V2_WIRE.to_be_bytes());
        assert_eq!(decrypt_initial(&d), Err(QuicError::NotInitial));
        let mut d = good.clone();
        d[5] = 21;
        assert!(
            matches!(decrypt_initial(&d), Err(QuicError::Malformed(_))),
            "DCID of 21 bytes"
        );
        assert!(!looks_like_initial(&d));
        assert!(looks_like_initial(&good));
    }

    #[test]
    fn frames() {
        let mut payload = vec![0x01, 0x00, 0x00];
        payload.extend([0x02, 0x05, 0x00, 0x01, 0x00, 0x01, 0x02]); // ACK, one extra range
        payload.extend([0x03, 0x05, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03]); // ACK_ECN
        payload.extend(crypto_frame(10, b"bc"));
        payload.extend(crypto_frame(0, b""));
        payload.extend([0x1c, 0x0a, 0x06, 0x02, b'h', b'i']); // CONNECTION_CLOSE
        payload.extend(crypto_frame(0x4000, b"a"));
        assert_eq!(
            crypto_frames(&payload).unwrap(),
            vec![(10, b"bc".to_vec()), (0x4000, b"a".to_vec())]
        );

        let bad: &[(&str, &[u8])] = &[
            ("no frames", &[]),
            ("STREAM", &[0x08, 0x00, 0x00]),
            ("application CONNECTION_CLOSE", &[0x1d, 0x00, 0x00]),
            ("HANDSHAKE_DONE", &[0x1e]),
            ("non-minimal CRYPTO type", &[0x40, 0x06, 0x00, 0x00]),
            ("CRYPTO longer than the payload", &[0x06, 0x00, 0x05, 1, 2]),
            ("CRYPTO without a length", &[0x06, 0x00]),
            (
                "CRYPTO past 2^62",
                &[
                    0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
                ],
            ),
            (
                "ACK with a huge range count",
                &[0x02, 0x00, 0x00, 0xbf, 0xff, 0xff, 0xff, 0x00],
            ),
            (
                "CONNECTION_CLOSE reason too long",
                &[0x1c, 0x00, 0x00, 0x09, b'x'],
            ),
        ];
        for (what, payload) in bad {
            assert!(
                matches!(crypto_frames(payload), Err(QuicError::Malformed(_))),
                "{what}: expected Malformed, got {:?}",
                crypto_frames(payload)
            );
        }
    }

    #[test]
    fn varints() {
        for (bytes, value) in [
            (&[0x25][..], 37),
            (&[0x7b, 0xbd][..], 15293),
            (&[0x9d, 0x7f, 0x3e, 0x7d][..], 494_878_333),
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c][..],
                151_288_809_941_952_652,
            ),
        ] {
            assert_eq!(Reader::new(bytes).varint(), Some(value), "{bytes:02x?}");
            assert_eq!(Reader::new(&bytes[..bytes.len() - 1]).varint(), None);
        }
    }

    #[test]
    fn client_hello_fields() {
        let grease_ext = (0x1a1a, vec![]);
        let hello = client_hello(&[
            grease_ext,
            (0x0039, vec![0xff; 3]), // quic_transport_parameters, opaque here
            alpn_ext(&["h3", "h3-29"]),
            (EXT_ENCRYPTED_CLIENT_HELLO, vec![0; 8]),
            sni_ext(b"API.OpenAI.com."),
        ]);
        let got = parse_client_hello(&hello).unwrap();
        let want = QuicHello {
            sni: Some("api.openai.com".into()),
            alpn: vec!["h3".into(), "h3-29".into()],
            ech: true,
        };
        assert_eq!(got, want);

        let none = parse_client_hello(&client_hello(&[alpn_ext(&["h3"])])).unwrap();
        assert_eq!(
            none,
            QuicHello {
                sni: None,
                alpn: vec!["h3".into()],
                ech: false
            }
        );

        // Names that are not DNS names are no SNI, as for TLS over TCP.
        for odd in [
            &b"bad name"[..],
            b"192.0.2.1",
            "ex\u{e4}mple.com".as_bytes(),
        ] {
            let got = parse_client_hello(&client_hello(&[sni_ext(odd)])).unwrap();
            assert_eq!(got.sni, None, "{odd:?}");
        }
        let mut cut = client_hello(&[sni_ext(b"a.example")]);
        cut.truncate(cut.len() - 1);
        let got = parse_client_hello(&cut);
        assert!(
            matches!(got, Err(QuicError::Malformed(_))),
            "truncated: {got:?}"
        );
        let twice = client_hello(&[sni_ext(b"a.example"), sni_ext(b"b.example")]);
        let got = parse_client_hello(&twice);
        assert!(
            matches!(got, Err(QuicError::Malformed(_))),
            "two server_names: {got:?}"
        );
    }

    #[test]
    fn assembler_out_of_order_and_overlapping() {
        let hello = client_hello(&[sni_ext(b"api.openai.com"), alpn_ext(&["h3"])]);
        let (a, rest) = hello.split_at(20);
        let (b, c) = rest.split_at(30);
        let dcid = [7; 8];
        let mut asm = CryptoAssembler::new();
        // Last piece first, then a retransmission overlapping the first two.
        let first = packet(&dcid, vec![(50, c.to_vec()), (10, hello[10..40].to_vec())]);
        assert_eq!(asm.push(&first), AssemblyResult::NeedMore);
        let second = packet(&dcid, vec![(20, b.to_vec()), (0, a.to_vec())]);
        let AssemblyResult::Done(got) = asm.push(&second) else {
            panic!("expected Done")
        };
        assert_eq!(got.sni.as_deref(), Some("api.openai.com"));
        // Done sticks.
        assert_eq!(asm.push(&packet(&dcid, vec![])), AssemblyResult::Done(got));
    }

    #[test]
    fn assembler_new_dcid_starts_over() {
        let hello = client_hello(&[sni_ext(b"after.retry.example")]);
        let mut asm = CryptoAssembler::new();
        assert_eq!(
            asm.push(&packet(&[1; 8], vec![(0, hello[..30].to_vec())])),
            AssemblyResult::NeedMore
        );
        // After a Retry the first bytes come again under the new DCID; the old ones
        // must not be combined with them.
        assert_eq!(
            asm.push(&packet(&[2; 8], vec![(30, hello[30..].to_vec())])),
            AssemblyResult::NeedMore
        );
        let done = asm.push(&packet(&[2; 8], vec![(0, hello[..30].to_vec())]));
        assert!(
            matches!(done, AssemblyResult::Done(ref h) if h.sni.as_deref() == Some("after.retry.example"))
        );
    }

    #[test]
    fn assembler_limits() {
        let dcid = [1; 8];
        let failed = |r: AssemblyResult| matches!(r, AssemblyResult::Failed(_));

        let mut asm = CryptoAssembler::new();
        for i in 0..MAX_INITIAL_PACKETS - 1 {
            assert_eq!(
                asm.push(&packet(&dcid, vec![])),
                AssemblyResult::NeedMore,
                "packet {i}"
            );
        }
        assert!(
            failed(asm.push(&packet(&dcid, vec![]))),
            "gives up after 8 packets"
        );
        let hello = client_hello(&[sni_ext(b"late.example")]);
        assert!(
            failed(asm.push(&packet(&dcid, vec![(0, hello)]))),
            "and stays failed"
        );

        let mut asm = CryptoAssembler::new();
        let beyond = packet(&dcid, vec![(MAX_CRYPTO_BYTES as u64 - 1, vec![0; 2])]);
        assert!(failed(asm.push(&beyond)), "past 16 KiB");
        let mut asm = CryptoAssembler::new();
        assert!(
            failed(asm.push(&packet(&dcid, vec![(u64::MAX, vec![0])]))),
            "offset overflow"
        );

        let mut asm = CryptoAssembler::new();
        let holes = (0..=MAX_CRYPTO_GAPS as u64 + 1)
            .map(|i| (100 + i * 3, vec![0]))
            .collect();
        assert!(failed(asm.push(&packet(&dcid, holes))), "too many pieces");

        let mut asm = CryptoAssembler::new();
        let huge = vec![(0, vec![HANDSHAKE_CLIENT_HELLO, 0x00, 0x40, 0x00])];
        assert!(
            failed(asm.push(&packet(&dcid, huge))),
            "ClientHello declared above 16 KiB"
        );

        let mut asm = CryptoAssembler::new();
        let server_hello = vec![(0, vec![0x02, 0x00, 0x00, 0x01, 0x00])];
        assert!(
            failed(asm.push(&packet(&dcid, server_hello))),
            "not a ClientHello"
        );
    }

    #[test]
    fn assembler_fits_exactly_16k() {
        let mut big = client_hello(&[sni_ext(b"big.example"), (0xffa5, vec![0; 100])]);
        let pad = MAX_CRYPTO_BYTES - big.len();
        big = client_hello(&[sni_ext(b"big.example"), (0xffa5, vec![0; 100 + pad])]);
        assert_eq!(big.len(), MAX_CRYPTO_BYTES);
        let mut asm = CryptoAssembler::new();
        let pieces = big
            .chunks(1100)
            .enumerate()
            .map(|(i, c)| ((i * 1100) as u64, c.to_vec()));
        let pieces: Vec<_> = pieces.collect();
        let mut result = AssemblyResult::NeedMore;
        for chunk in pieces.chunks(3) {
            result = asm.push(&packet(&[1; 8], chunk.to_vec()));
        }
        assert!(
            matches!(result, AssemblyResult::Done(ref h) if h.sni.as_deref() == Some("big.example")),
            "{result:?}"
        );
    }
}
