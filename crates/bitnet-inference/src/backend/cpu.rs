//! The CPU backend: ternary kernels from `bitnet-quant`, everything else here, multi-threaded
//! on one [`ThreadPool`].

use super::i8mat::I8Matrix;
use super::{AttnShape, Backend, CacheShape, DenseMatrix, KvType, LmHeadMode, Rope, RowPos};
use bitnet_core::{AlignedVec, Error, Pod, Result, ThreadPool};
use bitnet_quant::bitlinear::{BitLinear, BitLinearScratch};
use bitnet_quant::formats::i2s::I2sMatrix;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::sync::Mutex;

/// Runs the model on the host CPU.
pub struct CpuBackend {
    pool: ThreadPool,
    scratch: Mutex<BitLinearScratch>,
    profile: Option<Mutex<[(f64, u64); OPS.len()]>>,
}

/// Operations timed by the profiler (`BITNET_PROFILE=1`).
const OPS: [&str; 8] = [
    "embed",
    "rms_norm",
    "bitlinear",
    "rope",
    "store_kv",
    "attention",
    "relu2_mul/add/copy",
    "lm_head",
];

impl CpuBackend {
    /// A backend with `threads` threads (0 = all cores); times each operation when the
    /// environment has `BITNET_PROFILE=1` (see [`Backend::take_profile`]).
    pub fn new(threads: usize) -> Self {
        let profile = (std::env::var("BITNET_PROFILE").ok().as_deref() == Some("1"))
            .then(|| Mutex::new([(0.0, 0); OPS.len()]));
        CpuBackend {
            pool: ThreadPool::new(threads),
            scratch: Mutex::new(BitLinearScratch::default()),
            profile,
        }
    }

    /// Turns per-operation timing on.
    pub fn with_profiling(mut self) -> Self {
        self.profile = Some(Mutex::new([(0.0, 0); OPS.len()]));
        self
    }

    fn timed<T>(&self, op: usize, f: impl FnOnce() -> T) -> T {
        let Some(p) = &self.profile else { return f() };
        let t = std::time::Instant::now();
        let r = f();
        let mut a = p.lock().unwrap_or_else(|e| e.into_inner());
        a[op].0 += t.elapsed().as_secs_f64();
        a[op].1 += 1;
        r
    }
    /// The kernel thread pool.
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }
}

/// The vocabulary projection on the CPU.
pub enum CpuLmHead {
    /// Exact f32 rows.
    F32(DenseF32),
    /// int8 rows with per-row scales.
    I8(I8Matrix),
}

/// A dense f32 matrix, row-major.
pub struct DenseF32 {
    rows: usize,
    cols: usize,
    data: AlignedVec<f32>,
}

impl DenseF32 {
    fn from_dense(m: &DenseMatrix) -> Result<Self> {
        let (rows, cols) = (m.rows(), m.cols());
        let mut data = AlignedVec::zeros(rows * cols);
        for (i, row) in data.chunks_exact_mut(cols).enumerate() {
            m.row_into(i, row)?;
        }
        Ok(DenseF32 { rows, cols, data })
    }
}

/// Keys and values of every layer and slot: `[layer][slot][kv_head][pos][head_dim]`, in f32 or
/// f16 as [`CacheShape::kv`] says.
pub struct CpuCache {
    shape: CacheShape,
    kv: KvStore,
}

/// The cache's keys and values in their stored type.
enum KvStore {
    F32(KvPair<f32>),
    F16(KvPair<f16>),
}

/// Keys and values of one element type, both `[layer][slot][kv_head][pos][head_dim]`.
struct KvPair<T: Pod> {
    k: AlignedVec<T>,
    v: AlignedVec<T>,
}

impl<T: Pod> KvPair<T> {
    /// `n` zeroed keys and values, or `None` when they cannot be allocated.
    fn zeros(n: usize) -> Option<Self> {
        Some(KvPair { k: AlignedVec::try_zeros(n)?, v: AlignedVec::try_zeros(n)? })
    }
}

