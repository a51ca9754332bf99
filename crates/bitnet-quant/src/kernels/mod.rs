//! Ternary × int8 kernels on the canonical [`I2sMatrix`] layout.
//!
//! For output row `r` and a token quantized to `xq` with [`ActScale`] `a`, every variant
//! computes the exact integer `acc = Σ_k code[r, k] · xq[k]` (codes 0, 1, 2 = weight + 1)
//! and then the one f32 formula [`finish`]: `y = (acc − a.sum) as f32 / a.scale * s_w`,
//! so all variants give bit-identical outputs.
//!
//! Variants ([`Kernel`]): `scalar` (the readable reference); on x86-64 `avx2` (`vpmaddubsw`),
//! `avx2-vnni` (AVX-VNNI `vpdpbusd`), `avx512` (AVX-512BW `vpmaddubsw`) and `avx512-vnni`; on
//! aarch64 `neon` (`smull`) and `neon-dotprod` (`sdot`). The best available one is chosen at
//! run time; the environment variable
//! `BITNET_KERNEL=scalar|avx2|avx2-vnni|avx512|avx512-vnni|neon|neon-dotprod|auto` overrides it
//! (read once).
//! Work is split over output rows on a [`ThreadPool`].
//!
//! Activations: `xq` holds `padded_cols` entries per token, zero past `cols`, and
//! `a.sum` is their sum, as [`crate::quantize::quantize_row`] writes them.

use crate::formats::i2s::I2sMatrix;
use crate::quantize::ActScale;
use bitnet_core::{Error, Result, ThreadPool};
use std::ops::Range;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;
pub mod scalar;

/// The environment variable that pins a kernel variant.
pub const ENV_VAR: &str = "BITNET_KERNEL";

/// A kernel variant (instruction set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, the reference.
    Scalar,
    /// AVX2 with `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX2 with AVX-VNNI `vpdpbusd`.
    Avx2Vnni,
    /// AVX-512BW with `vpmaddubsw` + `vpmaddwd`.
    Avx512,
    /// AVX-512BW with AVX512-VNNI `vpdpbusd`.
    Avx512Vnni,
    /// aarch64 NEON with `smull` + `sadalp`.
    Neon,
    /// aarch64 NEON with the dot-product extension's `sdot`.
    NeonDotprod,
}

impl Kernel {
    /// All variants, slowest first among those of one architecture.
    pub const ALL: [Kernel; 7] = [
        Kernel::Scalar,
        Kernel::Avx2,
        Kernel::Avx2Vnni,
        Kernel::Avx512,
        Kernel::Avx512Vnni,
        Kernel::Neon,
        Kernel::NeonDotprod,
    ];

    /// The name used by `BITNET_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx2Vnni => "avx2-vnni",
            Kernel::Avx512 => "avx512",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Neon => "neon",
            Kernel::NeonDotprod => "neon-dotprod",
        }
    }

    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Kernel::Scalar => true,
                Kernel::Avx2 => has!("avx2"),
                Kernel::Avx2Vnni => has!("avx2") && has!("avxvnni"),
                Kernel::Avx512 => has!("avx512f") && has!("avx512bw"),
                Kernel::Avx512Vnni => has!("avx512f") && has!("avx512bw") && has!("avx512vnni"),
                Kernel::Neon | Kernel::NeonDotprod => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            match self {
                Kernel::Scalar | Kernel::Neon => true,
                Kernel::NeonDotprod => has!("dotprod"),
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Kernel::Scalar
        }
    }

    /// The variants this CPU can run, slowest first.
    pub fn available() -> Vec<Kernel> {
        Kernel::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// The fastest variant this CPU can run.
    pub fn detect() -> Kernel {
        Kernel::ALL.into_iter().rev().find(|k| k.is_available()).unwrap_or(Kernel::Scalar)
    }

    /// `self`, or an error if this CPU cannot run it.
    pub fn ensure_available(self) -> Result<Kernel> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::unsupported(format!("kernel `{self}` on this CPU")))
        }
    }

    /// Parses a name (`auto` and the empty string mean [`Kernel::detect`]) and checks that
    /// this CPU can run it.
    pub fn parse_available(name: &str) -> Result<Kernel> {
        match name.trim() {
            "" | "auto" => Ok(Kernel::detect()),
            s => s.parse::<Kernel>()?.ensure_available(),
        }
    }

    /// The variant `BITNET_KERNEL` asks for (read now), or [`Kernel::detect`] when unset.
    pub fn from_env() -> Result<Kernel> {
        match std::env::var(ENV_VAR) {
            Ok(v) => Kernel::parse_available(&v).map_err(|e| e.context(format!("{ENV_VAR}={v}"))),
            Err(std::env::VarError::NotPresent) => Ok(Kernel::detect()),
            Err(e) => Err(Error::invalid(format!("{ENV_VAR}: {e}"))),
        }
    }

    /// [`Kernel::from_env`], evaluated once per process: the variant the kernels use.
    pub fn select() -> Result<Kernel> {
        static SELECTED: OnceLock<std::result::Result<Kernel, String>> = OnceLock::new();
        SELECTED
            .get_or_init(|| Kernel::from_env().map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::invalid)
    }
}

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Kernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase();
        Kernel::ALL.into_iter().find(|k| k.name() == l).ok_or_else(|| {
            let names: Vec<_> = Kernel::ALL.iter().map(|k| k.name()).collect();
            Error::invalid(format!("unknown kernel `{s}` (expected auto, {})", names.join(", ")))
        })
    }
}

