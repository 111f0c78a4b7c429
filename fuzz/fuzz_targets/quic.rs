//! QUIC client Initials: header protection, decryption and CRYPTO reassembly on
//! arbitrary datagrams (mostly rejected early), and on mutations of a real one.
#![no_main]
use inferlane::classify::quic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = quic::looks_like_initial(data);
    if let Ok(pkt) = quic::decrypt_initial(data) {
        let mut a = quic::CryptoAssembler::new();
        let _ = a.push(&pkt);
        let _ = a.push(&pkt);
    }
});
