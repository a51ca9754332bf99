//! The CUDA backend: every [`Backend`] operation as a kernel of `bitnet-cuda`, queued on one
//! stream. The forward pass never waits for the GPU except in [`Backend::download`] (the
//! logits).
//!
//! BitLinear inputs are quantized inside the RMSNorm that produces them (every projection of the
//! BitNet block reads an RMSNorm output): each [`CudaBuf`] carries the int8 copy written by the
//! last `rms_norm` into it, valid until the buffer is written again; other inputs are quantized
//! by a separate kernel. For one token, [`Backend::norm_linear`] runs the norm inside the
//! projection's kernel, and [`Backend::rope_attention`] runs RoPE and the KV store inside
//! attention (up to 8 rows, each in its own slot).
//!
//! Single-token (decode) steps after the first two are deferred: their launches are recorded and
//! issued as one CUDA graph when the logits are downloaded (see `bitnet_cuda::Gpu::flush`); the
//! token id and position come from two device words written just before the graph runs.

mod host;
mod profile;
mod sample;
mod step;
mod support;
mod types;
mod writes;

use profile::Op;
use support::{cache_fits, i32_of, norm_width, with_data};
use types::{lock, Scratch};
pub use types::{CudaBuf, CudaCache, CudaLinear, CudaLmHead};
use writes::LayerWrites;

use super::{
    AttnShape, Backend, CacheShape, DenseMatrix, Fused, KvType, LmHeadMode, NormInput, NormSpec,
    Rope, RowPos, StackParts, StackShape,
};
use bitnet_core::{Error, Result};
use bitnet_cuda::layout::PackedTernary;
use bitnet_cuda::ops::{
    self, CacheDims, DecodeStack, DeviceTernary, EmbedTable, KvBuf, LmF32, LmI8, NormSrc,
};
use bitnet_cuda::{DeviceInfo, Gpu};
use bitnet_quant::formats::i2s::I2sMatrix;
use std::sync::{Arc, Mutex};

/// Opens CUDA device `ordinal` without compiling kernels (the engine's device probe).
pub fn probe(ordinal: usize) -> Result<DeviceInfo> {
    bitnet_cuda::probe(ordinal)
}

/// Runs the model on one NVIDIA GPU.
pub struct CudaBackend {
    gpu: Arc<Gpu>,
    scratch: Mutex<Scratch>,
    profile: Option<profile::Profiler>,
    /// One-token steps run every layer in one kernel where the model fits it.
    one_kernel: bool,
    /// Fewest positions per attention split (`ops::attention_splits`).
    attn_split_len: usize,
    /// Device picks may feed a step queued before their ids come back
    /// ([`Backend::samples_ahead`]; `BITNET_CUDA_AHEAD=0` turns it off).
    ahead: bool,
}

impl CudaBackend {
    /// Opens device `ordinal` (kernels are compiled on first use, once per process).
    pub fn new(ordinal: usize) -> Result<Self> {
        let gpu = Gpu::open(ordinal)?;
        let b = CudaBackend {
            one_kernel: gpu.one_kernel_decode(),
            attn_split_len: gpu.attention_split_len(),
            ahead: std::env::var("BITNET_CUDA_AHEAD").map_or(true, |v| v != "0"),
            gpu,
            scratch: Mutex::new(Scratch::default()),
            profile: None,
        };
        Ok(if std::env::var("BITNET_PROFILE").ok().as_deref() == Some("1") {
            b.with_profiling()
        } else {
            b
        })
    }
    /// Times every operation on the GPU (see [`Backend::take_profile`]); turns decode graphs off
    /// so that each kernel runs, and is timed, on its own.
    pub fn with_profiling(mut self) -> Self {
        self.profile = Some(profile::Profiler::default());
        self.with_graphs(false)
    }
    /// BitLinear of `x` by `w` into `outs` (with `add`, added into the one output).
    fn project(
        &self,
        w: &CudaLinear,
        x: &CudaBuf,
        rows: usize,
        outs: &mut [&mut CudaBuf],
        add: bool,
    ) -> Result<()> {
        let matmul =
            |q: &ops::QuantActs, outs: &mut [&mut bitnet_cuda::cudarc::driver::CudaSlice<f32>]| {
                match (add, outs) {
                    (true, [acc]) => ops::ternary_matmul_add(&self.gpu, &w.0, q, rows, acc),
                    (true, _) => Err(Error::invalid("a projection added into several outputs")),
                    (false, outs) => ops::ternary_matmul_multi(&self.gpu, &w.0, q, rows, outs),
                }
            };
        self.timed(Op::Bitlinear, || {
            let w = &w.0;
            with_data(outs, |outs| match (&x.q, x.q_shape) {
                (Some(q), Some(shape)) if shape == (rows, w.cols()) => matmul(q, outs),
                _ => {
                    let mut s = lock(&self.scratch);
                    let q = s.quant(&self.gpu, rows, w.padded_cols())?;
                    ops::quantize_act(&self.gpu, &x.data, w.cols(), rows, q)?;
                    matmul(q, outs)
                }
            })
        })
    }

