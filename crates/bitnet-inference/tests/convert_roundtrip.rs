//! The same model in every format it can be written to (HF packed, GGUF I2_S, TQ2_0, TQ1_0)
//! gives the same greedy tokens; conversions round trip; bad conversions are clear errors.

use bitnet_inference::backend::LmHeadMode;
use bitnet_inference::convert::convert;
use bitnet_inference::sampling::SamplingParams;
use bitnet_inference::{Engine, GenerationConfig};
use bitnet_quant::formats::TernaryFormat;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bitnet-convert-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn greedy_run(path: &Path) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut e = Engine::builder().model(path).threads(2).lm_head(LmHeadMode::F32).build().unwrap();
    let prompt = e.encode("First Citizen: Before we proceed", true).unwrap();
    let cfg = GenerationConfig {
        max_tokens: 12,
        sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
        ignore_eos: true,
        ..GenerationConfig::default()
    };
    let out = e.generate_ids(&prompt, &cfg).unwrap();
    let logits = e.logits(&prompt).unwrap().pop().unwrap();
    (prompt, out.generated_ids, logits)
}

#[test]
fn every_gguf_type_gives_the_same_greedy_tokens_as_the_hf_directory() {
    let src = fixture("offline_autobitlinear_256");
    let (prompt, want, want_logits) = greedy_run(&src);
    let dir = tmpdir("types");
    for ty in [TernaryFormat::I2S, TernaryFormat::TQ2_0, TernaryFormat::TQ1_0] {
        let out = dir.join(format!("m-{}.gguf", ty.name()));
        let rep = convert(&src, &out, ty, |_, _| {}).unwrap();
        assert!(rep.bytes > 0);
        let (p, got, logits) = greedy_run(&out);
        assert_eq!(p, prompt, "{}: the GGUF vocabulary encodes differently", ty.name());
        assert_eq!(got, want, "{}: greedy tokens differ", ty.name());
        // Same ternary values and f32 embedding. I2_S keeps the f32 scale: the same logits.
        // TQ blocks store the scale as f16, which activation quantization amplifies a little.
        let err = logits.iter().zip(&want_logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let maxmag = want_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let tol = if ty == TernaryFormat::I2S { 1e-4 } else { 2e-2 * maxmag };
        assert!(err < tol, "{}: logits differ by {err} (tolerance {tol})", ty.name());
    }
    // GGUF -> GGUF: I2_S -> TQ1_0 -> TQ2_0 keeps the tokens too.
    let a = dir.join("m-i2_s.gguf");
    let b = dir.join("chain-tq1.gguf");
    let c = dir.join("chain-tq2.gguf");
    convert(&a, &b, TernaryFormat::TQ1_0, |_, _| {}).unwrap();
    convert(&b, &c, TernaryFormat::TQ2_0, |_, _| {}).unwrap();
    assert_eq!(greedy_run(&c).1, want);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn converting_dims_the_format_cannot_hold_is_a_clear_error() {
    // hidden 64 is not a multiple of I2_S's 128 or TQ's 256 blocks.
    let dir = tmpdir("bad");
    let out = dir.join("x.gguf");
    for ty in [TernaryFormat::I2S, TernaryFormat::TQ2_0, TernaryFormat::TQ1_0] {
        let e = convert(&fixture("online_f32_tied_gqa"), &out, ty, |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("multiple"), "{e}");
        assert!(!out.exists(), "no half-written output");
    }
    let e = convert(&fixture("online_f32_tied_gqa"), &out, TernaryFormat::HfPacked, |_, _| {});
    assert!(e.unwrap_err().to_string().contains("i2_s"));
    std::fs::remove_dir_all(dir).ok();
}
