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
fn the_gguf_adds_bos_as_the_directory_s_tokenizer_does() {
    let src = fixture("offline_autobitlinear_256");
    let dir = tmpdir("bos");
    for add in [true, false] {
        let d = dir.join(format!("add-{add}"));
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), d.join(f)).unwrap();
        }
        let cfg = serde_json::json!({"bos_token": "<|begin_of_text|>", "add_bos_token": add});
        std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
        let out = dir.join(format!("add-{add}.gguf"));
        convert(&d, &out, TernaryFormat::I2S, |_, _| {}).unwrap();
        let encode = |p: &Path| {
            let e = Engine::builder().model(p).threads(1).build().unwrap();
            (e.tokenizer().unwrap().adds_bos(), e.encode("First Citizen:", true).unwrap())
        };
        let (hf, gguf) = (encode(&d), encode(&out));
        assert_eq!(hf.0, add);
        assert_eq!(hf.1[0] == 0, add, "BOS in {:?}", hf.1);
        assert_eq!(gguf, hf, "add_bos_token {add}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
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

/// Pseudo-random values with mean 0 and standard deviation about `sd` (sum of four uniforms).
fn noise(n: usize, seed: u64, sd: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut u = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| (u() + u() + u() + u() - 2.0) * sd * 1.73).collect()
}

/// A LLaMA-architecture BitNet checkpoint wide enough for every GGUF ternary type (hidden 256,
/// intermediate 512, 16 heads of 16 / 8 KV heads), latent f32 weights quantized at load, with
/// the Llama-3 RoPE scaling of the `llama3_rope_scaling` fixture and its tokenizer.
fn llama_dir_256(dir: &Path) -> PathBuf {
    let d = dir.join("llama256");
    std::fs::create_dir_all(&d).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 16,
        "vocab_size": 384, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": true, "bos_token_id": 0, "eos_token_id": 1,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                                "quantization_mode": "online"},
        "torch_dtype": "float32"
    });
    std::fs::write(d.join("config.json"), config.to_string()).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("llama3_rope_scaling").join(f), d.join(f)).unwrap();
    }
    let (h, f, qd, kvd) = (256usize, 512usize, 256usize, 128usize);
    let mut names: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    names.push(("model.embed_tokens.weight".into(), vec![384, h], noise(384 * h, 1, 0.5)));
    names.push((
        "model.norm.weight".into(),
        vec![h],
        noise(h, 2, 0.1).iter().map(|v| 1.0 + v).collect(),
    ));
    for i in 0..2u64 {
        let p = format!("model.layers.{i}");
        for (k, (part, rows, cols)) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", f, h),
            ("mlp.up_proj", f, h),
            ("mlp.down_proj", h, f),
        ]
        .into_iter()
        .enumerate()
        {
            let w = noise(rows * cols, 100 + 10 * i + k as u64, 0.4);
            names.push((format!("{p}.{part}.weight"), vec![rows, cols], w));
        }
        for (k, norm) in ["input_layernorm", "post_attention_layernorm"].into_iter().enumerate() {
            let w = noise(h, 200 + 10 * i + k as u64, 0.1).iter().map(|v| 1.0 + v).collect();
            names.push((format!("{p}.{norm}.weight"), vec![h], w));
        }
    }
    let bytes: Vec<Vec<u8>> =
        names.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut header = serde_json::Map::new();
    let mut at = 0usize;
    for ((n, shape, _), b) in names.iter().zip(&bytes) {
        let e =
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [at, at + b.len()]});
        header.insert(n.clone(), e);
        at += b.len();
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    bytes.iter().for_each(|b| file.extend(b));
    std::fs::write(d.join("model.safetensors"), file).unwrap();
    d
}

/// LLaMA-architecture checkpoints convert to `llama` GGUFs (q/k rows in llama.cpp's order,
/// `rope_freqs` for Llama-3 scaling) that read back with the directory's ternary weights: I2_S
/// (f32 scale) with its tokens and logits; TQ2_0 / TQ1_0 (f16 block scales, which a random model
/// this wide amplifies past any useful logit tolerance) weight for weight. The `rope_freqs` are
/// the values llama.cpp's own converter wrote for the same RoPE.
#[test]
fn llama_checkpoints_convert_to_llama_ggufs() {
    use bitnet_inference::models::weights::{load_projection, ScaleConvention, WeightKind};
    let dir = tmpdir("llama");
    let src = llama_dir_256(&dir);
    let (prompt, want, want_logits) = greedy_run(&src);
    let i2s = dir.join("m-i2_s.gguf");
    assert_eq!(convert(&src, &i2s, TernaryFormat::I2S, |_, _| {}).unwrap().arch, "llama");
    let (p, got, logits) = greedy_run(&i2s);
    assert_eq!((p, got), (prompt, want));
    let err = logits.iter().zip(&want_logits).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "logits differ by {err}");
    let load = |path: &Path| bitnet_inference::formats::load(path).unwrap();
    let ours = load(&i2s);
    assert!(!ours.tensors.names().any(|n| n.contains("sub_norm")), "a llama block has none");
    let kind = WeightKind::Offline(ScaleConvention::Multiply);
    for ty in [TernaryFormat::TQ2_0, TernaryFormat::TQ1_0] {
        let out = dir.join(format!("m-{}.gguf", ty.name()));
        assert_eq!(convert(&src, &out, ty, |_, _| {}).unwrap().arch, "llama");
        let tq = load(&out);
        for part in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.down_proj"] {
            let name = format!("model.layers.1.{part}");
            let dims = ours.tensors.require(&format!("{name}.weight")).unwrap().dims().to_vec();
            let a = load_projection(&ours.tensors, &name, dims[0], dims[1], kind).unwrap();
            let b = load_projection(&tq.tensors, &name, dims[0], dims[1], kind).unwrap();
            assert_eq!(a.to_ternary(), b.to_ternary(), "{}: {name}", ty.name());
            assert!((a.scale() - b.scale()).abs() <= 1e-3 * a.scale(), "{}: {name}", ty.name());
        }
        assert_eq!(greedy_run(&out).0, greedy_run(&i2s).0, "{}: vocabulary", ty.name());
    }
    let theirs = load(&fixture("llama3_rope_scaling").join("ggml-model-f32.gguf"));
    let freqs = |m: &bitnet_inference::formats::ModelFile| {
        m.tensors.require("rope_freqs.weight").unwrap().to_f32_vec().unwrap()
    };
    assert_eq!(freqs(&ours), freqs(&theirs), "rope_freqs as llama.cpp's converter writes them");
    std::fs::remove_dir_all(dir).ok();
}
