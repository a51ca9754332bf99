//! The BitNet b1.58 transformer for training: the architecture of HF `BitNetForCausalLM` and
//! of `bitnet_inference::models::bitnet`, with BitLinear projections trained by the STE.
//!
//! ```text
//! h   = x + o_proj(attn_sub_norm(Attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))   n = input_layernorm(x)
//! out = h + down_proj(ffn_sub_norm(relu(gate_proj(m))² * up_proj(m)))                        m = post_attention_layernorm(h)
//! logits = norm(out) · embed_tokensᵀ                                                          (tied, not quantized)
//! ```
//! Parameter names are the HF checkpoint names, so export is a renaming-free walk.

use crate::bitlinear::{BitLinear, Quant};
use crate::config::TrainConfig;
use crate::ops::{cross_entropy, rms_norm, softmax_last};
use crate::params::{Params, Rng};
use crate::CandleExt;
use bitnet_core::{Error, Result};
use candle_core::{Device, Tensor, Var, D};

/// The projections of one block, in HF order (`self_attn.*` then `mlp.*`).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

struct Block {
    input_norm: Var,
    post_norm: Var,
    attn_sub_norm: Var,
    ffn_sub_norm: Var,
    q: BitLinear,
    k: BitLinear,
    v: BitLinear,
    o: BitLinear,
    gate: BitLinear,
    up: BitLinear,
    down: BitLinear,
}

/// A trainable BitNet language model.
pub struct BitNetLm {
    cfg: TrainConfig,
    params: Params,
    embed: Var,
    blocks: Vec<Block>,
    norm: Var,
    cos: Tensor,
    sin: Tensor,
}