    /// [`Backend::norm_linear`] (with `add`, [`Backend::norm_linear_add`]): one kernel for one
    /// row where the fused kernel takes the width, else the norm and then the projection.
    fn norm_project(
        &self,
        norm: NormSpec<'_, CudaBuf>,
        rows: usize,
        xn: &mut CudaBuf,
        proj: &CudaLinear,
        outs: &mut [&mut CudaBuf],
        add: bool,
    ) -> Result<()> {
        let (w, d) = (&proj.0, norm.width);
        let fits = norm.weight.is_none_or(|nw| nw.len == d)
            && norm_src(&norm.input).fused(norm.weight.is_some())
            && w.cols() == d
            && ops::norm_gemv_fits(d);
        if rows != 1 || !fits || !self.gpu.fuse_norm(w.rows() * w.cols()) {
            let input = super::norm_only(self, norm, rows, xn)?;
            return self.project(proj, input, rows, outs, add);
        }
        self.timed(Op::NormBitlinear, || {
            let src = norm_src(&norm.input);
            let (nw, eps) = (norm.weight.map(|w| &w.data), norm.eps);
            self.norm_into(xn, 1, d, |o, q| {
                let q = q.ok_or_else(|| Error::invalid("norm_linear: no int8 buffer"))?;
                with_data(outs, |outs| {
                    ops::norm_ternary_gemv(&self.gpu, src, nw, eps, o, q, w, outs, add)
                })
            })
        })
    }

    /// Runs `f`, timed as operation `op` when profiling.
    fn timed<T>(&self, op: Op, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match &self.profile {
            Some(p) => p.time(&self.gpu, op, f),
            None => f(),
        }
    }
    /// The device.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    /// Turns decode-step CUDA graphs on or off (default on; `BITNET_CUDA_GRAPHS=0` turns them off).
    pub fn with_graphs(self, on: bool) -> Self {
        {
            let mut s = lock(&self.scratch);
            s.step.enabled = on;
        }
        self
    }
    /// Turns the one-kernel decode step on or off for models loaded afterwards (default off;
    /// `BITNET_CUDA_ONE_KERNEL=1` turns it on where the model fits it): see
    /// [`Backend::decode_layers`].
    pub fn with_one_kernel_decode(mut self, on: bool) -> Self {
        self.one_kernel = on;
        self
    }
    /// Splits attention into parts of at least `len` positions (rounded up to a power of two;
    /// default 64, `BITNET_ATTN_SPLIT_LEN`), in the layer path and the one-kernel step alike.
    pub fn with_attn_split_len(mut self, len: usize) -> Self {
        self.attn_split_len = ops::split_len_pow2(len);
        self
    }
    /// Issues any deferred launches one by one (before anything that must not be reordered).
    fn settle(&self) -> Result<()> {
        lock(&self.scratch).end_step(&self.gpu, false)
    }
}

