//! The ClientHello parser and segment assembler of the SNI stage, fed with real
//! ClientHellos from rustls (several configs, resumption, GREASE ECH, fragmented
//! records) and with hellos built field by field (GREASE, many extensions, a
//! post-quantum key share that spans two TCP segments, ECH, every length field
//! corrupted), then segmented the way TCP carries them, and fuzzed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use inferlane::classify::tls::{
    looks_like_tls, parse_client_hello, AssemblyResult, ClientHelloInfo, HelloAssembler, TlsError,
    EXT_ENCRYPTED_CLIENT_HELLO, MAX_HELLO_LEN, MAX_SEGMENTS, MAX_STREAM_LEN,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{EchGreaseConfig, EchMode};
use rustls::crypto::hpke::{
    EncapsulatedSecret, Hpke, HpkeOpener, HpkePrivateKey, HpkePublicKey, HpkeSealer, HpkeSuite,
};
use rustls::crypto::CryptoProvider;
use rustls::internal::msgs::enums::{HpkeAead, HpkeKdf, HpkeKem};
use rustls::internal::msgs::handshake::HpkeSymmetricCipherSuite;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

/// TCP payload per segment at a 1500-byte MTU: IPv4 (20-byte header) and IPv6 (40).
const MSS_IPV4: usize = 1460;
const MSS_IPV6: usize = 1440;
/// The hybrid post-quantum group and its client key share (ML-KEM-768 encapsulation
/// key 1184 + X25519 32).
const X25519_MLKEM768: u16 = 0x11ec;
const X25519_MLKEM768_SHARE: usize = 1216;
const X25519: u16 = 0x001d;
const TLS13: u16 = 0x0304;
const TLS12: u16 = 0x0303;

// ---------------------------------------------------------------------------
// Real ClientHellos from rustls
// ---------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server: the tests need the client's bytes, not a trusted server.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(versions: &[&'static SupportedProtocolVersion], alpn: &[&str]) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("ring supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

fn default_config() -> Arc<ClientConfig> {
    Arc::new(client_config(rustls::DEFAULT_VERSIONS, &["h2", "http/1.1"]))
}

fn connect(config: &Arc<ClientConfig>, name: &str) -> ClientConnection {
    let server_name = ServerName::try_from(name.to_owned())
        .unwrap_or_else(|e| panic!("rustls refuses server name {name:?}: {e}"));
    ClientConnection::new(config.clone(), server_name).expect("client connection")
}

/// Everything the client has to send now.
fn drain(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write to a Vec");
    }
    out
}

/// The bytes a rustls client sends first to `name`: its ClientHello.
fn rustls_hello(config: &Arc<ClientConfig>, name: &str) -> Vec<u8> {
    drain(&mut Connection::Client(connect(config, name)))
}

