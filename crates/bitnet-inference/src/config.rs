//! The typed model configuration: `config.json` (HF `BitNetConfig`) or GGUF metadata.
//!
//! Every field is read with its own type check and every bad field is reported by name;
//! all problems found are listed in one [`Error::Config`]. Defaults follow HF transformers'
//! `BitNetConfig` except where noted on the field.

use bitnet_core::{Error, Result};
use serde::Serialize;
use serde_json::{Map, Value};

/// Largest accepted value for the model's main dimensions (anything above is taken as a typo).
const MAX_DIM: usize = 1 << 20;
/// Largest accepted layer count.
const MAX_LAYERS: usize = 4096;
/// Largest accepted vocabulary / context length.
const MAX_VOCAB: usize = 1 << 24;

/// The feed-forward activation (`hidden_act`): squared ReLU for BitNet b1.58, SiLU for
/// LLaMA-architecture BitNet checkpoints and 1bitLLM's `bitnet_b1_58` reproductions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HiddenAct {
    /// `relu(x)²`.
    Relu2,
    /// `x * sigmoid(x)`.
    Silu,
}

impl HiddenAct {
    /// The activation called `name` in `hidden_act` (HF) or `{arch}.hidden_activation` (GGUF).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "relu2" => Some(HiddenAct::Relu2),
            "silu" | "swish" => Some(HiddenAct::Silu),
            _ => None,
        }
    }

    /// The name HF configs use.
    pub fn name(self) -> &'static str {
        match self {
            HiddenAct::Relu2 => "relu2",
            HiddenAct::Silu => "silu",
        }
    }
}

/// The decoder block a checkpoint was trained with (`model_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Architecture {
    /// HF `BitNetForCausalLM` (`model_type: bitnet`): RMSNorms inside the attention and the
    /// feed-forward (`attn_sub_norm`, `ffn_sub_norm`), squared ReLU. Also 1bitLLM's
    /// `bitnet_b1_58-*` reproductions (`BitnetForCausalLM`, `model_type: llama`): the same block
    /// with SiLU, its sub-norms named `inner_attn_ln` and `ffn_layernorm`.
    BitNet,
    /// HF `LlamaForCausalLM` with `quantization_config.quant_method: bitnet` (`model_type:
    /// llama`; Falcon3-*-1.58bit, Llama3-8B-1.58): every projection a BitLinear, no sub-norms,
    /// SiLU-gated feed-forward.
    Llama,
}

/// Llama-3 RoPE frequency scaling (`rope_type: llama3`), as HF transformers applies it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Llama3Scaling {
    /// `factor`: low frequencies are divided by it.
    pub factor: f64,
    /// `low_freq_factor`.
    pub low_freq_factor: f64,
    /// `high_freq_factor`.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`.
    pub original_max_positions: f64,
}

/// Which HF BitLinear class an offline-packed checkpoint was saved for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LinearClass {
    /// HF `AutoBitLinear`: `weight_scale = mean|W|`, the output is MULTIPLIED by it.
    AutoBitLinear,
    /// HF `BitLinear`: `weight_scale = 1 / mean|W|`, the output is DIVIDED by it.
    BitLinear,
}

/// How the projection weights are quantized (`quantization_config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Quantization {
    /// No `quantization_config`: HF builds plain `nn.Linear` layers (no quantization at all).
    None,
    /// Latent full-precision weights, quantized at load (`autobitlinear` + `online`).
    Online,
    /// Ternary weights stored packed, with a per-tensor `weight_scale`.
    ///
    /// GGUF files use `AutoBitLinear` semantics (the scale multiplies): the tensor dtype
    /// (I2_S / TQ1_0 / TQ2_0 packed with their scale, or F32/F16 ternary values already
    /// multiplied by the scale, as llama.cpp's f32/f16 outtypes write) says how to read each.
    OfflinePacked {
        /// The HF class, which fixes the meaning of `weight_scale`.
        linear_class: LinearClass,
    },
}

