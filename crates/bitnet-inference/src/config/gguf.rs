//! The config of a GGUF file: its `{arch}.*` metadata keys and `tokenizer.ggml.*`.

use super::{Architecture, BitNetConfig, HiddenAct, LinearClass, Problems, Quantization};
use crate::formats::gguf::GgufMetadata;
use bitnet_core::{Error, Result};

impl BitNetConfig {
    /// Builds the config from GGUF metadata (`{arch}.*` keys, `tokenizer.ggml.*`).
    ///
    /// The architecture must be `bitnet` (llama.cpp) or a Microsoft fork name
    /// (`bitnet-b1.58`, `bitnet-25`), or `llama` for LLaMA-architecture BitNet models
    /// (Falcon3-*-1.58bit, Llama3-8B-1.58: [`Architecture::Llama`], SiLU; the loader checks
    /// that their projections are ternary). Weights are taken as offline ternary
    /// ([`Quantization::OfflinePacked`], scale multiplies). `tie_word_embeddings` is set
    /// true here; the loader clears it when the file has an `output.weight`.
    pub fn from_gguf_metadata(meta: &GgufMetadata) -> Result<Self> {
        let arch = meta.architecture()?;
        let architecture = match arch {
            "llama" => Architecture::Llama,
            a if is_bitnet_arch(a) => Architecture::BitNet,
            _ => {
                return Err(Error::unsupported(format!(
                    "GGUF architecture `{arch}` (expected bitnet, bitnet-b1.58, bitnet-25 or a \
                     ternary llama)"
                )))
            }
        };
        let mut p = Problems(Vec::new());
        let int = |k: &str, p: &mut Problems| -> Option<usize> {
            let key = format!("{arch}.{k}");
            match meta.get_usize(&key) {
                Ok(v) => v,
                Err(e) => {
                    p.push(e.to_string());
                    None
                }
            }
        };
        let need = |k: &str, p: &mut Problems| {
            int(k, p).unwrap_or_else(|| {
                p.push(format!("missing GGUF key `{arch}.{k}`"));
                0
            })
        };
        let hidden_size = need("embedding_length", &mut p);
        let num_hidden_layers = need("block_count", &mut p);
        let intermediate_size = need("feed_forward_length", &mut p);
        let heads = need("attention.head_count", &mut p);
        let kv = int("attention.head_count_kv", &mut p).unwrap_or(heads);
        let head_dim = int("attention.key_length", &mut p)
            .unwrap_or(hidden_size.checked_div(heads).unwrap_or(0));
        let rope_dims = int("rope.dimension_count", &mut p);
        let ctx = int("context_length", &mut p).unwrap_or(2048);
        let vocab = match meta.array_len("tokenizer.ggml.tokens") {
            Some(n) => n,
            None => int("vocab_size", &mut p).unwrap_or_else(|| {
                p.push("no `tokenizer.ggml.tokens` array and no vocab_size key".to_string());
                0
            }),
        };
        let float = |k: &str, p: &mut Problems| match meta.get_f64(&format!("{arch}.{k}")) {
            Ok(v) => v,
            Err(e) => {
                p.push(e.to_string());
                None
            }
        };
        let eps = float("attention.layer_norm_rms_epsilon", &mut p).unwrap_or(1e-5);
        let llama = architecture == Architecture::Llama;
        let theta =
            float("rope.freq_base", &mut p).unwrap_or(if llama { 10_000.0 } else { 500_000.0 });
        let tok = |k: &str| meta.get_usize(k).ok().flatten().and_then(|v| u32::try_from(v).ok());
        let hidden_act = gguf_activation(meta, arch, &mut p);
        rope_scaling_type(meta, arch, &mut p);
        let cfg = BitNetConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            vocab_size: vocab,
            max_position_embeddings: ctx,
            rms_norm_eps: eps,
            rope_theta: theta,
            rope_scaling: None,
            rope_freq_factors: None,
            hidden_act,
            tie_word_embeddings: true,
            bos_token_id: tok("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
            pad_token_id: tok("tokenizer.ggml.padding_token_id"),
            quantization: Quantization::OfflinePacked { linear_class: LinearClass::AutoBitLinear },
            modules_to_not_convert: Vec::new(),
            dtype: None,
        };
        if let Some(r) = rope_dims.filter(|&r| r != head_dim) {
            p.push(format!("partial rotary ({arch}.rope.dimension_count {r} != head_dim {head_dim}) is not supported yet"));
        }
        cfg.check(&mut p, true);
        p.finish(cfg)
    }
}

/// Scaling other than llama.cpp's `rope_freqs` tensor (which the loader reads) is an error:
/// `{arch}.rope.scaling.type` linear with a factor other than 1, yarn, longrope.
fn rope_scaling_type(meta: &GgufMetadata, arch: &str, p: &mut Problems) {
    let key = format!("{arch}.rope.scaling.type");
    let kind = match meta.get_str(&key) {
        Ok(k) => k,
        Err(e) => return p.push(e.to_string()),
    };
    let factor = meta.get_f64(&format!("{arch}.rope.scaling.factor")).ok().flatten();
    match kind {
        None | Some("none") => {}
        Some("linear") if factor.is_none_or(|f| f == 1.0) => {}
        Some(k) => p.push(format!(
            "{key} `{k}` (factor {}) is not supported yet",
            factor.map_or("unset".into(), |f| f.to_string())
        )),
    }
}

/// The feed-forward activation of a BitNet GGUF file. GGUF files rarely say: llama.cpp's
/// `bitnet` architecture was made for 1bitLLM's SiLU models and its converter writes no
/// activation, though it also converts the 2B-4T (relu²); Microsoft's converters write their own
/// architecture names, for relu² models. So: `{arch}.hidden_activation` when present (newer
/// converters write it), else SiLU for a `llama` file (LLaMA's gated MLP) and for a `bitnet` file
/// with a SentencePiece (`llama`) vocabulary (1bitLLM's Llama-2 tokenizer; the 2B-4T's is
/// `gpt2`), else relu².
fn gguf_activation(meta: &GgufMetadata, arch: &str, p: &mut Problems) -> HiddenAct {
    let key = format!("{arch}.hidden_activation");
    match meta.get_str(&key) {
        Ok(Some(name)) => HiddenAct::from_name(name).unwrap_or_else(|| {
            p.push(format!("{key} `{name}` is not supported (`relu2` or `silu`)"));
            HiddenAct::Relu2
        }),
        Ok(None) => {
            let vocab = meta.get_str("tokenizer.ggml.model").ok().flatten();
            if arch == "llama" || (arch == "bitnet" && vocab == Some("llama")) {
                HiddenAct::Silu
            } else {
                HiddenAct::Relu2
            }
        }
        Err(e) => {
            p.push(e.to_string());
            HiddenAct::Relu2
        }
    }
}

/// Whether a GGUF `general.architecture` names a BitNet b1.58 model we can run.
pub fn is_bitnet_arch(arch: &str) -> bool {
    matches!(arch, "bitnet" | "bitnet-b1.58" | "bitnet-25")
}
