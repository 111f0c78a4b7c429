//! The TLS ClientHello parser of the SNI stage (DESIGN.md, "Detection cascade", step 3).
//!
//! The datapath punts the first few segments of an unknown TCP flow whose payload
//! starts like a TLS handshake ([`looks_like_tls`]). [`HelloAssembler`] puts those
//! segments back in stream order and [`parse_client_hello`] reads the ClientHello
//! from the stream: the server name, the ALPN protocols, the offered versions, and
//! whether Encrypted Client Hello is offered. Nothing is decrypted.
//!
//! # What is parsed, and by whom
//!
//! - Records: `tls_parser::parse_tls_record_header` reads each 5-byte header; the
//!   handshake bytes are collected here, across records (a ClientHello may be
//!   fragmented over several records) and TCP segments (a post-quantum key share
//!   makes it larger than one segment).
//! - The ClientHello fields (version, random, session id, cipher suites, compression
//!   methods, the extensions block): `tls_parser::parse_tls_message_handshake`. Its
//!   result is checked against the message length, because it reads a corrupt
//!   extensions length as "no extensions" and ignores bytes after the block.
//! - The extensions: a small strict parser here (`Reader`). tls-parser's extension
//!   parsers are lenient where it matters for a classifier: they drop a malformed
//!   entry at the end of a list, ignore bytes after a list and the list length of
//!   `supported_versions`, and end the extension list at the first bad extension
//!   without an error. Here every length must exactly fill its container, so a
//!   corrupt hello is an error and never a wrong name.
//!
//! # Limits
//!
//! The ClientHello message, 4-byte header included, may be up to [`MAX_HELLO_LEN`]
//! bytes and must be complete within the first [`MAX_STREAM_LEN`] bytes of the stream
//! (the rest covers record headers). The assembler accepts [`MAX_SEGMENTS`]
//! payload-carrying segments: at a 1460-byte MSS that is 17,520 bytes, enough for a
//! 16 KiB hello (the datapath copies as many: IL_MAX_FLOW_PUNTS). Real hellos,
//! post-quantum ones included, take two segments. The work is linear in the bytes looked at, and the
//! parser returns an error instead of panicking on any input.
//!
//! # Encrypted Client Hello
//!
//! With ECH (extension `0xfe0d`) the visible ClientHello is the outer one and its
//! server name is the public name of the client-facing server, not the destination,
//! so callers must not take it as the provider. Browsers also send a GREASE ECH
//! extension when they have no ECH config (RFC 9849, "GREASE ECH"), with the real
//! name in the SNI, and the two look the same on the wire by design: `ech` is true
//! for those connections too.

use std::borrow::Cow;
use std::ops::Range;

use thiserror::Error;
use tls_parser::{TlsMessage, TlsMessageHandshake, TlsRecordType};

/// Largest ClientHello handshake message accepted, its 4-byte header included. A hello
/// that fills one plaintext record (2^14 bytes) fits.
pub const MAX_HELLO_LEN: usize = 16 * 1024;
/// Stream bytes the ClientHello must be complete in: [`MAX_HELLO_LEN`] plus room for
/// the headers of about 200 records. This is also the assembler's buffer size.
pub const MAX_STREAM_LEN: usize = MAX_HELLO_LEN + 1024;
/// Payload-carrying segments [`HelloAssembler`] accepts before giving up.
pub const MAX_SEGMENTS: usize = 12;
/// Extension type of Encrypted Client Hello (RFC 9849).
pub const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
/// server_name's NameType for a DNS host name (RFC 6066 §3).
const NAME_TYPE_HOST_NAME: u8 = 0;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// Largest plaintext record fragment (RFC 8446 §5.1).
const MAX_FRAGMENT_LEN: usize = 1 << 14;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Longest DNS name in text form without the final dot (RFC 1035 §2.3.4).
const MAX_DNS_NAME_LEN: usize = 253;
const MAX_DNS_LABEL_LEN: usize = 63;

