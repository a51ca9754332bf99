//! Shared by the tests: the HF reference fixtures and the tolerance check (parity tests), and
//! test-file builders (`files`, loader tests).
//! `BITNET_FIXTURES` overrides the fixture directory (for running a copied test binary).
#![allow(dead_code)]

pub mod files;

use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::GenerationConfig;
use std::path::PathBuf;

/// Every committed fixture (tests/fixtures/README.md says what each covers).
pub const FIXTURES: [&str; 8] = [
    "online_f32_tied_gqa",
    "online_bf16_untied_mha",
    "offline_autobitlinear",
    "offline_bitlinear",
    "offline_autobitlinear_256",
    "llama_offline_bitlinear",
    "llama3_rope_scaling",
    "onebitllm_bitnet_b1_58",
];

/// Greedy generation of exactly `max_tokens` tokens (end-of-sequence ignored), as the fixtures'
/// continuations were made.
pub fn greedy(max_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_tokens,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        ignore_eos: true,
        ..GenerationConfig::default()
    }
}

pub fn fixture_dir(name: &str) -> PathBuf {
    match std::env::var_os("BITNET_FIXTURES") {
        Some(d) => PathBuf::from(d).join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name),
    }
}

/// What HF transformers computed for a fixture.
pub struct Reference {
    pub input_ids: Vec<u32>,
    pub logits: Vec<Vec<f32>>,
    pub greedy_ids: Vec<u32>,
}

pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixture_dir(name).join("reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
    };
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect();
    Reference { input_ids: ids("input_ids"), logits, greedy_ids: ids("greedy_ids") }
}

/// Index of the largest value and its margin over the second.
pub fn top2(r: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..r.len()).collect();
    idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
    (idx[0], r[idx[0]] - r[idx[1]])
}

/// Asserts max |err| <= 1e-2 of the reference's max |logit| at every position, finite logits,
/// and the same top-1 wherever the reference's top-2 margin exceeds that tolerance.
/// Returns the worst error relative to max |logit|.
pub fn check_logits(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: rows");
    let maxmag = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let tol = 1e-2 * maxmag;
    let mut worst = 0f32;
    for (pos, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name}: vocab");
        assert!(g.iter().all(|v| v.is_finite()), "{name} pos {pos}: non-finite logits");
        let err = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst = worst.max(err / maxmag);
        assert!(err <= tol, "{name} pos {pos}: max abs error {err} > {tol}");
        let (wtop, margin) = top2(w);
        if margin > tol {
            assert_eq!(top2(g).0, wtop, "{name} pos {pos}: top-1 differs (margin {margin})");
        }
    }
    worst
}
