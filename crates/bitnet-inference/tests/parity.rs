//! Parity with the reference (HF transformers' BitNet) on the committed fixtures:
//! logits within 1e-2 of their max magnitude, top-1 equal wherever the reference's top-2 margin
//! exceeds that, and greedy generation reproducing the reference's continuation.
//! Fixtures come from `tools/make_fixtures.py` (see tests/fixtures/README.md).

use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use std::path::PathBuf;

const FIXTURES: [&str; 5] = [
    "online_f32_tied_gqa",
    "online_bf16_untied_mha",
    "offline_autobitlinear",
    "offline_bitlinear",
    "offline_autobitlinear_256",
];

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

struct Reference {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy_ids: Vec<u32>,
}

fn reference(name: &str) -> Reference {
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

fn engine(name: &str, head: LmHeadMode) -> Engine {
    Engine::builder().model(fixture_dir(name)).threads(2).lm_head(head).build().unwrap()
}

fn top2(r: &[f32]) -> (usize, f32) {
    let mut idx: Vec<usize> = (0..r.len()).collect();
    idx.sort_by(|&a, &b| r[b].total_cmp(&r[a]));
    (idx[0], r[idx[0]] - r[idx[1]])
}

/// Checks logits against the reference; returns the worst error relative to max |logit|.
fn check_logits(name: &str, got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len(), "{name}: rows");
    let maxmag = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
    let tol = 1e-2 * maxmag;
    let mut worst = 0f32;
    for (pos, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{name}: vocab");
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

#[test]
fn logits_match_the_reference_on_every_fixture() {
    for name in FIXTURES {
        let r = reference(name);
        let mut e = engine(name, LmHeadMode::F32);
        let got = e.logits(&r.input_ids).unwrap();
        let worst = check_logits(name, &got, &r.logits);
        eprintln!("{name}: worst |err| / max|logit| = {worst:.2e}");
    }
}

#[test]
fn int8_lm_head_stays_within_the_parity_tolerance() {
    for name in FIXTURES {
        let r = reference(name);
        let mut e = engine(name, LmHeadMode::I8);
        let got = e.logits(&r.input_ids).unwrap();
        check_logits(name, &got, &r.logits);
    }
}

fn greedy() -> GenerationConfig {
    GenerationConfig {
        max_tokens: 10,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        ignore_eos: true,
        ..GenerationConfig::default()
    }
}

#[test]
fn greedy_generation_reproduces_the_reference_continuation() {
    for name in FIXTURES {
        let r = reference(name);
        for head in [LmHeadMode::F32, LmHeadMode::I8] {
            let mut e = engine(name, head);
            let mut cfg = greedy();
            cfg.max_tokens = r.greedy_ids.len();
            let out = e.generate_ids(&r.input_ids, &cfg).unwrap();
            assert_eq!(out.generated_ids, r.greedy_ids, "{name} ({head:?})");
        }
    }
}

#[test]
fn decode_with_kv_cache_equals_full_recompute() {
    // Prefill in one go vs. token by token: the same last-row logits.
    let name = FIXTURES[0];
    let r = reference(name);
    let mut a = engine(name, LmHeadMode::F32);
    let full = a.logits(&r.input_ids).unwrap();
    let mut b = Engine::builder()
        .model(fixture_dir(name))
        .threads(1)
        .prefill_chunk(1)
        .lm_head(LmHeadMode::F32)
        .build()
        .unwrap();
    for (i, &id) in r.input_ids.iter().enumerate() {
        let l = b.forward_tokens(&[id], i, false).unwrap().to_vec();
        let err = l.iter().zip(&full[i]).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err < 1e-4, "position {i}: {err}");
    }
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let name = FIXTURES[0];
    let mut e = Engine::builder().model(fixture_dir(name)).context_len(16).build().unwrap();
    let vocab = e.dims().vocab as u32;
    assert!(e.logits(&[0, vocab]).unwrap_err().to_string().contains("out of range"));
    let long: Vec<u32> = (0..17).collect();
    assert!(e.generate_ids(&long, &greedy()).unwrap_err().to_string().contains("context"));
    assert!(e.generate_ids(&[], &greedy()).is_err());
    let mut cfg = greedy();
    cfg.max_tokens = 100;
    let out = e.generate_ids(&[0, 1, 2], &cfg).unwrap();
    assert_eq!(out.stop_reason, bitnet_inference::StopReason::ContextFull);
}
