//! BitNet b1.58 (HF `BitNetForCausalLM`), one forward pass for every backend.
//!
//! ```text
//! h   = x + o_proj(attn_sub_norm(Attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))   n = input_layernorm(x)
//! out = h + down_proj(ffn_sub_norm(relu(gate_proj(m))² * up_proj(m)))                        m = post_attention_layernorm(h)
//! logits = lm_head(norm(out))
//! ```
//! LLaMA-architecture BitNet checkpoints ([`Architecture::Llama`]: HF `LlamaForCausalLM` with a
//! bitnet `quantization_config`) have no sub-norms and a SiLU-gated feed-forward:
//! `h = x + o_proj(Attention(..))`, `out = h + down_proj(silu(gate_proj(m)) * up_proj(m))`.
//! 1bitLLM's `bitnet_b1_58-*` keep the sub-norms with SiLU: the activation is [`Dims::act`].
//! Every projection is a BitLinear (per-token int8 activations x ternary weights).

use crate::backend::{
    AttnShape, Backend, CacheShape, KvType, NormInput, NormSpec, Rope, RowPos, StackParts,
    StackShape,
};
use crate::config::{Architecture, HiddenAct};
use bitnet_core::{Error, Result};

/// The dimensions and constants of a BitNet model.
#[derive(Debug, Clone, PartialEq)]
pub struct Dims {
    /// Model width.
    pub hidden: usize,
    /// FFN width.
    pub intermediate: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest sequence the model was trained for.
    pub max_positions: usize,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// RoPE frequencies.
    pub rope: Rope,
    /// The decoder block.
    pub arch: Architecture,
    /// The feed-forward activation.
    pub act: HiddenAct,
}

impl Dims {
    /// The attention heads and head width.
    pub(crate) fn attn(&self) -> AttnShape {
        AttnShape { heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim }
    }
}

pub(crate) struct Layer<B: Backend> {
    pub input_norm: B::Buf,
    pub post_norm: B::Buf,
    /// The attention and feed-forward sub-norms (BitNet; `None` for Llama).
    pub sub_norms: Option<[B::Buf; 2]>,
    /// q, k and v projections.
    pub qkv: Proj<B>,
    pub o: B::Linear,
    /// gate and up projections.
    pub gate_up: Proj<B>,
    pub down: B::Linear,
}

/// Projections that read the same input: one fused matrix where the backend fuses them
/// ([`Backend::fuse`]), else the parts.
pub(crate) enum Proj<B: Backend> {
    Fused(B::Linear),
    Parts(Vec<B::Linear>),
}

impl<B: Backend> Proj<B> {
    /// Fuses `parts` when the backend gains from it.
    pub(crate) fn new(b: &B, parts: Vec<B::Linear>) -> Result<Self> {
        Ok(match b.fuse(parts)? {
            Ok(f) => Proj::Fused(f),
            Err(p) => Proj::Parts(p),
        })
    }

    /// The RMSNorm `norm` into `xn`, then BitLinear of every part: part `j`'s output to
    /// `outs[j]` (the norm fused into the first projection where the backend does that).
    fn run_normed(
        &self,
        b: &B,
        norm: NormSpec<'_, B::Buf>,
        rows: usize,
        xn: &mut B::Buf,
        outs: &mut [&mut B::Buf],
    ) -> Result<()> {
        match self {
            Proj::Fused(w) => b.norm_linear(norm, rows, xn, w, outs),
            Proj::Parts(ws) => {
                let (Some(first), Some((out0, rest))) = (ws.first(), outs.split_first_mut()) else {
                    return Err(Error::invalid("a projection with no parts"));
                };
                b.norm_linear(norm, rows, xn, first, &mut [&mut **out0])?;
                ws[1..]
                    .iter()
                    .zip(rest.iter_mut())
                    .try_for_each(|(w, o)| b.bitlinear(w, xn, rows, o))
            }
        }
    }
}

/// A loaded BitNet model on one backend.
pub struct BitNetModel<B: Backend> {
    pub(crate) dims: Dims,
    pub(crate) backend: B,
    pub(crate) embed: B::Embedding,
    pub(crate) layers: Vec<Layer<B>>,
    pub(crate) norm: B::Buf,
    pub(crate) lm_head: B::LmHead,
    /// The layers prepared to run one token at once, where the backend does that.
    pub(crate) stack: Option<B::Stack>,
    /// How the KV caches of new states store keys and values.
    pub(crate) kv: KvType,
}

/// Which rows of a forward call produce logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every row (parity checks, batched decode of several sequences).
    All,
    /// Only the last row (prefill of one sequence).
    Last,
}

