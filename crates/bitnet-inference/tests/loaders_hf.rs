//! Safetensors and HF-directory loader tests: header validation, sharded directories, configs
//! and quantization configs, the HF fixtures (also converted to GGUF), and what is not a model.

mod common;

use bitnet_core::{DType, Tensor};
use bitnet_inference::config::{Architecture, BitNetConfig, HiddenAct, LinearClass, Quantization};
use bitnet_inference::formats::gguf::GgufVocab;
use bitnet_inference::formats::gguf_write::{bitnet_writer, GgufTarget};
use bitnet_inference::formats::{load, parse_safetensors, FileKind};
use common::files::{f32_bytes, safetensors_bytes, sample_safetensors, tmp_dir, StEntry};
use std::path::{Path, PathBuf};

#[test]
fn safetensors_header_is_validated() {
    let good = sample_safetensors();
    let h = parse_safetensors(&good).unwrap();
    assert_eq!(h.tensors.len(), 3);
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    for cut in 0..good.len() {
        assert!(parse_safetensors(&good[..cut]).is_err(), "cut at {cut} parsed");
    }
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(parse_safetensors(&huge).unwrap_err().to_string().contains("header length"));
    let cases: [(&[StEntry], &str); 3] = [
        (&[("x", "F64", vec![1], vec![0; 8])], "F64"),
        (&[("x", "Q9", vec![1], vec![0; 8])], "unknown dtype `Q9`"),
        (&[("x", "F32", vec![3], vec![0; 8])], "needs 12 bytes"),
    ];
    for (t, want) in cases {
        let e = parse_safetensors(&safetensors_bytes(t)).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let lie = |json: &str| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(json.as_bytes());
        b.extend_from_slice(&[0; 16]);
        parse_safetensors(&b).unwrap_err().to_string()
    };
    assert!(lie(r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[14,18]}}"#).contains("outside"));
    assert!(lie(r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}}"#).contains("outside"));
    let overlap = r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
    assert!(lie(overlap).contains("overlap"));
    assert!(lie(r#"{"x":{"dtype":"U8","shape":[-4],"data_offsets":[0,4]}}"#).contains("shape"));
    assert!(lie(r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0]}}"#).contains("data_offsets"));
    assert!(lie(r#"{"__metadata__":{"k":1}}"#).contains("not a string"));
    assert!(lie(r#"[1,2]"#).contains("JSON object"));
    let big =
        format!(r#"{{"x":{{"dtype":"U8","shape":[{},{}],"data_offsets":[0,4]}}}}"#, u64::MAX, 4);
    assert!(lie(&big).contains("more elements"));
}

const TINY_CONFIG: &str = r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,
  "num_attention_heads":4,"num_key_value_heads":2,"vocab_size":8,"bos_token_id":0,
  "eos_token_id":1,"hidden_act":"relu2","rope_theta":10000.0}"#;

#[test]
fn sharded_hf_dirs_load_and_bad_indexes_are_errors() {
    let dir = tmp_dir("sharded");
    std::fs::write(dir.join("config.json"), TINY_CONFIG).unwrap();
    let s1 = safetensors_bytes(&[("model.norm.weight", "F32", vec![2], f32_bytes(&[1.0, 2.0]))]);
    let s2 = safetensors_bytes(&[("lm_head.weight", "F16", vec![1, 2], vec![0; 4])]);
    std::fs::write(dir.join("a.safetensors"), s1).unwrap();
    std::fs::write(dir.join("b.safetensors"), s2).unwrap();
    let index = |map: &str| std::fs::write(dir.join("model.safetensors.index.json"), map).unwrap();
    index(
        r#"{"weight_map":{"model.norm.weight":"a.safetensors","lm_head.weight":"b.safetensors"}}"#,
    );
    let m = load(&dir).unwrap();
    assert_eq!(m.kind, FileKind::HfDir);
    assert_eq!(m.tensors.names().collect::<Vec<_>>(), ["lm_head.weight", "model.norm.weight"]);
    assert_eq!(m.config.num_key_value_heads, 2);
    // Loading through a file inside the directory works too.
    assert_eq!(load(&dir.join("config.json")).unwrap().tensors.len(), 2);

    index(r#"{"weight_map":{"model.norm.weight":"missing.safetensors"}}"#);
    assert!(format!("{}", load(&dir).unwrap_err()).contains("missing.safetensors"));
    index(r#"{"weight_map":{"model.norm.weight":"../a.safetensors"}}"#);
    assert!(load(&dir).is_err());
    index(r#"{"weight_map":{"model.x.weight":"a.safetensors"}}"#);
    assert!(format!("{}", load(&dir).unwrap_err()).contains("model.x.weight"));
    index(r#"{"weight_map":{"model.norm.weight":"a.safetensors","z":"a.safetensors"}}"#);
    assert!(load(&dir).is_err());
    index("not json");
    assert!(load(&dir).is_err());
    std::fs::remove_file(dir.join("model.safetensors.index.json")).unwrap();
    assert!(format!("{}", load(&dir).unwrap_err()).contains("model.safetensors"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_configs_name_the_bad_field() {
    let cases = [
        (
            r#"{"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8}"#,
            "missing required field `hidden_size`",
        ),
        (
            r#"{"hidden_size":1073741824,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8}"#,
            "absurdly large",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":5,"vocab_size":8}"#,
            "does not divide hidden_size",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":3,"vocab_size":8}"#,
            "num_key_value_heads 3",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8,"hidden_act":"gelu_new"}"#,
            "`gelu_new`",
        ),
        (
            r#"{"hidden_size":"64","intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8}"#,
            "`hidden_size` must be an integer",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":0,"num_attention_heads":4,"vocab_size":8}"#,
            "`num_hidden_layers` must be > 0",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8,"eos_token_id":99}"#,
            "token id 99",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8,"quantization_config":{"quant_method":"gptq"}}"#,
            "`gptq`",
        ),
        (
            r#"{"hidden_size":64,"intermediate_size":160,"num_hidden_layers":1,"num_attention_heads":4,"vocab_size":8,"rms_norm_eps":0}"#,
            "rms_norm_eps",
        ),
        ("[]", "JSON object"),
        ("{", "not valid JSON"),
    ];
    for (json, want) in cases {
        let e = BitNetConfig::from_json_str(json).unwrap_err().to_string();
        assert!(e.contains(want), "{json}\n -> {e}\n lacks {want}");
    }
    let dir = tmp_dir("badcfg");
    std::fs::write(dir.join("config.json"), cases[4].0).unwrap();
    std::fs::write(dir.join("model.safetensors"), sample_safetensors()).unwrap();
    assert!(load(&dir).unwrap_err().to_string().contains("config.json"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn quantization_config_variants() {
    let q = |qc: &str| {
        let j = TINY_CONFIG
            .replace("\"hidden_act\"", &format!("\"quantization_config\":{qc},\"hidden_act\""));
        BitNetConfig::from_json_str(&j).map(|c| c.quantization)
    };
    assert_eq!(q("null").unwrap(), Quantization::None);
    let on =
        r#"{"quant_method":"bitnet","linear_class":"autobitlinear","quantization_mode":"online"}"#;
    assert_eq!(q(on).unwrap(), Quantization::Online);
    let off =
        r#"{"quant_method":"bitnet","linear_class":"autobitlinear","quantization_mode":"offline"}"#;
    assert_eq!(
        q(off).unwrap(),
        Quantization::OfflinePacked { linear_class: LinearClass::AutoBitLinear }
    );
    assert_eq!(
        q(r#"{"quant_method":"bitnet"}"#).unwrap(),
        Quantization::OfflinePacked { linear_class: LinearClass::BitLinear }
    );
    assert!(q(r#"{"quant_method":"bitnet","linear_class":"fancy"}"#).is_err());
    assert!(q(r#"{"quant_method":"bitnet","use_rms_norm":true}"#).is_err());
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn hf_fixtures_load_with_the_expected_tensors() {
    let root = fixtures();
    let Ok(entries) = std::fs::read_dir(&root) else { return };
    let mut seen = 0;
    for e in entries {
        let dir = e.unwrap().path();
        if !dir.join("config.json").is_file() {
            continue;
        }
        seen += 1;
        let m = load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let c = &m.config;
        let (h, hd, kv, inter) =
            (c.hidden_size, c.head_dim, c.num_key_value_heads, c.intermediate_size);
        let q = c.num_attention_heads * hd;
        // Projection shapes [out, in]; offline checkpoints pack four rows per byte.
        let projections = [
            ("self_attn.q_proj", q, h),
            ("self_attn.k_proj", kv * hd, h),
            ("self_attn.v_proj", kv * hd, h),
            ("self_attn.o_proj", h, q),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ];
        let packed = matches!(c.quantization, Quantization::OfflinePacked { .. });
        for i in 0..c.num_hidden_layers {
            let l = |s: &str| format!("model.layers.{i}.{s}");
            let bitnet = c.architecture == Architecture::BitNet;
            for (n, len, there) in [
                ("input_layernorm.weight", h, true),
                ("post_attention_layernorm.weight", h, true),
                ("self_attn.attn_sub_norm.weight", h, bitnet),
                ("mlp.ffn_sub_norm.weight", inter, bitnet),
            ] {
                match m.tensors.require(&l(n)) {
                    Ok(t) => assert!(there && t.dims() == [len], "{name}: {n} {:?}", t.dims()),
                    Err(_) => assert!(!there, "{name}: no {n}"),
                }
            }
            for (p, out, inp) in projections {
                let w = m.tensors.require(&l(&format!("{p}.weight"))).unwrap();
                if packed {
                    assert_eq!(
                        (w.dtype(), w.dims()),
                        (DType::U8, &[out / 4, inp][..]),
                        "{name} {p}"
                    );
                    let s = m.tensors.require(&l(&format!("{p}.weight_scale"))).unwrap();
                    assert_eq!(s.dims(), &[1]);
                } else {
                    assert_eq!(w.dims(), &[out, inp], "{name} {p}");
                }
            }
        }
        assert!(m.tensors.contains("model.norm.weight"));
        assert_eq!(m.lm_head().unwrap().dims(), &[c.vocab_size, h]);
        assert_eq!(m.tensors.contains("lm_head.weight"), !c.tie_word_embeddings, "{name}");
        let want = match name.as_str() {
            "online_f32_tied_gqa" => (Quantization::Online, true, 10000.0, DType::F32, 2),
            "online_bf16_untied_mha" => (Quantization::Online, false, 500000.0, DType::BF16, 4),
            "offline_autobitlinear" => (
                Quantization::OfflinePacked { linear_class: LinearClass::AutoBitLinear },
                true,
                10000.0,
                DType::F32,
                2,
            ),
            "offline_bitlinear" => (
                Quantization::OfflinePacked { linear_class: LinearClass::BitLinear },
                false,
                500000.0,
                DType::F32,
                2,
            ),
            "llama_offline_bitlinear" | "llama3_rope_scaling" => {
                let scaled = name == "llama3_rope_scaling";
                assert_eq!(c.architecture, Architecture::Llama);
                assert_eq!(c.rope_scaling.is_some(), scaled, "{name}");
                assert_eq!(c.rms_norm_eps, if scaled { 1e-5 } else { 1e-6 }, "{name}");
                (
                    Quantization::OfflinePacked { linear_class: LinearClass::BitLinear },
                    scaled,
                    if scaled { 500000.0 } else { 1000042.0 },
                    if scaled { DType::BF16 } else { DType::F32 },
                    2,
                )
            }
            "onebitllm_bitnet_b1_58" => {
                // 1bitLLM's format: BitNet's sub-norms under their own names (found above under
                // ours), SiLU, f16 latent weights.
                assert_eq!((c.architecture, c.hidden_act), (Architecture::BitNet, HiddenAct::Silu));
                assert!(!m.tensors.names().any(|n| n.contains("inner_attn_ln")));
                (Quantization::Online, false, 10000.0, DType::F16, 4)
            }
            _ => continue,
        };
        let emb = m.tensors.require("model.embed_tokens.weight").unwrap().dtype();
        assert_eq!((c.quantization, c.tie_word_embeddings, c.rope_theta, emb, kv), want, "{name}");
        assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(0), &[1u32][..]));
    }
    assert!(seen == 0 || seen >= 4, "found {seen} fixtures");
}

#[test]
fn hf_fixture_converted_to_gguf_loads_back_identically() {
    let src = fixtures().join("online_f32_tied_gqa");
    if !src.is_dir() {
        return;
    }
    let hf = load(&src).unwrap();
    let mut w = bitnet_writer(&hf.config, GgufTarget::LlamaCpp, DType::F32, "tiny").unwrap();
    let vocab = GgufVocab {
        model: "gpt2".into(),
        tokens: (0..384).map(|i| format!("{i}")).collect(),
        ..Default::default()
    };
    w.add_vocab(&vocab).unwrap();
    for (name, t) in hf.tensors.iter() {
        let g = bitnet_inference::formats::names::hf_to_gguf(name).unwrap();
        w.add_tensor(&g, t).unwrap();
    }
    let dir = tmp_dir("convert");
    let path = dir.join("tiny.gguf");
    w.write(&path).unwrap();
    let g = load(&path).unwrap();
    let mut want = hf.config.clone();
    want.rms_norm_eps = g.config.rms_norm_eps; // stored as f32
    want.bos_token_id = None; // this vocabulary stores no special ids
    want.eos_token_ids.clear();
    want.dtype = None;
    want.quantization = g.config.quantization;
    assert_eq!(g.config, want);
    assert!((g.config.rms_norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(g.tensors.names().collect::<Vec<_>>(), hf.tensors.names().collect::<Vec<_>>());
    for (name, t) in hf.tensors.iter() {
        let u: &Tensor = g.tensors.require(name).unwrap();
        assert_eq!((u.dtype(), u.dims(), u.bytes()), (t.dtype(), t.dims(), t.bytes()), "{name}");
    }
    let mut untied = hf.config.clone();
    untied.tie_word_embeddings = false;
    assert!(bitnet_writer(&untied, GgufTarget::LlamaCpp, DType::TQ2_0, "x").is_err());
    assert!(bitnet_writer(&untied, GgufTarget::BitnetCpp, DType::I2S, "x").is_ok());
    // The activation is written (`{arch}.hidden_activation`) and read back, for either target.
    for (target, ty) in [(GgufTarget::LlamaCpp, DType::TQ2_0), (GgufTarget::BitnetCpp, DType::I2S)]
    {
        let cfg = BitNetConfig { hidden_act: HiddenAct::Silu, ..hf.config.clone() };
        let w = bitnet_writer(&cfg, target, ty, "x").unwrap();
        let back = BitNetConfig::from_gguf_metadata(w.metadata()).unwrap();
        assert_eq!(back.hidden_act, HiddenAct::Silu, "{target:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn load_refuses_what_is_not_a_model() {
    let dir = tmp_dir("notamodel");
    assert!(load(&dir).unwrap_err().to_string().contains("config.json"));
    let f = dir.join("x.bin");
    std::fs::write(&f, b"PK\x03\x04zip").unwrap();
    assert!(load(&f).unwrap_err().to_string().contains("neither a GGUF"));
    assert!(load(&dir.join("nope")).is_err());
    std::fs::remove_dir_all(dir).ok();
}