/// The fused norm + GEMV kernel's view of a norm's input.
fn norm_src<'a>(input: &'a NormInput<'_, CudaBuf>) -> NormSrc<'a> {
    match input {
        NormInput::Plain(x) => NormSrc::Plain(&x.data),
        NormInput::Relu2(g, u) => NormSrc::Relu2(&g.data, &u.data),
        NormInput::Silu(g, u) => NormSrc::Silu(&g.data, &u.data),
    }
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Linear = CudaLinear;
    type Embedding = EmbedTable;
    type LmHead = CudaLmHead;
    type Cache = CudaCache;
    type Stack = DecodeStack;

    fn take_profile(&self) -> Vec<(&'static str, f64, u64)> {
        self.profile.as_ref().map(|p| p.take()).unwrap_or_default()
    }

    fn describe(&self) -> String {
        format!("{} (dp4a GEMV, int8 mma GEMM)", self.gpu.info())
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.settle()?;
        Ok(CudaBuf { data: ops::zeros(&self.gpu, len)?, len, q: None, q_shape: None })
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        let mut b = self.alloc(data.len())?; // settles deferred launches
        ops::write(&self.gpu, data, &mut b.data)?;
        Ok(b)
    }
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<()> {
        if out.len() > buf.len {
            return Err(Error::shape(format!(
                "download: buffer of {} values, need {}",
                buf.len,
                out.len()
            )));
        }
        lock(&self.scratch).end_step(&self.gpu, true)?;
        ops::download(&self.gpu, &buf.data, out)
    }

    fn linear(&self, w: I2sMatrix) -> Result<Self::Linear> {
        self.settle()?;
        let packed = PackedTernary::pack(&w.to_ternary(), w.rows(), w.cols())?;
        Ok(CudaLinear(DeviceTernary::upload(&self.gpu, &packed, w.scale())?))
    }
    fn fuse(&self, parts: Vec<Self::Linear>) -> Result<Fused<Self::Linear>> {
        let same_width = parts.windows(2).all(|p| p[0].0.cols() == p[1].0.cols());
        if parts.len() < 2 || parts.len() > ops::MAX_SEGMENTS || !same_width {
            return Ok(Err(parts));
        }
        self.settle()?;
        let parts = parts.into_iter().map(|p| p.0).collect();
        Ok(Ok(CudaLinear(DeviceTernary::stack(&self.gpu, parts)?)))
    }
    fn embedding(&self, table: DenseMatrix) -> Result<Self::Embedding> {
        self.settle()?;
        let (r, c) = (table.rows(), table.cols());
        match host::f16_bits(&table) {
            Some(bits) => EmbedTable::f16(&self.gpu, &bits, r, c),
            None => EmbedTable::f32(&self.gpu, &host::f32_rows(&table)?, r, c),
        }
    }
    fn lm_head(&self, table: DenseMatrix, mode: LmHeadMode) -> Result<Self::LmHead> {
        self.settle()?;
        let (r, c) = (table.rows(), table.cols());
        Ok(match mode {
            LmHeadMode::F32 => {
                CudaLmHead::F32(LmF32::upload(&self.gpu, &host::f32_rows(&table)?, r, c)?)
            }
            LmHeadMode::I8 => {
                let (q, s) = host::i8_rows(&table)?;
                CudaLmHead::I8(LmI8::upload(&self.gpu, &q, &s, r, c)?)
            }
        })
    }
    fn kv_cache(&self, shape: CacheShape) -> Result<Self::Cache> {
        self.settle()?;
        let dims = CacheDims {
            layers: shape.layers,
            slots: shape.slots,
            max_seq: shape.max_seq,
            kv_heads: shape.kv_heads,
            head_dim: shape.head_dim,
        };
        let (n, half) = (dims.len()?, shape.kv == KvType::F16);
        let alloc =
            || KvBuf::zeros(&self.gpu, n, half).map_err(|e| e.context(shape.alloc_failed()));
        let (k, v) = (alloc()?, alloc()?);
        Ok(CudaCache { dims, k, v, written: LayerWrites::new(shape.layers) })
    }

    fn prepare_stack(
        &self,
        layers: &[StackParts<'_, Self>],
        shape: StackShape,
    ) -> Result<Option<Self::Stack>> {
        if !self.one_kernel {
            return Ok(None);
        }
        self.settle()?;
        support::decode_stack(&self.gpu, layers, shape, self.attn_split_len)
    }

    fn decode_layers(
        &self,
        stack: &Self::Stack,
        x: &mut Self::Buf,
        cache: &mut Self::Cache,
        row: RowPos,
        rope: Rope,
    ) -> Result<()> {
        self.timed(Op::OneKernel, || {
            let mut s = lock(&self.scratch);
            cache.written.wrote(None, s.embeds);
            let a = s.rows(&self.gpu, &[row])?;
            let f = s.inv_freq(&self.gpu, rope, cache.dims.head_dim)?;
            let (KvBuf::F32(k), KvBuf::F32(v)) = (&mut cache.k, &mut cache.v) else {
                return Err(Error::unsupported("the one-kernel decode over an f16 KV cache"));
            };
            ops::decode_layers(&self.gpu, stack, x.touched(), k, v, &cache.dims, &a, f)
        })
    }

    fn embed(&self, e: &Self::Embedding, ids: &[u32], out: &mut Self::Buf) -> Result<()> {
        self.timed(Op::Embed, || {
            let mut s = lock(&self.scratch);
            let fed = std::mem::take(&mut s.step.fed);
            let a = match s.begin_step(&self.gpu, ids, fed)? {
                Some(a) => a,
                None if fed => s.sampled_ids(&self.gpu, ids.len())?,
                None => s.ids(&self.gpu, ids)?,
            };
            drop(s);
            ops::embed(&self.gpu, e, &a, ids, out.touched())?;
            // A launched embedding kernel is the fence `writes.rs` counts.
            lock(&self.scratch).embeds += u64::from(!ids.is_empty());
            Ok(())
        })
    }

    fn rms_norm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(Op::RmsNorm, || {
            let d = w.len;
            self.norm_into(out, rows, d, |o, q| {
                ops::rms_norm(&self.gpu, &x.data, &w.data, d, eps, rows, o, q)
            })
        })
    }

    fn bitlinear(
        &self,
        w: &Self::Linear,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.bitlinear_multi(w, x, rows, &mut [out])
    }

    fn bitlinear_multi(
        &self,
        w: &Self::Linear,
        x: &Self::Buf,
        rows: usize,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        self.project(w, x, rows, outs, false)
    }

    fn norm_linear(
        &self,
        norm: NormSpec<'_, Self::Buf>,
        rows: usize,
        xn: &mut Self::Buf,
        proj: &Self::Linear,
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        self.norm_project(norm, rows, xn, proj, outs, false)
    }

    fn norm_linear_add(
        &self,
        norm: NormSpec<'_, Self::Buf>,
        rows: usize,
        xn: &mut Self::Buf,
        proj: &Self::Linear,
        _tmp: &mut Self::Buf,
        acc: &mut Self::Buf,
        width: usize,
    ) -> Result<()> {
        if proj.0.rows() != width {
            return Err(Error::shape(format!(
                "norm_linear_add: {} outputs into rows of {width}",
                proj.0.rows()
            )));
        }
        self.norm_project(norm, rows, xn, proj, &mut [acc], true)
    }

    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: &[RowPos],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> Result<()> {
        self.timed(Op::Rope, || {
            let mut s = lock(&self.scratch);
            let a = s.rows(&self.gpu, rows)?;
            let f = s.inv_freq(&self.gpu, rope, head_dim)?;
            ops::rope(&self.gpu, x.touched(), f, &a, heads, head_dim)
        })
    }

    fn store_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        rows: &[RowPos],
    ) -> Result<()> {
        self.timed(Op::StoreKv, || {
            let mut s = lock(&self.scratch);
            let a = s.rows(&self.gpu, rows)?;
            let c = &mut *cache;
            c.written.wrote(Some(layer), s.embeds);
            ops::store_kv(
                &self.gpu,
                &mut c.k,
                &mut c.v,
                &c.dims,
                layer,
                &k.data,
                &v.data,
                &a,
                &s.rows_host,
            )
        })
    }

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
        cache_fits("rope_store_kv", shape, &cache.dims)?;
        self.timed(Op::Rope, || {
            let mut s = lock(&self.scratch);
            let a = s.rows(&self.gpu, rows)?;
            s.inv_freq(&self.gpu, rope, shape.head_dim)?;
            let Scratch { rope: freqs, rows_host, embeds, .. } = &mut *s;
            let key = (rope.key(), shape.head_dim);
            let f = freqs.get(&key).ok_or_else(|| Error::invalid("rope frequencies"))?;
            let c = &mut *cache;
            c.written.wrote(Some(layer), *embeds);
            ops::rope_store(
                &self.gpu,
                q.touched(),
                k.touched(),
                &v.data,
                f,
                &mut c.k,
                &mut c.v,
                &c.dims,
                layer,
                &a,
                rows_host,
                shape.heads,
            )
        })
    }

    fn attention(
        &self,
        q: &Self::Buf,
        cache: &Self::Cache,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(Op::Attention, || {
            let (mut s, a, splits) = self.attn_prep(&cache.dims, rows, shape, None)?;
            let Scratch { part, rows_host, .. } = &mut *s;
            let part = part.as_mut().ok_or_else(|| Error::invalid("attention scratch"))?;
            let (c, h) = (cache, shape.heads);
            let (q, o) = (&q.data, out.touched());
            ops::attention(
                &self.gpu, q, &c.k, &c.v, &c.dims, layer, &a, rows_host, h, splits, part, o,
            )
        })
    }

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
        // Fused for a few rows, each in a slot of its own.
        let distinct = || ops::slots_distinct(rows.iter().map(|r| r.slot));
        if rows.len() > ops::SMALL || !self.gpu.fuse_rope() || !distinct() {
            return super::rope_then_attention(self, q, k, v, cache, layer, rows, shape, rope, out);
        }
        self.timed(Op::Attention, || {
            let (mut s, a, splits) = self.attn_prep(&cache.dims, rows, shape, Some(rope))?;
            let Scratch { part, rows_host, rope: freqs, embeds, .. } = &mut *s;
            let part = part.as_mut().ok_or_else(|| Error::invalid("attention scratch"))?;
            let key = (rope.key(), shape.head_dim);
            let f = freqs.get(&key).ok_or_else(|| Error::invalid("rope frequencies"))?;
            let c = &mut *cache;
            // The positions before each row's own were all written before the last embedding
            // (earlier steps) unless something wrote this layer since.
            let early = c.written.settled(layer, *embeds);
            c.written.wrote(Some(layer), *embeds);
            let (q, k, v, o) = (&q.data, &k.data, &v.data, out.touched());
            let h = shape.heads;
            ops::rope_attention(
                &self.gpu, q, k, v, f, &mut c.k, &mut c.v, &c.dims, layer, &a, rows_host, h,
                splits, part, o, early,
            )
        })
    }

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
        let d = norm_width("relu2_rms_norm", w, width)?;
        self.timed(Op::GatedMul, || {
            let (g, u) = (&gate.data, &up.data);
            self.norm_into(out, rows, d, |o, q| {
                ops::relu2_rms_norm(&self.gpu, g, u, &w.data, d, eps, rows, o, q)
            })
        })
    }

    fn relu2_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        let (g, u) = (gate.touched(), &up.data);
        self.timed(Op::GatedMul, || ops::gated_mul(&self.gpu, ops::Gate::Relu2, g, u, len))
    }

    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        let (g, u) = (gate.touched(), &up.data);
        self.timed(Op::GatedMul, || ops::gated_mul(&self.gpu, ops::Gate::Silu, g, u, len))
    }

    fn copy(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        self.timed(Op::AddCopy, || {
            ops::copy(&self.gpu, &src.data, src_off, dst.touched(), dst_off, len)
        })
    }

    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()> {
        self.timed(Op::AddCopy, || ops::add(&self.gpu, x.touched(), &y.data, len))
    }

    fn logits(
        &self,
        head: &Self::LmHead,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(Op::LmHead, || match head {
            CudaLmHead::F32(h) => ops::lm_head_f32(&self.gpu, h, &x.data, rows, out.touched()),
            CudaLmHead::I8(h) => ops::lm_head_i8(&self.gpu, h, &x.data, rows, out.touched()),
        })
    }

    fn sample(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        p: &crate::sampling::SamplingParams,
        uniforms: &[f64],
        out: &mut [u32],
    ) -> Result<()> {
        self.sample_rows(logits, rows, vocab, p, uniforms, out)
    }
    fn samples_ahead(&self) -> bool {
        self.ahead
    }
    fn sample_ahead(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        p: &crate::sampling::SamplingParams,
        uniforms: &[f64],
    ) -> Result<usize> {
        self.sample_on_device(logits, rows, vocab, p, uniforms)
    }
    fn sampled_ids(&self, ticket: usize, vocab: usize, out: &mut [u32]) -> Result<()> {
        self.fetch_sampled(ticket, vocab, out)
    }
    fn feed_sampled(&self, on: bool) -> Result<()> {
        lock(&self.scratch).step.fed = on;
        Ok(())
    }
}