/// What a ClientHello says about where the client wants to go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientHelloInfo {
    /// The `host_name` of `server_name`, lowercase, without a final dot; `None` when
    /// absent or not a valid DNS name (an IP literal is not one).
    pub sni: Option<String>,
    /// Extension 0xfe0d (encrypted_client_hello) is present: `sni` is then only the
    /// outer (public) name and must not be taken as the provider.
    pub ech: bool,
    /// ALPN protocol names in the client's order (bytes that are not UTF-8 are
    /// replaced by U+FFFD).
    pub alpn: Vec<String>,
    /// supported_versions in the client's order, GREASE values removed; empty when
    /// the extension is absent (a TLS 1.2 or older client).
    pub tls_versions: Vec<u16>,
    /// Number of extensions, GREASE included.
    pub extensions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    #[error("stream does not start with a TLS handshake record")]
    NotHandshake,
    #[error("first handshake message is not a ClientHello")]
    NotClientHello,
    #[error("ClientHello incomplete: at least {need} more bytes needed")]
    Truncated { need: usize },
    #[error("ClientHello larger than {MAX_HELLO_LEN} bytes or not complete in the first {MAX_STREAM_LEN} bytes of the stream")]
    TooLarge,
    #[error("malformed ClientHello: {0}")]
    Malformed(String),
}

/// True when a flow's first payload starts like a TLS handshake record: content type
/// 22, record version 3.1 to 3.4. This is what the datapath gate approximates.
pub fn looks_like_tls(first_payload: &[u8]) -> bool {
    first_payload.len() >= 3 && record_prefix_ok(first_payload)
}

/// Whether the bytes present of a record header (up to 3) are those of a handshake
/// record with a TLS 1.0-1.3 record version.
fn record_prefix_ok(header: &[u8]) -> bool {
    header
        .first()
        .is_none_or(|&t| t == u8::from(TlsRecordType::Handshake))
        && header.get(1).is_none_or(|&major| major == 3)
        && header.get(2).is_none_or(|minor| (1..=4).contains(minor))
}

/// Parses the ClientHello at the start of `stream`, the client's TCP payload from the
/// first byte of the connection on (TLS records back to back).
///
/// Returns [`TlsError::Truncated`] when `stream` ends before the ClientHello does;
/// `need` is a lower bound of the bytes still missing (exact when the rest comes in
/// the current record or in one more), so the caller can wait for more segments.
/// Bytes after the ClientHello are not looked at.
pub fn parse_client_hello(stream: &[u8]) -> Result<ClientHelloInfo, TlsError> {
    let message = client_hello_message(stream)?;
    parse_message(&message)
}

/// The ClientHello handshake message, header included, collected from the handshake
/// records at the start of `stream`. Borrowed when it lies in one record.
fn client_hello_message(stream: &[u8]) -> Result<Cow<'_, [u8]>, TlsError> {
    // The hello must be complete within the window the assembler can hold.
    let stream = &stream[..stream.len().min(MAX_STREAM_LEN)];
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut pos = 0;
    // Each pass consumes a record and adds at least one byte to `message`, which
    // ends at MAX_HELLO_LEN; the window bounds the records too.
    loop {
        let rest = &stream[pos..];
        if rest.len() < RECORD_HEADER_LEN {
            if !record_prefix_ok(rest) {
                return Err(not_a_continuation(pos));
            }
            let need = RECORD_HEADER_LEN - rest.len() + still_missing(&message);
            return Err(truncated(stream.len(), need));
        }
        let (_, header) = tls_parser::parse_tls_record_header(rest)
            .map_err(|_| TlsError::Malformed(format!("record header at byte {pos}")))?;
        if header.record_type != TlsRecordType::Handshake
            || !(0x0301..=0x0304).contains(&header.version.0)
        {
            return Err(not_a_continuation(pos));
        }
        let record_len = usize::from(header.len);
        if record_len == 0 {
            return Err(TlsError::Malformed(format!(
                "empty handshake record at byte {pos}"
            )));
        }
        if record_len > MAX_FRAGMENT_LEN {
            return Err(TlsError::Malformed(format!(
                "record at byte {pos} is {record_len} bytes, more than 2^14"
            )));
        }
        let fragment = &rest[RECORD_HEADER_LEN..];
        let present = fragment.len().min(record_len);
        let wanted = match message_len(&message) {
            Some(total) => present.min(total - message.len()),
            None => present,
        };
        append(&mut message, &fragment[..wanted]);

        if message
            .first()
            .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Err(TlsError::NotClientHello);
        }
        if let Some(total) = message_len(&message) {
            if total > MAX_HELLO_LEN {
                return Err(TlsError::TooLarge);
            }
            if message.len() >= total {
                // Only when the header arrived in this fragment can it hold more.
                truncate(&mut message, total);
                return Ok(message);
            }
        }
        if present < record_len {
            // The stream ends inside this record.
            let missing = still_missing(&message);
            let left_in_record = record_len - present;
            let need = if missing <= left_in_record {
                missing
            } else {
                left_in_record + RECORD_HEADER_LEN + (missing - left_in_record)
            };
            return Err(truncated(stream.len(), need));
        }
        pos += RECORD_HEADER_LEN + record_len;
    }
}

