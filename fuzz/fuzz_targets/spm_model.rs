//! Arbitrary bytes as a SentencePiece `tokenizer.model`: `Err`, never a panic; a model that
//! loads encodes and decodes text.
#![no_main]
use bitnet_inference::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let legacy = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(t) = Tokenizer::from_spm_bytes(data, legacy) {
        if let Ok(ids) = t.encode("Hello <s> wörld\n\t12 🙂", true) {
            let _ = t.decode_with(&ids, false);
        }
    }
});
