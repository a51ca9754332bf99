//! `bitnet convert`: any model we load (HF dir or GGUF) to a GGUF file with I2_S, TQ2_0 or
//! TQ1_0 projections.
//!
//! Projections go through the same canonical repack as loading ([`weights::load_projection`]),
//! then are packed into the target type. Norms are written F32; embeddings keep their type. I2_S files are
//! written for bitnet.cpp (architecture `bitnet-b1.58`); TQ files for llama.cpp (`bitnet`),
//! except untied models, which llama.cpp's `bitnet` architecture cannot hold: those are written
//! as `bitnet-b1.58` with an `output` tensor. LLaMA-architecture models are written as `llama`
//! (either runtime) the way llama.cpp's converter writes them: q/k rows permuted for its RoPE,
//! Llama-3 scaling as a `rope_freqs` tensor, no sub-norms.

use crate::config::{Architecture, BitNetConfig};
use crate::engine::{dims_from_config, weight_kind};
use crate::formats::gguf_write::{bitnet_writer, GgufTarget};
use crate::formats::{self, gguf_llama, names, GgufVocab, ModelFile};
use crate::models::weights::{self, TensorSource};
use crate::tokenizer::spm::{PieceType, SpmModel, SpmModelType};
use crate::tokenizer::Tokenizer;
use bitnet_core::{DType, Error, Result, ResultExt, Tensor};
use bitnet_quant::formats::{i2s, tq1, tq2, TernaryFormat};
use std::path::Path;

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// Architecture string written.
    pub arch: &'static str,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of the output file.
    pub bytes: u64,
}

/// Converts `input` to a GGUF file at `output` with projections of type `ty`.
/// `progress(done, total)` is called per layer.
pub fn convert(
    input: &Path,
    output: &Path,
    ty: TernaryFormat,
    mut progress: impl FnMut(usize, usize),
) -> Result<ConvertReport> {
    let file = formats::load(input).with_context(|| format!("loading {}", input.display()))?;
    let cfg = &file.config;
    let llama = cfg.architecture == Architecture::Llama;
    let dtype = match ty {
        TernaryFormat::I2S => DType::I2S,
        TernaryFormat::TQ2_0 => DType::TQ2_0,
        TernaryFormat::TQ1_0 => DType::TQ1_0,
        TernaryFormat::HfPacked => {
            return Err(Error::invalid("convert writes GGUF: use --type i2_s, tq2_0 or tq1_0"))
        }
    };
    let target = if llama {
        GgufTarget::Llama
    } else if dtype == DType::I2S || !cfg.tie_word_embeddings {
        GgufTarget::BitnetCpp
    } else {
        GgufTarget::LlamaCpp
    };
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut w = bitnet_writer(cfg, target, dtype, &name)?;
    if let Some(v) = vocab_of(&file, input)? {
        w.add_vocab(&v)?;
    }
    let kind = weight_kind(cfg)?;
    let d = dims_from_config(cfg);
    let (h, qd, kvd, f) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate);
    let src: &dyn TensorSource = &file.tensors;
    let mut count = 0;
    let mut put =
        |w: &mut crate::formats::gguf_write::GgufWriter, hf: &str, t: &Tensor| -> Result<()> {
            let g = names::hf_to_gguf(hf)
                .ok_or_else(|| Error::invalid(format!("no GGUF name for {hf}")))?;
            count += 1;
            w.add_tensor(&g, t)
        };
    for i in 0..d.layers {
        let p = format!("model.layers.{i}");
        for (part, rows, cols) in [
            ("self_attn.q_proj", qd, h),
            ("self_attn.k_proj", kvd, h),
            ("self_attn.v_proj", kvd, h),
            ("self_attn.o_proj", h, qd),
            ("mlp.gate_proj", f, h),
            ("mlp.up_proj", f, h),
            ("mlp.down_proj", h, f),
        ] {
            let prefix = format!("{p}.{part}");
            let m = weights::load_projection(src, &prefix, rows, cols, kind)?;
            let (mut vals, scale) = (m.to_ternary(), m.scale());
            if llama && matches!(part, "self_attn.q_proj" | "self_attn.k_proj") {
                vals = gguf_llama::to_llama_cpp_order(&vals, cols, d.head_dim);
            }
            let bytes = match dtype {
                DType::I2S => i2s::pack(&vals, rows, cols, scale),
                DType::TQ2_0 => tq2::pack(&vals, rows, cols, scale),
                _ => tq1::pack(&vals, rows, cols, scale),
            }
            .with_context(|| format!("packing {prefix} as {}", ty.name()))?;
            put(
                &mut w,
                &format!("{prefix}.weight"),
                &Tensor::from_bytes(dtype, [rows, cols], &bytes)?,
            )?;
        }
        let sub_norms: &[&str] =
            if llama { &[] } else { &["self_attn.attn_sub_norm", "mlp.ffn_sub_norm"] };
        for norm in ["input_layernorm", "post_attention_layernorm"].iter().chain(sub_norms) {
            let n = format!("{p}.{norm}.weight");
            put(&mut w, &n, &to_f32(src.tensor(&n)?)?)?;
        }
        progress(i + 1, d.layers);
    }
    put(&mut w, "model.norm.weight", &to_f32(src.tensor("model.norm.weight")?)?)?;
    let emb = src.tensor("model.embed_tokens.weight")?;
    // Embeddings keep their type: rounding them (e.g. f32 -> f16) moves logits measurably,
    // since activation quantization amplifies small input changes.
    put(&mut w, "model.embed_tokens.weight", emb)?;
    if !cfg.tie_word_embeddings {
        put(&mut w, "lm_head.weight", src.tensor("lm_head.weight")?)?;
    }
    if let Some(f) = llama.then(|| rope_freqs(cfg)).flatten() {
        count += 1;
        w.add_tensor("rope_freqs.weight", &Tensor::from_f32([f.len()], &f)?)?;
    }
    w.write(output)?;
    let bytes = std::fs::metadata(output).map_err(|e| Error::io(output, e))?.len();
    Ok(ConvertReport { arch: target.arch(), tensors: count, bytes })
}

