//! RoPE, the KV store and causal attention over the KV cache (f32 or f16 keys and values).

use super::{dptr, launch, need, to_i32, zeros, Dims, RowsArg};
use crate::device::Gpu;
use bitnet_core::{Error, Result};
use cudarc::driver::{CudaFunction, CudaSlice};

/// The keys (or the values) of a KV cache: f32, or f16 kept as its bits. Kernels store into an
/// f16 cache with IEEE round to nearest even (`cvt.rn.f16.f32`) and compute in f32.
#[derive(Debug)]
pub enum KvBuf {
    /// f32 values.
    F32(CudaSlice<f32>),
    /// f16 values (raw bits).
    F16(CudaSlice<u16>),
}

impl KvBuf {
    /// `len` zeroed values, f16 when `half`.
    pub fn zeros(gpu: &Gpu, len: usize, half: bool) -> Result<Self> {
        Ok(if half { KvBuf::F16(zeros(gpu, len)?) } else { KvBuf::F32(zeros(gpu, len)?) })
    }
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvBuf::F32(b) => b.len(),
            KvBuf::F16(b) => b.len(),
        }
    }
    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// True for f16 values.
    pub fn is_half(&self) -> bool {
        matches!(self, KvBuf::F16(_))
    }
    fn ptr(&self, gpu: &Gpu) -> u64 {
        match self {
            KvBuf::F32(b) => dptr(gpu, b),
            KvBuf::F16(b) => dptr(gpu, b),
        }
    }
}

/// Device pointers of a cache's keys and values and whether they are f16 (both or neither:
/// checked), once each holds the `c.len()` values of its geometry.
fn cache_ptrs(gpu: &Gpu, kc: &KvBuf, vc: &KvBuf, c: &CacheDims) -> Result<(u64, u64, bool)> {
    if kc.is_half() != vc.is_half() {
        return Err(Error::invalid("KV cache: keys and values of different types"));
    }
    need(kc.len().min(vc.len()), c.len()?, "KV cache")?;
    Ok((kc.ptr(gpu), vc.ptr(gpu), kc.is_half()))
}

/// The KV cache geometry: `[layer][slot][kv_head][pos][head_dim]`, keys and values apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheDims {
    /// Layers.
    pub layers: usize,
    /// Sequence slots.
    pub slots: usize,
    /// Positions per slot.
    pub max_seq: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl CacheDims {
    /// Values in each of the K and V caches.
    pub fn len(&self) -> Result<usize> {
        [self.layers, self.slots, self.max_seq, self.kv_heads, self.head_dim]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::invalid("KV cache size overflows"))
    }
    /// True when the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len().is_ok_and(|n| n == 0)
    }
}

/// Rotary embedding in place on `rows.len()` rows of `heads * hd` values; `inv_freq` holds the
/// `hd / 2` inverse frequencies (computed on the host exactly as the CPU does).
pub fn rope(
    gpu: &Gpu,
    x: &mut CudaSlice<f32>,
    inv_freq: &CudaSlice<f32>,
    rows: &RowsArg,
    heads: usize,
    hd: usize,
) -> Result<()> {
    check_rope_dim(hd)?;
    need(x.len(), rows.len() * heads * hd, "rope")?;
    need(inv_freq.len(), hd / 2, "rope frequencies")?;
    let (xp, fp, r) = (dptr(gpu, x), dptr(gpu, inv_freq), *rows);
    let (h, d) = (to_i32(heads, "heads")?, to_i32(hd, "head_dim")?);
    let block = (hd / 2).div_ceil(32).clamp(1, 4) as u32 * 32;
    let dims = Dims::new((rows.len() as u32, heads as u32, 1), block);
    // Kernel: rope(x, inv_freq, rows, heads, hd); x holds rows x heads x hd (checked).
    launch!(gpu, &gpu.k.rope, dims; xp, fp, r, h, d)
}