/// The model hyper-parameters, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BitNetConfig {
    /// The decoder block (`model_type`). Default BitNet.
    pub architecture: Architecture,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (GQA). Default: `num_attention_heads` (HF's constructor
    /// default of 5 is for the 2B-4T shape only; every real config sets the key).
    pub num_key_value_heads: usize,
    /// Width of one head. Default: `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest context the model was trained for. Default 2048.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon. Default 1e-5 (BitNet), 1e-6 (Llama).
    pub rms_norm_eps: f64,
    /// RoPE base (top-level `rope_theta` or `rope_parameters.rope_theta`). Default 500000
    /// (BitNet), 10000 (Llama).
    pub rope_theta: f64,
    /// Llama-3 RoPE frequency scaling, if the config asks for it.
    pub rope_scaling: Option<Llama3Scaling>,
    /// Per-pair RoPE frequency divisors: llama.cpp's form of the same scaling, read from a
    /// GGUF `rope_freqs` tensor (LLaMA architecture); `head_dim / 2` positive values.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// Feed-forward activation (`hidden_act`). Default `relu2` (BitNet), `silu` (Llama and
    /// 1bitLLM's `BitnetForCausalLM`).
    pub hidden_act: HiddenAct,
    /// Whether `lm_head` shares the embedding matrix. Default false (as HF); the 2B-4T sets true.
    pub tie_word_embeddings: bool,
    /// Beginning-of-text token. Default 128000 (BitNet), 1 (Llama).
    pub bos_token_id: Option<u32>,
    /// End-of-text tokens (`eos_token_id` may be an int or a list). Default `[128001]`
    /// (BitNet), `[2]` (Llama).
    pub eos_token_ids: Vec<u32>,
    /// Padding token, if any.
    pub pad_token_id: Option<u32>,
    /// Weight quantization.
    pub quantization: Quantization,
    /// `quantization_config.modules_to_not_convert`: modules HF leaves as plain `nn.Linear`.
    pub modules_to_not_convert: Vec<String>,
    /// The stored dtype (`dtype` or `torch_dtype`), informational.
    pub dtype: Option<String>,
}

/// Collects field problems so that all of them are reported at once.
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }
    fn finish<T>(self, value: T) -> Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Config(self.0.join("; ")))
        }
    }
}

fn json_usize(obj: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().and_then(|v| usize::try_from(v).ok()) {
            Some(v) => Some(v),
            None => {
                p.push(format!("`{key}` must be a non-negative integer, got {n}"));
                None
            }
        },
        Some(v) => {
            p.push(format!("`{key}` must be an integer, got {v}"));
            None
        }
    }
}

fn json_f64(obj: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(v) => {
            p.push(format!("`{key}` must be a number, got {v}"));
            None
        }
    }
}

fn json_str<'a>(obj: &'a Map<String, Value>, key: &str, p: &mut Problems) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(v) => {
            p.push(format!("`{key}` must be a string, got {v}"));
            None
        }
    }
}

fn json_bool(obj: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<bool> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(v) => {
            p.push(format!("`{key}` must be true or false, got {v}"));
            None
        }
    }
}

fn token_id(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

/// `eos_token_id`: absent, an int, or a list of ints.
fn json_eos(obj: &Map<String, Value>, p: &mut Problems) -> Option<Vec<u32>> {
    match obj.get("eos_token_id") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let ids: Option<Vec<u32>> = a.iter().map(token_id).collect();
            if ids.is_none() {
                p.push(format!(
                    "`eos_token_id` must be token ids, got {}",
                    Value::Array(a.clone())
                ));
            }
            ids
        }
        Some(v) => {
            let id = token_id(v);
            if id.is_none() {
                p.push(format!("`eos_token_id` must be a token id or a list of them, got {v}"));
            }
            id.map(|i| vec![i])
        }
    }
}