fn parsed(stream: &[u8]) -> ClientHelloInfo {
    parse_client_hello(stream).unwrap_or_else(|e| {
        panic!(
            "expected a ClientHello in {} bytes, got {e:?}\n{}",
            stream.len(),
            hex(&stream[..stream.len().min(96)])
        )
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What tls-parser reads from the same single-record hello: (server names of type
/// host_name, ALPN, supported_versions without GREASE, extension count).
fn tls_parser_view(stream: &[u8]) -> (Vec<String>, Vec<String>, Vec<u16>, usize) {
    use tls_parser::{TlsExtension, TlsMessage, TlsMessageHandshake};
    let (_, record) = tls_parser::parse_tls_plaintext(stream).expect("tls-parser reads the record");
    let Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) = record.msg.first()
    else {
        panic!("tls-parser sees no ClientHello: {:?}", record.msg)
    };
    let (rest, extensions) =
        tls_parser::parse_tls_client_hello_extensions(hello.ext.unwrap_or_default())
            .expect("tls-parser reads the extensions");
    assert!(
        rest.is_empty(),
        "tls-parser left {} bytes of extensions",
        rest.len()
    );
    let (mut names, mut alpn, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    for extension in &extensions {
        match extension {
            TlsExtension::SNI(list) => names.extend(
                list.iter()
                    .filter(|(t, _)| t.0 == 0)
                    .map(|(_, n)| String::from_utf8_lossy(n).to_ascii_lowercase()),
            ),
            TlsExtension::ALPN(list) => {
                alpn.extend(list.iter().map(|p| String::from_utf8_lossy(p).into_owned()))
            }
            TlsExtension::SupportedVersions(list) => versions.extend(
                list.iter()
                    .map(|v| v.0)
                    .filter(|&v| !(v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff)),
            ),
            _ => {}
        }
    }
    (names, alpn, versions, extensions.len())
}

/// The parser agrees with tls-parser on a well-formed single-record hello.
#[track_caller]
fn assert_agrees_with_tls_parser(stream: &[u8], info: &ClientHelloInfo) {
    let (names, alpn, versions, count) = tls_parser_view(stream);
    assert_eq!(
        info.sni.iter().cloned().collect::<Vec<_>>(),
        names,
        "server name vs tls-parser"
    );
    assert_eq!(info.alpn, alpn, "ALPN vs tls-parser");
    assert_eq!(
        info.tls_versions, versions,
        "supported_versions vs tls-parser"
    );
    assert_eq!(info.extensions, count, "extension count vs tls-parser");
}

#[test]
fn rustls_hellos_name_the_ai_providers() {
    let config = default_config();
    for name in [
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
    ] {
        let stream = rustls_hello(&config, name);
        assert!(
            looks_like_tls(&stream),
            "rustls hello starts {}",
            hex(&stream[..5])
        );
        let info = parsed(&stream);
        assert_eq!(info.sni.as_deref(), Some(name));
        assert_eq!(info.alpn, ["h2", "http/1.1"]);
        assert_eq!(info.tls_versions, [TLS13, TLS12]);
        assert!(!info.ech);
        assert_agrees_with_tls_parser(&stream, &info);
    }
}

#[test]
fn rustls_hello_variants() {
    // TLS 1.2 only: rustls still sends supported_versions, with 1.2 alone.
    let tls12 = Arc::new(client_config(&[&rustls::version::TLS12], &["http/1.1"]));
    let info = parsed(&rustls_hello(&tls12, "api.openai.com"));
    assert_eq!(info.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(info.alpn, ["http/1.1"]);
    assert_eq!(info.tls_versions, [TLS12]);

    // TLS 1.3 only, no ALPN.
    let tls13 = Arc::new(client_config(&[&rustls::version::TLS13], &[]));
    let info = parsed(&rustls_hello(&tls13, "api.anthropic.com"));
    assert_eq!(info.tls_versions, [TLS13]);
    assert!(
        info.alpn.is_empty(),
        "no ALPN configured, got {:?}",
        info.alpn
    );

    // An upper-case name in the config goes on the wire as is and comes out lowercase.
    let stream = rustls_hello(&default_config(), "API.OpenAI.COM");
    assert!(
        stream.windows(14).any(|w| w == b"API.OpenAI.COM"),
        "rustls sends the name as configured"
    );
    assert_eq!(parsed(&stream).sni.as_deref(), Some("api.openai.com"));

    // SNI switched off.
    let mut no_sni = client_config(rustls::DEFAULT_VERSIONS, &["h2"]);
    no_sni.enable_sni = false;
    let info = parsed(&rustls_hello(&Arc::new(no_sni), "api.openai.com"));
    assert_eq!((info.sni, info.alpn), (None, vec!["h2".to_string()]));
}

#[test]
fn rustls_ip_literal_connections_send_no_sni() {
    let config = default_config();
    for address in ["2001:db8::1", "::ffff:192.0.2.7", "192.0.2.7"] {
        let stream = rustls_hello(&config, address);
        let info = parsed(&stream);
        assert_eq!(info.sni, None, "connection to {address}");
        assert_eq!(info.alpn, ["h2", "http/1.1"], "connection to {address}");
        assert_agrees_with_tls_parser(&stream, &info);
    }
}

#[test]
fn rustls_hello_fragmented_over_records() {
    let mut config = client_config(rustls::DEFAULT_VERSIONS, &["h2", "http/1.1"]);
    config.max_fragment_size = Some(64);
    let stream = rustls_hello(&Arc::new(config), "api.openai.com");
    let records = count_records(&stream);
    assert!(
        records >= 4,
        "rustls should split the hello into 64-byte records, made {records}"
    );
    let info = parsed(&stream);
    assert_eq!(info.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(info.tls_versions, [TLS13, TLS12]);
    let whole = parsed(&rustls_hello(&default_config(), "api.openai.com"));
    assert_eq!(info, whole, "the same hello in one record");
}

fn count_records(mut stream: &[u8]) -> usize {
    let mut records = 0;
    while stream.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([stream[3], stream[4]]));
        stream = &stream[(5 + len).min(stream.len())..];
        records += 1;
    }
    records
}

/// A server with a throwaway ECDSA key and a certificate nobody checks.
#[derive(Debug)]
struct OneKey(Arc<CertifiedKey>);

impl ResolvesServerCert for OneKey {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server_config() -> Arc<ServerConfig> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &rng,
    )
    .expect("generate a P-256 key");
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(pkcs8.as_ref().to_vec().into()))
        .expect("rustls loads the key");
    let certified = CertifiedKey::new(vec![CertificateDer::from(b"unchecked".to_vec())], key);
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("server versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(OneKey(Arc::new(certified)))),
    )
}

/// Runs a full handshake in memory, tickets included, and returns the ClientHello.
fn handshake(config: &Arc<ClientConfig>, name: &str) -> Vec<u8> {
    let mut client = Connection::Client(connect(config, name));
    let mut server = Connection::Server(ServerConnection::new(server_config()).expect("server"));
    let hello = drain(&mut client);
    deliver(&hello, &mut server);
    for _ in 0..10 {
        let to_client = drain(&mut server);
        deliver(&to_client, &mut client);
        let to_server = drain(&mut client);
        deliver(&to_server, &mut server);
        if to_client.is_empty() && to_server.is_empty() {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "handshake with {name} did not finish"
    );
    hello
}

fn deliver(mut bytes: &[u8], to: &mut Connection) {
    while !bytes.is_empty() {
        to.read_tls(&mut bytes).expect("read_tls from a slice");
        if let Err(e) = to.process_new_packets() {
            panic!("in-memory handshake: {e}");
        }
    }
}

#[test]
fn rustls_resumed_hellos() {
    for (versions, label) in [
        (&[&rustls::version::TLS13][..], "TLS 1.3"),
        (&[&rustls::version::TLS12][..], "TLS 1.2"),
    ] {
        let config = Arc::new(client_config(versions, &["h2"]));
        let first = handshake(&config, "api.anthropic.com");
        let resumed = rustls_hello(&config, "api.anthropic.com");
        let (a, b) = (parsed(&first), parsed(&resumed));
        assert_eq!(
            b.sni.as_deref(),
            Some("api.anthropic.com"),
            "{label} resumed"
        );
        assert_eq!(
            (a.alpn.clone(), a.tls_versions.clone()),
            (b.alpn.clone(), b.tls_versions.clone()),
            "{label}"
        );
        assert_agrees_with_tls_parser(&resumed, &b);
        // The resumption is really in the hello: a PSK (1.3) or a session id (1.2).
        let (_, record) = tls_parser::parse_tls_plaintext(&resumed).expect("record");
        let Some(tls_parser::TlsMessage::Handshake(tls_parser::TlsMessageHandshake::ClientHello(
            hello,
        ))) = record.msg.first()
        else {
            panic!("no hello")
        };
        if label == "TLS 1.3" {
            let (_, exts) =
                tls_parser::parse_tls_client_hello_extensions(hello.ext.unwrap_or_default())
                    .expect("exts");
            assert!(
                exts.iter()
                    .any(|e| matches!(e, tls_parser::TlsExtension::PreSharedKey(_))),
                "TLS 1.3 resumed hello offers a PSK"
            );
            assert_eq!(b.extensions, a.extensions + 1, "pre_shared_key added");
        } else {
            let (_, first_record) = tls_parser::parse_tls_plaintext(&first).expect("record");
            let Some(tls_parser::TlsMessage::Handshake(
                tls_parser::TlsMessageHandshake::ClientHello(first_hello),
            )) = first_record.msg.first()
            else {
                panic!("no hello")
            };
            assert_eq!(
                first_hello.session_id, None,
                "a TLS 1.2-only first hello has no session id"
            );
            assert_eq!(
                hello.session_id.map(<[u8]>::len),
                Some(32),
                "the resumed one offers the server's"
            );
        }
    }
}

/// An HPKE that only encapsulates: enough for rustls to build a GREASE ECH extension.
#[derive(Debug)]
struct GreaseHpke;

#[derive(Debug)]
struct NoSealer;

impl HpkeSealer for NoSealer {
    fn seal(&mut self, _aad: &[u8], _plaintext: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Err(rustls::Error::General("GREASE only".into()))
    }
}

impl Hpke for GreaseHpke {
    fn seal(
        &self,
        _: &[u8],
        _: &[u8],
        _: &[u8],
        _: &HpkePublicKey,
    ) -> Result<(EncapsulatedSecret, Vec<u8>), rustls::Error> {
        Err(rustls::Error::General("GREASE only".into()))
    }

    fn setup_sealer(
        &self,
        _: &[u8],
        _: &HpkePublicKey,
    ) -> Result<(EncapsulatedSecret, Box<dyn HpkeSealer + 'static>), rustls::Error> {
        Ok((EncapsulatedSecret(vec![0x04; 65]), Box::new(NoSealer)))
    }

    fn open(
        &self,
        _: &EncapsulatedSecret,
        _: &[u8],
        _: &[u8],
        _: &[u8],
        _: &HpkePrivateKey,
    ) -> Result<Vec<u8>, rustls::Error> {
        Err(rustls::Error::General("GREASE only".into()))
    }

    fn setup_opener(
        &self,
        _: &EncapsulatedSecret,
        _: &[u8],
        _: &HpkePrivateKey,
    ) -> Result<Box<dyn HpkeOpener + 'static>, rustls::Error> {
        Err(rustls::Error::General("GREASE only".into()))
    }

    fn generate_key_pair(&self) -> Result<(HpkePublicKey, HpkePrivateKey), rustls::Error> {
        Err(rustls::Error::General("GREASE only".into()))
    }

    fn suite(&self) -> HpkeSuite {
        HpkeSuite {
            kem: HpkeKem::DHKEM_P256_HKDF_SHA256,
            sym: HpkeSymmetricCipherSuite {
                kdf_id: HpkeKdf::HKDF_SHA256,
                aead_id: HpkeAead::AES_128_GCM,
            },
        }
    }
}

static GREASE_HPKE: GreaseHpke = GreaseHpke;

#[test]
fn rustls_grease_ech_is_recorded_with_the_real_name_outside() {
    let ech = EchMode::Grease(EchGreaseConfig::new(
        &GREASE_HPKE,
        HpkePublicKey(vec![0x04; 65]),
    ));
    let config = ClientConfig::builder_with_provider(provider())
        .with_ech(ech)
        .expect("ECH GREASE config")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider())))
        .with_no_client_auth();
    let stream = rustls_hello(&Arc::new(config), "api.openai.com");
    let info = parsed(&stream);
    assert!(info.ech, "GREASE ECH carries extension 0xfe0d");
    // What browsers do on most connections: the outer name is the real one here,
    // and nothing in the hello says whether the ECH is GREASE or real.
    assert_eq!(info.sni.as_deref(), Some("api.openai.com"));
    assert_eq!(info.tls_versions, [TLS13]);
}