/// The record at `pos` is not a TLS 1.0-1.3 handshake record. The message does not
/// depend on how much of the header is present, so the answer is the same however
/// the stream is cut.
fn not_a_continuation(pos: usize) -> TlsError {
    if pos == 0 {
        TlsError::NotHandshake
    } else {
        TlsError::Malformed(format!(
            "record at byte {pos} is not a handshake record, before the ClientHello ends"
        ))
    }
}

/// Total length of the handshake message, header included, once its header is known.
fn message_len(message: &[u8]) -> Option<usize> {
    let &[_, a, b, c] = message.first_chunk::<HANDSHAKE_HEADER_LEN>()?;
    Some(HANDSHAKE_HEADER_LEN + u32::from_be_bytes([0, a, b, c]) as usize)
}

/// Handshake bytes still missing: up to the end of the message, or of its header
/// while the length is unknown.
fn still_missing(message: &[u8]) -> usize {
    message_len(message)
        .unwrap_or(HANDSHAKE_HEADER_LEN)
        .saturating_sub(message.len())
}

fn truncated(have: usize, need: usize) -> TlsError {
    if have + need > MAX_STREAM_LEN {
        TlsError::TooLarge
    } else {
        TlsError::Truncated { need }
    }
}

fn append<'a>(message: &mut Cow<'a, [u8]>, bytes: &'a [u8]) {
    if message.is_empty() {
        *message = Cow::Borrowed(bytes);
    } else {
        message.to_mut().extend_from_slice(bytes);
    }
}

fn truncate(message: &mut Cow<'_, [u8]>, len: usize) {
    match message {
        Cow::Borrowed(bytes) => *bytes = &bytes[..len],
        Cow::Owned(bytes) => bytes.truncate(len),
    }
}

/// Parses a complete ClientHello handshake message (header included).
fn parse_message(message: &[u8]) -> Result<ClientHelloInfo, TlsError> {
    let hello = match tls_parser::parse_tls_message_handshake(message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        Ok(_) => return Err(TlsError::NotClientHello),
        Err(tls_parser::Err::Incomplete(_)) => {
            return Err(TlsError::Malformed(
                "ClientHello ends inside its fixed fields".into(),
            ))
        }
        Err(tls_parser::Err::Error(e) | tls_parser::Err::Failure(e)) => {
            return Err(TlsError::Malformed(format!(
                "ClientHello fixed fields: {:?}",
                e.code
            )))
        }
    };
    // tls-parser reads an extensions length that overruns the message as "no
    // extensions" and ignores what follows the block: the sizes must add up.
    let fixed = 2 // legacy_version
        + 32 // random
        + 1 + hello.session_id.map_or(0, <[u8]>::len)
        + 2 + 2 * hello.ciphers.len()
        + 1 + hello.comp.len();
    let extensions_len = hello.ext.map_or(0, |ext| 2 + ext.len());
    let body_len = message.len() - HANDSHAKE_HEADER_LEN;
    if fixed + extensions_len != body_len {
        return Err(TlsError::Malformed(format!(
            "ClientHello is {body_len} bytes but its fields take {fixed} and its extensions {extensions_len}"
        )));
    }
    parse_extensions(hello.ext.unwrap_or_default())
}

/// Reads the extensions block (without its length).
fn parse_extensions(block: &[u8]) -> Result<ClientHelloInfo, TlsError> {
    let mut info = ClientHelloInfo::default();
    let mut seen = Vec::new();
    let mut r = Reader::new(block);
    // Each pass consumes at least 4 bytes of a block of at most MAX_HELLO_LEN.
    while !r.is_empty() {
        let ext_type = r.u16("extension type")?;
        let data = r.vec16("extension data")?;
        info.extensions += 1;
        if is_grease(ext_type) {
            continue;
        }
        seen.push(ext_type);
        match ext_type {
            EXT_SERVER_NAME => info.sni = parse_server_name(data)?,
            EXT_ALPN => info.alpn = parse_alpn(data)?,
            EXT_SUPPORTED_VERSIONS => info.tls_versions = parse_supported_versions(data)?,
            EXT_ENCRYPTED_CLIENT_HELLO => info.ech = true,
            _ => {}
        }
    }
    // RFC 8446 §4.2: no two extensions of one type. A server refuses such a hello,
    // and which server_name would count is ambiguous.
    seen.sort_unstable();
    if let Some(pair) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(TlsError::Malformed(format!(
            "extension {:#06x} appears twice",
            pair[0]
        )));
    }
    Ok(info)
}

