//! Building a [`BitNetModel`] from loaded tensors: every projection format is repacked once
//! into the CPU's canonical ternary layout (I2_S x86) and handed to the backend.

use super::bitnet::{BitNetModel, Dims, Layer, Proj};
use crate::backend::{Backend, DenseMatrix, LmHeadMode};
use crate::config::Architecture;
use bitnet_core::{DType, Error, Result, ResultExt, Tensor};
use bitnet_quant::formats::{hf_packed, i2s::I2sMatrix, TernaryFormat};
use bitnet_quant::quantize::absmean_ternary;

/// Read access to a model file's tensors by their HF names.
pub trait TensorSource {
    /// The tensor called `name`, or an error naming it.
    fn tensor(&self, name: &str) -> Result<&Tensor>;
    /// Whether a tensor called `name` exists.
    fn has(&self, name: &str) -> bool;
}

impl TensorSource for crate::formats::TensorMap {
    fn tensor(&self, name: &str) -> Result<&Tensor> {
        self.require(name)
    }
    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// How packed HF projections store their scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleConvention {
    /// `weight_scale` = mean|W|, multiplied (HF `AutoBitLinear`).
    Multiply,
    /// `weight_scale` = 1 / mean|W|, divided (HF `BitLinear`).
    Divide,
}

/// What kind of projection weights to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// Latent float weights quantized at load (absmean).
    Online,
    /// Packed ternary weights with a stored scale.
    Offline(ScaleConvention),
}

/// Converts the projection `prefix` (e.g. `model.layers.0.self_attn.q_proj`) to the canonical layout.
pub fn load_projection(
    src: &dyn TensorSource,
    prefix: &str,
    rows: usize,
    cols: usize,
    kind: WeightKind,
) -> Result<I2sMatrix> {
    let wname = format!("{prefix}.weight");
    let t = src.tensor(&wname)?;
    let go = || -> Result<I2sMatrix> {
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 => {
                expect_dims(t, &[rows, cols])?;
                let w = t.to_f32_vec()?;
                let (q, s) = match kind {
                    WeightKind::Online => absmean_ternary(&w),
                    // GGUF f32/f16 outtypes store ternary values already times the scale.
                    WeightKind::Offline(_) => prequantized(&w)?,
                };
                I2sMatrix::from_ternary(&q, rows, cols, s)
            }
            DType::U8 => {
                expect_dims(t, &[rows / 4, cols])?;
                let conv = match kind {
                    WeightKind::Offline(c) => c,
                    WeightKind::Online => ScaleConvention::Multiply,
                };
                let st = src.tensor(&format!("{prefix}.weight_scale"))?;
                let sv = st.to_f32_vec()?;
                let stored = *sv.first().ok_or_else(|| {
                    Error::format("checkpoint", format!("{prefix}.weight_scale is empty"))
                })?;
                if !(stored.is_finite() && stored > 0.0) {
                    return Err(Error::format(
                        "checkpoint",
                        format!("{prefix}.weight_scale = {stored} is not a positive number"),
                    ));
                }
                let scale = match conv {
                    ScaleConvention::Multiply => stored,
                    ScaleConvention::Divide => 1.0 / stored,
                };
                let q = hf_packed::unpack(t.bytes(), rows, cols)?;
                I2sMatrix::from_ternary(&q, rows, cols, scale)
            }
            DType::I2S => I2sMatrix::from_i2s_tensor(t.clone(), rows, cols),
            DType::TQ1_0 | DType::TQ2_0 => {
                let f = if t.dtype() == DType::TQ1_0 {
                    TernaryFormat::TQ1_0
                } else {
                    TernaryFormat::TQ2_0
                };
                let (q, s) = bitnet_quant::formats::to_ternary(f, t.bytes(), rows, cols)?;
                I2sMatrix::from_ternary(&q, rows, cols, s)
            }
            d => Err(Error::unsupported(format!("{d} projection weights"))),
        }
    };
    go().with_context(|| format!("loading {wname}"))
}