/// The `rope_freqs` a `llama` file carries for the config's RoPE scaling, if it has any.
fn rope_freqs(cfg: &BitNetConfig) -> Option<Vec<f32>> {
    cfg.rope_freq_factors.clone().or_else(|| {
        let s = cfg.rope_scaling.as_ref()?;
        Some(gguf_llama::llama3_rope_freqs(cfg.rope_theta as f32, cfg.head_dim, s))
    })
}

/// A float tensor as F32 (norm weights).
fn to_f32(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::F32 {
        return Ok(t.clone());
    }
    Tensor::from_f32(t.shape().clone(), &t.to_f32_vec()?)
}

/// The GGUF vocabulary: the input GGUF's own, or built from an HF `tokenizer.json`, or else
/// from a SentencePiece `tokenizer.model`.
fn vocab_of(file: &ModelFile, input: &Path) -> Result<Option<GgufVocab>> {
    if let Some(v) = &file.gguf_vocab {
        return Ok(Some(v.clone()));
    }
    let dir = if input.is_dir() { input } else { input.parent().unwrap_or(Path::new(".")) };
    let (tj, tm) = (dir.join("tokenizer.json"), dir.join("tokenizer.model"));
    let mut v = if tj.is_file() {
        let text = std::fs::read_to_string(&tj).map_err(|e| Error::io(&tj, e))?;
        vocab_from_tokenizer_json(&text, &file.config).with_context(|| tj.display().to_string())?
    } else if tm.is_file() {
        let bytes = std::fs::read(&tm).map_err(|e| Error::io(&tm, e))?;
        vocab_from_tokenizer_model(&bytes, &file.config)
            .with_context(|| tm.display().to_string())?
    } else {
        return Ok(None);
    };
    let tc = dir.join("tokenizer_config.json");
    if let Ok(t) = std::fs::read_to_string(&tc) {
        if let Ok(j) = serde_json::from_str::<serde_json::Value>(&t) {
            v.chat_template = j["chat_template"].as_str().map(str::to_string);
        }
    }
    // Whether BOS goes before a text, as the directory's tokenizer decides it (a GGUF reader
    // without the key would apply llama.cpp's default, which may differ).
    let tok = if tj.is_file() { Tokenizer::from_file(&tj) } else { Tokenizer::from_spm_file(&tm) };
    v.add_bos_token = Some(tok?.adds_bos());
    Ok(Some(v))
}

