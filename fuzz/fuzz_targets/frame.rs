//! Punted client frames peeled to flow key and payload.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(p) = inferlane::classify::frame::client_packet(data) {
        assert!(p.payload.len() <= data.len());
    }
});
