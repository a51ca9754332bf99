//! The `Backend` trait: the small set of operations the BitNet forward pass is written against.
//!
//! The model (`models::bitnet`) calls only these; each device implements them once
//! (`cpu` here; CUDA in the `cuda` backend). Buffers hold f32 activations on the device and
//! are sized once at load, so the decode path allocates nothing.

use crate::sampling::{Sampler, SamplingParams};
use bitnet_core::{DType, Error, Result, Tensor};
use bitnet_quant::formats::i2s::I2sMatrix;

mod attn;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
mod dense;
mod i8mat;
mod rope;

pub use cpu::CpuBackend;
#[cfg(feature = "cuda")]
pub use cuda::CudaBackend;
pub use dense::DenseMatrix;
pub use rope::{FreqFactors, Rope, RopeKey, MAX_ROPE_PAIRS};

/// Where one row (token) of a batch sits: its sequence slot in the KV cache and its position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPos {
    /// KV-cache slot (one per concurrent sequence).
    pub slot: usize,
    /// Position of the token in its sequence (0-based).
    pub pos: usize,
}

/// How the lm_head (vocabulary projection) is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LmHeadMode {
    /// f32 weights, exact (the reference computes this).
    F32,
    /// int8 weights with one scale per vocabulary row and int8 activations: 4x fewer bytes
    /// per token than f32; logits stay within the parity tolerance.
    #[default]
    I8,
}

impl std::str::FromStr for LmHeadMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(LmHeadMode::F32),
            "i8" | "int8" => Ok(LmHeadMode::I8),
            _ => Err(Error::invalid(format!("unknown lm_head mode `{s}` (expected f32 or i8)"))),
        }
    }
}

/// How the KV cache stores keys and values. Attention computes in f32 either way; with f16 each
/// key and value is rounded to the nearest f16 when it is stored (IEEE round to nearest even,
/// as `half::f16::from_f32`; beyond ±65504 it becomes ±inf), which halves the cache's memory
/// and the bytes long-context decode reads per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// f32 keys and values: the reference's arithmetic, bit for bit.
    #[default]
    F32,
    /// f16 keys and values: half the memory and reads; logits move by the rounding.
    F16,
}

impl KvType {
    /// Bytes of one stored key or value.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
    /// The name `--kv-cache` takes.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" | "fp16" | "half" => Ok(KvType::F16),
            _ => Err(Error::invalid(format!("unknown KV cache type `{s}` (expected f32 or f16)"))),
        }
    }
}

/// Shape of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Transformer layers.
    pub layers: usize,
    /// Concurrent sequences.
    pub slots: usize,
    /// Positions per sequence.
    pub max_seq: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// How keys and values are stored.
    pub kv: KvType,
}

impl CacheShape {
    /// Keys and values held (each), or an error when the count overflows.
    pub fn values(&self) -> Result<usize> {
        [self.layers, self.slots, self.kv_heads, self.max_seq, self.head_dim]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))
    }

    /// Bytes of the cache's keys and values, or an error when the count overflows.
    pub fn bytes(&self) -> Result<u64> {
        let per_value = 2 * self.kv.bytes() as u64;
        Ok((self.values()? as u64).saturating_mul(per_value))
    }

    /// What to say when a cache of this shape cannot be allocated: its size and what to lower.
    pub fn alloc_failed(&self) -> String {
        let gb = self.bytes().map_or(f64::INFINITY, |b| b as f64 * 1e-9);
        let fewer = if self.slots > 1 { " or fewer sequences (--parallel)" } else { "" };
        format!(
            "cannot allocate the KV cache: {gb:.1} GB for {} sequence slot(s) of {} positions; \
             use a shorter context (--ctx){fewer}",
            self.slots, self.max_seq
        )
    }
}

/// Attention geometry of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

/// A fused projection, or the parts given back (see [`Backend::fuse`]).
pub type Fused<L> = std::result::Result<L, Vec<L>>;