/// An element type the cache stores: how a key or value row is stored and attended over.
trait KvElem: Pod {
    /// `dst = src`, rounded to this type.
    fn store(dst: &mut [Self], src: &[f32]);
    /// [`super::attn::attend`] over rows of this type.
    fn attend(q: &[f32], k: &[Self], v: &[Self], n: usize, scale: f32, out: &mut [f32]);
}

impl KvElem for f32 {
    fn store(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    fn attend(q: &[f32], k: &[f32], v: &[f32], n: usize, scale: f32, out: &mut [f32]) {
        super::attn::attend(q, k, v, n, scale, out)
    }
}

impl KvElem for f16 {
    /// Round to nearest even, as `f16::from_f32` (vectorized where the CPU has F16C): beyond
    /// ±65504 a value becomes ±inf and NaN stays NaN. A key that became inf gives an infinite
    /// or NaN score, which usually makes the output of the rows attending to it NaN, as an f32
    /// cache holding the same inf would; nothing panics.
    fn store(dst: &mut [f16], src: &[f32]) {
        dst.convert_from_f32_slice(src);
    }
    fn attend(q: &[f32], k: &[f16], v: &[f16], n: usize, scale: f32, out: &mut [f32]) {
        super::attn::attend_f16(q, k, v, n, scale, out)
    }
}

/// Where position `pos` of `head`, `slot` and `layer` starts in a cache of shape `s`.
fn offset(s: &CacheShape, layer: usize, slot: usize, head: usize, pos: usize) -> usize {
    (((layer * s.slots + slot) * s.kv_heads + head) * s.max_seq + pos) * s.head_dim
}

impl CpuCache {
    fn check(&self, r: &RowPos) -> Result<()> {
        if r.slot >= self.shape.slots || r.pos >= self.shape.max_seq {
            return Err(Error::invalid(format!(
                "position {} of slot {} is outside the KV cache ({} slots x {} positions)",
                r.pos, r.slot, self.shape.slots, self.shape.max_seq
            )));
        }
        Ok(())
    }
}

fn need(buf_len: usize, want: usize, what: &str) -> Result<()> {
    if buf_len < want {
        return Err(Error::shape(format!("{what}: buffer of {buf_len} values, need {want}")));
    }
    Ok(())
}

impl Backend for CpuBackend {
    type Buf = AlignedVec<f32>;
    type Linear = BitLinear;
    type Embedding = DenseMatrix;
    type LmHead = CpuLmHead;
    type Cache = CpuCache;
    type Stack = ();

    fn take_profile(&self) -> Vec<(&'static str, f64, u64)> {
        let Some(p) = &self.profile else { return Vec::new() };
        let mut a = p.lock().unwrap_or_else(|e| e.into_inner());
        let out =
            OPS.iter().zip(a.iter()).map(|(n, &(t, c))| (*n, t, c)).filter(|x| x.2 > 0).collect();
        *a = [(0.0, 0); OPS.len()];
        out
    }

    fn describe(&self) -> String {
        format!(
            "cpu ({} threads, kernel {})",
            self.pool.n_threads(),
            bitnet_quant::kernels::Kernel::select().map(|k| k.name()).unwrap_or("unavailable")
        )
    }

    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        AlignedVec::try_zeros(len).ok_or_else(|| {
            Error::invalid(format!("cannot allocate a buffer of {:.1} GB", len as f64 * 4e-9))
        })
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf> {
        Ok(AlignedVec::from_slice(data))
    }
    fn download(&self, buf: &Self::Buf, out: &mut [f32]) -> Result<()> {
        need(buf.len(), out.len(), "download")?;
        out.copy_from_slice(&buf[..out.len()]);
        Ok(())
    }