fn json_token(obj: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<u32> {
    let v = json_usize(obj, key, p)?;
    match u32::try_from(v) {
        Ok(id) => Some(id),
        Err(_) => {
            p.push(format!("`{key}` {v} is not a valid token id"));
            None
        }
    }
}

fn required(v: Option<usize>, key: &str, p: &mut Problems, obj: &Map<String, Value>) -> usize {
    if v.is_none() && !obj.contains_key(key) {
        p.push(format!("missing required field `{key}`"));
    }
    v.unwrap_or(0)
}

/// RoPE base and scaling: top-level `rope_theta` (older configs) or `rope_parameters.rope_theta`
/// (5.x); the scaling from `rope_parameters` or `rope_scaling` (`default` or `llama3`).
fn json_rope(obj: &Map<String, Value>, p: &mut Problems) -> (Option<f64>, Option<Llama3Scaling>) {
    let mut theta = json_f64(obj, "rope_theta", p);
    let mut scaling = None;
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(rp) = obj.get(key).filter(|v| !v.is_null()) else { continue };
        let Some(rp) = rp.as_object() else {
            p.push(format!("`{key}` must be an object"));
            continue;
        };
        if let Some(t) = json_f64(rp, "rope_theta", p) {
            theta = Some(t);
        }
        let kind = match json_str(rp, "rope_type", p) {
            Some(k) => Some(k),
            None => json_str(rp, "type", p),
        };
        match kind {
            None | Some("default") => {}
            Some("llama3") => scaling = llama3_scaling(rp, key, p),
            Some(t) => p.push(format!("{key}.rope_type `{t}` is not supported yet")),
        }
    }
    (theta, scaling)
}

fn llama3_scaling(rp: &Map<String, Value>, key: &str, p: &mut Problems) -> Option<Llama3Scaling> {
    let mut get = |k: &str| {
        let v = json_f64(rp, k, p);
        if !v.is_some_and(|v| v.is_finite() && v > 0.0) {
            p.push(format!("{key}.{k} must be a positive number for llama3 RoPE scaling"));
        }
        v.unwrap_or(1.0)
    };
    let s = Llama3Scaling {
        factor: get("factor"),
        low_freq_factor: get("low_freq_factor"),
        high_freq_factor: get("high_freq_factor"),
        original_max_positions: get("original_max_position_embeddings"),
    };
    if s.high_freq_factor <= s.low_freq_factor {
        p.push(format!("{key}: high_freq_factor must exceed low_freq_factor"));
    }
    Some(s)
}

/// `model_type`: absent (older BitNet configs) or `bitnet` -> BitNet; `llama` -> Llama.
fn json_arch(obj: &Map<String, Value>, p: &mut Problems) -> Architecture {
    match json_str(obj, "model_type", p) {
        None | Some("bitnet") => Architecture::BitNet,
        Some("llama") => Architecture::Llama,
        Some(t) => {
            p.push(format!(
                "model_type `{t}` is not supported (bitnet, or llama with BitNet quantization)"
            ));
            Architecture::BitNet
        }
    }
}

fn parse_quantization(obj: &Map<String, Value>, p: &mut Problems) -> (Quantization, Vec<String>) {
    let q = match obj.get("quantization_config") {
        None | Some(Value::Null) => return (Quantization::None, Vec::new()),
        Some(Value::Object(q)) => q,
        Some(v) => {
            p.push(format!("`quantization_config` must be an object, got {v}"));
            return (Quantization::None, Vec::new());
        }
    };
    let method = json_str(q, "quant_method", p);
    if method != Some("bitnet") {
        p.push(format!(
            "quantization_config.quant_method {} is not supported yet (only `bitnet`)",
            method.map_or("(missing)".to_string(), |m| format!("`{m}`"))
        ));
    }
    // HF BitNetQuantConfig defaults: linear_class "bitlinear", quantization_mode "offline".
    let class = match json_str(q, "linear_class", p).unwrap_or("bitlinear") {
        "autobitlinear" => LinearClass::AutoBitLinear,
        "bitlinear" => LinearClass::BitLinear,
        other => {
            p.push(format!(
                "quantization_config.linear_class `{other}` is not bitlinear or autobitlinear"
            ));
            LinearClass::AutoBitLinear
        }
    };
    let online = match json_str(q, "quantization_mode", p).unwrap_or("offline") {
        "online" => true,
        "offline" => false,
        other => {
            p.push(format!(
                "quantization_config.quantization_mode `{other}` is not online or offline"
            ));
            false
        }
    };
    if json_bool(q, "use_rms_norm", p) == Some(true) {
        p.push("quantization_config.use_rms_norm = true is not supported yet");
    }
    let skip = match q.get("modules_to_not_convert") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        Some(v) => {
            p.push(format!(
                "quantization_config.modules_to_not_convert must be a list of names, got {v}"
            ));
            Vec::new()
        }
    };
    // HF builds AutoBitLinear(online_quant = mode == "online") for autobitlinear and the
    // packed BitLinear for bitlinear whatever the mode.
    let quant = match (class, online) {
        (LinearClass::AutoBitLinear, true) => Quantization::Online,
        (linear_class, _) => Quantization::OfflinePacked { linear_class },
    };
    (quant, skip)
}

