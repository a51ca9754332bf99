//! GGUF files of llama.cpp's `llama` architecture holding BitNet b1.58 models: the two LLaMA
//! fixtures converted by llama.cpp's own `convert_hf_to_gguf.py` (`tools/make_llama_gguf_fixtures.py`:
//! q/k rows permuted for llama.cpp's RoPE, `rope_freqs` for Llama-3 scaling, f32 weights) give
//! HF transformers' logits and greedy continuation, as the HF directories do.

use bitnet_core::{Device, DeviceRequest};
use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::config::Architecture;
use bitnet_inference::Engine;

mod common;
use common::{check_logits, fixture_dir, greedy, reference};

const LLAMA_GGUF: [&str; 2] = ["llama_offline_bitlinear", "llama3_rope_scaling"];

fn gguf(name: &str) -> std::path::PathBuf {
    fixture_dir(name).join("ggml-model-f32.gguf")
}

fn engine(path: std::path::PathBuf) -> Engine {
    Engine::builder()
        .model(path)
        .device(DeviceRequest::Exact(Device::Cpu))
        .threads(2)
        .lm_head(LmHeadMode::F32)
        .build()
        .unwrap()
}

#[test]
fn llama_gguf_files_read_as_the_llama_block_with_their_rope_divisors() {
    for name in LLAMA_GGUF {
        let m = bitnet_inference::formats::load(&gguf(name)).unwrap();
        assert_eq!(m.config.architecture, Architecture::Llama, "{name}");
        let factors = m.config.rope_freq_factors.as_ref().map(Vec::len);
        // Only the Llama-3 fixture's converter wrote `rope_freqs` (head_dim 16: 8 pairs).
        let want = (name == "llama3_rope_scaling").then_some(8);
        assert_eq!(factors, want, "{name}");
    }
}

#[test]
fn llama_gguf_logits_and_greedy_tokens_match_the_reference() {
    for name in LLAMA_GGUF {
        let r = reference(name);
        let mut e = engine(gguf(name));
        let got = e.logits(&r.input_ids).unwrap();
        let worst = check_logits(name, &got, &r.logits);
        eprintln!("{name} (GGUF): worst |err| / max|logit| = {worst:.2e}");
        // f32 weights: the directory's ternary values and scales, exactly (f16 files, with
        // their scales rounded, land within ~3e-2 here: random weights this small move int8
        // activations on such differences).
        assert!(worst < 1e-4, "{name}: {worst}");
        let out = e.generate_ids(&r.input_ids, &greedy(r.greedy_ids.len())).unwrap();
        assert_eq!(out.generated_ids, r.greedy_ids, "{name}");
    }
}

#[test]
fn the_gguf_vocabulary_encodes_as_the_directory_tokenizer() {
    for name in LLAMA_GGUF {
        let (g, d) = (engine(gguf(name)), engine(fixture_dir(name)));
        for text in ["First Citizen: Before we proceed", "  spaced\nlines\t 123 ok?"] {
            assert_eq!(
                g.encode(text, true).unwrap(),
                d.encode(text, true).unwrap(),
                "{name}: {text:?}"
            );
        }
    }
}
