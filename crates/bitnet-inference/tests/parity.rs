//! Parity with the reference (HF transformers' BitNet) on the committed fixtures:
//! logits within 1e-2 of their max magnitude, top-1 equal wherever the reference's top-2 margin
//! exceeds that, and greedy generation reproducing the reference's continuation.
//! Fixtures come from `tools/make_fixtures.py` (see tests/fixtures/README.md).

use bitnet_core::{Device, DeviceRequest};
use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::Engine;

mod common;
use common::{check_logits, fixture_dir, greedy, reference, FIXTURES};

/// The CPU backend, pinned (cuda_parity.rs covers the GPU).
fn engine(name: &str, head: LmHeadMode) -> Engine {
    Engine::builder()
        .model(fixture_dir(name))
        .device(cpu())
        .threads(2)
        .lm_head(head)
        .build()
        .unwrap()
}

fn cpu() -> DeviceRequest {
    DeviceRequest::Exact(Device::Cpu)
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

#[test]
fn greedy_generation_reproduces_the_reference_continuation() {
    for name in FIXTURES {
        let r = reference(name);
        for head in [LmHeadMode::F32, LmHeadMode::I8] {
            let mut e = engine(name, head);
            let cfg = greedy(r.greedy_ids.len());
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
        .device(cpu())
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
    let mut e =
        Engine::builder().model(fixture_dir(name)).device(cpu()).context_len(16).build().unwrap();
    let vocab = e.dims().vocab as u32;
    assert!(e.logits(&[0, vocab]).unwrap_err().to_string().contains("out of range"));
    let long: Vec<u32> = (0..17).collect();
    assert!(e.generate_ids(&long, &greedy(10)).unwrap_err().to_string().contains("context"));
    assert!(e.generate_ids(&[], &greedy(10)).is_err());
    let mut cfg = greedy(10);
    cfg.max_tokens = 100;
    let out = e.generate_ids(&[0, 1, 2], &cfg).unwrap();
    assert_eq!(out.stop_reason, bitnet_inference::StopReason::ContextFull);
}