/// server_name (RFC 6066 §3): the first and only `host_name`, if it is a DNS name.
fn parse_server_name(data: &[u8]) -> Result<Option<String>, TlsError> {
    let mut r = Reader::new(data);
    let list = r.vec16("server_name list")?;
    r.end("server_name")?;
    if list.is_empty() {
        return Err(TlsError::Malformed("server_name: empty list".into()));
    }
    let mut r = Reader::new(list);
    let mut host_name = None;
    while !r.is_empty() {
        let name_type = r.u8("server_name type")?;
        // Every NameType defined so far carries a 16-bit length, as host_name does.
        let name = r.vec16("server_name name")?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host_name.is_some() {
                return Err(TlsError::Malformed(
                    "server_name: two host_name entries".into(),
                ));
            }
            host_name = Some(name);
        }
    }
    Ok(host_name.and_then(dns_name))
}

/// application_layer_protocol_negotiation (RFC 7301 §3.1).
fn parse_alpn(data: &[u8]) -> Result<Vec<String>, TlsError> {
    let mut r = Reader::new(data);
    let list = r.vec16("ALPN list")?;
    r.end("ALPN")?;
    if list.is_empty() {
        return Err(TlsError::Malformed("ALPN: empty list".into()));
    }
    let mut r = Reader::new(list);
    let mut protocols = Vec::new();
    while !r.is_empty() {
        let name = r.vec8("ALPN protocol")?;
        if name.is_empty() {
            return Err(TlsError::Malformed("ALPN: empty protocol name".into()));
        }
        protocols.push(String::from_utf8_lossy(name).into_owned());
    }
    Ok(protocols)
}

/// supported_versions in a ClientHello (RFC 8446 §4.2.1): `versions<2..254>`.
fn parse_supported_versions(data: &[u8]) -> Result<Vec<u16>, TlsError> {
    let mut r = Reader::new(data);
    let list = r.vec8("supported_versions list")?;
    r.end("supported_versions")?;
    if list.is_empty() || list.len() % 2 != 0 {
        return Err(TlsError::Malformed(format!(
            "supported_versions: list of {} bytes",
            list.len()
        )));
    }
    Ok(list
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .filter(|&version| !is_grease(version))
        .collect())
}

/// GREASE values (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa.
pub fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

/// `raw` as a lowercase DNS name, or `None`: ASCII letters, digits, '-' and '_' in
/// labels of 1 to 63 bytes not starting or ending with '-', at most 253 bytes, a last
/// label that is not all digits (so no IPv4 literal). One final dot is dropped.
fn dns_name(raw: &[u8]) -> Option<String> {
    let name = raw.strip_suffix(b".").unwrap_or(raw);
    if name.is_empty() || name.len() > MAX_DNS_NAME_LEN {
        return None;
    }
    let label_ok = |label: &[u8]| {
        (1..=MAX_DNS_LABEL_LEN).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && label.first() != Some(&b'-')
            && label.last() != Some(&b'-')
    };
    if !name.split(|&b| b == b'.').all(label_ok) {
        return None;
    }
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or_default();
    if last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // All ASCII, checked above.
    String::from_utf8(name.to_ascii_lowercase()).ok()
}

/// A cursor over TLS presentation-language fields; every read is bounds-checked and a
/// short read is a [`TlsError::Malformed`] naming the field.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn bytes(&mut self, len: usize, field: &str) -> Result<&'a [u8], TlsError> {
        if len > self.buf.len() {
            return Err(TlsError::Malformed(format!(
                "{field}: {len} bytes needed, {} left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], TlsError> {
        let bytes = self.bytes(N, field)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self, field: &str) -> Result<u8, TlsError> {
        Ok(u8::from_be_bytes(self.array(field)?))
    }

    fn u16(&mut self, field: &str) -> Result<u16, TlsError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// `opaque field<0..2^8-1>`
    fn vec8(&mut self, field: &str) -> Result<&'a [u8], TlsError> {
        let len = self.u8(field)?;
        self.bytes(len.into(), field)
    }

    /// `opaque field<0..2^16-1>`
    fn vec16(&mut self, field: &str) -> Result<&'a [u8], TlsError> {
        let len = self.u16(field)?;
        self.bytes(len.into(), field)
    }

    /// The container ends here.
    fn end(&self, field: &str) -> Result<(), TlsError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(TlsError::Malformed(format!(
                "{field}: {} bytes after its end",
                self.buf.len()
            )))
        }
    }
}