/// Buffers and KV cache for running the model: allocated once, reused every step.
pub struct State<B: Backend> {
    cache: B::Cache,
    max_rows: usize,
    max_seq: usize,
    slots: usize,
    x: B::Buf,
    xn: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    tmp: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    last: B::Buf,
    logits: B::Buf,
    logit_rows: usize,
}

impl<B: Backend> State<B> {
    /// Rows that can go through one forward call.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
    /// Positions per sequence in the KV cache.
    pub fn max_seq(&self) -> usize {
        self.max_seq
    }
    /// Sequence slots in the KV cache.
    pub fn slots(&self) -> usize {
        self.slots
    }
    /// Rows of logits written by the last forward call.
    pub fn logit_rows(&self) -> usize {
        self.logit_rows
    }
    /// The logits buffer on the device (`logit_rows * vocab` values).
    pub fn logits_buf(&self) -> &B::Buf {
        &self.logits
    }
}

impl<B: Backend> BitNetModel<B> {
    /// Assembles a model from its loaded parts (preparing the layer stack for one-token steps
    /// where the backend runs them at once: [`Backend::prepare_stack`]).
    pub(crate) fn new(
        dims: Dims,
        backend: B,
        embed: B::Embedding,
        layers: Vec<Layer<B>>,
        norm: B::Buf,
        lm_head: B::LmHead,
    ) -> Result<Self> {
        // The one-kernel decode runs BitNet b1.58's block: sub-norms and relu².
        let relu2 = dims.act == HiddenAct::Relu2;
        let parts: Option<Vec<StackParts<'_, B>>> = layers
            .iter()
            .map(|l| match (&l.qkv, &l.gate_up, &l.sub_norms) {
                (Proj::Fused(qkv), Proj::Fused(gu), Some([attn_sub, ffn_sub])) if relu2 => {
                    Some(StackParts {
                        norms: [&l.input_norm, attn_sub, &l.post_norm, ffn_sub],
                        mats: [qkv, &l.o, gu, &l.down],
                    })
                }
                _ => None,
            })
            .collect();
        let d = &dims;
        let shape = StackShape {
            hidden: d.hidden,
            intermediate: d.intermediate,
            attn: d.attn(),
            eps: d.eps,
        };
        let stack = match parts {
            Some(p) if !p.is_empty() => backend.prepare_stack(&p, shape)?,
            _ => None,
        };
        Ok(BitNetModel { dims, backend, embed, layers, norm, lm_head, stack, kv: KvType::F32 })
    }

    /// Whether one-token steps run every layer at once ([`Backend::decode_layers`]).
    pub fn one_kernel_decode(&self) -> bool {
        self.stack.is_some()
    }

    /// How the KV caches of states made from now on store keys and values (default f32).
    pub fn set_kv_type(&mut self, kv: KvType) {
        self.kv = kv;
        // A prepared stack runs over f32 caches only (Backend::decode_layers): with another
        // type the layers run op by op.
        if kv != KvType::F32 {
            self.stack = None;
        }
    }
    /// How new states' KV caches store keys and values.
    pub fn kv_type(&self) -> KvType {
        self.kv
    }

    /// The model's dimensions.
    pub fn dims(&self) -> &Dims {
        &self.dims
    }
    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Allocates a state for `slots` sequences of up to `max_seq` positions, running up to
    /// `max_rows` rows per forward call.
    pub fn new_state(&self, slots: usize, max_seq: usize, max_rows: usize) -> Result<State<B>> {
        let d = &self.dims;
        if slots == 0 || max_seq == 0 || max_rows == 0 {
            return Err(Error::invalid("state needs at least one slot, position and row"));
        }
        let b = &self.backend;
        let qd = d.heads * d.head_dim;
        let kvd = d.kv_heads * d.head_dim;
        let cache = b.kv_cache(CacheShape {
            layers: d.layers,
            slots,
            max_seq,
            kv_heads: d.kv_heads,
            head_dim: d.head_dim,
            kv: self.kv,
        })?;
        Ok(State {
            cache,
            max_rows,
            max_seq,
            slots,
            x: b.alloc(max_rows * d.hidden)?,
            xn: b.alloc(max_rows * d.hidden.max(qd).max(d.intermediate))?,
            q: b.alloc(max_rows * qd)?,
            k: b.alloc(max_rows * kvd)?,
            v: b.alloc(max_rows * kvd)?,
            att: b.alloc(max_rows * qd)?,
            tmp: b.alloc(max_rows * d.hidden)?,
            gate: b.alloc(max_rows * d.intermediate)?,
            up: b.alloc(max_rows * d.intermediate)?,
            last: b.alloc(d.hidden)?,
            logits: b.alloc(max_rows * d.vocab)?,
            logit_rows: 0,
        })
    }

