//! Small pieces of the CUDA backend: argument checks, output lists and the scratch buffers
//! that operations borrow.

use super::{lock, CudaBackend, CudaBuf, Scratch};
use crate::backend::{AttnShape, Rope, RowPos, StackParts, StackShape};
use bitnet_core::{Error, Result};
use bitnet_cuda::cudarc::driver::CudaSlice;
use bitnet_cuda::layout::padded_cols;
use bitnet_cuda::ops::{self, CacheDims, DecodeStack, QuantActs, RowsArg, StackDims, StackLayer};
use bitnet_cuda::Gpu;

pub(super) fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::invalid(format!("{v} overflows the kernels' i32")))
}

/// Runs `f` on the data of `outs` (marked written), without allocating for up to three.
pub(super) fn with_data<R>(
    outs: &mut [&mut CudaBuf],
    f: impl FnOnce(&mut [&mut CudaSlice<f32>]) -> Result<R>,
) -> Result<R> {
    match outs {
        [a] => f(&mut [a.touched()]),
        [a, b] => f(&mut [a.touched(), b.touched()]),
        [a, b, c] => f(&mut [a.touched(), b.touched(), c.touched()]),
        _ => f(&mut outs.iter_mut().map(|o| o.touched()).collect::<Vec<_>>()),
    }
}

/// The width of a norm with weights `w`, which must be `width` (the caller's row width).
pub(super) fn norm_width(op: &str, w: &CudaBuf, width: usize) -> Result<usize> {
    if w.len != width {
        return Err(Error::shape(format!("{op} of width {width} with {} weights", w.len)));
    }
    Ok(w.len)
}

/// Checks that attention of `shape` matches the cache's kv heads and head dimension.
pub(super) fn cache_fits(op: &str, shape: AttnShape, dims: &CacheDims) -> Result<()> {
    if shape.kv_heads != dims.kv_heads || shape.head_dim != dims.head_dim {
        return Err(Error::invalid(format!(
            "{op} over {} kv heads of {} with a cache of {} x {}",
            shape.kv_heads, shape.head_dim, dims.kv_heads, dims.head_dim
        )));
    }
    Ok(())
}

impl Scratch {
    /// The RoPE inverse frequencies of (`rope`, `hd`), uploaded on first use.
    pub(super) fn inv_freq(&mut self, gpu: &Gpu, rope: Rope, hd: usize) -> Result<&CudaSlice<f32>> {
        Ok(match self.rope.entry((rope.key(), hd)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(ops::upload(gpu, &rope.inv_freqs(hd))?)
            }
        })
    }

    pub(super) fn quant(&mut self, gpu: &Gpu, rows: usize, kp: usize) -> Result<&mut QuantActs> {
        if !self.quant.as_ref().is_some_and(|q| q.fits(rows, kp)) {
            self.end_step(gpu, false)?;
            self.quant = Some(QuantActs::new(gpu, rows.max(8), kp)?);
        }
        self.quant.as_mut().ok_or_else(|| Error::invalid("quantization scratch"))
    }
}

impl CudaBackend {
    /// Runs the norm kernel `f` into `out` (`rows` rows of width `d`), with `out`'s int8 copy
    /// sized to fit first; that copy then holds these rows (see [`CudaBuf`]).
    pub(super) fn norm_into(
        &self,
        out: &mut CudaBuf,
        rows: usize,
        d: usize,
        f: impl FnOnce(&mut CudaSlice<f32>, Option<&mut QuantActs>) -> Result<()>,
    ) -> Result<()> {
        let kp = padded_cols(d);
        if !out.q.as_ref().is_some_and(|q| q.fits(rows, kp)) {
            self.settle()?;
            out.q = Some(QuantActs::new(&self.gpu, (out.len / d.max(1)).max(rows), kp)?);
        }
        f(&mut out.data, out.q.as_mut())?;
        out.q_shape = Some((rows, d));
        Ok(())
    }
    /// Checks an attention call against the cache and prepares it: the scratch (locked), the
    /// rows argument and the split count, with the split scratch sized (and, for `rope`, the
    /// RoPE frequencies uploaded).
    pub(super) fn attn_prep(
        &self,
        dims: &CacheDims,
        rows: &[RowPos],
        shape: AttnShape,
        rope: Option<Rope>,
    ) -> Result<(std::sync::MutexGuard<'_, Scratch>, RowsArg, usize)> {
        let AttnShape { heads, head_dim, .. } = shape;
        cache_fits("attention", shape, dims)?;
        let mut s = lock(&self.scratch);
        let a = s.rows(&self.gpu, rows)?;
        let max_len = rows.iter().map(|r| r.pos + 1).max().unwrap_or(1);
        let splits =
            ops::attention_splits(&self.gpu, rows.len(), heads, max_len, self.attn_split_len);
        let need = ops::attention_part_len(rows.len(), heads, head_dim, splits).max(1);
        if s.part.as_ref().is_none_or(|p| p.len() < need) {
            s.end_step(&self.gpu, false)?;
            s.part = Some(ops::zeros(&self.gpu, need.max(1 << 16))?);
        }
        if let Some(rope) = rope {
            s.inv_freq(&self.gpu, rope, head_dim)?;
        }
        Ok((s, a, splits))
    }
}

/// The layers as one persistent decode kernel runs them, or None where their shapes or the
/// device do not fit it (`Backend::prepare_stack`).
pub(super) fn decode_stack(
    gpu: &Gpu,
    layers: &[StackParts<'_, CudaBackend>],
    shape: StackShape,
    attn_split_len: usize,
) -> Result<Option<DecodeStack>> {
    let parts: Vec<StackLayer<'_>> = layers
        .iter()
        .map(|l| StackLayer { mats: l.mats.map(|m| &m.0), norms: l.norms.map(|n| &n.data) })
        .collect();
    let AttnShape { heads, kv_heads, head_dim } = shape.attn;
    let (hidden, inter, eps) = (shape.hidden, shape.intermediate, shape.eps);
    let dims = StackDims { hidden, inter, heads, kv_heads, head_dim, eps, attn_split_len };
    match DecodeStack::new(gpu, &parts, dims) {
        Ok(s) => Ok(Some(s)),
        Err(Error::Unsupported(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