/// What [`HelloAssembler::push`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssemblyResult {
    /// The ClientHello is complete and parsed.
    Done(ClientHelloInfo),
    /// Waiting for more segments.
    NeedMore,
    /// Given up: not a ClientHello, malformed, too large, or still incomplete
    /// (`Truncated`) after [`MAX_SEGMENTS`] segments.
    Failed(TlsError),
}

/// Reassembles the first segments of one flow's client-to-server stream until the
/// ClientHello is complete.
///
/// Segments are placed by TCP sequence number relative to the first payload byte
/// (u32 arithmetic, so wrap-around is harmless); they may come out of order, twice,
/// or overlapping, and where copies overlap the first one wins. Bytes beyond
/// [`MAX_STREAM_LEN`] are not kept, a segment starting there fails with
/// [`TlsError::TooLarge`], and the [`MAX_SEGMENTS`]th payload-carrying segment that
/// leaves the hello incomplete fails with [`TlsError::Truncated`]. Once finished,
/// `push` returns the same result again and the buffer is freed.
#[derive(Debug)]
pub struct HelloAssembler {
    first_seq: u32,
    /// Stream bytes by offset; bytes of `buf` outside `received` are holes.
    buf: Vec<u8>,
    /// Received offset ranges: sorted, disjoint and not touching (at most one per
    /// segment).
    received: Vec<Range<usize>>,
    segments: usize,
    /// Contiguous length at the last parse, and what that parse found missing.
    parsed_len: usize,
    need: usize,
    finished: Option<AssemblyResult>,
}

impl HelloAssembler {
    /// `first_seq`: sequence number of the client's first payload byte (ISN + 1).
    pub fn new(first_seq: u32) -> Self {
        HelloAssembler {
            first_seq,
            buf: Vec::new(),
            received: Vec::new(),
            segments: 0,
            parsed_len: 0,
            // What an empty stream lacks: a record header and a handshake header.
            need: RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN,
            finished: None,
        }
    }

    /// Adds one segment's payload, `seq` being its sequence number. Segments without
    /// payload change nothing and are not counted.
    pub fn push(&mut self, seq: u32, payload: &[u8]) -> AssemblyResult {
        if let Some(result) = &self.finished {
            return result.clone();
        }
        if payload.is_empty() {
            return AssemblyResult::NeedMore;
        }
        self.segments += 1;
        let result = self.accept(seq, payload);
        if result != AssemblyResult::NeedMore {
            self.finish(result.clone());
        }
        result
    }

    fn accept(&mut self, seq: u32, payload: &[u8]) -> AssemblyResult {
        // Offsets at or past 2^31 are taken as before the stream start.
        let offset = seq.wrapping_sub(self.first_seq);
        let (start, data) = if offset < 1 << 31 {
            (offset as usize, payload)
        } else {
            let before = offset.wrapping_neg() as usize;
            (0, payload.get(before..).unwrap_or_default())
        };
        if start >= MAX_STREAM_LEN {
            return AssemblyResult::Failed(TlsError::TooLarge);
        }
        let kept = data.len().min(MAX_STREAM_LEN - start);
        self.insert(start, &data[..kept]);

        // Parse again whenever the contiguous stream grew: at most once per segment.
        let contiguous = self.contiguous();
        if contiguous > self.parsed_len {
            self.parsed_len = contiguous;
            match parse_client_hello(&self.buf[..contiguous]) {
                Ok(info) => return AssemblyResult::Done(info),
                Err(TlsError::Truncated { need }) => self.need = need,
                Err(e) => return AssemblyResult::Failed(e),
            }
        }
        if self.segments >= MAX_SEGMENTS {
            return AssemblyResult::Failed(TlsError::Truncated { need: self.need });
        }
        AssemblyResult::NeedMore
    }

