//! Arbitrary bytes into the safetensors header parser: `Err`, never a panic.
#![no_main]
use bitnet_inference::formats::parse_safetensors;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_safetensors(data) else { return };
    let mut end = h.data_offset;
    for t in &h.tensors {
        assert!(t.offset >= end && t.offset + t.len <= data.len(), "overlap or out of range");
        end = t.offset + t.len;
    }
});