/// [`rope`] on `q` (`heads`) and `k` (`c.kv_heads`), then [`store_kv`] of `k` and `v`, in one
/// launch (the same float operations).
#[allow(clippy::too_many_arguments)]
pub fn rope_store(
    gpu: &Gpu,
    q: &mut CudaSlice<f32>,
    k: &mut CudaSlice<f32>,
    v: &CudaSlice<f32>,
    inv_freq: &CudaSlice<f32>,
    kc: &mut KvBuf,
    vc: &mut KvBuf,
    c: &CacheDims,
    layer: usize,
    rows: &RowsArg,
    host_rows: &[(usize, usize)],
    heads: usize,
) -> Result<()> {
    let hd = c.head_dim;
    check_rope_dim(hd)?;
    check_rows(host_rows, c)?;
    if layer >= c.layers || host_rows.len() != rows.len() {
        return Err(Error::invalid(format!("rope_store: layer {layer} of {}", c.layers)));
    }
    let (kcp, vcp, half) = cache_ptrs(gpu, kc, vc, c)?;
    need(q.len(), rows.len() * heads * hd, "rope_store q")?;
    need(k.len().min(v.len()), rows.len() * c.kv_heads * hd, "rope_store k/v")?;
    need(inv_freq.len(), hd / 2, "rope frequencies")?;
    let (qp, kp, vp, fp) = (dptr(gpu, q), dptr(gpu, k), dptr(gpu, v), dptr(gpu, inv_freq));
    let r = *rows;
    let (h, kh, d) = (to_i32(heads, "heads")?, to_i32(c.kv_heads, "kv_heads")?, to_i32(hd, "hd")?);
    let (l, sl, ms) = (layer as i32, to_i32(c.slots, "slots")?, to_i32(c.max_seq, "max_seq")?);
    let block = (hd / 2).div_ceil(32).clamp(1, 4) as u32 * 32;
    let dims = Dims::new((rows.len() as u32, (heads + c.kv_heads) as u32, 1), block);
    let f = if half { &gpu.k.rope_store_h } else { &gpu.k.rope_store };
    // Kernel: rope_store(_h)(q, k, v, inv_freq, kc, vc, rows, heads, kvh, hd, layer, slots,
    // max_seq); buffers sized above, every row inside the cache (checked), the kernel's cache
    // type the buffers' (checked).
    launch!(gpu, f, dims; qp, kp, vp, fp, kcp, vcp, r, h, kh, d, l, sl, ms)
}

/// RoPE rotates pairs of values: the head dimension must be even (and not zero).
fn check_rope_dim(hd: usize) -> Result<()> {
    if hd == 0 || !hd.is_multiple_of(2) {
        return Err(Error::invalid(format!("RoPE over head_dim {hd} (must be even)")));
    }
    Ok(())
}

/// True when no two rows share a slot (pairwise, without allocating: meant for a few rows),
/// the condition of [`rope_attention`].
pub fn slots_distinct(slots: impl Iterator<Item = usize> + Clone) -> bool {
    slots.clone().enumerate().all(|(i, a)| slots.clone().take(i).all(|b| a != b))
}

fn check_rows(rows: &[(usize, usize)], c: &CacheDims) -> Result<()> {
    if let Some(&(s, p)) = rows.iter().find(|&&(s, p)| s >= c.slots || p >= c.max_seq) {
        return Err(Error::invalid(format!(
            "position {p} of slot {s} is outside the KV cache ({} slots x {} positions)",
            c.slots, c.max_seq
        )));
    }
    Ok(())
}

/// Writes each row's keys and values into the cache of `layer`. `host_rows` are the `(slot, pos)`
/// pairs that `rows` carries (for the bounds check).
#[allow(clippy::too_many_arguments)]
pub fn store_kv(
    gpu: &Gpu,
    kc: &mut KvBuf,
    vc: &mut KvBuf,
    c: &CacheDims,
    layer: usize,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    rows: &RowsArg,
    host_rows: &[(usize, usize)],
) -> Result<()> {
    check_rows(host_rows, c)?;
    if layer >= c.layers || host_rows.len() != rows.len() {
        return Err(Error::invalid(format!("store_kv: layer {layer} of {}", c.layers)));
    }
    let (kp, vp, half) = cache_ptrs(gpu, kc, vc, c)?;
    let w = c.kv_heads * c.head_dim;
    need(k.len().min(v.len()), rows.len() * w, "store_kv keys/values")?;
    let (ks, vs, r) = (dptr(gpu, k), dptr(gpu, v), *rows);
    let (l, sl, ms) = (layer as i32, to_i32(c.slots, "slots")?, to_i32(c.max_seq, "max_seq")?);
    let (kh, hd) = (to_i32(c.kv_heads, "kv_heads")?, to_i32(c.head_dim, "head_dim")?);
    let dims = Dims::line(rows.len() as u32, 128);
    let f = if half { &gpu.k.store_kv_h } else { &gpu.k.store_kv };
    // Kernel: store_kv(_h)(kc, vc, k, v, rows, layer, slots, max_seq, kvh, hd); rows checked in
    // range, the kernel's cache type the buffers'.
    launch!(gpu, f, dims; kp, vp, ks, vs, r, l, sl, ms, kh, hd)
}