    /// Copies `data` at `start` into the holes only (the first copy wins) and records
    /// the range.
    fn insert(&mut self, start: usize, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = start + data.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let mut hole_start = start;
        for have in &self.received {
            if have.end <= hole_start {
                continue;
            }
            if have.start >= end {
                break;
            }
            if have.start > hole_start {
                self.buf[hole_start..have.start]
                    .copy_from_slice(&data[hole_start - start..have.start - start]);
            }
            hole_start = hole_start.max(have.end);
        }
        if hole_start < end {
            self.buf[hole_start..end].copy_from_slice(&data[hole_start - start..]);
        }

        self.received.push(start..end);
        self.received.sort_unstable_by_key(|range| range.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(self.received.len());
        for range in self.received.drain(..) {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        self.received = merged;
    }

    /// Length of the stream received without a hole from its first byte.
    fn contiguous(&self) -> usize {
        self.received
            .first()
            .filter(|range| range.start == 0)
            .map_or(0, |range| range.end)
    }

    fn finish(&mut self, result: AssemblyResult) {
        self.finished = Some(result);
        self.buf = Vec::new();
        self.received = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Extensions = Vec<(u16, Vec<u8>)>;

    /// A ClientHello message (header included) with these extensions.
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend([7; 32]); // random
        body.push(0); // session id
        body.extend([0, 2, 0x13, 0x01]); // one cipher suite
        body.extend([1, 0]); // null compression
        let mut block = Vec::new();
        for (ext_type, data) in extensions {
            block.extend(ext_type.to_be_bytes());
            block.extend((data.len() as u16).to_be_bytes());
            block.extend(data);
        }
        body.extend((block.len() as u16).to_be_bytes());
        body.extend(block);
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// `message` in handshake records of at most `fragment` bytes each.
    fn records(message: &[u8], fragment: usize) -> Vec<u8> {
        let mut stream = Vec::new();
        for chunk in message.chunks(fragment) {
            stream.extend([22, 3, 1]);
            stream.extend((chunk.len() as u16).to_be_bytes());
            stream.extend(chunk);
        }
        stream
    }

    fn server_name(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend((name.len() as u16).to_be_bytes());
        entry.extend(name);
        let mut data = (entry.len() as u16).to_be_bytes().to_vec();
        data.extend(entry);
        (EXT_SERVER_NAME, data)
    }

    #[test]
    fn tls_looks_like_tls_checks_type_and_version() {
        assert!(looks_like_tls(&[22, 3, 1]));
        assert!(looks_like_tls(&[22, 3, 4, 0, 0]));
        for not in [
            &[22, 3][..],
            &[22, 3, 0],
            &[22, 3, 5],
            &[23, 3, 3],
            &[22, 2, 1],
            b"GET",
        ] {
            assert!(!looks_like_tls(not), "{not:?} must not look like TLS");
        }
    }

    #[test]
    fn tls_grease_values_are_the_sixteen_of_rfc_8701() {
        let grease: Vec<u16> = (0..=u16::MAX).filter(|&v| is_grease(v)).collect();
        let expected: Vec<u16> = (0..16).map(|i| 0x0a0a + i * 0x1010).collect();
        assert_eq!(grease, expected);
    }

    #[test]
    fn tls_dns_names_are_validated_and_lowercased() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"api.openai.com", Some("api.openai.com")),
            (b"API.Anthropic.COM", Some("api.anthropic.com")),
            (b"api.openai.com.", Some("api.openai.com")),
            (b"localhost", Some("localhost")),
            (b"_dmarc.x-y.example", Some("_dmarc.x-y.example")),
            (b"", None),
            (b".", None),
            (b"a..b", None),
            (b".a", None),
            (b"a.b..", None),
            (b"-a.com", None),
            (b"a-.com", None),
            (b"a b.com", None),
            (b"192.0.2.1", None),
            (b"2001:db8::1", None),
            (b"caf\xc3\xa9.fr", None),
            (b"a\0.com", None),
        ];
        for &(raw, expected) in cases {
            assert_eq!(
                dns_name(raw).as_deref(),
                expected,
                "name {:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let label = "a".repeat(63);
        assert!(dns_name(format!("{label}.com").as_bytes()).is_some());
        assert!(dns_name(format!("{label}a.com").as_bytes()).is_none());
        let long = ["b".repeat(63).as_str(); 4].join("."); // 255 bytes
        assert!(dns_name(&long.as_bytes()[..253]).is_some());
        assert!(dns_name(&long.as_bytes()[..254]).is_none());
    }

    #[test]
    fn tls_every_prefix_is_truncated_with_a_need_that_never_overshoots() {
        let message = hello(&[server_name(b"api.openai.com"), (21, vec![0; 300])]);
        for fragment in [1, 7, 100, message.len()] {
            let stream = records(&message, fragment);
            assert_eq!(
                parse_client_hello(&stream).map(|info| info.sni),
                Ok(Some("api.openai.com".into())),
                "fragment size {fragment}"
            );
            for cut in 0..stream.len() {
                match parse_client_hello(&stream[..cut]) {
                    Err(TlsError::Truncated { need }) => assert!(
                        need >= 1 && cut + need <= stream.len(),
                        "fragment {fragment}, cut {cut}: need {need} but only {} bytes are missing",
                        stream.len() - cut
                    ),
                    other => {
                        panic!("fragment {fragment}, cut {cut}: expected Truncated, got {other:?}")
                    }
                }
            }
        }
        // With one record the need is exact.
        let stream = records(&message, message.len());
        assert_eq!(
            parse_client_hello(&stream[..10]),
            Err(TlsError::Truncated {
                need: stream.len() - 10
            })
        );
    }

    #[test]
    fn tls_record_and_message_types_are_checked_early() {
        assert_eq!(
            parse_client_hello(&[23, 3, 3, 0, 5]),
            Err(TlsError::NotHandshake)
        );
        assert_eq!(
            parse_client_hello(&[22, 3]),
            Err(TlsError::Truncated { need: 3 + 4 })
        );
        assert_eq!(parse_client_hello(&[22, 2]), Err(TlsError::NotHandshake));
        // A ServerHello type byte is enough to know.
        assert_eq!(
            parse_client_hello(&[22, 3, 3, 0, 80, 2]),
            Err(TlsError::NotClientHello)
        );
        // A 17 KiB hello is refused from its header on.
        assert_eq!(
            parse_client_hello(&[22, 3, 3, 0, 80, 1, 0, 0x44, 0]),
            Err(TlsError::TooLarge)
        );
        // An empty handshake record, and an alert in the middle of the hello.
        let message = hello(&[server_name(b"a.example")]);
        let mut stream = records(&message[..10], 10);
        stream.extend([22, 3, 1, 0, 0]);
        assert!(matches!(
            parse_client_hello(&stream),
            Err(TlsError::Malformed(_))
        ));
        let mut stream = records(&message[..10], 10);
        stream.extend([21, 3, 3, 0, 2, 2, 40]);
        assert!(matches!(
            parse_client_hello(&stream),
            Err(TlsError::Malformed(_))
        ));
    }

    #[test]
    fn tls_too_many_tiny_records_are_too_large() {
        // One byte per record costs 6 stream bytes per hello byte: a 4 KiB hello
        // does not fit in the window that way.
        let message = hello(&[(21, vec![0; 4000])]);
        assert_eq!(
            parse_client_hello(&records(&message, 1)),
            Err(TlsError::TooLarge)
        );
        assert!(parse_client_hello(&records(&message, 64)).is_ok());
    }

    #[test]
    fn tls_extensions_are_strict() {
        let ok = |exts: &[(u16, Vec<u8>)]| parse_client_hello(&records(&hello(exts), 1 << 14));
        let info = ok(&[
            (0x0a0a, vec![]),
            server_name(b"Api.OpenAI.com"),
            (EXT_ALPN, vec![0, 6, 2, b'h', b'2', 2, b'h', b'3']),
            (EXT_SUPPORTED_VERSIONS, vec![6, 0x3a, 0x3a, 3, 4, 3, 3]),
            (
                EXT_ENCRYPTED_CLIENT_HELLO,
                vec![0, 0, 1, 0, 1, 9, 0, 0, 0, 1, 0],
            ),
            (0xfafa, vec![0]),
        ])
        .expect("valid hello");
        assert_eq!(
            info,
            ClientHelloInfo {
                sni: Some("api.openai.com".into()),
                ech: true,
                alpn: vec!["h2".into(), "h3".into()],
                tls_versions: vec![0x0304, 0x0303],
                extensions: 6,
            }
        );
        let bad: &[(&str, Extensions)] = &[
            ("sni list longer", vec![(0, vec![0, 5, 0, 0, 1, b'a'])]),
            ("sni list shorter", vec![(0, vec![0, 3, 0, 0, 1, b'a'])]),
            ("sni name longer", vec![(0, vec![0, 4, 0, 0, 2, b'a'])]),
            ("sni empty list", vec![(0, vec![0, 0])]),
            (
                "sni two host names",
                vec![(0, vec![0, 8, 0, 0, 1, b'a', 0, 0, 1, b'b'])],
            ),
            ("alpn empty name", vec![(16, vec![0, 1, 0])]),
            ("alpn trailing", vec![(16, vec![0, 3, 2, b'h', b'2', 0])]),
            ("versions odd", vec![(43, vec![3, 3, 4, 3])]),
            ("versions server form", vec![(43, vec![3, 4])]),
            ("duplicate", vec![(21, vec![]), (21, vec![])]),
        ];
        for (what, exts) in bad {
            assert!(
                matches!(ok(exts), Err(TlsError::Malformed(_))),
                "{what}: {:?}",
                ok(exts)
            );
        }
        // Another NameType is skipped; a host_name that is an IP literal is no name.
        assert_eq!(
            ok(&[(0, vec![0, 4, 7, 0, 1, b'a'])]).map(|i| i.sni),
            Ok(None)
        );
        assert_eq!(ok(&[server_name(b"10.0.0.1")]).map(|i| i.sni), Ok(None));
    }

    #[test]
    fn tls_hello_fields_must_fill_the_message() {
        let message = hello(&[server_name(b"a.example")]);
        let stream = |message: &[u8]| records(message, 1 << 14);
        // Extensions length one more than present: tls-parser sees no extensions.
        let ext_len_at = HANDSHAKE_HEADER_LEN + 2 + 32 + 1 + 4 + 2;
        let mut longer = message.clone();
        longer[ext_len_at + 1] += 1;
        assert!(matches!(
            parse_client_hello(&stream(&longer)),
            Err(TlsError::Malformed(_))
        ));
        // A byte after the extensions block.
        let mut trailing = message.clone();
        trailing.push(0);
        trailing[3] += 1;
        assert!(matches!(
            parse_client_hello(&stream(&trailing)),
            Err(TlsError::Malformed(_))
        ));
        // No extensions at all is a valid (old) hello.
        let mut bare = message[..ext_len_at].to_vec();
        bare[3] = (bare.len() - 4) as u8;
        assert_eq!(
            parse_client_hello(&stream(&bare)),
            Ok(ClientHelloInfo::default())
        );
    }

    #[test]
    fn tls_assembler_keeps_the_first_copy_and_merges_ranges() {
        let mut a = HelloAssembler::new(100);
        assert_eq!(a.push(110, b"KLMNO"), AssemblyResult::NeedMore);
        assert_eq!(a.push(104, b"efghijklmn"), AssemblyResult::NeedMore);
        assert_eq!(a.received, vec![4..15]);
        assert_eq!(&a.buf[4..15], b"efghijKLMNO");
        assert_eq!(a.push(120, b"uv"), AssemblyResult::NeedMore);
        assert_eq!(a.received, vec![4..15, 20..22]);
        assert_eq!(a.contiguous(), 0);
        assert_eq!(
            a.push(98, b"xyabcdEFGHIJKLMNOPQRSTUVWX"),
            AssemblyResult::Failed(TlsError::NotHandshake)
        );
        // Finished: the buffer is gone, the verdict stays.
        assert!(a.buf.is_empty());
        assert_eq!(
            a.push(100, &[22, 3, 1]),
            AssemblyResult::Failed(TlsError::NotHandshake)
        );
    }

    #[test]
    fn tls_assembler_parses_only_when_the_stream_grows() {
        let stream = records(
            &hello(&[server_name(b"a.example"), (21, vec![0; 1000])]),
            1 << 14,
        );
        let mut a = HelloAssembler::new(0);
        assert_eq!(a.push(300, &stream[300..400]), AssemblyResult::NeedMore);
        assert_eq!(
            (a.parsed_len, a.need),
            (0, 9),
            "nothing contiguous, nothing parsed"
        );
        assert_eq!(a.push(0, &stream[..100]), AssemblyResult::NeedMore);
        assert_eq!((a.parsed_len, a.need), (100, stream.len() - 100));
        assert_eq!(a.push(0, &stream[..100]), AssemblyResult::NeedMore);
        assert_eq!(a.parsed_len, 100, "a duplicate adds nothing");
        assert_eq!(a.push(100, &stream[100..300]), AssemblyResult::NeedMore);
        assert_eq!(
            (a.parsed_len, a.need),
            (400, stream.len() - 400),
            "the hole filled joins 300..400"
        );
        assert!(matches!(
            a.push(400, &stream[400..]),
            AssemblyResult::Done(_)
        ));
    }
}
