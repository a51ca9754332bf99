//! GGUF v3 writer: typed metadata, tensors (name, dtype, shape, bytes), alignment 32,
//! written through a temporary file renamed into place (no half-written output on error).
//!
//! [`bitnet_writer`] fills the metadata of a BitNet model for one of two runtimes:
//!
//! - [`GgufTarget::LlamaCpp`]: architecture `bitnet`, as upstream `convert_hf_to_gguf.py`
//!   (`BitnetModel`) writes it: the `{arch}.*` hyper-parameters plus `rope.scaling.type =
//!   linear`, `rope.scaling.factor = 1`. Ternary weights as TQ1_0 / TQ2_0 (the block scale
//!   is the tensor scale). This architecture has no `output` tensor (the embedding is the
//!   output matrix), so an untied model is refused.
//! - [`GgufTarget::BitnetCpp`]: architecture `bitnet-b1.58`, as Microsoft's
//!   `convert-ms-to-gguf-bitnet.py` + `llama-quantize … I2_S` produce it for the 2B-4T:
//!   the same hyper-parameter keys, `general.file_type = 40` (`MOSTLY_I2_S`), I2_S weights
//!   (type id 36, scale in the tensor's 32-byte tail), optional `output.weight`.
//!
//! Tensor names are the GGUF ones ([`super::names::hf_to_gguf`]); picking and packing the
//! tensors is the converter's job. q/k are written unpermuted (see [`super::names`]).

use super::gguf::{ggml_from_dtype, GgufDialect, DEFAULT_ALIGNMENT, FTYPE_MOSTLY_I2_S, GGUF_MAGIC};
use super::gguf_meta::{GgufMetadata, GgufValue, GgufVocab};
use crate::config::BitNetConfig;
use bitnet_core::{DType, Error, Result, Tensor};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

/// Which runtime a BitNet GGUF file is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufTarget {
    /// Upstream llama.cpp, architecture `bitnet` (TQ1_0 / TQ2_0).
    LlamaCpp,
    /// Microsoft's bitnet.cpp, architecture `bitnet-b1.58` (I2_S).
    BitnetCpp,
    /// LLaMA-architecture BitNet models (Falcon3-*-1.58bit, Llama3-8B-1.58), architecture
    /// `llama` for both runtimes (I2_S, TQ1_0, TQ2_0): q/k rows in llama.cpp's order, Llama-3
    /// RoPE scaling as a `rope_freqs` tensor.
    Llama,
}

impl GgufTarget {
    /// The `general.architecture` string.
    pub fn arch(self) -> &'static str {
        match self {
            GgufTarget::LlamaCpp => "bitnet",
            GgufTarget::BitnetCpp => "bitnet-b1.58",
            GgufTarget::Llama => "llama",
        }
    }
}

/// Builds a GGUF v3 file in memory, then writes it.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    meta: GgufMetadata,
    tensors: Vec<(String, Tensor)>,
    names: HashSet<String>,
}

impl GgufWriter {
    /// A writer whose `general.architecture` is `arch`.
    pub fn new(arch: &str) -> Self {
        let mut w =
            GgufWriter { meta: GgufMetadata::new(), tensors: Vec::new(), names: HashSet::new() };
        // A fresh store cannot hold the key yet.
        let _ = w.meta.insert("general.architecture".into(), GgufValue::String(arch.into()));
        w
    }
    /// Adds a metadata pair (a duplicate key is an error).
    pub fn add(&mut self, key: &str, value: GgufValue) -> Result<()> {
        self.meta.insert(key.to_string(), value)
    }
    /// Adds a u32 pair.
    pub fn add_u32(&mut self, key: &str, v: u32) -> Result<()> {
        self.add(key, GgufValue::U32(v))
    }
    /// Adds an f32 pair.
    pub fn add_f32(&mut self, key: &str, v: f32) -> Result<()> {
        self.add(key, GgufValue::F32(v))
    }
    /// Adds a string pair.
    pub fn add_str(&mut self, key: &str, v: &str) -> Result<()> {
        self.add(key, GgufValue::String(v.to_string()))
    }
    /// Adds a bool pair.
    pub fn add_bool(&mut self, key: &str, v: bool) -> Result<()> {
        self.add(key, GgufValue::Bool(v))
    }
    /// Adds the `tokenizer.*` pairs of a vocabulary.
    pub fn add_vocab(&mut self, vocab: &GgufVocab) -> Result<()> {
        for (k, v) in vocab.to_metadata() {
            self.meta.insert(k, v)?;
        }
        Ok(())
    }
    /// The metadata so far.
    pub fn metadata(&self) -> &GgufMetadata {
        &self.meta
    }

    /// Adds a tensor (shape row-major, outermost first; its bytes are shared, not copied).
    pub fn add_tensor(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        if !self.names.insert(name.to_string()) {
            return Err(Error::invalid(format!("tensor `{name}` added twice")));
        }
        let dims = tensor.dims();
        if dims.len() > 4 {
            return Err(Error::shape(format!(
                "GGUF tensor `{name}` has {} dims (max 4)",
                dims.len()
            )));
        }
        let d = tensor.dtype();
        let row = dims.last().copied().unwrap_or(1);
        if d != DType::I2S && row % d.block_len() != 0 {
            return Err(Error::shape(format!(
                "GGUF tensor `{name}`: row length {row} is not a multiple of the {d} block of {}",
                d.block_len()
            )));
        }
        self.tensors.push((name.to_string(), tensor.clone()));
        Ok(())
    }
    /// Adds a tensor from raw bytes (copied; length checked against dtype and shape).
    pub fn add_tensor_bytes(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        bytes: &[u8],
    ) -> Result<()> {
        self.add_tensor(name, &Tensor::from_bytes(dtype, shape, bytes)?)
    }

