//! config.json and GGUF metadata parsing: defaults, architectures, activations, errors.

use super::*;
use crate::formats::gguf::{GgufMetadata, GgufValue};

/// GGUF metadata of a small model of architecture `arch`, with `extra` string keys.
fn gguf_meta(arch: &str, extra: &[(&str, &str)]) -> GgufMetadata {
    let mut m = GgufMetadata::new();
    let s = |v: &str| GgufValue::String(v.to_string());
    m.insert("general.architecture".into(), s(arch)).unwrap();
    for (k, v) in [
        ("embedding_length", 64),
        ("block_count", 1),
        ("feed_forward_length", 160),
        ("attention.head_count", 4),
        ("vocab_size", 384),
    ] {
        m.insert(format!("{arch}.{k}"), GgufValue::U32(v)).unwrap();
    }
    for (k, v) in extra {
        m.insert(k.replace("{arch}", arch), s(v)).unwrap();
    }
    m
}

#[test]
fn gguf_activation_is_the_files_key_else_guessed_from_arch_and_vocabulary() {
    let cfg = |arch: &str, extra: &[(&str, &str)]| {
        BitNetConfig::from_gguf_metadata(&gguf_meta(arch, extra))
    };
    let act = |arch: &str, extra: &[(&str, &str)]| cfg(arch, extra).unwrap().hidden_act;
    let (relu2, silu) = (HiddenAct::Relu2, HiddenAct::Silu);
    for arch in ["bitnet", "bitnet-b1.58", "bitnet-25"] {
        assert_eq!(act(arch, &[]), relu2, "{arch}");
        assert_eq!(act(arch, &[("{arch}.hidden_activation", "silu")]), silu, "{arch}");
        let spm = [("tokenizer.ggml.model", "llama"), ("{arch}.hidden_activation", "relu2")];
        assert_eq!(act(arch, &spm), relu2, "{arch}: the key wins");
    }
    // llama.cpp's `bitnet` with a SentencePiece vocabulary: 1bitLLM's lineage, SiLU.
    assert_eq!(act("bitnet", &[("tokenizer.ggml.model", "llama")]), silu);
    assert_eq!(act("bitnet", &[("tokenizer.ggml.model", "gpt2")]), relu2);
    assert_eq!(act("bitnet-b1.58", &[("tokenizer.ggml.model", "llama")]), relu2);
    let e = cfg("bitnet", &[("{arch}.hidden_activation", "gelu")]).unwrap_err();
    assert!(e.to_string().contains("bitnet.hidden_activation `gelu`"), "{e}");
}

#[test]
fn gguf_llama_arch_is_the_llama_block_and_other_rope_scaling_is_an_error() {
    let cfg = |arch: &str, extra: &[(&str, &str)]| {
        BitNetConfig::from_gguf_metadata(&gguf_meta(arch, extra))
    };
    let c = cfg("llama", &[]).unwrap();
    assert_eq!((c.architecture, c.hidden_act), (Architecture::Llama, HiddenAct::Silu));
    assert_eq!(
        (c.rope_theta, c.rope_freq_factors.clone()),
        (10_000.0, None),
        "llama.cpp's default"
    );
    assert_eq!(cfg("bitnet", &[]).unwrap().architecture, Architecture::BitNet);
    assert!(cfg("llama", &[("{arch}.rope.scaling.type", "none")]).is_ok());
    assert!(cfg("llama", &[("{arch}.rope.scaling.type", "linear")]).is_ok(), "factor unset: 1");
    for kind in ["yarn", "longrope"] {
        let e = cfg("llama", &[("{arch}.rope.scaling.type", kind)]).unwrap_err().to_string();
        assert!(e.contains(&format!("llama.rope.scaling.type `{kind}`")), "{e}");
        assert!(e.contains("not supported yet"), "{e}");
    }
    let mut m = gguf_meta("llama", &[("{arch}.rope.scaling.type", "linear")]);
    m.insert("llama.rope.scaling.factor".into(), GgufValue::F32(4.0)).unwrap();
    let e = BitNetConfig::from_gguf_metadata(&m).unwrap_err().to_string();
    assert!(e.contains("`linear` (factor 4)"), "{e}");
    let e = cfg("qwen2", &[]).unwrap_err().to_string();
    assert!(e.contains("`qwen2`"), "{e}");
}