/// A device that can run the BitNet forward pass.
pub trait Backend: Send + Sync {
    /// f32 activation buffer on the device.
    type Buf: Send;
    /// A ternary projection in the device's layout.
    type Linear: Send + Sync;
    /// The token embedding table.
    type Embedding: Send + Sync;
    /// The vocabulary projection.
    type LmHead: Send + Sync;
    /// The KV cache for every layer and slot.
    type Cache: Send;
    /// A whole layer stack prepared to run one token in one go ([`Backend::prepare_stack`]).
    type Stack: Send + Sync;

    /// A short description (device name, kernel variant, threads).
    fn describe(&self) -> String;
    /// Time spent per operation since the last call, when profiling is on
    /// (`BITNET_PROFILE=1`): (operation, seconds, calls). Empty when off.
    fn take_profile(&self) -> Vec<(&'static str, f64, u64)> {
        Vec::new()
    }
    /// A zeroed buffer of `len` f32.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// Copies the first `out.len()` values of `buf` to the host.
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<()>;

    /// Prepares a ternary projection from the CPU's canonical layout.
    fn linear(&self, w: I2sMatrix) -> Result<Self::Linear>;
    /// Stacks projections that read the same input (q/k/v, gate/up) into one, for backends
    /// where one kernel over all of them is faster ([`Backend::bitlinear_multi`] then splits
    /// the output); `Err(parts)` gives the parts back unchanged where it is not.
    fn fuse(&self, parts: Vec<Self::Linear>) -> Result<Fused<Self::Linear>> {
        Ok(Err(parts))
    }
    /// Prepares an embedding table.
    fn embedding(&self, table: DenseMatrix) -> Result<Self::Embedding>;
    /// Prepares the vocabulary projection.
    fn lm_head(&self, table: DenseMatrix, mode: LmHeadMode) -> Result<Self::LmHead>;
    /// Allocates the KV cache.
    fn kv_cache(&self, shape: CacheShape) -> Result<Self::Cache>;