    fn alignment(&self) -> Result<usize> {
        match self.meta.get("general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some(GgufValue::U32(a)) if a.is_power_of_two() => Ok(*a as usize),
            Some(v) => Err(Error::invalid(format!(
                "general.alignment must be a power-of-two u32, got {v}"
            ))),
        }
    }

    /// Writes the whole file to `w`.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<()> {
        let io = |e: std::io::Error| Error::io("<gguf stream>", e);
        let align = self.alignment()?;
        let i2s = self.tensors.iter().any(|(_, t)| t.dtype() == DType::I2S);
        let dialect = GgufDialect::detect(&self.meta, i2s);
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.meta.len() as u64).to_le_bytes());
        for (k, v) in self.meta.entries() {
            put_str(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            let id = ggml_from_dtype(t.dtype(), dialect)?;
            put_str(&mut head, name);
            let ne: Vec<usize> = if t.dims().is_empty() {
                vec![1]
            } else {
                t.dims().iter().rev().copied().collect()
            };
            head.extend_from_slice(&(ne.len() as u32).to_le_bytes());
            for d in ne {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&id.to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + t.bytes().len()).div_ceil(align) * align;
        }
        head.resize(head.len().div_ceil(align) * align, 0);
        w.write_all(&head).map_err(io)?;
        let zeros = vec![0u8; align];
        for (_, t) in &self.tensors {
            let b = t.bytes();
            w.write_all(b).map_err(io)?;
            let pad = b.len().div_ceil(align) * align - b.len();
            w.write_all(&zeros[..pad]).map_err(io)?;
        }
        Ok(())
    }

    /// The whole file as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }

    /// Writes the file to `path` through a temporary file in the same directory, renamed
    /// into place only when everything was written and synced.
    pub fn write(&self, path: &Path) -> Result<()> {
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} is not a file path", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.tmp{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let result = (|| {
            let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            self.write_to(&mut w)?;
            let f = w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    use GgufValue as V;
    match v {
        V::U8(x) => out.push(*x),
        V::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => out.push(u8::from(*x)),
        V::String(s) => put_str(out, s),
        V::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        V::Array(t, items) => {
            out.extend_from_slice(&t.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
    }
}

/// The llama.cpp `general.file_type` (`llama_ftype`) for a file whose projections are `weights`.
fn file_type(target: GgufTarget, weights: DType) -> Result<u32> {
    Ok(match (target, weights) {
        (_, DType::F32) => 0,
        (_, DType::F16) => 1,
        (_, DType::BF16) => 32,
        (_, DType::TQ1_0) => 36,
        (_, DType::TQ2_0) => 37,
        (GgufTarget::BitnetCpp | GgufTarget::Llama, DType::I2S) => FTYPE_MOSTLY_I2_S as u32,
        (t, d) => {
            return Err(Error::unsupported(format!(
                "{d} projection weights in a GGUF file for {t:?}"
            )))
        }
    })
}

/// A writer holding the BitNet hyper-parameters of `config` for `target`, with projection
/// weights of dtype `weights`. Add the vocabulary and the tensors, then write.
pub fn bitnet_writer(
    config: &BitNetConfig,
    target: GgufTarget,
    weights: DType,
    name: &str,
) -> Result<GgufWriter> {
    config.validate()?;
    if target == GgufTarget::LlamaCpp && !config.tie_word_embeddings {
        return Err(Error::unsupported(
            "an untied lm_head in llama.cpp's `bitnet` architecture (it has no output tensor); write for bitnet.cpp instead",
        ));
    }
    let arch = target.arch();
    let mut w = GgufWriter::new(arch);
    let u = |v: usize| {
        u32::try_from(v).map_err(|_| Error::invalid(format!("{v} does not fit a GGUF u32")))
    };
    w.add_str("general.name", name)?;
    w.add_u32("general.quantization_version", 2)?;
    w.add_u32("general.file_type", file_type(target, weights)?)?;
    let k = |s: &str| format!("{arch}.{s}");
    w.add_u32(&k("vocab_size"), u(config.vocab_size)?)?;
    w.add_u32(&k("context_length"), u(config.max_position_embeddings)?)?;
    w.add_u32(&k("embedding_length"), u(config.hidden_size)?)?;
    w.add_u32(&k("block_count"), u(config.num_hidden_layers)?)?;
    w.add_u32(&k("feed_forward_length"), u(config.intermediate_size)?)?;
    w.add_u32(&k("rope.dimension_count"), u(config.head_dim)?)?;
    w.add_u32(&k("attention.head_count"), u(config.num_attention_heads)?)?;
    w.add_u32(&k("attention.head_count_kv"), u(config.num_key_value_heads)?)?;
    if config.head_dim * config.num_attention_heads != config.hidden_size {
        w.add_u32(&k("attention.key_length"), u(config.head_dim)?)?;
        w.add_u32(&k("attention.value_length"), u(config.head_dim)?)?;
    }
    w.add_f32(&k("attention.layer_norm_rms_epsilon"), config.rms_norm_eps as f32)?;
    w.add_f32(&k("rope.freq_base"), config.rope_theta as f32)?;
    // Read back by our loader (and by llama.cpp builds that honor it); without it readers
    // guess the activation from the architecture name.
    w.add_str(&k("hidden_activation"), config.hidden_act.name())?;
    if target == GgufTarget::LlamaCpp {
        w.add_str(&k("rope.scaling.type"), "linear")?;
        w.add_f32(&k("rope.scaling.factor"), 1.0)?;
    }
    Ok(w)
}