#[test]
fn rope_divisors_must_be_one_per_pair_and_positive() {
    let mut c = BitNetConfig::from_gguf_metadata(&gguf_meta("llama", &[])).unwrap();
    c.rope_freq_factors = Some(vec![1.0; 8]);
    assert!(c.validate().is_ok());
    c.rope_freq_factors = Some(vec![1.0; 7]);
    assert!(c.validate().unwrap_err().to_string().contains("rope_freqs has 7 values"));
    c.rope_freq_factors = Some(vec![1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
    assert!(c.validate().unwrap_err().to_string().contains("not a positive number"));
}

#[test]
fn eos_may_be_an_int_or_a_list() {
    let base = r#""hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,
        "num_attention_heads":4,"vocab_size":384,"bos_token_id":0"#;
    let one = BitNetConfig::from_json_str(&format!("{{{base},\"eos_token_id\":1}}")).unwrap();
    assert_eq!(one.eos_token_ids, vec![1]);
    let two = BitNetConfig::from_json_str(&format!("{{{base},\"eos_token_id\":[1,2]}}")).unwrap();
    assert_eq!(two.eos_token_ids, vec![1, 2]);
    assert_eq!(two.num_key_value_heads, 4);
    assert_eq!(two.head_dim, 16);
    assert_eq!(two.quantization, Quantization::None);
}

#[test]
fn llama_configs_take_llama_defaults_and_llama3_rope_scaling() {
    let base = r#""model_type":"llama","hidden_size":64,"intermediate_size":160,
        "num_hidden_layers":2,"num_attention_heads":4,"vocab_size":384,"bos_token_id":0,
        "eos_token_id":1,"quantization_config":{"quant_method":"bitnet"}"#;
    let c = BitNetConfig::from_json_str(&format!("{{{base}}}")).unwrap();
    assert_eq!(c.architecture, Architecture::Llama);
    assert_eq!((c.hidden_act, c.rms_norm_eps, c.rope_theta), (HiddenAct::Silu, 1e-6, 10_000.0));
    assert_eq!(c.rope_scaling, None);
    // Falcon3-1B-Instruct-1.58bit's config has no bos_token_id: LlamaConfig's 1.
    let falcon = base.replace(r#""bos_token_id":0,"#, "");
    let c = BitNetConfig::from_json_str(&format!("{{{falcon}}}")).unwrap();
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[1u32][..]));
    let scaled = r#","rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3","factor":8.0,
        "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}"#;
    let c = BitNetConfig::from_json_str(&format!("{{{base}{scaled}}}")).unwrap();
    let want = Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_positions: 8192.0,
    };
    assert_eq!((c.rope_theta, c.rope_scaling), (500_000.0, Some(want)));
    // The same under transformers 5's `rope_parameters`, with `type` for `rope_type`.
    let params = scaled.replace("rope_scaling", "rope_parameters").replace("rope_type", "type");
    let c = BitNetConfig::from_json_str(&format!("{{{base}{params}}}")).unwrap();
    assert_eq!(c.rope_scaling, Some(want));
    for (bad, what) in [
        (r#","hidden_act":"gelu""#, "gelu"),
        (r#","rope_scaling":{"rope_type":"yarn","factor":4.0}"#, "yarn"),
        (r#","rope_scaling":{"rope_type":"llama3","factor":8.0}"#, "low_freq_factor"),
        (r#","mlp_bias":true"#, "mlp_bias"),
    ] {
        let e = BitNetConfig::from_json_str(&format!("{{{base}{bad}}}")).unwrap_err();
        assert!(e.to_string().contains(what), "{e} lacks {what}");
    }
    let e = BitNetConfig::from_json_str(&format!("{{{}}}", base.replace("llama", "mistral")))
        .unwrap_err();
    assert!(e.to_string().contains("model_type `mistral`"), "{e}");
}

/// A config shaped like 1bitLLM/bitnet_b1_58-large's (their `BitnetConfig`, model_type llama).
const ONE_BIT_LLM: &str = r#"{"architectures": ["BitnetForCausalLM"], "attention_bias": false,
    "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 1536, "initializer_range": 0.02, "input_bits": 8,
    "intermediate_size": 4096, "max_position_embeddings": 2048, "model_type": "llama",
    "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16,
    "pad_token_id": 32000, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null,
    "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "float16",
    "use_cache": true, "vocab_size": 32002, "weight_bits": 1}"#;

#[test]
fn one_bit_llm_config_reads_as_a_bitnet_block_with_silu_and_online_quantization() {
    let c = BitNetConfig::from_json_str(ONE_BIT_LLM).unwrap();
    assert_eq!((c.architecture, c.hidden_act), (Architecture::BitNet, HiddenAct::Silu));
    assert_eq!((c.quantization, c.tie_word_embeddings), (Quantization::Online, false));
    assert_eq!((c.hidden_size, c.intermediate_size, c.head_dim), (1536, 4096, 96));
    assert_eq!((c.rms_norm_eps, c.rope_theta, c.rope_scaling), (1e-5, 10_000.0, None));
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[2u32][..]));
    // Their BitnetConfig's defaults are LlamaConfig's: SiLU, eps 1e-6, theta 10000.
    let bare = ONE_BIT_LLM
        .replace(r#""hidden_act": "silu","#, "")
        .replace(r#""rms_norm_eps": 1e-05,"#, "")
        .replace(r#""rope_theta": 10000.0,"#, "");
    let c = BitNetConfig::from_json_str(&bare).unwrap();
    assert_eq!((c.hidden_act, c.rms_norm_eps, c.rope_theta), (HiddenAct::Silu, 1e-6, 1e4));
    for (from, to, what) in [
        (r#""weight_bits": 1"#, r#""weight_bits": 2"#, "weight_bits = 2"),
        (r#""input_bits": 8"#, r#""input_bits": 4"#, "input_bits = 4"),
        (r#""hidden_act": "silu""#, r#""hidden_act": "gelu""#, "gelu"),
        (
            r#""use_cache": true"#,
            r#""quantization_config": {"quant_method": "bitnet"}"#,
            "quantization_config",
        ),
    ] {
        let e = BitNetConfig::from_json_str(&ONE_BIT_LLM.replace(from, to)).unwrap_err();
        assert!(e.to_string().contains(what), "{e} lacks {what}");
    }
}

#[test]
fn either_activation_goes_with_either_block() {
    let base = r#""hidden_size":64,"intermediate_size":160,"num_hidden_layers":2,
        "num_attention_heads":4,"vocab_size":384"#;
    for (extra, want) in [
        ("", HiddenAct::Relu2),
        (r#","hidden_act":"silu""#, HiddenAct::Silu),
        (
            r#","model_type":"llama","quantization_config":{"quant_method":"bitnet"}"#,
            HiddenAct::Silu,
        ),
        (
            r#","model_type":"llama","hidden_act":"relu2","quantization_config":{"quant_method":"bitnet"}"#,
            HiddenAct::Relu2,
        ),
    ] {
        let c = BitNetConfig::from_json_str(&format!("{{{base}{extra}}}")).unwrap();
        assert_eq!(c.hidden_act, want, "{extra}");
    }
}

/// tiiuae/Falcon3-1B-Instruct-1.58bit's config.json as the Hub serves it.
#[test]
fn falcon3_1b_config_reads_as_a_llama_bitnet() {
    let c = BitNetConfig::from_json_str(
        r#"{"_name_or_path": "/home/ec2-user/checkpoints/falcon3-1b-1bit/hf-1bit",
        "architectures": ["LlamaForCausalLM"], "attention_bias": false,
        "attention_dropout": 0.0, "eos_token_id": 11, "head_dim": 256, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "is_bitnet_config": true, "max_position_embeddings": 8192, "mlp_bias": false,
        "model_type": "llama", "num_attention_heads": 8, "num_hidden_layers": 18,
        "num_key_value_heads": 4, "pretraining_tp": 1,
        "quantization_config": {"modules_to_not_convert": ["lm_head"], "quant_method": "bitnet"},
        "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000042,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16",
        "transformers_version": "4.48.0.dev0", "use_cache": true, "vocab_size": 131072}"#,
    )
    .unwrap();
    assert_eq!((c.architecture, c.hidden_act), (Architecture::Llama, HiddenAct::Silu));
    let dims = (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.head_dim);
    assert_eq!(dims, (2048, 8192, 18, 256));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.vocab_size), (8, 4, 131_072));
    assert_eq!((c.rope_theta, c.rope_scaling, c.rms_norm_eps), (1_000_042.0, None, 1e-6));
    assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[11u32][..]));
    let packed = Quantization::OfflinePacked { linear_class: LinearClass::BitLinear };
    assert_eq!((c.quantization, c.tie_word_embeddings), (packed, false));
    assert_eq!(c.modules_to_not_convert, ["lm_head"]);
}

#[test]
fn all_bad_fields_are_named_in_one_error() {
    let e = BitNetConfig::from_json_str(
        r#"{"hidden_size":0,"intermediate_size":-3,"num_hidden_layers":2,
            "num_attention_heads":4,"hidden_act":"gelu"}"#,
    )
    .unwrap_err()
    .to_string();
    for part in ["`hidden_size` must be > 0", "`intermediate_size`", "`vocab_size`", "gelu"] {
        assert!(e.contains(part), "{e} lacks {part}");
    }
}
