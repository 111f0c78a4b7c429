//! Benchmark: userspace cost per punted packet (issue budget ≤ 20 µs), for each
//! kind the datapath copies out: a DNS answer (decode, CNAME walk, catalog
//! lookup), a TLS ClientHello (parse, SNI, catalog lookup), a QUIC client Initial
//! (key derivation, header protection, AES-GCM, CRYPTO reassembly, SNI). The
//! frame-peeling and map write are not included: a few hundred ns and one
//! syscall. Medians of rounds, one run. Needs no root.
//!
//!     cargo run --release --example bench_userspace -- --write BENCHMARKS.md

use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlane::classify::catalog::Catalog;
use inferlane::classify::{dns, quic, tls};
use simple_dns::rdata::{RData, A, CNAME};
use simple_dns::{Name, Packet, Question, ResourceRecord, CLASS, QTYPE, TYPE};

const ROUNDS: usize = 9;
const ITERS: u32 = 20_000;

fn dns_answer() -> Vec<u8> {
    let mut p = Packet::new_reply(1);
    p.questions.push(Question::new(Name::new_unchecked("api.openai.com"), QTYPE::TYPE(TYPE::A), CLASS::IN.into(), false));
    p.answers.push(ResourceRecord::new(Name::new_unchecked("api.openai.com"), CLASS::IN, 60, RData::CNAME(CNAME(Name::new_unchecked("api.openai.com.cdn.cloudflare.net")))));
    for i in 0..4u32 {
        p.answers.push(ResourceRecord::new(Name::new_unchecked("api.openai.com.cdn.cloudflare.net"), CLASS::IN, 60, RData::A(A { address: 0xc000_0200 + i })));
    }
    p.build_bytes_vec().unwrap()
}

fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "api.anthropic.com".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn median_ns(mut f: impl FnMut()) -> Duration {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ITERS {
                f();
            }
            t.elapsed() / ITERS
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn main() {
    let write = std::env::args().skip_while(|a| a != "--write").nth(1);
    let catalog = Catalog::builtin();
    let answer = dns_answer();
    let hello = client_hello();
    let initial = hex(include_str!("../tests/vectors/rfc9001_client_initial.hex"));

    let dns_t = median_ns(|| {
        let r = dns::resolved(std::hint::black_box(&answer)).unwrap();
        let p = r[0].names.iter().rev().find_map(|n| catalog.lookup(n));
        assert!(p.is_some());
    });
    let tls_t = median_ns(|| {
        let info = tls::parse_client_hello(std::hint::black_box(&hello)).unwrap();
        assert!(catalog.lookup(info.sni.as_deref().unwrap()).is_some());
    });
    let quic_t = median_ns(|| {
        let pkt = quic::decrypt_initial(std::hint::black_box(&initial)).unwrap();
        let mut a = quic::CryptoAssembler::new();
        assert!(matches!(a.push(&pkt), quic::AssemblyResult::Done(_)));
    });
    let rows = [
        ("DNS answer (CNAME + 4 A records), catalog lookup", dns_t, answer.len()),
        ("TLS ClientHello (rustls, SNI api.anthropic.com), catalog lookup", tls_t, hello.len()),
        ("QUIC v1 client Initial (RFC 9001 A.2): keys, unprotect, decrypt, SNI", quic_t, initial.len()),
    ];
    for (what, t, len) in &rows {
        println!("{what:<72} {len:>5} bytes  {:>7.2} µs", t.as_nanos() as f64 / 1000.0);
    }
    if let Some(path) = write {
        let mut md = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".into());
        let title = "## Userspace cost per punted packet";
        if !md.contains(title) && !md.ends_with("\n\n") {
            md.push('\n');
        }
        let start = md.find(title).unwrap_or(md.len());
        let end = md[start..].find("\n## ").map(|i| start + i + 1).unwrap_or(md.len());
        let mut section = format!(
            "{title}\n\nCommand: `cargo run --release --example bench_userspace -- --write BENCHMARKS.md` (part of `make bench`).\n\
             Median of {ROUNDS} rounds of {ITERS} iterations, one core, one run. Budget: ≤ 20 µs per punted packet.\n\n\
             | punted packet | bytes | cost |\n|---|---|---|\n"
        );
        for (what, t, len) in &rows {
            section.push_str(&format!("| {what} | {len} | {:.2} µs |\n", t.as_nanos() as f64 / 1000.0));
        }
        section.push('\n');
        md.replace_range(start..end, &section);
        std::fs::write(&path, md).unwrap();
        println!("written to {path}");
    }
}