impl BitNetLm {
    /// A freshly initialised model (weights `N(0, init_std²)`, norms 1) from `seed`.
    pub fn new(cfg: &TrainConfig, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let mut rng = Rng::stream(seed, 1);
        let mut p = Params::new();
        let (h, f, std) = (cfg.hidden_size, cfg.intermediate_size, cfg.init_std as f32);
        let (qd, kvd) = (cfg.num_heads * cfg.head_dim(), cfg.num_kv_heads * cfg.head_dim());
        let embed = p.normal("model.embed_tokens.weight", &[cfg.vocab_size, h], std, &mut rng)?;
        let mut blocks = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let n = |s: &str| format!("model.layers.{i}.{s}");
            let mut lin = |s: &str, i_dim, o_dim| {
                BitLinear::new(&mut p, &n(&format!("{s}.weight")), i_dim, o_dim, std, &mut rng)
            };
            let (q, k, v, o) = (
                lin(PROJECTIONS[0], h, qd)?,
                lin(PROJECTIONS[1], h, kvd)?,
                lin(PROJECTIONS[2], h, kvd)?,
                lin(PROJECTIONS[3], qd, h)?,
            );
            let (gate, up, down) = (
                lin(PROJECTIONS[4], h, f)?,
                lin(PROJECTIONS[5], h, f)?,
                lin(PROJECTIONS[6], f, h)?,
            );
            blocks.push(Block {
                input_norm: p.constant(&n("input_layernorm.weight"), &[h], 1.0)?,
                post_norm: p.constant(&n("post_attention_layernorm.weight"), &[h], 1.0)?,
                attn_sub_norm: p.constant(&n("self_attn.attn_sub_norm.weight"), &[qd], 1.0)?,
                ffn_sub_norm: p.constant(&n("mlp.ffn_sub_norm.weight"), &[f], 1.0)?,
                q,
                k,
                v,
                o,
                gate,
                up,
                down,
            });
        }
        let norm = p.constant("model.norm.weight", &[h], 1.0)?;
        let (cos, sin) = rope_tables(cfg.seq_len, cfg.head_dim(), cfg.rope_theta as f32)?;
        Ok(Self { cfg: cfg.clone(), params: p, embed, blocks, norm, cos, sin })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The trainable parameters (HF names).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Whether parameter `name` is a BitLinear projection weight (quantized at export).
    pub fn is_projection(name: &str) -> bool {
        PROJECTIONS.iter().any(|p| name.ends_with(&format!("{p}.weight")))
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]` (u32).
    pub fn forward(&self, ids: &Tensor, quant: Quant) -> Result<Tensor> {
        self.forward_(ids, quant).ce()
    }

    fn forward_(&self, ids: &Tensor, quant: Quant) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.cfg.seq_len {
            candle_core::bail!("sequence of {t} tokens is longer than seq_len {}", self.cfg.seq_len)
        }
        let h = self.cfg.hidden_size;
        let mut x =
            self.embed.as_tensor().index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?;
        let mask = causal_mask(t)?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let eps = self.cfg.rms_norm_eps;
        for blk in &self.blocks {
            let n = rms_norm(&x, blk.input_norm.as_tensor(), eps)?;
            let a = self.attention(blk, &n, &mask, &cos, &sin, quant)?;
            let a = rms_norm(&a, blk.attn_sub_norm.as_tensor(), eps)?;
            x = (x + blk.o.forward(&a, quant)?)?;
            let m = rms_norm(&x, blk.post_norm.as_tensor(), eps)?;
            let g = blk.gate.forward(&m, quant)?.relu()?.sqr()?;
            let f = (g * blk.up.forward(&m, quant)?)?;
            let f = rms_norm(&f, blk.ffn_sub_norm.as_tensor(), eps)?;
            x = (x + blk.down.forward(&f, quant)?)?;
        }
        let x = rms_norm(&x, self.norm.as_tensor(), eps)?.reshape((b * t, h))?;
        x.matmul(&self.embed.as_tensor().t()?)?.reshape((b, t, self.cfg.vocab_size))
    }

    fn attention(
        &self,
        blk: &Block,
        n: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        quant: Quant,
    ) -> candle_core::Result<Tensor> {
        let (b, t, _) = n.dims3()?;
        let (nh, nkv, hd) = (self.cfg.num_heads, self.cfg.num_kv_heads, self.cfg.head_dim());
        let heads = |y: Tensor, k: usize| y.reshape((b, t, k, hd))?.transpose(1, 2)?.contiguous();
        let q = rope(&heads(blk.q.forward(n, quant)?, nh)?, cos, sin)?;
        let k = rope(&heads(blk.k.forward(n, quant)?, nkv)?, cos, sin)?;
        let v = heads(blk.v.forward(n, quant)?, nkv)?;
        let (k, v) = (repeat_kv(&k, nh / nkv)?, repeat_kv(&v, nh / nkv)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (1.0 / (hd as f64).sqrt()))?;
        let p = softmax_last(&scores.broadcast_add(mask)?)?;
        p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))
    }

    /// Mean next-token cross-entropy of `inputs` `[batch, seq]` predicting `targets` (u32).
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor, quant: Quant) -> Result<Tensor> {
        let logits = self.forward(inputs, quant)?;
        let v = self.cfg.vocab_size;
        let n = logits.elem_count() / v;
        cross_entropy(&logits.reshape((n, v)).ce()?, &targets.flatten_all().ce()?).ce()
    }

    /// The evaluation forward (quantized, no gradient) of one sequence: one logits row per id.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        if ids.is_empty() {
            return Err(Error::invalid("logits: no token ids"));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::invalid(format!("token id {bad} >= vocab {}", self.cfg.vocab_size)));
        }
        let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).ce()?;
        let l = self.forward(&t, Quant::Ste)?.detach();
        l.squeeze(0).ce()?.to_vec2::<f32>().ce()
    }
}

/// `cos`, `sin` `[seq, head_dim]` as HF: `inv_freq_i = 1 / theta^(2i/d)` (f32), angles
/// `pos * inv_freq` duplicated over the two halves (rotate-half convention).
fn rope_tables(seq: usize, head_dim: usize, theta: f32) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for pos in 0..seq {
        let angles: Vec<f32> = (0..half)
            .map(|i| pos as f32 * (1.0f32 / theta.powf((2 * i) as f32 / head_dim as f32)))
            .collect();
        for _ in 0..2 {
            cos.extend(angles.iter().map(|a| a.cos()));
            sin.extend(angles.iter().map(|a| a.sin()));
        }
    }
    let dev = Device::Cpu;
    Ok((
        Tensor::from_vec(cos, (seq, head_dim), &dev).ce()?,
        Tensor::from_vec(sin, (seq, head_dim), &dev).ce()?,
    ))
}

/// `x * cos + rotate_half(x) * sin` for `x` `[b, heads, t, d]`.
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let (x1, x2) = (x.narrow(D::Minus1, 0, d / 2)?, x.narrow(D::Minus1, d / 2, d / 2)?);
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?
}

/// `[b, kv, t, d]` to `[b, kv * rep, t, d]`, each KV head repeated for its `rep` query heads.
fn repeat_kv(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, kv, t, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kv, rep, t, d))?.reshape((b, kv * rep, t, d))
}

/// `[t, t]`: 0 on and below the diagonal, -inf above.
fn causal_mask(t: usize) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (t, t), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_of_small_is_in_the_5_to_20m_range() {
        let m = BitNetLm::new(&TrainConfig::small(), 0).unwrap();
        let n = m.params().count();
        assert!((5_000_000..20_000_000).contains(&n), "{n}");
    }

    #[test]
    fn logits_at_a_position_ignore_later_tokens() {
        let m = BitNetLm::new(&TrainConfig::tiny(), 1).unwrap();
        let a = m.logits(&[5, 9, 300, 7]).unwrap();
        let b = m.logits(&[5, 9, 12, 100]).unwrap();
        assert_eq!(a[1], b[1], "causal");
        assert_ne!(a[2], b[2]);
    }
}