/// The one output formula: `(acc − Σxq) / s_a * s_w` in f32, shared by every variant.
#[inline(always)]
pub fn finish(acc: i32, act: ActScale, s_w: f32) -> f32 {
    (acc - act.sum) as f32 / act.scale * s_w
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks of one call write disjoint output rows (see `Job::out`), and the call waits
// for all of them before the borrowed `&mut [f32]` is released.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// One GEMV/GEMM call, as the per-ISA kernels see it.
pub(crate) struct Job<'a> {
    /// The packed rows (`rows * row_bytes` bytes).
    pub w: &'a [u8],
    /// Bytes per packed row.
    pub row_bytes: usize,
    /// Weight scale.
    pub s_w: f32,
    /// `n_tok` activation rows of `4 * row_bytes` entries.
    pub xq: &'a [i8],
    /// One scale per token.
    pub acts: &'a [ActScale],
    /// Output `[n_tok][rows]`: element `(t, r)` at `out.0.add(t * rows + r)`. A task given
    /// rows `a..b` writes only those columns.
    pub out: OutPtr,
    /// Output row stride (the matrix's row count).
    pub rows: usize,
}

impl Job<'_> {
    /// Writes output `(t, r)`.
    ///
    /// # Safety
    /// `t < acts.len()`, `r < rows`, and no other task writes row `r`.
    #[inline(always)]
    pub(crate) unsafe fn store(&self, t: usize, r: usize, acc: i32) {
        let y = finish(acc, self.acts[t], self.s_w);
        // SAFETY: in bounds of the `n_tok * rows` output by the caller's contract.
        unsafe { *self.out.0.add(t * self.rows + r) = y };
    }
}

fn run_rows(kernel: Kernel, job: &Job, rows: Range<usize>) {
    match kernel {
        Kernel::Scalar => scalar::run(job, rows),
        // SAFETY (all arms below): `kernel` was checked with `ensure_available`, so the CPU
        // has the features each function enables; `job`'s lengths were checked in `launch`.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { avx2::run_maddubs(job, rows) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Vnni => unsafe { avx2::run_vnni(job, rows) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { avx512::run_maddubs(job, rows) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { avx512::run_vnni(job, rows) },
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => unsafe { neon::run_neon(job, rows) },
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonDotprod => unsafe { neon::run_dotprod(job, rows) },
        // Variants of another architecture are never available (`ensure_available`).
        #[allow(unreachable_patterns)]
        _ => scalar::run(job, rows),
    }
}

/// Tokens per pass of the multi-token GEMV, at most. Each variant decides up to how many tokens
/// a call takes the passes instead of its cache-blocked GEMM (its `GEMV_MAX_TOKENS`).
const GEMV_PASS_TOKENS: usize = 4;

/// The passes of the multi-token GEMV over `n_tok` tokens: (first token, tokens).
pub(crate) fn gemv_passes(n_tok: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n_tok).step_by(GEMV_PASS_TOKENS).map(move |t0| (t0, (n_tok - t0).min(GEMV_PASS_TOKENS)))
}

/// The multi-row integer dots of a SIMD variant, for [`gemv_rows`].
pub(crate) trait RowDots {
    /// Integer dot products of the `S` rows at `w[s]` with the `T` token rows at `x[t]`, `U`
    /// blocks per loop iteration.
    ///
    /// # Safety
    /// `row_bytes` bytes at each `w[s]` and `4 * row_bytes` activations at each `x[t]` are
    /// readable, and the CPU has the variant's features (the caller enabled them).
    unsafe fn dots<const S: usize, const U: usize, const T: usize>(
        w: [*const u8; S],
        row_bytes: usize,
        x: [*const i8; T],
    ) -> [[i32; T]; S];
}

