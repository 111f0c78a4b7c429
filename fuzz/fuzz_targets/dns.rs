//! DNS answers as the datapath punts them: arbitrary frames through the peeler,
//! arbitrary messages through the decoder and CNAME walk.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = inferlane::classify::dns::message_of_frame(data) {
        let _ = inferlane::classify::dns::resolved(msg);
    }
    if let Ok(answers) = inferlane::classify::dns::resolved(data) {
        for a in answers {
            assert!(!a.names.is_empty() && a.names.len() <= 16);
        }
    }
});