/// How many position splits attention uses for `rows` rows of `heads` heads whose longest
/// context is `max_len`: enough blocks to fill the GPU ([`attention_split_limit`]), at
/// least `split_len` positions per split (a power of two; [`Gpu::attention_split_len`] by
/// default: 64, `BITNET_ATTN_SPLIT_LEN`) of `max_len` rounded up to a power of two. H100 tg64
/// from 128 and 400 positions (4 and 8 splits): 1,370 / 1,367 and 1,373 tok/s against 1,346 /
/// 1,350 and 1,353 with 16 positions (14 splits). (decode.cu's `dec_attention` computes the
/// same count on the device.)
pub fn attention_splits(
    gpu: &Gpu,
    rows: usize,
    heads: usize,
    max_len: usize,
    split_len: usize,
) -> usize {
    // Lengths in power-of-two buckets: the count (a launch parameter) changes at most a few
    // times as a sequence grows, so decode-step graphs are rarely captured anew.
    let len = split_len_pow2(split_len);
    attention_split_limit(gpu, rows, heads).min(max_len.next_power_of_two().div_ceil(len)).max(1)
}

/// The split length [`attention_splits`] and the one-kernel decode use for `len`: at least 1,
/// rounded up to a power of two.
pub fn split_len_pow2(len: usize) -> usize {
    len.max(1).next_power_of_two()
}

/// The most splits [`attention_splits`] gives `rows` rows of `heads` heads (at long contexts):
/// enough blocks to fill every SM four times (`BITNET_ATTN_FILL`), 1 to 64.
pub fn attention_split_limit(gpu: &Gpu, rows: usize, heads: usize) -> usize {
    let blocks = (rows * heads).max(1);
    (gpu.knobs().attn_fill() * gpu.info().sms as usize).div_ceil(blocks).clamp(1, 64)
}

/// Scratch values attention needs for `splits > 1`.
pub fn attention_part_len(rows: usize, heads: usize, hd: usize, splits: usize) -> usize {
    if splits > 1 {
        rows * heads * splits * (hd + 2)
    } else {
        0
    }
}

/// Causal attention: row `r` (query `q[r]`, `heads * hd` values) attends to positions
/// `0..=pos` of its slot in the cache of `layer`. `part` holds [`attention_part_len`] values.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    kc: &KvBuf,
    vc: &KvBuf,
    c: &CacheDims,
    layer: usize,
    rows: &RowsArg,
    host_rows: &[(usize, usize)],
    heads: usize,
    splits: usize,
    part: &mut CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let a = AttnArgs { q, kc, vc, c, layer, rows, host_rows, heads, splits };
    attention_launch(gpu, &a, None, part, out)
}

/// One decode step's RoPE, KV store and attention in one kernel (plus the split combine, which
/// on sm_90+ runs inside the kernel: a thread-block cluster per head): as [`rope_store`] then
/// [`attention`], for rows that each have a slot of their own (checked pairwise: meant for a
/// few rows). `q` and `k` arrive unrotated and are left so; `k` and `v` hold
/// `rows x kv_heads x hd` values.
///
/// `early`: the kernel loads cache positions before each row's own while its predecessor still
/// runs (before its PDL wait). Only for positions written by kernels that finished before the
/// previous kernel on the stream started: e.g. before the last [`super::embed`], which lets the
/// next kernel launch only after everything queued before it has finished.
#[allow(clippy::too_many_arguments)]
pub fn rope_attention(
    gpu: &Gpu,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    inv_freq: &CudaSlice<f32>,
    kc: &mut KvBuf,
    vc: &mut KvBuf,
    c: &CacheDims,
    layer: usize,
    rows: &RowsArg,
    host_rows: &[(usize, usize)],
    heads: usize,
    splits: usize,
    part: &mut CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    early: bool,
) -> Result<()> {
    let hd = c.head_dim;
    if !slots_distinct(host_rows.iter().map(|r| r.0)) {
        return Err(Error::invalid("fused RoPE + attention: two rows share a slot"));
    }
    check_rope_dim(hd)?;
    need(k.len().min(v.len()), rows.len() * c.kv_heads * hd, "rope_attention k/v")?;
    need(inv_freq.len(), hd / 2, "rope frequencies")?;
    let a = AttnArgs { q, kc, vc, c, layer, rows, host_rows, heads, splits };
    let rope = (dptr(gpu, k), dptr(gpu, v), dptr(gpu, inv_freq), i32::from(early));
    attention_launch(gpu, &a, Some(rope), part, out)
}

/// The arguments [`attention`] and [`rope_attention`] share.
struct AttnArgs<'a> {
    q: &'a CudaSlice<f32>,
    kc: &'a KvBuf,
    vc: &'a KvBuf,
    c: &'a CacheDims,
    layer: usize,
    rows: &'a RowsArg,
    host_rows: &'a [(usize, usize)],
    heads: usize,
    splits: usize,
}