/// 1bitLLM's `BitnetForCausalLM`: no `quantization_config`; every projection quantizes its
/// latent weights per tensor (absmean, `weight_bits: 1`) and its input per token (absmax,
/// `input_bits: 8`) in each forward pass, which is HF's online AutoBitLinear.
fn one_bit_llm_quantization(
    obj: &Map<String, Value>,
    p: &mut Problems,
) -> (Quantization, Vec<String>) {
    if obj.get("quantization_config").is_some_and(|v| !v.is_null()) {
        p.push("a `quantization_config` in a BitnetForCausalLM config is not supported yet");
    }
    for (key, want) in [("weight_bits", 1), ("input_bits", 8)] {
        if let Some(v) = json_usize(obj, key, p).filter(|&v| v != want) {
            p.push(format!("{key} = {v} is not supported (BitNet b1.58 uses {want})"));
        }
    }
    (Quantization::Online, Vec::new())
}

impl BitNetConfig {
    /// Parses and validates the text of a `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("config.json is not valid JSON: {e}")))?;
        Self::from_json(&v)
    }

    /// Parses and validates a `config.json` already read as JSON.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Config("config.json must hold a JSON object".into()))?;
        let mut p = Problems(Vec::new());
        let p = &mut p;
        let hidden_size = required(json_usize(obj, "hidden_size", p), "hidden_size", p, obj);
        let intermediate_size =
            required(json_usize(obj, "intermediate_size", p), "intermediate_size", p, obj);
        let num_hidden_layers =
            required(json_usize(obj, "num_hidden_layers", p), "num_hidden_layers", p, obj);
        let num_attention_heads =
            required(json_usize(obj, "num_attention_heads", p), "num_attention_heads", p, obj);
        let vocab_size = required(json_usize(obj, "vocab_size", p), "vocab_size", p, obj);
        let kv = json_usize(obj, "num_key_value_heads", p);
        let head_dim = json_usize(obj, "head_dim", p);
        // 1bitLLM's bitnet_b1_58-* reproductions (their own modeling code): model_type llama,
        // BitNet's sub-norms, SiLU, latent weights quantized in every forward pass.
        let archs = obj.get("architectures").and_then(Value::as_array);
        let one_bit_llm =
            archs.is_some_and(|a| a.iter().any(|v| v.as_str() == Some("BitnetForCausalLM")));
        let architecture = if one_bit_llm { Architecture::BitNet } else { json_arch(obj, p) };
        // Llama defaults (LlamaConfig's, which 1bitLLM's BitnetConfig keeps).
        let llama_defaults = architecture == Architecture::Llama || one_bit_llm;
        let act =
            json_str(obj, "hidden_act", p).unwrap_or(if llama_defaults { "silu" } else { "relu2" });
        let (quantization, modules_to_not_convert) =
            if one_bit_llm { one_bit_llm_quantization(obj, p) } else { parse_quantization(obj, p) };
        for bias in ["attention_bias", "mlp_bias"] {
            if json_bool(obj, bias, p) == Some(true) {
                p.push(format!("{bias} = true is not supported yet (BitNet has no biases)"));
            }
        }
        let (theta, rope_scaling) = json_rope(obj, p);
        let theta = theta.unwrap_or(if llama_defaults { 10_000.0 } else { 500_000.0 });
        let dtype = json_str(obj, "dtype", p).or(json_str(obj, "torch_dtype", p));
        let cfg = BitNetConfig {
            architecture,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: kv.unwrap_or(num_attention_heads),
            head_dim: head_dim.unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0)),
            vocab_size,
            max_position_embeddings: json_usize(obj, "max_position_embeddings", p).unwrap_or(2048),
            rms_norm_eps: json_f64(obj, "rms_norm_eps", p).unwrap_or(if llama_defaults {
                1e-6
            } else {
                1e-5
            }),
            rope_theta: theta,
            rope_scaling,
            rope_freq_factors: None,
            hidden_act: HiddenAct::from_name(act).unwrap_or(HiddenAct::Relu2),
            tie_word_embeddings: json_bool(obj, "tie_word_embeddings", p).unwrap_or(false),
            bos_token_id: if obj.contains_key("bos_token_id") {
                json_token(obj, "bos_token_id", p)
            } else {
                // HF's default (BitNetConfig 128000, LlamaConfig 1), kept only where the
                // vocabulary has it.
                Some(if llama_defaults { 1 } else { 128_000 })
                    .filter(|&id| (id as usize) < vocab_size)
            },
            eos_token_ids: json_eos(obj, p).unwrap_or_else(|| {
                if obj.contains_key("eos_token_id") {
                    Vec::new()
                } else {
                    let id = if llama_defaults { 2 } else { 128_001 };
                    vec![id].into_iter().filter(|&id| (id as usize) < vocab_size).collect()
                }
            }),
            pad_token_id: json_token(obj, "pad_token_id", p),
            quantization,
            modules_to_not_convert,
            dtype: dtype.map(str::to_string),
        };
        if HiddenAct::from_name(act).is_none() {
            p.push(format!("hidden_act `{act}` is not supported (`relu2` or `silu`)"));
        }
        cfg.check(p, head_dim.is_some());
        std::mem::replace(p, Problems(Vec::new())).finish(cfg)
    }

    /// Validates the fields; `explicit_head_dim` relaxes `hidden % heads == 0`.
    fn check(&self, p: &mut Problems, explicit_head_dim: bool) {
        let dims = [
            ("hidden_size", self.hidden_size, MAX_DIM),
            ("intermediate_size", self.intermediate_size, MAX_DIM),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_LAYERS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_LAYERS),
            ("head_dim", self.head_dim, MAX_DIM),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("max_position_embeddings", self.max_position_embeddings, MAX_VOCAB),
        ];
        let mut zero = false;
        for (name, v, max) in dims {
            if v == 0 {
                p.push(format!("`{name}` must be > 0"));
                zero = true;
            } else if v > max {
                p.push(format!("`{name}` = {v} is absurdly large (limit {max})"));
            }
        }
        if zero {
            return;
        }
        if !explicit_head_dim && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            p.push(format!(
                "num_attention_heads {} does not divide hidden_size {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            p.push(format!(
                "num_key_value_heads {} does not divide num_attention_heads {}",
                self.num_key_value_heads, self.num_attention_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            p.push(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            p.push(format!("`rms_norm_eps` = {} must be in (0, 1)", self.rms_norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            p.push(format!("`rope_theta` = {} must be a positive number", self.rope_theta));
        }
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 {
                p.push(format!(
                    "rope_freqs has {} values; a head of {} needs {}",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                ));
            }
            if f.len() > 256 {
                p.push("rope_freqs for heads of over 512 values is not supported yet");
            }
            if let Some(bad) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                p.push(format!("rope_freqs value {bad} is not a positive number"));
            }
        }
        let ids = self.bos_token_id.iter().chain(&self.eos_token_ids).chain(&self.pad_token_id);
        for &id in ids {
            if id as usize >= self.vocab_size {
                p.push(format!("token id {id} is outside the vocabulary of {}", self.vocab_size));
            }
        }
    }

    /// Re-validates a config built by hand (e.g. by a converter or a synthetic benchmark).
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems(Vec::new());
        self.check(&mut p, true);
        p.finish(())
    }

    /// Number of key/value heads sharing each query head group.
    pub fn gqa_group(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }
}

mod gguf;
pub use gguf::is_bitnet_arch;

#[cfg(test)]
mod tests;