    fn linear(&self, w: I2sMatrix) -> Result<Self::Linear> {
        Ok(BitLinear::new(w))
    }
    fn embedding(&self, table: DenseMatrix) -> Result<Self::Embedding> {
        Ok(table)
    }
    fn lm_head(&self, table: DenseMatrix, mode: LmHeadMode) -> Result<Self::LmHead> {
        Ok(match mode {
            LmHeadMode::F32 => CpuLmHead::F32(DenseF32::from_dense(&table)?),
            LmHeadMode::I8 => CpuLmHead::I8(I8Matrix::quantize(&table, &self.pool)?),
        })
    }
    fn kv_cache(&self, shape: CacheShape) -> Result<Self::Cache> {
        let n = shape.values()?;
        // A cache larger than the memory there is may be granted (its pages are committed as
        // sequences fill them) and the process killed later: refuse it now, as the GPU's
        // allocation does.
        if let Some(avail) = bitnet_core::device::host_memory_available() {
            if shape.bytes()? > avail {
                let gb = avail as f64 * 1e-9;
                let msg =
                    format!("{} (this machine has {gb:.1} GB available)", shape.alloc_failed());
                return Err(Error::invalid(msg));
            }
        }
        let failed = || Error::invalid(shape.alloc_failed());
        let kv = match shape.kv {
            KvType::F32 => KvStore::F32(KvPair::zeros(n).ok_or_else(failed)?),
            KvType::F16 => KvStore::F16(KvPair::zeros(n).ok_or_else(failed)?),
        };
        Ok(CpuCache { shape, kv })
    }

    fn embed(&self, e: &Self::Embedding, ids: &[u32], out: &mut Self::Buf) -> Result<()> {
        self.timed(0, || self.embed__(e, ids, out))
    }

    fn rms_norm(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(1, || self.rms_norm__(x, w, eps, rows, out))
    }

    fn bitlinear(
        &self,
        w: &Self::Linear,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(2, || self.bitlinear__(w, x, rows, out))
    }

    fn rope(
        &self,
        x: &mut Self::Buf,
        rows: &[RowPos],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> Result<()> {
        self.timed(3, || self.rope__(x, rows, heads, head_dim, rope))
    }

    fn store_kv(
        &self,
        cache: &mut Self::Cache,
        layer: usize,
        k: &Self::Buf,
        v: &Self::Buf,
        rows: &[RowPos],
    ) -> Result<()> {
        self.timed(4, || self.store_kv__(cache, layer, k, v, rows))
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
        self.timed(5, || self.attention__(q, cache, layer, rows, shape, out))
    }

    fn relu2_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        let relu2 = |g: f32| g.max(0.0) * g.max(0.0);
        self.timed(6, || Self::gated_mul__(gate, up, len, "relu2_mul", relu2))
    }

    fn silu_mul(&self, gate: &mut Self::Buf, up: &Self::Buf, len: usize) -> Result<()> {
        // As torch's SiLU: x / (1 + exp(-x)).
        let silu = |g: f32| g / (1.0 + (-g).exp());
        self.timed(6, || Self::gated_mul__(gate, up, len, "silu_mul", silu))
    }

    fn add(&self, x: &mut Self::Buf, y: &Self::Buf, len: usize) -> Result<()> {
        self.timed(6, || self.add__(x, y, len))
    }

    fn copy(
        &self,
        src: &Self::Buf,
        src_off: usize,
        dst: &mut Self::Buf,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        self.timed(6, || self.copy__(src, src_off, dst, dst_off, len))
    }