    /// Prepares `layers` (every layer of a model, in order) for [`Backend::decode_layers`], where
    /// the backend runs one token through all of them at once; `None` where it does not (or not
    /// for these shapes): the layers then run op by op.
    fn prepare_stack(
        &self,
        layers: &[StackParts<'_, Self>],
        shape: StackShape,
    ) -> Result<Option<Self::Stack>> {
        let _ = (layers, shape);
        Ok(None)
    }
    /// One token through every layer of `stack`: `x` holds its hidden state (one row) and ends
    /// as the last layer's output (residual added); the token sits at `row`, and each layer's
    /// key and value go into `cache` as [`Backend::rope_store_kv`] puts them. Only over caches of
    /// [`KvType::F32`] (models drop their stack for other types).
    fn decode_layers(
        &self,
        stack: &Self::Stack,
        x: &mut Self::Buf,
        cache: &mut Self::Cache,
        row: RowPos,
        rope: Rope,
    ) -> Result<()> {
        let _ = (stack, x, cache, row, rope);
        Err(Error::unsupported(format!("one-kernel decode on {}", self.describe())))
    }

    /// `out[r] = table[ids[r]]`.
    fn embed(&self, e: &Self::Embedding, ids: &[u32], out: &mut Self::Buf) -> Result<()>;
    /// Row-wise RMSNorm of `rows` rows of width `w.len()`: `out = x / rms(x) * w`.
    fn rms_norm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// BitLinear: per-token int8 activations times the ternary weight, scales applied.
    fn bitlinear(
        &self,
        w: &Self::Linear,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// BitLinear of a [`Backend::fuse`]d projection: part `j`'s output goes to `outs[j]`.
    fn bitlinear_multi(
        &self,
        w: &Self::Linear,
        x: &Self::Buf,
        rows: usize,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        let _ = (w, x, rows, outs);
        Err(Error::unsupported(format!("fused projections on {}", self.describe())))
    }
    /// The RMSNorm `norm` of `rows` rows into `xn`, then BitLinear of `xn` by `proj` into `outs`
    /// (one output, or one per part of a [`Backend::fuse`]d projection): one kernel where the
    /// backend fuses them. `xn` ends as [`Backend::rms_norm`] would leave it (with no norm
    /// weight it may be left as it was or hold the projection's input).
    fn norm_linear(
        &self,
        norm: NormSpec<'_, Self::Buf>,
        rows: usize,
        xn: &mut Self::Buf,
        proj: &Self::Linear,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        norm_then_linear(self, norm, rows, xn, proj, outs)
    }
    /// `acc += W · norm(input)` over `rows` rows of `width` outputs: a layer's last projection
    /// and its residual add. The product goes through `tmp` (`rows * width` values) where the
    /// backend does not add it into `acc` as it stores it; rounded as the product and a
    /// separate [`Backend::add`] either way.
    #[allow(clippy::too_many_arguments)]
    fn norm_linear_add(
        &self,
        norm: NormSpec<'_, Self::Buf>,
        rows: usize,
        xn: &mut Self::Buf,
        proj: &Self::Linear,
        tmp: &mut Self::Buf,
        acc: &mut Self::Buf,
        width: usize,
    ) -> Result<()> {
        self.norm_linear(norm, rows, xn, proj, &mut [&mut *tmp])?;
        self.add(acc, tmp, rows * width)
    }
    /// Rotary embedding (rotate-half convention) in place on `rows.len()` rows of
    /// `heads * head_dim` values.
    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: &[RowPos],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> Result<()>;
    /// Writes the rows' keys and values into the cache of `layer`.
    fn store_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        rows: &[RowPos],
    ) -> Result<()>;
    /// [`Backend::rope`] on `q` and `k`, then [`Backend::store_kv`] of `k` and `v` (one kernel
    /// where the backend fuses them).
    #[allow(clippy::too_many_arguments)]
    fn rope_store_kv(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        cache: &mut Self::Cache,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        rope: Rope,
    ) -> Result<()> {
        self.rope(q, rows, shape.heads, shape.head_dim, rope)?;
        self.rope(k, rows, shape.kv_heads, shape.head_dim, rope)?;
        self.store_kv(cache, layer, k, v, rows)
    }
    /// [`Backend::rope_store_kv`] then [`Backend::attention`] of `q` into `out` (one kernel where
    /// the backend fuses them); `q` and `k` may be left rotated or not.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        cache: &mut Self::Cache,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        rope: Rope,
        out: &mut Self::Buf,
    ) -> Result<()> {
        rope_then_attention(self, q, k, v, cache, layer, rows, shape, rope, out)
    }
    /// Causal attention: each row attends to positions `0..=pos` of its slot.
    fn attention(
        &self,
        q: &Self::Buf,
        cache: &Self::Cache,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `gate = relu(gate)^2 * up` over the first `len` values.
    fn relu2_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// `gate = silu(gate) * up = gate / (1 + exp(-gate)) * up` over the first `len` values.
    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()>;
    /// [`Backend::relu2_mul`] over `rows` rows of `w.len()`, then [`Backend::rms_norm`] of the
    /// result into `out` (one kernel where the backend fuses them; `gate` may be left as it was).
    #[allow(clippy::too_many_arguments)]
    fn relu2_rms_norm(
        &self,
        gate: &mut Self::Buf,
        up: &Self::Buf,
        w: &Self::Buf,
        width: usize,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.relu2_mul(gate, up, rows * width)?;
        self.rms_norm(gate, w, eps, rows, out)
    }
    /// `dst[dst_off..dst_off + len] = src[src_off..src_off + len]`.
    fn copy(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        len: usize,
    ) -> Result<()>;
    /// `x += y` over the first `len` values.
    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()>;
    /// Logits of `rows` rows.
    fn logits(
        &self,
        head: &Self::LmHead,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// One token id per row of `logits` (`rows x vocab`) into `out[..rows]`: the one
    /// [`Sampler::pick`] picks with `uniforms[r]` (not read when `p` is greedy). Only the ids
    /// need to reach the host. The repetition penalty is not applied here: a `p` with one is an
    /// error (download the logits and use [`Sampler::sample`] instead). A row with no finite
    /// and no `+inf` logit is an error. The default downloads the logits and picks on the host.
    fn sample(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        p: &SamplingParams,
        uniforms: &[f64],
        out: &mut [u32],
    ) -> Result<()> {
        let mut picker = sample_args(rows, vocab, p, uniforms, out.len())?;
        let mut host = vec![0f32; rows * vocab];
        self.download(logits, &mut host)?;
        let greedy = p.is_greedy();
        for (r, (row, o)) in host.chunks_mut(vocab).zip(out.iter_mut()).enumerate() {
            *o = picker.pick(row, if greedy { 0.0 } else { uniforms[r] })?;
        }
        Ok(())
    }

    /// Whether [`Backend::sample_ahead`] is available: the picked tokens can stay on the backend
    /// and feed the next step, so that step can be queued before the host has the tokens.
    fn samples_ahead(&self) -> bool {
        false
    }
    /// [`Backend::sample`] without waiting: the ids stay on the backend, where the next
    /// [`Backend::embed`] after [`Backend::feed_sampled`] reads them (one row per pick, in
    /// order). Returns a ticket for [`Backend::sampled_ids`] (tickets of the last two calls
    /// are valid).
    fn sample_ahead(
        &self,
        _logits: &Self::Buf,
        _rows: usize,
        _vocab: usize,
        _p: &SamplingParams,
        _uniforms: &[f64],
    ) -> Result<usize> {
        Err(Error::unsupported("sampling ahead on this backend"))
    }
    /// The ids a [`Backend::sample_ahead`] picked, one per row into `out` (waits for those
    /// picks only); the same error as [`Backend::sample`] when a row had nothing to sample.
    fn sampled_ids(&self, _ticket: usize, _vocab: usize, _out: &mut [u32]) -> Result<()> {
        Err(Error::unsupported("sampling ahead on this backend"))
    }
    /// With `on`, the next [`Backend::embed`] takes its ids from the last
    /// [`Backend::sample_ahead`] instead of its `ids` argument (as many as it has rows);
    /// `false` withdraws that.
    fn feed_sampled(&self, _on: bool) -> Result<()> {
        Err(Error::unsupported("sampling ahead on this backend"))
    }
}

/// One layer for [`Backend::prepare_stack`]: its norm weights (input, attention-sub,
/// post-attention, FFN-sub) and projections (fused q/k/v, o, fused gate/up, down).
pub struct StackParts<'a, B: Backend + ?Sized> {
    /// Norm weights, in the order above.
    pub norms: [&'a B::Buf; 4],
    /// Projections, in the order above.
    pub mats: [&'a B::Linear; 4],
}

/// The shape of a layer stack ([`Backend::prepare_stack`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StackShape {
    /// Model width.
    pub hidden: usize,
    /// FFN width.
    pub intermediate: usize,
    /// Attention heads and head dimension.
    pub attn: AttnShape,
    /// RMSNorm epsilon.
    pub eps: f32,
}

/// What an RMSNorm that feeds a projection normalizes (see [`Backend::norm_linear`]).
pub enum NormInput<'a, B> {
    /// The rows themselves.
    Plain(&'a B),
    /// `relu(gate)² * up` (`gate` may be left as it was or hold the product).
    Relu2(&'a mut B, &'a B),
    /// `silu(gate) * up` (`gate` may be left as it was or hold the product).
    Silu(&'a mut B, &'a B),
}

/// The input of a projection: an RMSNorm (input, weight of `width` values, epsilon), or with no
/// weight the input as it is (LLaMA-architecture blocks have no norm before o and down).
pub struct NormSpec<'a, B> {
    /// What is normalized.
    pub input: NormInput<'a, B>,
    /// The norm's weight; `None`: no norm.
    pub weight: Option<&'a B>,
    /// Values per row.
    pub width: usize,
    /// Epsilon.
    pub eps: f32,
}

/// The norm of [`Backend::norm_linear`] alone: into `xn`, which it returns; with no norm
/// weight it returns the input itself (`gate` holding the product for a gated input) and leaves
/// `xn` as it was.
pub(crate) fn norm_only<'a, B: Backend + ?Sized>(
    b: &B,
    norm: NormSpec<'a, B::Buf>,
    rows: usize,
    xn: &'a mut B::Buf,
) -> Result<&'a B::Buf> {
    let NormSpec { input, weight, width, eps } = norm;
    let n = rows * width;
    match (input, weight) {
        (NormInput::Plain(x), Some(w)) => b.rms_norm(x, w, eps, rows, xn)?,
        (NormInput::Relu2(g, u), Some(w)) => b.relu2_rms_norm(g, u, w, width, eps, rows, xn)?,
        (NormInput::Silu(g, u), Some(w)) => {
            b.silu_mul(g, u, n)?;
            b.rms_norm(g, w, eps, rows, xn)?
        }
        (NormInput::Plain(x), None) => return Ok(x),
        (NormInput::Relu2(g, u), None) => {
            b.relu2_mul(g, u, n)?;
            return Ok(g);
        }
        (NormInput::Silu(g, u), None) => {
            b.silu_mul(g, u, n)?;
            return Ok(g);
        }
    }
    Ok(xn)
}