    /// Runs `ids` (row `r` at `rows[r]`) through the model, fills the KV cache, and writes
    /// logits into the state (see [`State::logits_buf`]).
    pub fn forward(
        &self,
        st: &mut State<B>,
        ids: &[u32],
        rows: &[RowPos],
        which: LogitsFor,
    ) -> Result<()> {
        let d = &self.dims;
        let b = &self.backend;
        let n = ids.len();
        if n == 0 || n != rows.len() || n > st.max_rows {
            return Err(Error::invalid(format!(
                "forward: {n} ids for {} rows (at most {} rows per call)",
                rows.len(),
                st.max_rows
            )));
        }
        if let Some(r) = rows.iter().find(|r| r.pos >= st.max_seq || r.slot >= st.slots) {
            return Err(Error::invalid(format!(
                "position {} exceeds the context length {} (or slot {} >= {})",
                r.pos, st.max_seq, r.slot, st.slots
            )));
        }
        b.embed(&self.embed, ids, &mut st.x)?;
        match (&self.stack, rows) {
            (Some(stack), [row]) => {
                b.decode_layers(stack, &mut st.x, &mut st.cache, *row, d.rope)?
            }
            _ => self.run_layers(st, rows)?,
        };
        if matches!(which, LogitsFor::All) || n == 1 {
            b.rms_norm(&st.x, &self.norm, d.eps, n, &mut st.xn)?;
            b.logits(&self.lm_head, &st.xn, n, &mut st.logits)?;
            st.logit_rows = n;
        } else {
            b.copy(&st.x, (n - 1) * d.hidden, &mut st.last, 0, d.hidden)?;
            b.rms_norm(&st.last, &self.norm, d.eps, 1, &mut st.xn)?;
            b.logits(&self.lm_head, &st.xn, 1, &mut st.logits)?;
            st.logit_rows = 1;
        }
        Ok(())
    }

    /// Every layer, op by op, over the embedded rows in `st.x` (the residual stream: the o and
    /// down projections add into it).
    fn run_layers(&self, st: &mut State<B>, rows: &[RowPos]) -> Result<()> {
        let (d, b, n) = (&self.dims, &self.backend, rows.len());
        let attn = d.attn();
        let qd = d.heads * d.head_dim;
        for (li, l) in self.layers.iter().enumerate() {
            // Attention block.
            let input = NormInput::Plain(&st.x);
            let norm = NormSpec { input, weight: Some(&l.input_norm), width: d.hidden, eps: d.eps };
            l.qkv.run_normed(b, norm, n, &mut st.xn, &mut [&mut st.q, &mut st.k, &mut st.v])?;
            let (q, k, v, cache) = (&mut st.q, &mut st.k, &st.v, &mut st.cache);
            b.rope_attention(q, k, v, cache, li, rows, attn, d.rope, &mut st.att)?;
            // BitNet's attention sub-norm (Llama: none).
            let input = NormInput::Plain(&st.att);
            let weight = l.sub_norms.as_ref().map(|[w, _]| w);
            let norm = NormSpec { input, weight, width: qd, eps: d.eps };
            let (xn, tmp, x) = (&mut st.xn, &mut st.tmp, &mut st.x);
            b.norm_linear_add(norm, n, xn, &l.o, tmp, x, d.hidden)?;
            // Feed-forward block.
            let input = NormInput::Plain(&st.x);
            let norm = NormSpec { input, weight: Some(&l.post_norm), width: d.hidden, eps: d.eps };
            l.gate_up.run_normed(b, norm, n, &mut st.xn, &mut [&mut st.gate, &mut st.up])?;
            // BitNet: ffn_sub_norm(relu(gate)² * up); Llama: silu(gate) * up.
            let input = match d.act {
                HiddenAct::Relu2 => NormInput::Relu2(&mut st.gate, &st.up),
                HiddenAct::Silu => NormInput::Silu(&mut st.gate, &st.up),
            };
            let weight = l.sub_norms.as_ref().map(|[_, w]| w);
            let norm = NormSpec { input, weight, width: d.intermediate, eps: d.eps };
            b.norm_linear_add(norm, n, &mut st.xn, &l.down, &mut st.tmp, &mut st.x, d.hidden)?;
        }
        Ok(())
    }

    /// Copies the logits of the last forward call (`logit_rows * vocab` values) to the host.
    pub fn logits_into(&self, st: &State<B>, out: &mut [f32]) -> Result<()> {
        let want = st.logit_rows * self.dims.vocab;
        if out.len() != want {
            return Err(Error::invalid(format!(
                "logits buffer of {} for {want} values",
                out.len()
            )));
        }
        self.backend.download(&st.logits, out)
    }
}
