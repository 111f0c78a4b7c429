//! TLS ClientHellos: whole streams, and the same stream cut into segments at a
//! position taken from the input, through the assembler.
#![no_main]
use inferlane::classify::tls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = tls::parse_client_hello(data);
    if let Ok(info) = &whole {
        if let Some(sni) = &info.sni {
            assert_eq!(sni, &sni.to_ascii_lowercase());
        }
    }
    if data.len() > 2 {
        let cut = (data[0] as usize * 7) % data.len();
        let mut a = tls::HelloAssembler::new(1000);
        // Second half first: the assembler must wait for the gap.
        let _ = a.push(1000 + cut as u32, &data[cut..]);
        let _ = a.push(1000, &data[..cut]);
    }
});
