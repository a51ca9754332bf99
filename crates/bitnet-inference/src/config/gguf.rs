//! The config of a GGUF file: its `{arch}.*` metadata keys and `tokenizer.ggml.*`.

use super::{Architecture, BitNetConfig, HiddenAct, LinearClass, Problems, Quantization};
use crate::formats::gguf::GgufMetadata;
use bitnet_core::{Error, Result};

impl BitNetConfig {
    /// Builds the config from GGUF metadata (`{arch}.*` keys, `tokenizer.ggml.*`).
    ///
    /// The architecture must be `bitnet` (llama.cpp) or a Microsoft fork name
    /// (`bitnet-b1.58`, `bitnet-25`). Weights are taken as offline ternary
    /// ([`Quantization::OfflinePacked`], scale multiplies). `tie_word_embeddings` is set
    /// true here; the loader clears it when the file has an `output.weight`.
    pub fn from_gguf_metadata(meta: &GgufMetadata) -> Result<Self> {
        let arch = meta.architecture()?;
        if !is_bitnet_arch(arch) {
            let hint = if arch == "llama" {
                "; LLaMA-architecture BitNet models (Falcon3-*-1.58bit, Llama3-8B-1.58) load \
                 from their Hugging Face directory"
            } else {
                ""
            };
            return Err(Error::unsupported(format!(
                "GGUF architecture `{arch}` (expected bitnet, bitnet-b1.58 or bitnet-25){hint}"
            )));
        }
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
        let theta = float("rope.freq_base", &mut p).unwrap_or(500_000.0);
        let tok = |k: &str| meta.get_usize(k).ok().flatten().and_then(|v| u32::try_from(v).ok());
        let hidden_act = gguf_activation(meta, arch, &mut p);
        let cfg = BitNetConfig {
            architecture: Architecture::BitNet,
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

/// The feed-forward activation of a BitNet GGUF file. GGUF files rarely say: llama.cpp's
/// `bitnet` architecture was made for 1bitLLM's SiLU models and its converter writes no
/// activation, though it also converts the 2B-4T (relu²); Microsoft's converters write their own
/// architecture names, for relu² models. So: `{arch}.hidden_activation` when present (newer
/// converters write it), else SiLU for a `bitnet` file with a SentencePiece (`llama`) vocabulary
/// (1bitLLM's Llama-2 tokenizer; the 2B-4T's is `gpt2`), else relu².
fn gguf_activation(meta: &GgufMetadata, arch: &str, p: &mut Problems) -> HiddenAct {
    let key = format!("{arch}.hidden_activation");
    match meta.get_str(&key) {
        Ok(Some(name)) => HiddenAct::from_name(name).unwrap_or_else(|| {
            p.push(format!("{key} `{name}` is not supported (`relu2` or `silu`)"));
            HiddenAct::Relu2
        }),
        Ok(None) => {
            let vocab = meta.get_str("tokenizer.ggml.model").ok().flatten();
            if arch == "bitnet" && vocab == Some("llama") {
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