// ---------------------------------------------------------------------------
// Hellos built field by field
// ---------------------------------------------------------------------------

/// A length field: where it is in the message, how wide, what it measures.
#[derive(Debug, Clone)]
struct LengthField {
    name: String,
    at: usize,
    width: usize,
}

/// Bytes plus the length fields written into them.
#[derive(Debug, Clone, Default)]
struct Enc {
    buf: Vec<u8>,
    lengths: Vec<LengthField>,
}

impl Enc {
    /// Opaque bytes: the parser does not look inside, so no length field is recorded.
    fn opaque(bytes: &[u8]) -> Self {
        Enc {
            buf: bytes.to_vec(),
            lengths: Vec::new(),
        }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend(v.to_be_bytes());
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend(b);
        self
    }

    /// A `width`-byte length followed by what `body` writes.
    fn block(&mut self, width: usize, name: &str, body: impl FnOnce(&mut Enc)) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend(vec![0; width]);
        self.lengths.push(LengthField {
            name: name.to_owned(),
            at,
            width,
        });
        body(self);
        let len = self.buf.len() - at - width;
        assert!(
            len < 1 << (8 * width),
            "{name}: {len} bytes do not fit a {width}-byte length"
        );
        self.buf[at..at + width].copy_from_slice(&(len as u32).to_be_bytes()[4 - width..]);
        self
    }

    fn splice(&mut self, other: &Enc) -> &mut Self {
        let base = self.buf.len();
        self.buf.extend(&other.buf);
        self.lengths
            .extend(other.lengths.iter().map(|f| LengthField {
                at: base + f.at,
                ..f.clone()
            }));
        self
    }
}