/// Splits float weights that are already `{-s, 0, s}` into ternary values and `s`.
fn prequantized(w: &[f32]) -> Result<(Vec<i8>, f32)> {
    let s = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    if s == 0.0 {
        return Ok((vec![0; w.len()], 1.0));
    }
    let tol = s * 1e-2;
    let mut q = Vec::with_capacity(w.len());
    for &v in w {
        let t = (v / s).round();
        if (v - t * s).abs() > tol {
            return Err(Error::format(
                "checkpoint",
                format!("offline float weights are not ternary (value {v} with scale {s})"),
            ));
        }
        q.push(t as i8);
    }
    Ok((q, s))
}

fn expect_dims(t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::shape(format!("expected shape {want:?}, found {}", t.shape())));
    }
    Ok(())
}

fn vector<B: Backend>(b: &B, src: &dyn TensorSource, name: &str, len: usize) -> Result<B::Buf> {
    let t = src.tensor(name)?;
    if t.elem_count() != len {
        return Err(Error::shape(format!("{name}: expected {len} values, found {}", t.shape())));
    }
    b.upload(&t.to_f32_vec().with_context(|| format!("reading {name}"))?)
}

/// Builds the model on `backend` from `src`.
pub fn build<B: Backend>(
    backend: B,
    dims: Dims,
    src: &dyn TensorSource,
    kind: WeightKind,
    tied: bool,
    lm_mode: LmHeadMode,
    mut progress: impl FnMut(usize, usize),
) -> Result<BitNetModel<B>> {
    let d = &dims;
    let (h, qd, kvd, f) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate);
    let mut layers = Vec::with_capacity(d.layers);
    for i in 0..d.layers {
        let p = format!("model.layers.{i}");
        let lin = |name: &str, r: usize, c: usize| -> Result<B::Linear> {
            backend.linear(load_projection(src, &format!("{p}.{name}"), r, c, kind)?)
        };
        let sub_norms = match d.arch {
            Architecture::BitNet => Some([
                vector(&backend, src, &format!("{p}.self_attn.attn_sub_norm.weight"), qd)?,
                vector(&backend, src, &format!("{p}.mlp.ffn_sub_norm.weight"), f)?,
            ]),
            Architecture::Llama => None,
        };
        layers.push(Layer {
            input_norm: vector(&backend, src, &format!("{p}.input_layernorm.weight"), h)?,
            post_norm: vector(&backend, src, &format!("{p}.post_attention_layernorm.weight"), h)?,
            sub_norms,
            qkv: Proj::new(
                &backend,
                vec![
                    lin("self_attn.q_proj", qd, h)?,
                    lin("self_attn.k_proj", kvd, h)?,
                    lin("self_attn.v_proj", kvd, h)?,
                ],
            )?,
            o: lin("self_attn.o_proj", h, qd)?,
            gate_up: Proj::new(
                &backend,
                vec![lin("mlp.gate_proj", f, h)?, lin("mlp.up_proj", f, h)?],
            )?,
            down: lin("mlp.down_proj", h, f)?,
        });
        progress(i + 1, d.layers);
    }
    let norm = vector(&backend, src, "model.norm.weight", h)?;
    let et = src.tensor("model.embed_tokens.weight")?.clone();
    let emb = DenseMatrix::new(et, "model.embed_tokens.weight")?;
    check_table(&emb, d, "model.embed_tokens.weight")?;
    let head_name = if tied || !src.has("lm_head.weight") {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    if !tied && !src.has("lm_head.weight") {
        return Err(Error::format("checkpoint", "untied embeddings but no lm_head.weight"));
    }
    let head = DenseMatrix::new(src.tensor(head_name)?.clone(), head_name)?;
    check_table(&head, d, head_name)?;
    let lm_head = backend.lm_head(head, lm_mode)?;
    let embed = backend.embedding(emb)?;
    BitNetModel::new(dims, backend, embed, layers, norm, lm_head)
}

fn check_table(m: &DenseMatrix, d: &Dims, name: &str) -> Result<()> {
    if m.rows() != d.vocab || m.cols() != d.hidden {
        return Err(Error::shape(format!(
            "{name}: expected [{}, {}], found [{}, {}]",
            d.vocab,
            d.hidden,
            m.rows(),
            m.cols()
        )));
    }
    Ok(())
}