/// Checks `a` and launches the attention kernel (with RoPE of q and the rows' own keys when
/// `rope` gives (k, v, inv_freq)), then the split combine.
fn attention_launch(
    gpu: &Gpu,
    a: &AttnArgs<'_>,
    rope: Option<(u64, u64, u64, i32)>,
    part: &mut CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let AttnArgs { q, kc, vc, c, layer, rows, host_rows, heads, splits } = *a;
    let hd = c.head_dim;
    if c.kv_heads == 0 || !heads.is_multiple_of(c.kv_heads) || hd == 0 || hd > 256 || splits == 0 {
        return Err(Error::invalid(format!(
            "attention with {heads} heads, {} kv heads, head_dim {hd}, {splits} splits",
            c.kv_heads
        )));
    }
    check_rows(host_rows, c)?;
    if layer >= c.layers || host_rows.len() != rows.len() {
        return Err(Error::invalid(format!("attention: layer {layer} of {}", c.layers)));
    }
    let (kp, vp, half) = cache_ptrs(gpu, kc, vc, c)?;
    need(q.len(), rows.len() * heads * hd, "attention q")?;
    need(out.len(), rows.len() * heads * hd, "attention out")?;
    need(part.len(), attention_part_len(rows.len(), heads, hd, splits), "attention scratch")?;
    let nd = match hd.div_ceil(32) {
        1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    let f = attention_kernel(gpu, nd, rope.is_some(), half);
    let (qp, op, pp, r) = (dptr(gpu, q), dptr(gpu, out), dptr(gpu, part), *rows);
    let (l, sl, ms) = (layer as i32, to_i32(c.slots, "slots")?, to_i32(c.max_seq, "max_seq")?);
    let (h, kh, d, sp) = (heads as i32, c.kv_heads as i32, hd as i32, splits as i32);
    let scale = 1.0f32 / (hd as f32).sqrt();
    // With RoPE (decode), the splits of a (head, row) can merge inside a thread-block cluster
    // instead of in attn_combine: one kernel less per layer.
    let merge = rope.is_some() && splits > 1 && splits as u32 <= gpu.cluster_max();
    let cluster = if merge { splits as u32 } else { 1 };
    let dims = Dims { grid: (splits as u32, heads as u32, rows.len() as u32), block: 128, cluster };
    match rope {
        // Kernel: attention_ndN(_h)(q, kc, vc, out, part, rows, layer, slots, max_seq, heads,
        // kvh, hd, scale, splits); every row's positions are inside the cache (checked), part
        // sized above, the kernel's cache type the buffers'.
        None => launch!(gpu, f, dims; qp, kp, vp, op, pp, r, l, sl, ms, h, kh, d, scale, sp)?,
        // Kernel: attention_rope_ndN(_h)(same, kin, vin, inv_freq, pre, merge): kin/vin hold
        // rows x kvh x hd values, inv_freq hd / 2, every row has a slot of its own (checked by
        // the caller); pre as `early` (the caller's promise); merge: launched as clusters of
        // `splits` blocks along x.
        Some((ki, vi, fi, pre)) => {
            let merge = i32::from(merge);
            launch!(gpu, f, dims; qp, kp, vp, op, pp, r, l, sl, ms, h, kh, d, scale, sp, ki, vi, fi, pre, merge)?
        }
    }
    if splits > 1 && !merge {
        let dims = Dims::new((heads as u32, rows.len() as u32, 1), hd.div_ceil(32) as u32 * 32);
        // Kernel: attn_combine(part, out, heads, hd, splits); same buffers as above.
        launch!(gpu, &gpu.k.attn_combine, dims; pp, op, h, d, sp)?;
    }
    Ok(())
}

/// The attention kernel for heads of `32 << nd`-value slots (at most), with RoPE of the rows'
/// own keys (`rope`), over an f16 cache (`half`) or an f32 one.
fn attention_kernel(gpu: &Gpu, nd: usize, rope: bool, half: bool) -> &CudaFunction {
    let k = &gpu.k;
    match (rope, half) {
        (false, false) => [&k.attn1, &k.attn2, &k.attn4, &k.attn8][nd],
        (true, false) => [&k.attn_rope1, &k.attn_rope2, &k.attn_rope4, &k.attn_rope8][nd],
        (false, true) => [&k.attn1_h, &k.attn2_h, &k.attn4_h, &k.attn8_h][nd],
        (true, true) => [&k.attn_rope1_h, &k.attn_rope2_h, &k.attn_rope4_h, &k.attn_rope8_h][nd],
    }
}

#[cfg(test)]
mod tests {
    use super::slots_distinct;

    #[test]
    fn slots_distinct_finds_any_shared_slot() {
        assert!(slots_distinct([].into_iter()));
        assert!(slots_distinct([3].into_iter()));
        assert!(slots_distinct([0, 1, 7, 2].into_iter()));
        assert!(!slots_distinct([0, 1, 0].into_iter()));
        assert!(!slots_distinct([5, 5].into_iter()));
        assert!(!slots_distinct([1, 2, 3, 4, 5, 6, 7, 2].into_iter()));
    }
}