/// [`Backend::norm_linear`] as its two steps: the norm into `xn`, then the projection.
pub(crate) fn norm_then_linear<B: Backend + ?Sized>(
    b: &B,
    norm: NormSpec<'_, B::Buf>,
    rows: usize,
    xn: &mut B::Buf,
    proj: &B::Linear,
    outs: &mut [&mut B::Buf],
) -> Result<()> {
    let input = norm_only(b, norm, rows, xn)?;
    match outs {
        [out] => b.bitlinear(proj, input, rows, out),
        _ => b.bitlinear_multi(proj, input, rows, outs),
    }
}

/// [`Backend::rope_attention`] as its two steps: RoPE and the KV store, then attention.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rope_then_attention<B: Backend + ?Sized>(
    b: &B,
    q: &mut B::Buf,
    k: &mut B::Buf,
    v: &B::Buf,
    cache: &mut B::Cache,
    layer: usize,
    rows: &[RowPos],
    shape: AttnShape,
    rope: Rope,
    out: &mut B::Buf,
) -> Result<()> {
    b.rope_store_kv(q, k, v, cache, layer, rows, shape, rope)?;
    b.attention(q, cache, layer, rows, shape, out)
}

/// Checks the arguments of [`Backend::sample`]; returns a host sampler for `p`.
pub(crate) fn sample_args(
    rows: usize,
    vocab: usize,
    p: &SamplingParams,
    uniforms: &[f64],
    outs: usize,
) -> Result<Sampler> {
    if p.repetition_penalty != 1.0 {
        return Err(Error::unsupported(
            "a repetition penalty in backend sampling is not supported yet: apply it on the host \
             (Sampler::sample on downloaded logits)",
        ));
    }
    if vocab == 0 {
        return Err(Error::invalid("cannot sample from an empty logits row"));
    }
    if outs < rows || (!p.is_greedy() && uniforms.len() < rows) {
        return Err(Error::shape(format!(
            "sampling {rows} rows into {outs} ids with {} uniforms",
            uniforms.len()
        )));
    }
    Sampler::new(p.clone())
}

/// Checks that a tensor is a float matrix; returns (rows, cols).
pub(crate) fn float_matrix(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    let (r, c) = t.shape().as_matrix().map_err(|e| e.context(what.to_string()))?;
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::Q8_0 | DType::Q6K => Ok((r, c)),
        d => Err(Error::unsupported(format!("{what}: {d} tensors as a dense matrix"))),
    }
}
