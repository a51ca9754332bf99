//! Arbitrary text as `config.json`: `Err`, never a panic.
#![no_main]
use bitnet_inference::config::BitNetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(c) = BitNetConfig::from_json_str(s) {
            assert!(c.validate().is_ok());
        }
    }
});