/// GEMV over `rows` for the `T` tokens from `t0` with `K`'s dots: the range is cut into `S`
/// equal segments walked in step, so that several far-apart sequential streams are in flight.
/// Measured on the EPYC dev box: one row at a time reached ~85% of a single-stream read, two
/// segments ~105%; interleaving neighbouring rows (4 close streams) only ~55%, with or
/// without software prefetch.
///
/// # Safety
/// As `K::dots`; `rows` and the tokens `t0..t0 + T` lie inside `job`.
#[inline(always)]
pub(crate) unsafe fn gemv_rows<K: RowDots, const S: usize, const U: usize, const T: usize>(
    job: &Job,
    rows: Range<usize>,
    t0: usize,
) {
    // SAFETY: every row index below lies in `rows`, every token in t0..t0 + T.
    unsafe {
        let (w, rb) = (job.w.as_ptr(), job.row_bytes);
        let x: [*const i8; T] = std::array::from_fn(|t| job.xq.as_ptr().add((t0 + t) * rb * 4));
        let seg = rows.len() / S;
        for r in rows.start..rows.start + seg {
            let mut at = [w; S];
            for (s, p) in at.iter_mut().enumerate() {
                *p = w.add((r + s * seg) * rb);
            }
            let acc = K::dots::<S, U, T>(at, rb, x);
            for (s, acc) in acc.iter().enumerate() {
                for (t, &a) in acc.iter().enumerate() {
                    job.store(t0 + t, r + s * seg, a);
                }
            }
        }
        for r in rows.start + S * seg..rows.end {
            let [acc] = K::dots::<1, U, T>([w.add(r * rb)], rb, x);
            for (t, &a) in acc.iter().enumerate() {
                job.store(t0 + t, r, a);
            }
        }
    }
}

/// The tile dots of a SIMD variant's GEMM, for [`gemm_blocked`].
pub(crate) trait TileDots {
    /// Integer dot products of the `R` rows at `w` (stride `row_bytes`) with the `T` token rows
    /// at `x` (stride `4 * row_bytes`), whole rows.
    ///
    /// # Safety
    /// Those rows are readable, and the CPU has the variant's features (the caller enabled them).
    unsafe fn tile<const R: usize, const T: usize>(
        w: *const u8,
        row_bytes: usize,
        x: *const i8,
    ) -> [[i32; T]; R];
}

/// GEMM over `rows` for every token of `job` in tiles of `R` rows × `T` tokens (`T` at most
/// 4), blocked so that a block of weight rows (`l2_bytes`) stays in L2 while a block of tokens'
/// activations (`l1_bytes`) stays in L1; rows past the last whole `R` take tiles of one row,
/// tokens past the last whole `T` one tile of the rest.
///
/// # Safety
/// As `K::tile`; `rows` lie inside `job`.
#[inline(always)]
pub(crate) unsafe fn gemm_blocked<K: TileDots, const R: usize, const T: usize>(
    job: &Job,
    rows: Range<usize>,
    l2_bytes: usize,
    l1_bytes: usize,
) {
    // SAFETY: every row below lies in `rows`, every token below n_tok.
    unsafe {
        let (rb, n_tok) = (job.row_bytes, job.acts.len());
        let block_rows = (l2_bytes / rb / R).max(1) * R;
        let block_toks = (l1_bytes / (4 * rb) / T).max(1) * T;
        let mut r0 = rows.start;
        while r0 < rows.end {
            let r1 = (r0 + block_rows).min(rows.end);
            let mut t0 = 0;
            while t0 < n_tok {
                let t1 = (t0 + block_toks).min(n_tok);
                let mut r = r0;
                while r + R <= r1 {
                    gemm_row_group::<K, R, T>(job, r, t0..t1);
                    r += R;
                }
                for r in r..r1 {
                    gemm_row_group::<K, 1, T>(job, r, t0..t1);
                }
                t0 = t1;
            }
            r0 = r1;
        }
    }
}

/// Tiles of `R` rows from row `r` over the tokens `toks` (see [`gemm_blocked`]).
#[inline(always)]
unsafe fn gemm_row_group<K: TileDots, const R: usize, const T: usize>(
    job: &Job,
    r: usize,
    toks: Range<usize>,
) {
    /// Stores a tile's dots (rows from `r`, tokens from `t`).
    #[inline(always)]
    unsafe fn store<const R: usize, const T: usize>(
        job: &Job,
        r: usize,
        t: usize,
        acc: [[i32; T]; R],
    ) {
        for (i, row) in acc.iter().enumerate() {
            for (j, &a) in row.iter().enumerate() {
                // SAFETY: the caller's rows and tokens lie inside `job`.
                unsafe { job.store(t + j, r + i, a) };
            }
        }
    }
    const { assert!(T <= 4, "the remainder below covers up to 3 tokens") };
    // SAFETY: rows r..r + R and tokens `toks` lie inside `job` (caller).
    unsafe {
        let rb = job.row_bytes;
        let w = job.w.as_ptr().add(r * rb);
        let x = |t: usize| job.xq.as_ptr().add(t * rb * 4);
        let mut t = toks.start;
        while t + T <= toks.end {
            store(job, r, t, K::tile::<R, T>(w, rb, x(t)));
            t += T;
        }
        match toks.end - t {
            0 => {}
            1 => store(job, r, t, K::tile::<R, 1>(w, rb, x(t))),
            2 => store(job, r, t, K::tile::<R, 2>(w, rb, x(t))),
            _ => store(job, r, t, K::tile::<R, 3>(w, rb, x(t))),
        }
    }
}