    fn logits(
        &self,
        head: &Self::LmHead,
        x: &Self::Buf,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.timed(7, || self.logits__(head, x, rows, out))
    }
}

/// The operations themselves (the trait methods above add timing).
impl CpuBackend {
    fn embed__(&self, e: &DenseMatrix, ids: &[u32], out: &mut AlignedVec<f32>) -> Result<()> {
        let d = e.cols();
        need(out.len(), ids.len() * d, "embed")?;
        for (r, &id) in ids.iter().enumerate() {
            if id as usize >= e.rows() {
                return Err(Error::invalid(format!(
                    "token id {id} is out of range for a vocabulary of {}",
                    e.rows()
                )));
            }
            e.row_into(id as usize, &mut out[r * d..(r + 1) * d])?;
        }
        Ok(())
    }
    fn rms_norm__(
        &self,
        x: &AlignedVec<f32>,
        w: &AlignedVec<f32>,
        eps: f32,
        rows: usize,
        out: &mut AlignedVec<f32>,
    ) -> Result<()> {
        let d = w.len();
        need(x.len(), rows * d, "rms_norm input")?;
        need(out.len(), rows * d, "rms_norm output")?;
        for r in 0..rows {
            let xr = &x[r * d..(r + 1) * d];
            let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for ((o, &xv), &wv) in out[r * d..(r + 1) * d].iter_mut().zip(xr).zip(w.iter()) {
                *o = wv * (xv * inv);
            }
        }
        Ok(())
    }
    fn bitlinear__(
        &self,
        w: &BitLinear,
        x: &AlignedVec<f32>,
        rows: usize,
        out: &mut AlignedVec<f32>,
    ) -> Result<()> {
        let (n, k) = (w.weight.rows(), w.weight.cols());
        need(x.len(), rows * k, "bitlinear input")?;
        need(out.len(), rows * n, "bitlinear output")?;
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        w.forward(&x[..rows * k], rows, &mut out[..rows * n], &mut s, &self.pool)
    }
    fn rope__(
        &self,
        x: &mut AlignedVec<f32>,
        rows: &[RowPos],
        heads: usize,
        head_dim: usize,
        rope: Rope,
    ) -> Result<()> {
        let width = heads * head_dim;
        need(x.len(), rows.len() * width, "rope")?;
        let half = head_dim / 2;
        let mut cos = [0f32; 256];
        let mut sin = [0f32; 256];
        let mut freq = [0f32; 256];
        if half > cos.len() {
            return Err(Error::unsupported(format!("head_dim {head_dim} > 512")));
        }
        // The same for every row: computed once per call.
        for (i, f) in freq[..half].iter_mut().enumerate() {
            *f = rope.inv_freq(i, head_dim);
        }
        for (r, rp) in rows.iter().enumerate() {
            for i in 0..half {
                // As HF: angle = pos * inv_freq in f32.
                let a = rp.pos as f32 * freq[i];
                cos[i] = a.cos();
                sin[i] = a.sin();
            }
            for h in 0..heads {
                let v = &mut x[r * width + h * head_dim..r * width + (h + 1) * head_dim];
                for i in 0..half {
                    let (x1, x2) = (v[i], v[i + half]);
                    v[i] = x1 * cos[i] - x2 * sin[i];
                    v[i + half] = x2 * cos[i] + x1 * sin[i];
                }
            }
        }
        Ok(())
    }
    fn store_kv__(
        &self,
        cache: &mut CpuCache,
        layer: usize,
        k: &AlignedVec<f32>,
        v: &AlignedVec<f32>,
        rows: &[RowPos],
    ) -> Result<()> {
        let (kvh, hd) = (cache.shape.kv_heads, cache.shape.head_dim);
        need(k.len(), rows.len() * kvh * hd, "store_kv keys")?;
        need(v.len(), rows.len() * kvh * hd, "store_kv values")?;
        for rp in rows {
            cache.check(rp)?;
        }
        let shape = cache.shape;
        match &mut cache.kv {
            KvStore::F32(p) => Self::store_rows(p, &shape, layer, k, v, rows),
            KvStore::F16(p) => Self::store_rows(p, &shape, layer, k, v, rows),
        }
        Ok(())
    }
    /// [`Backend::store_kv`] into keys and values of type `T` (rows already checked).
    fn store_rows<T: KvElem>(
        p: &mut KvPair<T>,
        s: &CacheShape,
        layer: usize,
        k: &[f32],
        v: &[f32],
        rows: &[RowPos],
    ) {
        let (kvh, hd) = (s.kv_heads, s.head_dim);
        for (r, rp) in rows.iter().enumerate() {
            for h in 0..kvh {
                let dst = offset(s, layer, rp.slot, h, rp.pos);
                let src = r * kvh * hd + h * hd;
                T::store(&mut p.k[dst..dst + hd], &k[src..src + hd]);
                T::store(&mut p.v[dst..dst + hd], &v[src..src + hd]);
            }
        }
    }
    fn attention__(
        &self,
        q: &AlignedVec<f32>,
        cache: &CpuCache,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        out: &mut AlignedVec<f32>,
    ) -> Result<()> {
        let AttnShape { heads, kv_heads, head_dim } = shape;
        if kv_heads == 0 || heads % kv_heads != 0 || head_dim > 256 {
            return Err(Error::invalid(format!(
                "attention with {heads} heads, {kv_heads} kv heads, head_dim {head_dim}"
            )));
        }
        need(q.len(), rows.len() * heads * head_dim, "attention q")?;
        need(out.len(), rows.len() * heads * head_dim, "attention out")?;
        for rp in rows {
            cache.check(rp)?;
        }
        let n = rows.len() * heads * head_dim;
        let (q, out, s) = (&q[..n], &mut out[..n], &cache.shape);
        match &cache.kv {
            KvStore::F32(p) => self.attend_rows(q, p, s, layer, rows, shape, out),
            KvStore::F16(p) => self.attend_rows(q, p, s, layer, rows, shape, out),
        }
        Ok(())
    }
    /// [`Backend::attention`] over keys and values of type `T` (arguments already checked),
    /// one task per (row, head).
    #[allow(clippy::too_many_arguments)]
    fn attend_rows<T: KvElem>(
        &self,
        q: &[f32],
        p: &KvPair<T>,
        s: &CacheShape,
        layer: usize,
        rows: &[RowPos],
        shape: AttnShape,
        out: &mut [f32],
    ) {
        let AttnShape { heads, kv_heads, head_dim } = shape;
        let group = heads / kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.pool.for_each_chunk_mut(out, head_dim, &|task, o| {
            let (r, h) = (task / heads, task % heads);
            let rp = rows[r];
            let qv = &q[task * head_dim..(task + 1) * head_dim];
            let base = offset(s, layer, rp.slot, h / group, 0);
            T::attend(qv, &p.k[base..], &p.v[base..], rp.pos + 1, scale, o);
        });
    }
    /// `gate = act(gate) * up` over the first `len` values (`what` names the op in errors).
    fn gated_mul__(
        gate: &mut AlignedVec<f32>,
        up: &AlignedVec<f32>,
        len: usize,
        what: &str,
        act: impl Fn(f32) -> f32,
    ) -> Result<()> {
        need(gate.len().min(up.len()), len, what)?;
        for (g, &u) in gate[..len].iter_mut().zip(&up[..len]) {
            *g = act(*g) * u;
        }
        Ok(())
    }
    fn add__(&self, x: &mut AlignedVec<f32>, y: &AlignedVec<f32>, len: usize) -> Result<()> {
        need(x.len().min(y.len()), len, "add")?;
        for (a, &b) in x[..len].iter_mut().zip(&y[..len]) {
            *a += b;
        }
        Ok(())
    }
    fn copy__(
        &self,
        src: &AlignedVec<f32>,
        src_off: usize,
        dst: &mut AlignedVec<f32>,
        dst_off: usize,
        len: usize,
    ) -> Result<()> {
        need(src.len(), src_off + len, "copy source")?;
        need(dst.len(), dst_off + len, "copy destination")?;
        dst[dst_off..dst_off + len].copy_from_slice(&src[src_off..src_off + len]);
        Ok(())
    }
    fn logits__(
        &self,
        head: &CpuLmHead,
        x: &AlignedVec<f32>,
        rows: usize,
        out: &mut AlignedVec<f32>,
    ) -> Result<()> {
        match head {
            CpuLmHead::F32(m) => {
                need(x.len(), rows * m.cols, "logits input")?;
                need(out.len(), rows * m.rows, "logits output")?;
                for r in 0..rows {
                    let xr = &x[r * m.cols..(r + 1) * m.cols];
                    let o = &mut out[r * m.rows..(r + 1) * m.rows];
                    self.pool.for_each_chunk_mut(o, 256, &|c, oc| {
                        for (j, v) in oc.iter_mut().enumerate() {
                            let row = c * 256 + j;
                            let w = &m.data[row * m.cols..(row + 1) * m.cols];
                            *v = super::attn::dot16(w, xr);
                        }
                    });
                }
                Ok(())
            }
            CpuLmHead::I8(m) => m.matmul(x, rows, out, &self.pool),
        }
    }
}

#[cfg(test)]
mod tests;