/// Builds GGUF tokenizer arrays (`llama`: SentencePiece pieces, scores and types, as llama.cpp's
/// converter writes them) from a SentencePiece BPE `tokenizer.model`. Ids past the model's pieces
/// up to the config's vocabulary size become unused `[PAD{id}]` tokens. The GGUF form always
/// tokenizes in legacy mode (a `▁` after every added token), as llama.cpp does.
pub fn vocab_from_tokenizer_model(bytes: &[u8], cfg: &BitNetConfig) -> Result<GgufVocab> {
    let m = SpmModel::parse(bytes)?;
    if m.model_type != SpmModelType::Bpe {
        return Err(Error::unsupported(format!(
            "converting a {:?} SentencePiece tokenizer to GGUF (only BPE)",
            m.model_type
        )));
    }
    let n = m.pieces.len().max(cfg.vocab_size);
    let mut v = GgufVocab {
        model: "llama".into(),
        tokens: m.pieces.iter().map(|p| p.piece.clone()).collect(),
        token_types: m.pieces.iter().map(|p| p.kind.code()).collect(),
        scores: m.pieces.iter().map(|p| p.score).collect(),
        bos_token_id: m.bos_id,
        eos_token_id: m.eos_id,
        unknown_token_id: m.unk_id,
        padding_token_id: m.pad_id,
        add_space_prefix: Some(m.add_dummy_prefix),
        ..GgufVocab::default()
    };
    for id in m.pieces.len()..n {
        v.tokens.push(format!("[PAD{id}]"));
        v.token_types.push(PieceType::Unused.code());
        v.scores.push(0.0);
    }
    Ok(v)
}

/// Builds GGUF tokenizer arrays (`gpt2` byte-level BPE) from a tokenizer.json.
pub fn vocab_from_tokenizer_json(text: &str, cfg: &BitNetConfig) -> Result<GgufVocab> {
    let j: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Error::format("tokenizer.json", e.to_string()))?;
    let model = &j["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(Error::unsupported(format!(
            "converting a {} tokenizer to GGUF (only byte-level BPE)",
            model["type"]
        )));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::format("tokenizer.json", "no model.vocab"))?;
    let normal = PieceType::Normal.code();
    let mut entries: Vec<(u32, String, i32)> = vocab
        .iter()
        .filter_map(|(k, v)| v.as_u64().map(|id| (id as u32, k.clone(), normal)))
        .collect();
    for a in j["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
            let special = a["special"].as_bool().unwrap_or(false);
            let ty = if special { PieceType::Control } else { PieceType::UserDefined }.code();
            entries.retain(|e| e.0 != id as u32);
            entries.push((id as u32, c.to_string(), ty));
        }
    }
    entries.sort_by_key(|e| e.0);
    let n = entries.last().map_or(0, |e| e.0 as usize + 1).max(cfg.vocab_size);
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![PieceType::Unused.code(); n];
    for (id, s, t) in entries {
        tokens[id as usize] = s;
        types[id as usize] = t;
    }
    let merges = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(p) => {
                Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
            }
            _ => None,
        })
        .collect();
    let pre = if text.contains("(?i:'s|'t|'re|'ve|'m|'ll|'d)") { "llama-bpe" } else { "gpt2" };
    Ok(GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types: types,
        merges,
        bos_token_id: cfg.bos_token_id,
        eos_token_id: cfg.eos_token_ids.first().copied(),
        ..GgufVocab::default()
    })
}