/// Output rows per task are a multiple of this (whole cache lines of f32 outputs).
const ROW_ALIGN: usize = 16;
/// Below this many weight bytes × tokens a call runs on the calling thread alone.
const MIN_PARALLEL_WORK: usize = 64 * 1024;

fn launch(
    kernel: Kernel,
    m: &I2sMatrix,
    xq: &[i8],
    acts: &[ActScale],
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<()> {
    let kernel = kernel.ensure_available()?;
    let (n_tok, k) = (acts.len(), m.padded_cols());
    if xq.len() != n_tok * k || out.len() != n_tok * m.rows() {
        return Err(Error::shape(format!(
            "{} x {} (padded {k}) ternary matmul of {n_tok} tokens needs {} activations and \
             {} outputs, got {} and {}",
            m.rows(),
            m.cols(),
            n_tok * k,
            n_tok * m.rows(),
            xq.len(),
            out.len()
        )));
    }
    if n_tok == 0 {
        return Ok(());
    }
    let job = Job {
        w: m.bytes(),
        row_bytes: m.row_bytes(),
        s_w: m.scale(),
        xq,
        acts,
        out: OutPtr(out.as_mut_ptr()),
        rows: m.rows(),
    };
    let work = m.bytes().len().saturating_mul(n_tok);
    if pool.n_threads() == 1 || work < MIN_PARALLEL_WORK || m.rows() <= ROW_ALIGN {
        run_rows(kernel, &job, 0..m.rows());
    } else {
        let per_thread = if n_tok == 1 { 2 } else { 4 };
        pool.run_chunks(m.rows(), ROW_ALIGN, per_thread, &|r| run_rows(kernel, &job, r));
    }
    Ok(())
}

/// `out[r] = Σ_k W[r, k] · xq[k] * s_w / act.scale` for one token (`xq`: `padded_cols`
/// entries), with the kernel chosen by [`Kernel::select`].
pub fn gemv(
    m: &I2sMatrix,
    xq: &[i8],
    act: ActScale,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<()> {
    gemv_with(Kernel::select()?, m, xq, act, out, pool)
}

/// [`gemv`] with an explicit kernel variant (an error if this CPU lacks it).
pub fn gemv_with(
    kernel: Kernel,
    m: &I2sMatrix,
    xq: &[i8],
    act: ActScale,
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<()> {
    launch(kernel, m, xq, std::slice::from_ref(&act), out, pool)
}

/// GEMV for `acts.len()` tokens at once: `xq` is `n_tok × padded_cols`, `out` is
/// `n_tok × rows` (token-major). Weight blocks are reused across a tile of tokens.
pub fn gemm(
    m: &I2sMatrix,
    xq: &[i8],
    acts: &[ActScale],
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<()> {
    gemm_with(Kernel::select()?, m, xq, acts, out, pool)
}

/// [`gemm`] with an explicit kernel variant (an error if this CPU lacks it).
pub fn gemm_with(
    kernel: Kernel,
    m: &I2sMatrix,
    xq: &[i8],
    acts: &[ActScale],
    out: &mut [f32],
    pool: &ThreadPool,
) -> Result<()> {
    launch(kernel, m, xq, acts, out, pool)
}

/// Quantizes one row with `kernel` (already checked available); `out.len() == x.len()`.
pub(crate) fn quantize_row_unchecked(kernel: Kernel, x: &[f32], out: &mut [i8]) -> ActScale {
    debug_assert_eq!(x.len(), out.len());
    match kernel {
        // SAFETY: the caller checked that the CPU has the variant's features.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx512Vnni => unsafe { avx512::quantize_row(x, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx2Vnni => unsafe { avx2::quantize_row(x, out) },
        // SAFETY: NEON is part of every aarch64 CPU.
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon | Kernel::NeonDotprod => unsafe { neon::quantize_row(x, out) },
        _ => crate::quantize::quantize_row_scalar(x, out),
    }
}

#[cfg(test)]
mod tests;
