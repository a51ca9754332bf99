//! Writes a trained model as a Hugging Face BitNet directory that both `bitnet-inference` and
//! HF transformers load: `config.json` (offline `autobitlinear` quantization),
//! `model.safetensors` (projections packed 4 ternary values per byte along the output
//! dimension + `weight_scale = mean|W|`; f32 norms and embedding), `tokenizer.json`,
//! `tokenizer_config.json` and `generation_config.json`.

use crate::config::TrainConfig;
use crate::data::{BOS, EOS};
use crate::model::BitNetLm;
use crate::CandleExt;
use bitnet_core::{Error, Result};
use bitnet_quant::formats::hf_packed;
use bitnet_quant::quantize::absmean_ternary;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tokenizers::Tokenizer;

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::invalid(e.to_string()))?;
    write(path, (text + "\n").as_bytes())
}

/// The `config.json` of a model trained with `cfg` (BOS id 0, EOS id 1).
pub fn hf_config(cfg: &TrainConfig, bos: u32, eos: u32) -> serde_json::Value {
    json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "hidden_act": "relu2",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "initializer_range": cfg.init_std,
        "max_position_embeddings": cfg.seq_len,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": { "rope_theta": cfg.rope_theta, "rope_type": "default" },
        "tie_word_embeddings": true,
        "dtype": "float32",
        "use_cache": true,
        "vocab_size": cfg.vocab_size,
        "quantization_config": {
            "quant_method": "bitnet",
            "linear_class": "autobitlinear",
            "quantization_mode": "offline"
        }
    })
}

/// One tensor of the output file: dtype, shape, little-endian bytes.
type Entry = (Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The safetensors entries of `model`: packed projections + scales, f32 everything else.
pub fn packed_tensors(model: &BitNetLm) -> Result<BTreeMap<String, Entry>> {
    let mut out = BTreeMap::new();
    for (name, var) in model.params().iter() {
        let t = var.as_tensor();
        let values = t.flatten_all().ce()?.to_vec1::<f32>().ce()?;
        let dims = t.dims().to_vec();
        if BitNetLm::is_projection(name) {
            let (rows, cols) = (dims[0], dims[1]);
            let (q, s_w) = absmean_ternary(&values);
            let packed = hf_packed::pack(&q, rows, cols)
                .map_err(|e| e.context(format!("packing {name}")))?;
            out.insert(name.to_string(), (Dtype::U8, vec![rows / 4, cols], packed));
            let scale = format!("{}weight_scale", name.trim_end_matches("weight"));
            out.insert(scale, (Dtype::F32, vec![1], f32_bytes(&[s_w])));
        } else {
            out.insert(name.to_string(), (Dtype::F32, dims, f32_bytes(&values)));
        }
    }
    Ok(out)
}

/// Writes the whole HF directory for `model` and `tok` into `dir` (created if needed).
pub fn export_hf(model: &BitNetLm, tok: &Tokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cfg = model.config();
    let id = |s: &str| tok.token_to_id(s).ok_or_else(|| Error::invalid(format!("no {s} token")));
    let (bos, eos) = (id(BOS)?, id(EOS)?);
    write_json(&dir.join("config.json"), &hf_config(cfg, bos, eos))?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({ "bos_token_id": bos, "eos_token_id": eos }),
    )?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "bos_token": BOS,
            "eos_token": EOS,
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.seq_len,
            "clean_up_tokenization_spaces": false
        }),
    )?;
    let tok_path = dir.join("tokenizer.json");
    tok.save(&tok_path, true)
        .map_err(|e| Error::format("tokenizer", format!("saving {}: {e}", tok_path.display())))?;
    let entries = packed_tensors(model)?;
    let views = entries
        .iter()
        .map(|(k, (dt, shape, bytes))| {
            TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::format("safetensors", format!("{k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, Some(meta), &path)
        .map_err(|e| Error::format("safetensors", format!("writing {}: {e}", path.display())))
}
