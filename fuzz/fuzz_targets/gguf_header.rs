//! Arbitrary bytes into the GGUF parser: it must return `Err`, never panic, and what it
//! accepts must be self-consistent.
#![no_main]
use bitnet_inference::config::BitNetConfig;
use bitnet_inference::formats::{parse_gguf, GgufVocab};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = parse_gguf(data) else { return };
    for t in &f.tensors {
        assert!(t.offset >= f.data_offset && t.offset + t.len <= data.len());
        assert_eq!(t.offset % f.alignment, 0);
        let _ = t.shape();
    }
    let _ = GgufVocab::from_metadata(&f.metadata);
    let _ = BitNetConfig::from_gguf_metadata(&f.metadata);
    let _ = f.metadata.to_display_pairs();
});