/// Deterministic filler for keys and randoms.
fn filler(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

#[derive(Debug, Clone)]
struct HelloBuilder {
    session_id: Vec<u8>,
    ciphers: Vec<u16>,
    extensions: Vec<(u16, Enc)>,
}

impl HelloBuilder {
    fn new() -> Self {
        HelloBuilder {
            session_id: filler(32, 1),
            ciphers: vec![
                0x0a0a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
            ],
            extensions: Vec::new(),
        }
    }

    /// Shaped like a current Chrome hello: GREASE, hybrid post-quantum key share,
    /// GREASE ECH; about 1.8 KiB.
    fn browser_like(name: &str) -> Self {
        HelloBuilder::new()
            .opaque(0x0a0a, &[])
            .sni(name)
            .opaque(23, &[]) // extended_master_secret
            .opaque(0xff01, &[0]) // renegotiation_info
            .opaque(
                10,
                &[0, 10, 0x2a, 0x2a, 0x11, 0xec, 0, 0x1d, 0, 0x17, 0, 0x18],
            ) // supported_groups
            .opaque(11, &[1, 0]) // ec_point_formats
            .opaque(35, &[]) // session_ticket
            .alpn(&["h2", "http/1.1"])
            .opaque(5, &[1, 0, 0, 0, 0]) // status_request
            .opaque(13, &[0, 8, 4, 3, 8, 4, 4, 1, 5, 3]) // signature_algorithms
            .opaque(18, &[]) // signed_certificate_timestamp
            .key_share(&[
                (0x2a2a, 1),
                (X25519_MLKEM768, X25519_MLKEM768_SHARE),
                (X25519, 32),
            ])
            .opaque(45, &[1, 1]) // psk_key_exchange_modes
            .versions(&[0x7a7a, TLS13, TLS12])
            .opaque(27, &[2, 0, 2]) // compress_certificate
            .opaque(17613, &[0, 3, 2, b'h', b'2']) // application_settings
            .ech_outer(208)
            .opaque(0x1a1a, &[0])
    }

    fn ext(mut self, ext_type: u16, data: Enc) -> Self {
        self.extensions.push((ext_type, data));
        self
    }

    fn opaque(self, ext_type: u16, data: &[u8]) -> Self {
        self.ext(ext_type, Enc::opaque(data))
    }

    fn server_name(self, entries: &[(u8, &[u8])]) -> Self {
        let mut e = Enc::default();
        e.block(2, "server_name list", |e| {
            for &(name_type, name) in entries {
                e.u8(name_type).block(2, "server_name name", |e| {
                    e.bytes(name);
                });
            }
        });
        self.ext(0, e)
    }

    fn sni(self, name: &str) -> Self {
        self.server_name(&[(0, name.as_bytes())])
    }

    fn alpn(self, protocols: &[&str]) -> Self {
        let mut e = Enc::default();
        e.block(2, "ALPN list", |e| {
            for p in protocols {
                e.block(1, "ALPN protocol", |e| {
                    e.bytes(p.as_bytes());
                });
            }
        });
        self.ext(16, e)
    }

    fn versions(self, versions: &[u16]) -> Self {
        let mut e = Enc::default();
        e.block(1, "supported_versions list", |e| {
            for &v in versions {
                e.u16(v);
            }
        });
        self.ext(43, e)
    }

    fn key_share(self, shares: &[(u16, usize)]) -> Self {
        // Built with lengths, but the parser treats key_share as opaque.
        let mut e = Enc::default();
        e.block(2, "", |e| {
            for &(group, len) in shares {
                e.u16(group).block(2, "", |e| {
                    e.bytes(&filler(len, group as u8));
                });
            }
        });
        self.opaque(51, &e.buf)
    }

    /// An outer ECHClientHello (RFC 9849 §5): type, suite, config id, enc, payload.
    fn ech_outer(self, payload: usize) -> Self {
        let mut e = Enc::default();
        e.u8(0).u16(1).u16(1).u8(0x42);
        e.block(2, "", |e| {
            e.bytes(&filler(32, 9));
        });
        e.block(2, "", |e| {
            e.bytes(&filler(payload, 3));
        });
        self.opaque(EXT_ENCRYPTED_CLIENT_HELLO, &e.buf)
    }

    /// The handshake message, header included, and its length fields.
    fn build(&self) -> Enc {
        let mut m = Enc::default();
        m.u8(1).block(3, "handshake length", |m| {
            m.u16(TLS12).bytes(&filler(32, 7));
            m.block(1, "session_id", |m| {
                m.bytes(&self.session_id);
            });
            m.block(2, "cipher_suites", |m| {
                for &c in &self.ciphers {
                    m.u16(c);
                }
            });
            m.block(1, "compression_methods", |m| {
                m.u8(0);
            });
            m.block(2, "extensions", |m| {
                for (ext_type, data) in &self.extensions {
                    m.u16(*ext_type)
                        .block(2, &format!("extension {ext_type:#06x} length"), |m| {
                            m.splice(data);
                        });
                }
            });
        });
        m
    }

    /// The hello in one record, with the record length among the length fields.
    fn stream(&self) -> Enc {
        let message = self.build();
        let mut s = Enc::default();
        s.u8(22).u16(0x0301).block(2, "record length", |s| {
            s.splice(&message);
        });
        s
    }
}

/// `message` in handshake records of at most `fragment` bytes.
fn in_records(message: &[u8], fragment: usize) -> Vec<u8> {
    let mut stream = Vec::new();
    for chunk in message.chunks(fragment) {
        stream.extend([22, 3, 1]);
        stream.extend((chunk.len() as u16).to_be_bytes());
        stream.extend(chunk);
    }
    stream
}

#[test]
fn grease_extensions_and_versions_are_counted_and_dropped() {
    let hello = HelloBuilder::new()
        .opaque(0x0a0a, &[])
        .sni("api.openai.com")
        .versions(&[0x1a1a, TLS13, 0xfafa, TLS12, 0x0302])
        .opaque(0xdada, &[0])
        .opaque(0x5a5a, &[1, 2, 3])
        .stream();
    let info = parsed(&hello.buf);
    assert_eq!(info.tls_versions, [TLS13, TLS12, 0x0302]);
    assert_eq!(info.extensions, 5);
    assert_eq!(info.sni.as_deref(), Some("api.openai.com"));
    assert_agrees_with_tls_parser(&hello.buf, &info);
}

#[test]
fn forty_extensions() {
    let mut builder = HelloBuilder::browser_like("api.anthropic.com");
    let base = builder.extensions.len();
    // Unassigned and private-use types up to 40 extensions in all.
    for i in 0..(40 - base) as u16 {
        builder = builder.opaque(0xff00 - i * 3, &filler(usize::from(i % 5), 2));
    }
    let stream = builder.stream().buf;
    let info = parsed(&stream);
    assert_eq!(info.extensions, 40);
    assert_eq!(info.sni.as_deref(), Some("api.anthropic.com"));
    assert_eq!(info.alpn, ["h2", "http/1.1"]);
    assert_eq!(info.tls_versions, [TLS13, TLS12]);
    assert!(info.ech);
    assert_agrees_with_tls_parser(&stream, &info);
}

#[test]
fn post_quantum_hello_spans_two_segments_over_ipv4_and_ipv6() {
    let stream = HelloBuilder::browser_like("api.openai.com").stream().buf;
    assert!(stream.len() > 1500, "hello is {} bytes", stream.len());
    let expected = parsed(&stream);
    assert_eq!(expected.sni.as_deref(), Some("api.openai.com"));

    for (mss, family) in [(MSS_IPV4, "IPv4"), (MSS_IPV6, "IPv6")] {
        let segs = segments(&stream, 1_000_000, mss);
        assert_eq!(
            segs.len(),
            2,
            "{family}: {} bytes at MSS {mss}",
            stream.len()
        );
        // The first segment alone: not yet.
        match parse_client_hello(&segs[0].1) {
            Err(TlsError::Truncated { need }) => assert_eq!(need, stream.len() - mss, "{family}"),
            other => panic!("{family}: first segment alone should be Truncated, got {other:?}"),
        }
        for order in [[0, 1], [1, 0]] {
            let mut a = HelloAssembler::new(1_000_000);
            assert_eq!(
                a.push(segs[order[0]].0, &segs[order[0]].1),
                AssemblyResult::NeedMore,
                "{family} {order:?}"
            );
            assert_eq!(
                a.push(segs[order[1]].0, &segs[order[1]].1),
                AssemblyResult::Done(expected.clone()),
                "{family} {order:?}"
            );
        }
    }
}

#[test]
fn hello_split_across_two_records_anywhere() {
    let message = HelloBuilder::browser_like("api.openai.com").build().buf;
    let expected = parsed(&in_records(&message, message.len()));
    for split in 1..message.len() {
        let mut stream = in_records(&message[..split], split);
        stream.extend(in_records(&message[split..], message.len()));
        assert_eq!(
            parse_client_hello(&stream),
            Ok(expected.clone()),
            "split at message byte {split}"
        );
    }
}

#[test]
fn ech_sni_and_name_types() {
    let info = parsed(
        &HelloBuilder::new()
            .sni("cloudflare-ech.com")
            .ech_outer(200)
            .stream()
            .buf,
    );
    assert!(info.ech);
    assert_eq!(
        info.sni.as_deref(),
        Some("cloudflare-ech.com"),
        "the outer (public) name is still reported"
    );

    let none = parsed(&HelloBuilder::new().alpn(&["h2"]).stream().buf);
    assert_eq!((none.sni, none.ech, none.extensions), (None, false, 1));

    let other_type = HelloBuilder::new()
        .server_name(&[(7, b"api.openai.com")])
        .stream()
        .buf;
    assert_eq!(
        parsed(&other_type).sni,
        None,
        "a NameType other than host_name is no host name"
    );
    let after_other = HelloBuilder::new()
        .server_name(&[(7, b"\x00\x01opaque"), (0, b"api.openai.com")])
        .stream()
        .buf;
    assert_eq!(parsed(&after_other).sni.as_deref(), Some("api.openai.com"));

    for bad in [
        &b"api openai.com"[..],
        b"api.openai.com\0",
        b"198.51.100.4",
        b"[2001:db8::1]",
        b"",
    ] {
        let stream = HelloBuilder::new().server_name(&[(0, bad)]).stream().buf;
        assert_eq!(
            parsed(&stream).sni,
            None,
            "host_name {:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn every_length_field_corrupted_is_an_error() {
    let hellos = [
        HelloBuilder::browser_like("api.openai.com").stream(),
        HelloBuilder::new()
            .server_name(&[(1, b"x"), (0, b"api.anthropic.com")])
            .alpn(&["h2", "http/1.1", "h3"])
            .versions(&[TLS13])
            .stream(),
    ];
    let mut checked = 0;
    for hello in &hellos {
        parsed(&hello.buf);
        for field in &hello.lengths {
            let original = read_be(&hello.buf[field.at..field.at + field.width]);
            let max = (1u64 << (8 * field.width)) - 1;
            let mut values = vec![original + 1, 0, max];
            if original > 0 {
                values.push(original - 1);
            }
            for value in values {
                if value == original || value > max {
                    continue;
                }
                // The record may legitimately hold more than the hello: a longer
                // record length only means the rest has not arrived.
                if field.name == "record length" && value > original {
                    continue;
                }
                let mut stream = hello.buf.clone();
                stream[field.at..field.at + field.width]
                    .copy_from_slice(&value.to_be_bytes()[8 - field.width..]);
                let result = parse_client_hello(&stream);
                let ok = match field.name.as_str() {
                    "record length" | "handshake length" => result.is_err(),
                    _ => matches!(result, Err(TlsError::Malformed(_))),
                };
                assert!(ok, "{} at byte {} set from {original} to {value}: expected an error (Malformed for inner fields), got {result:?}", field.name, field.at);
                checked += 1;
            }
        }
    }
    let fields: usize = hellos.iter().map(|h| h.lengths.len()).sum();
    println!("{checked} corruptions of {fields} length fields, all refused");
    assert!(checked > 100, "only {checked} corruptions tried");
}

fn read_be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u64::from(b))
}

#[test]
fn every_truncation_waits_for_more() {
    let message = HelloBuilder::browser_like("api.openai.com").build().buf;
    for fragment in [message.len(), 700, 100] {
        let stream = in_records(&message, fragment);
        for cut in 0..stream.len() {
            match parse_client_hello(&stream[..cut]) {
                Err(TlsError::Truncated { need }) if need >= 1 && cut + need <= stream.len() => {}
                other => panic!("records of {fragment}, cut at {cut} of {}: expected Truncated with a need of at most {}, got {other:?}", stream.len(), stream.len() - cut),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Segment reassembly
// ---------------------------------------------------------------------------

/// `stream` as TCP payloads of at most `mss` bytes, with sequence numbers from
/// `first_seq` (wrapping).
fn segments(stream: &[u8], first_seq: u32, mss: usize) -> Vec<(u32, Vec<u8>)> {
    stream
        .chunks(mss)
        .enumerate()
        .map(|(i, chunk)| (first_seq.wrapping_add((i * mss) as u32), chunk.to_vec()))
        .collect()
}

/// Pushes `segs` in order; every result but the last must be NeedMore.
#[track_caller]
fn push_all(a: &mut HelloAssembler, segs: &[(u32, Vec<u8>)]) -> AssemblyResult {
    let mut last = AssemblyResult::NeedMore;
    for (i, (seq, payload)) in segs.iter().enumerate() {
        assert_eq!(last, AssemblyResult::NeedMore, "result before segment {i}");
        last = a.push(*seq, payload);
    }
    last
}

fn pq_stream() -> Vec<u8> {
    // Enough extra to take four IPv4 segments.
    HelloBuilder::browser_like("api.openai.com")
        .opaque(21, &[0; 3000])
        .stream()
        .buf
}

#[test]
fn assembler_in_order_out_of_order_and_duplicated() {
    let stream = pq_stream();
    let expected = AssemblyResult::Done(parsed(&stream));
    let segs = segments(&stream, 7, MSS_IPV4);
    assert_eq!(segs.len(), 4);

    assert_eq!(
        push_all(&mut HelloAssembler::new(7), &segs),
        expected,
        "in order"
    );

    // Every order of the four segments.
    let mut orders = Vec::new();
    permutations(&mut vec![0, 1, 2, 3], 0, &mut orders);
    assert_eq!(orders.len(), 24);
    for order in &orders {
        let shuffled: Vec<_> = order.iter().map(|&i| segs[i].clone()).collect();
        assert_eq!(
            push_all(&mut HelloAssembler::new(7), &shuffled),
            expected,
            "order {order:?}"
        );
    }

    // Each segment twice (a retransmission right behind it).
    let twice: Vec<_> = segs
        .iter()
        .take(3)
        .flat_map(|s| [s.clone(), s.clone()])
        .chain([segs[3].clone()])
        .collect();
    assert_eq!(
        push_all(&mut HelloAssembler::new(7), &twice),
        expected,
        "duplicates"
    );
}

fn permutations(items: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
    if k == items.len() {
        out.push(items.clone());
        return;
    }
    for i in k..items.len() {
        items.swap(k, i);
        permutations(items, k + 1, out);
        items.swap(k, i);
    }
}

#[test]
fn assembler_overlaps_keep_the_first_copy() {
    let stream = pq_stream();
    let expected = AssemblyResult::Done(parsed(&stream));
    // A retransmission re-segmented across the first two segments, carrying
    // different bytes where it overlaps: they must be ignored.
    let mut a = HelloAssembler::new(0);
    assert_eq!(a.push(0, &stream[..1000]), AssemblyResult::NeedMore);
    assert_eq!(a.push(2000, &stream[2000..3000]), AssemblyResult::NeedMore);
    let mut liar = stream[500..2500].to_vec();
    liar[..500].fill(0xee); // overlaps [500, 1000)
    liar[1500..].fill(0xee); // overlaps [2000, 2500)
                             // The part in the hole [1000, 2000) is genuine.
    assert_eq!(a.push(500, &liar), AssemblyResult::NeedMore);
    assert_eq!(a.push(3000, &stream[3000..]), expected);

    // A segment that starts inside received data and goes past it.
    let mut a = HelloAssembler::new(0);
    assert_eq!(a.push(0, &stream[..1460]), AssemblyResult::NeedMore);
    assert_eq!(a.push(1000, &stream[1000..2920]), AssemblyResult::NeedMore);
    assert_eq!(a.push(2920, &stream[2920..]), expected);
}

#[test]
fn assembler_sequence_numbers_wrap() {
    let stream = pq_stream();
    let expected = AssemblyResult::Done(parsed(&stream));
    for first_seq in [
        0xffff_ffff,
        0xffff_fa00,
        0xffff_ffff - 1459,
        u32::MAX - 3000,
    ] {
        let segs = segments(&stream, first_seq, MSS_IPV6);
        assert!(segs.iter().any(|s| s.0 < first_seq), "the sequence wraps");
        assert_eq!(
            push_all(&mut HelloAssembler::new(first_seq), &segs),
            expected,
            "first_seq {first_seq:#x}"
        );
        let reversed: Vec<_> = segs.iter().rev().cloned().collect();
        assert_eq!(
            push_all(&mut HelloAssembler::new(first_seq), &reversed),
            expected,
            "reversed, first_seq {first_seq:#x}"
        );
    }
    // Data from before the first payload byte is cut off.
    let mut a = HelloAssembler::new(5);
    let mut early = vec![0xaa; 10];
    early.extend(&stream[..100]);
    assert_eq!(
        a.push(5u32.wrapping_sub(10), &early),
        AssemblyResult::NeedMore
    );
    assert_eq!(
        a.push(0xffff_0000, &[1; 50]),
        AssemblyResult::NeedMore,
        "entirely before the start: ignored"
    );
    assert_eq!(a.push(105, &stream[100..]), expected);
}

#[test]
fn assembler_waits_for_gaps() {
    let stream = pq_stream();
    let segs = segments(&stream, 1, MSS_IPV4);
    let mut a = HelloAssembler::new(1);
    for i in [0, 2, 3] {
        assert_eq!(
            a.push(segs[i].0, &segs[i].1),
            AssemblyResult::NeedMore,
            "segment {i} with segment 1 missing"
        );
    }
    assert_eq!(
        a.push(1, &[]),
        AssemblyResult::NeedMore,
        "empty payloads change nothing"
    );
    assert_eq!(
        a.push(segs[1].0, &segs[1].1),
        AssemblyResult::Done(parsed(&stream))
    );
    // Finished: the same answer again.
    assert_eq!(
        a.push(segs[1].0, &segs[1].1),
        AssemblyResult::Done(parsed(&stream))
    );
}

#[test]
fn assembler_gives_up_after_eight_segments() {
    let stream = pq_stream();
    let segs = segments(&stream, 0, 100);
    let mut a = HelloAssembler::new(0);
    for (i, (seq, payload)) in segs.iter().take(MAX_SEGMENTS - 1).enumerate() {
        assert_eq!(
            a.push(*seq, payload),
            AssemblyResult::NeedMore,
            "segment {i}"
        );
    }
    let seen = 100 * MAX_SEGMENTS;
    assert_eq!(
        a.push(segs[MAX_SEGMENTS - 1].0, &segs[MAX_SEGMENTS - 1].1),
        AssemblyResult::Failed(TlsError::Truncated {
            need: stream.len() - seen
        })
    );
    assert_eq!(
        a.push(segs[8].0, &segs[8].1),
        AssemblyResult::Failed(TlsError::Truncated {
            need: stream.len() - seen
        })
    );

    // Duplicates count too: eight copies of the first segment.
    let mut a = HelloAssembler::new(0);
    let results: Vec<_> = (0..MAX_SEGMENTS).map(|_| a.push(0, &segs[0].1)).collect();
    assert!(
        matches!(
            results[MAX_SEGMENTS - 1],
            AssemblyResult::Failed(TlsError::Truncated { .. })
        ),
        "{results:?}"
    );
}

#[test]
fn assembler_limits_size() {
    // The largest hello accepted: 16 KiB message in one record, two jumbo segments.
    let builder = HelloBuilder::browser_like("api.openai.com");
    let pad = MAX_HELLO_LEN - builder.build().buf.len() - 4;
    let biggest = builder.clone().opaque(21, &vec![0; pad]).stream().buf;
    assert_eq!(biggest.len(), MAX_HELLO_LEN + 5);
    let expected = AssemblyResult::Done(parsed(&biggest));
    assert_eq!(
        push_all(&mut HelloAssembler::new(9), &segments(&biggest, 9, 9000)),
        expected
    );

    // One byte more: refused from the handshake header on, in the first segment.
    let message = builder.opaque(21, &vec![0; pad + 1]).build().buf;
    let too_big = in_records(&message, 1 << 14);
    assert_eq!(parse_client_hello(&too_big), Err(TlsError::TooLarge));
    assert_eq!(
        HelloAssembler::new(9).push(9, &too_big[..MSS_IPV4]),
        AssemblyResult::Failed(TlsError::TooLarge)
    );

    // A segment past the window.
    let mut a = HelloAssembler::new(9);
    assert_eq!(a.push(9, &biggest[..100]), AssemblyResult::NeedMore);
    assert_eq!(
        a.push(9 + MAX_STREAM_LEN as u32, &[0; 10]),
        AssemblyResult::Failed(TlsError::TooLarge)
    );
    // One that starts inside it and runs past is cut at the window.
    let mut a = HelloAssembler::new(9);
    let mut long = biggest.clone();
    long.extend(vec![0x17; 4000]); // application data behind the hello
    assert_eq!(a.push(9, &long), expected);
}

// ---------------------------------------------------------------------------
// Fuzzing
// ---------------------------------------------------------------------------

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

/// An independent statement of what `sni` may hold.
fn valid_lowercase_dns_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    !name.is_empty()
        && name.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
        && !labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut s = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(s.len());
        match rng.below(9) {
            0 => {
                if let Some(b) = s.get_mut(at) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                if let Some(b) = s.get_mut(at) {
                    *b = [0, 1, 0x7f, 0x80, 0xff, 0x0a, 0x2e, 0x41][rng.below(8)];
                }
            }
            2 => {
                // A 16-bit field nudged: most lengths are 16-bit.
                if at + 1 < s.len() {
                    let v = u16::from_be_bytes([s[at], s[at + 1]]);
                    let v =
                        [v.wrapping_add(1), v.wrapping_sub(1), 0, 0xffff, v ^ 0x8000][rng.below(5)];
                    s[at..at + 2].copy_from_slice(&v.to_be_bytes());
                }
            }
            3 => s.truncate(at),
            4 => {
                let byte = rng.next() as u8;
                s.insert(at.min(s.len()), byte);
            }
            5 => {
                if at < s.len() {
                    s.remove(at);
                }
            }
            6 => {
                // Repeat a chunk (like a duplicated extension).
                let len = rng.below(64).min(s.len() - at.min(s.len()));
                let chunk = s[at..at + len].to_vec();
                s.splice(at..at, chunk);
            }
            7 => {
                if let Some(b) = s.get_mut(at) {
                    *b = b.to_ascii_uppercase();
                }
            }
            _ => {
                let end = (at + 1 + rng.below(32)).min(s.len());
                for b in &mut s[at..end] {
                    *b = rng.next() as u8;
                }
            }
        }
    }
    s
}

/// Pushes `stream` as random, possibly overlapping and reordered segments; every
/// copy carries the stream's own bytes.
fn assemble_randomly(rng: &mut XorShift, stream: &[u8], first_seq: u32) -> (AssemblyResult, usize) {
    let mut cuts: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(stream.len() + 1))
        .collect();
    cuts.extend([0, stream.len()]);
    cuts.sort_unstable();
    let mut segs: Vec<(usize, usize)> = cuts
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| a < b)
        .collect();
    if rng.below(3) == 0 && !segs.is_empty() {
        let (a, b) = segs[rng.below(segs.len())];
        let a2 = a.saturating_sub(rng.below(50));
        segs.push((a2, (b + rng.below(50)).min(stream.len())));
    }
    for i in (1..segs.len()).rev() {
        segs.swap(i, rng.below(i + 1));
    }
    let mut a = HelloAssembler::new(first_seq);
    let mut result = AssemblyResult::NeedMore;
    for &(start, end) in &segs {
        result = a.push(first_seq.wrapping_add(start as u32), &stream[start..end]);
    }
    (result, segs.len())
}

#[test]
fn fuzz_mutated_hellos_never_panic_and_names_stay_valid() {
    let seed: u64 = std::env::var("TLS_FUZZ_SEED")
        .ok()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
        .unwrap_or(0x1f2e_3d4c_5b6a_7988);
    println!("TLS fuzz seed {seed:#x} (set TLS_FUZZ_SEED to replay)");
    let mut rng = XorShift(seed);

    let config = default_config();
    let mut fragmented = client_config(rustls::DEFAULT_VERSIONS, &["h2"]);
    fragmented.max_fragment_size = Some(200);
    let browser = HelloBuilder::browser_like("api.openai.com").build().buf;
    let corpus: Vec<Vec<u8>> = vec![
        rustls_hello(&config, "api.openai.com"),
        rustls_hello(&config, "API.Anthropic.com"),
        rustls_hello(&config, "2001:db8::1"),
        rustls_hello(
            &Arc::new(client_config(&[&rustls::version::TLS12], &["http/1.1"])),
            "api.mistral.ai",
        ),
        rustls_hello(&Arc::new(fragmented), "api.openai.com"),
        in_records(&browser, browser.len()),
        in_records(&browser, 300),
        HelloBuilder::new()
            .server_name(&[(0, b"a.b")])
            .alpn(&["h2"])
            .versions(&[TLS13])
            .stream()
            .buf,
    ];

    let started = Instant::now();
    let (mut ok, mut with_name, mut truncated, mut other) = (0, 0, 0, 0);
    for iteration in 0..50_000 {
        let base = &corpus[rng.below(corpus.len())];
        let input = mutate(&mut rng, base);
        let first_seq = rng.next() as u32;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let parsed = parse_client_hello(&input);
            let (assembled, pushes) = assemble_randomly(&mut rng, &input, first_seq);
            (parsed, assembled, pushes)
        }));
        let Ok((parsed, assembled, pushes)) = outcome else {
            panic!(
                "panic at iteration {iteration} (seed {seed:#x}) on input {}",
                hex(&input)
            );
        };
        match &parsed {
            Ok(info) => {
                ok += 1;
                if let Some(name) = &info.sni {
                    with_name += 1;
                    assert!(valid_lowercase_dns_name(name), "iteration {iteration} (seed {seed:#x}): sni {name:?} is not a lowercase DNS name");
                }
            }
            Err(TlsError::Truncated { need }) => {
                truncated += 1;
                assert!(*need >= 1, "iteration {iteration}: Truncated with need 0");
            }
            Err(_) => other += 1,
        }
        // The assembler given the whole stream agrees with the parser.
        let expected = match &parsed {
            Ok(info) => AssemblyResult::Done(info.clone()),
            Err(TlsError::Truncated { .. }) if pushes < MAX_SEGMENTS => AssemblyResult::NeedMore,
            Err(TlsError::Truncated { .. }) => {
                assert!(
                    matches!(
                        assembled,
                        AssemblyResult::Failed(TlsError::Truncated { .. })
                            | AssemblyResult::NeedMore
                    ),
                    "iteration {iteration}: {assembled:?}"
                );
                continue;
            }
            Err(e) => AssemblyResult::Failed(e.clone()),
        };
        if pushes <= MAX_SEGMENTS {
            assert_eq!(
                assembled,
                expected,
                "iteration {iteration} (seed {seed:#x}), {pushes} segments, input {}",
                hex(&input)
            );
        }
    }
    let elapsed = started.elapsed();
    println!(
        "50000 inputs in {elapsed:.2?}: {ok} parsed ({with_name} with a name), {truncated} truncated, {other} refused"
    );
    assert!(
        ok > 1000 && other > 1000 && truncated > 1000,
        "the mutations should reach every outcome: {ok} ok, {truncated} truncated, {other} refused"
    );
}
