//! `bitnet-cuda-bench`: the ternary GEMV against the device's copy bandwidth and cuBLAS bf16.
//!
//! For each N x K it times 500 back-to-back GEMV calls with CUDA events, rotating over enough
//! weight copies (> 4x the L2) that nothing stays cache-resident, and reports µs per call, GB/s
//! over the packed weight bytes, and the percentage of the measured device copy bandwidth; then
//! the same for cuBLAS bf16 (`cublasGemmEx`, N x K times a K-vector), the 8-token GEMV and the
//! 128-token tensor-core GEMM. Usage: `bitnet-cuda-bench [--iters N] [--device I] [--rows N (only shapes of N rows)]
//! [--shapes NxK,... (only the one-token GEMV at these shapes)] [--stack POS (only the one-kernel
//! decode step at position POS)] [--pairs (only the RMSNorm + GEMV pairs)]`.

use bitnet_core::{Error, Result};
use bitnet_cuda::cudarc::cublas::{result as blas, sys as bsys, CudaBlas};
use bitnet_cuda::cudarc::driver::{sys, CudaEvent, CudaSlice, DevicePtr, DevicePtrMut};
use bitnet_cuda::layout::PackedTernary;
use bitnet_cuda::ops::{self, DeviceTernary, LmI8, LmKernel, QuantActs};
use bitnet_cuda::Gpu;
use std::sync::Arc;

#[path = "kernel_bench/stack.rs"]
mod stack;

const SHAPES: [(usize, usize); 6] =
    [(2560, 2560), (3840, 2560), (13824, 2560), (2560, 6912), (640, 2560), (6912, 2560)];
/// Microsoft's W2A8 GEMV and cuBLAS bf16 on an H100 (µs), where published.
const ANCHORS: [(Option<f64>, Option<f64>); 6] = [
    (Some(8.4), Some(14.3)),
    (Some(6.1), Some(13.8)),
    (Some(7.9), Some(28.6)),
    (Some(7.6), Some(22.0)),
    (None, None),
    (None, None),
];

fn derr(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("{what}: {e:?}"))
}

struct Timer {
    gpu: Arc<Gpu>,
    a: CudaEvent,
    b: CudaEvent,
}

impl Timer {
    fn new(gpu: &Arc<Gpu>) -> Result<Self> {
        let ev = || {
            gpu.context()
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| derr("event", e))
        };
        Ok(Timer { gpu: gpu.clone(), a: ev()?, b: ev()? })
    }
    /// Milliseconds `f` takes on the stream (after one untimed warm-up call of `f`).
    fn time(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?;
        self.gpu.sync()?;
        self.a.record(self.gpu.stream()).map_err(|e| derr("record", e))?;
        f()?;
        self.b.record(self.gpu.stream()).map_err(|e| derr("record", e))?;
        self.b.synchronize().map_err(|e| derr("event sync", e))?;
        Ok(self.a.elapsed_ms(&self.b).map_err(|e| derr("elapsed", e))? as f64)
    }
    /// Milliseconds one replay of `f`'s launches, captured as a CUDA graph, takes (launch gaps
    /// shrink to the GPU's own; the host's launch rate no longer matters).
    fn time_graph(&self, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        let st = self.gpu.stream();
        f()?;
        self.gpu.sync()?;
        st.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| derr("capture", e))?;
        let r = f();
        let g =
            st.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(|e| derr("end capture", e))?;
        r?;
        let g = g.ok_or_else(|| Error::Device("empty graph".into()))?;
        self.time(|| g.launch().map_err(|e| derr("graph launch", e)))
    }
}

fn copies_for(bytes: usize, l2: usize) -> usize {
    (4 * l2.max(50 << 20)).div_ceil(bytes.max(1)).clamp(2, 512)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// A value in [-1, 1] (steps of 0.001).
    fn unit(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
    fn units(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
}

/// A random N x K ternary matrix on the device: enough copies to total more than 4x the L2
/// when `rotate` (calls cycling over them read HBM), else one. Also its bytes and padded K.
fn device_weights(
    gpu: &Arc<Gpu>,
    rng: &mut Rng,
    (n, k): (usize, usize),
    rotate: bool,
) -> Result<(Vec<DeviceTernary>, usize, usize)> {
    let w: Vec<i8> = (0..n * k).map(|_| (rng.next() % 3) as i8 - 1).collect();
    let packed = PackedTernary::pack(&w, n, k)?;
    let bytes = packed.words().len() * 4;
    let copies = if rotate { copies_for(bytes, gpu.info().l2_bytes) } else { 1 };
    let ws =
        (0..copies).map(|_| DeviceTernary::upload(gpu, &packed, 0.02)).collect::<Result<_>>()?;
    Ok((ws, bytes, packed.padded_cols()))
}

/// Device copy bandwidth (bytes read + written per second).
fn copy_bandwidth(gpu: &Arc<Gpu>, t: &Timer) -> Result<f64> {
    let n = 1usize << 30;
    let src = ops::zeros::<u8>(gpu, n)?;
    let mut dst = ops::zeros::<u8>(gpu, n)?;
    let reps = 20;
    let ms = t.time(|| {
        for _ in 0..reps {
            gpu.stream().memcpy_dtod(&src, &mut dst).map_err(|e| derr("copy", e))?;
        }
        Ok(())
    })?;
    Ok(2.0 * n as f64 * reps as f64 / (ms * 1e-3))
}

struct Row {
    /// µs per call, calls captured in a graph.
    us: f64,
    /// GB/s over the weight bytes at `us`.
    gbs: f64,
    /// µs per call, launched one by one from the host.
    us_launch: f64,
}

/// Times `iters` ternary matmuls of `m` rows at N x K; `rotate` cycles the calls over copies
/// of the weights totalling more than 4x L2 (HBM reads), otherwise every call reads the same
/// (L2-resident) copy, as the anchors' 500 back-to-back calls did.
fn bench_ternary(
    gpu: &Arc<Gpu>,
    t: &Timer,
    (n, k, m): (usize, usize, usize),
    iters: usize,
    rotate: bool,
) -> Result<Row> {
    let mut rng = Rng(n as u64 * 7 + k as u64);
    let (ws, bytes, kp) = device_weights(gpu, &mut rng, (n, k), rotate)?;
    let copies = ws.len();
    let dx = ops::upload(gpu, &rng.units(m * k))?;
    let mut q = QuantActs::new(gpu, m, kp)?;
    ops::quantize_act(gpu, &dx, k, m, &mut q)?;
    let mut out = ops::zeros::<f32>(gpu, m * n)?;
    let mut calls = || {
        for i in 0..iters {
            ops::ternary_matmul(gpu, &ws[i % copies], &q, m, &mut out)?;
        }
        Ok(())
    };
    let launched = t.time(&mut calls)? * 1e-3 / iters as f64;
    let s = t.time_graph(&mut calls)? * 1e-3 / iters as f64;
    Ok(Row { us: s * 1e6, gbs: bytes as f64 / s / 1e9, us_launch: launched * 1e6 })
}

/// µs per read-only stream (`ops::read_xor`) of `bytes` bytes, `iters` calls in a graph
/// rotating over copies totalling more than 4x L2: the floor for a kernel that reads that many
/// weight bytes once, launched the way the GEMV is.
fn bench_read(gpu: &Arc<Gpu>, t: &Timer, bytes: usize, iters: usize) -> Result<f64> {
    let words = bytes.div_ceil(16);
    let copies = copies_for(16 * words, gpu.info().l2_bytes);
    let bufs =
        (0..copies).map(|_| ops::zeros::<u8>(gpu, 16 * words)).collect::<Result<Vec<_>>>()?;
    let mut out = ops::zeros::<u32>(gpu, ops::read_xor_blocks(gpu, words))?;
    let ms = t.time_graph(|| {
        for i in 0..iters {
            ops::read_xor(gpu, &bufs[i % copies], words, &mut out)?;
        }
        Ok(())
    })?;
    Ok(ms * 1e3 / iters as f64)
}

fn bench_cublas(
    gpu: &Arc<Gpu>,
    t: &Timer,
    blas: &CudaBlas,
    n: usize,
    k: usize,
    iters: usize,
) -> Result<Row> {
    let bytes = 2 * n * k;
    let copies = copies_for(bytes, gpu.info().l2_bytes);
    let mut rng = Rng(3);
    let wv: Vec<u16> = (0..n * k).map(|_| half::bf16::from_f32(rng.unit()).to_bits()).collect();
    let ws: Vec<CudaSlice<u16>> =
        (0..copies).map(|_| ops::upload(gpu, &wv)).collect::<Result<_>>()?;
    let x = ops::upload(gpu, &wv[..k])?;
    let mut y = ops::zeros::<u16>(gpu, n)?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let st = gpu.stream();
    let mut calls = || {
        for i in 0..iters {
            let (wp, _g1) = ws[i % copies].device_ptr(st);
            let (xp, _g2) = x.device_ptr(st);
            let (yp, _g3) = y.device_ptr_mut(st);
            // SAFETY: W is K x N column-major (row-major N x K), x has K and y has N values; the
            // pointers are live device buffers on the handle's stream.
            unsafe {
                blas::gemm_ex(
                    *blas.handle(),
                    bsys::cublasOperation_t::CUBLAS_OP_T,
                    bsys::cublasOperation_t::CUBLAS_OP_N,
                    n as i32,
                    1,
                    k as i32,
                    (&alpha as *const f32).cast(),
                    wp as *const _,
                    bsys::cudaDataType::CUDA_R_16BF,
                    k as i32,
                    xp as *const _,
                    bsys::cudaDataType::CUDA_R_16BF,
                    k as i32,
                    (&beta as *const f32).cast(),
                    yp as *mut _,
                    bsys::cudaDataType::CUDA_R_16BF,
                    n as i32,
                    bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| derr("cublasGemmEx", e))?;
        }
        Ok(())
    };
    let launched = t.time(&mut calls)? * 1e-3 / iters as f64;
    let s = t.time_graph(&mut calls)? * 1e-3 / iters as f64;
    Ok(Row { us: s * 1e6, gbs: bytes as f64 / s / 1e9, us_launch: launched * 1e6 })
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, def: usize| -> Result<usize> {
        match args.iter().position(|a| a == name) {
            Some(i) => args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::invalid(format!("{name} needs a number"))),
            None => Ok(def),
        }
    };
    let iters = arg("--iters", 500)?.max(1);
    let only = arg("--rows", 0)?;
    let gpu = Gpu::open(arg("--device", 0)?)?;
    println!(
        "device: {} ({:.1} GiB, L2 {} MiB); kernels compiled in {:.2} s",
        gpu.info(),
        gpu.info().total_mem as f64 / (1u64 << 30) as f64,
        gpu.info().l2_bytes >> 20,
        gpu.compile_seconds()
    );
    let t = Timer::new(&gpu)?;
    let copy = copy_bandwidth(&gpu, &t)?;
    println!("device copy: {:.0} GB/s (bytes read + written)", copy / 1e9);
    if args.iter().any(|a| a == "--stack") {
        return stack::bench_stack(&gpu, &t, arg("--stack", 128)?, iters.min(100));
    }
    if args.iter().any(|a| a == "--pairs") {
        return bench_norm_gemv(&gpu, &t, iters);
    }
    if let Some(i) = args.iter().position(|a| a == "--shapes") {
        let list = args.get(i + 1).ok_or_else(|| Error::invalid("--shapes needs NxK[,NxK...]"))?;
        return sweep_shapes(&gpu, &t, list, iters, copy);
    }
    // SAFETY: only checks whether libcublas can be opened.
    let blas = if unsafe { bsys::is_culib_present() } {
        Some(CudaBlas::new(gpu.stream().clone()).map_err(|e| derr("cuBLAS", e))?)
    } else {
        println!("cuBLAS not found: its column is skipped");
        None
    };
    println!("\n{iters} back-to-back calls captured in a CUDA graph (in brackets: launched one by one), weights");
    println!("rotated over > 4x L2. GB/s counts packed weight bytes (2 bits/weight); cuBLAS timed the same way.");
    println!("\"same weights\": every call reads one copy (L2-resident, the anchors' method); the other columns rotate.");
    println!("\"read\": a read-only stream of the same bytes (ops::read_xor), the floor for one pass over them.");
    println!("| N x K | GEMV M=1 µs | GB/s | % copy | read µs | same weights µs | MS W2A8 µs | cuBLAS bf16 µs | (H100 anchor) | M=8 µs | GEMM M=16 µs | M=64 µs | M=128 µs |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (&(n, k), &(ms_anchor, blas_anchor)) in SHAPES.iter().zip(&ANCHORS) {
        if only != 0 && n != only {
            continue;
        }
        let g1 = bench_ternary(&gpu, &t, (n, k, 1), iters, true)?;
        let read = bench_read(&gpu, &t, n.div_ceil(8) * 8 * k.div_ceil(64) * 16, iters)?;
        let same = bench_ternary(&gpu, &t, (n, k, 1), iters, false)?;
        let g8 = bench_ternary(&gpu, &t, (n, k, 8), iters, true)?;
        let g16 = bench_ternary(&gpu, &t, (n, k, 16), iters.min(200), true)?;
        let g64 = bench_ternary(&gpu, &t, (n, k, 64), iters.min(200), true)?;
        let gm = bench_ternary(&gpu, &t, (n, k, 128), iters.min(100), true)?;
        let cb = match &blas {
            Some(b) => Some(bench_cublas(&gpu, &t, b, n, k, iters)?),
            None => None,
        };
        let cbs = cb.map_or("-".into(), |r| format!("{:.1} ({:.1})", r.us, r.us_launch));
        println!(
            "| {n}x{k} | {:.2} ({:.2}) | {:.0} | {:.0}% | {read:.2} | {:.2} | {} | {cbs} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            g1.us,
            g1.us_launch,
            g1.gbs,
            100.0 * g1.gbs * 1e9 / copy,
            same.us,
            opt(ms_anchor),
            opt(blas_anchor),
            g8.us,
            g16.us,
            g64.us,
            gm.us
        );
    }
    bench_norm_gemv(&gpu, &t, iters)?;
    bench_lm_head(&gpu, &t, copy)
}

/// `--shapes NxK,...`: only the one-token GEMV (rotated and same weights) at each given shape.
fn sweep_shapes(gpu: &Arc<Gpu>, t: &Timer, list: &str, iters: usize, copy: f64) -> Result<()> {
    println!(
        "| N x K | GEMV M=1 µs | % copy | same weights µs | read-only stream µs |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for shape in list.split(',') {
        let dims =
            shape.split_once('x').and_then(|(n, k)| Some((n.parse().ok()?, k.parse().ok()?)));
        let Some((n, k)) = dims.filter(|&(n, k): &(usize, usize)| n > 0 && k > 0) else {
            return Err(Error::invalid(format!("--shapes: '{shape}' is not NxK")));
        };
        let g1 = bench_ternary(gpu, t, (n, k, 1), iters, true)?;
        let same = bench_ternary(gpu, t, (n, k, 1), iters, false)?;
        let read = bench_read(gpu, t, n.div_ceil(8) * 8 * k.div_ceil(64) * 16, iters)?;
        let pct = 100.0 * g1.gbs * 1e9 / copy;
        println!("| {n}x{k} | {:.2} | {pct:.0}% | {:.2} | {read:.2} |", g1.us, same.us);
    }
    Ok(())
}

/// One token's RMSNorm then GEMV, as two kernels and as the fused kernel, for the 2B-4T
/// projections (each with the norm input and the output it has in a decode step: o and down
/// add into the residual stream); weights rotated.
fn bench_norm_gemv(gpu: &Arc<Gpu>, t: &Timer, iters: usize) -> Result<()> {
    println!(
        "\nRMSNorm + GEMV at one token, {iters} pairs in a graph (µs per pair, weights rotated):"
    );
    println!("| N x K | norm input | output | norm kernel + GEMV | fused |");
    println!("| --- | --- | --- | ---: | ---: |");
    // (N, K, relu² input, output added into)
    let pairs = [
        (3840, 2560, false, false),
        (2560, 2560, false, true),
        (13824, 2560, false, false),
        (2560, 6912, true, true),
    ];
    for (n, k, relu2, add) in pairs {
        let mut rng = Rng(n as u64 + 3 * k as u64);
        let (ws, _, kp) = device_weights(gpu, &mut rng, (n, k), true)?;
        let copies = ws.len();
        let (x, y) = (ops::upload(gpu, &rng.units(k))?, ops::upload(gpu, &rng.units(k))?);
        let nw = ops::upload(gpu, &vec![1.0f32; k])?;
        let mut xn = ops::zeros::<f32>(gpu, k)?;
        let mut q = QuantActs::new(gpu, 1, kp)?;
        let mut out = ops::zeros::<f32>(gpu, n)?;
        let mut two = || {
            for i in 0..iters {
                let o = Some(&mut q);
                if relu2 {
                    ops::relu2_rms_norm(gpu, &x, &y, &nw, k, 1e-5, 1, &mut xn, o)?;
                } else {
                    ops::rms_norm(gpu, &x, &nw, k, 1e-5, 1, &mut xn, o)?;
                }
                let w = &ws[i % copies];
                if add {
                    ops::ternary_matmul_add(gpu, w, &q, 1, &mut out)?;
                } else {
                    ops::ternary_matmul(gpu, w, &q, 1, &mut out)?;
                }
            }
            Ok(())
        };
        let a = t.time_graph(&mut two)? * 1e3 / iters as f64;
        let mut fused = || {
            for i in 0..iters {
                let src = if relu2 { ops::NormSrc::Relu2(&x, &y) } else { ops::NormSrc::Plain(&x) };
                let (w, outs) = (&ws[i % copies], &mut [&mut out]);
                ops::norm_ternary_gemv(gpu, src, Some(&nw), 1e-5, &mut xn, &mut q, w, outs, add)?;
            }
            Ok(())
        };
        let b = t.time_graph(&mut fused)? * 1e3 / iters as f64;
        let what = if relu2 { "relu² x up" } else { "plain" };
        let to = if add { "added" } else { "written" };
        println!("| {n}x{k} | {what} | {to} | {a:.2} | {b:.2} |");
    }
    Ok(())
}

/// The 2B-4T int8 lm_head (128256 x 2560): both kernels at several token counts.
fn bench_lm_head(gpu: &Arc<Gpu>, t: &Timer, copy: f64) -> Result<()> {
    let (v, d) = (128_256, 2560);
    let mut rng = Rng(99);
    let q: Vec<i8> = (0..v * d).map(|_| (rng.next() % 255) as i8).collect();
    let s: Vec<f32> = (0..v).map(|i| 1e-3 * (1 + i % 7) as f32).collect();
    let head = LmI8::upload(gpu, &q, &s, v, d)?;
    let dx = ops::upload(gpu, &rng.units(64 * d))?;
    let mut out = ops::zeros::<f32>(gpu, 64 * v)?;
    println!("\nint8 lm_head {v}x{d} ({:.0} MB), 20 calls in a graph:", (v * d) as f64 / 1e6);
    println!("| tokens | tensor cores µs | % copy | CUDA cores µs |");
    println!("| ---: | ---: | ---: | ---: |");
    for m in [1, 8, 16, 64] {
        let mut time = |k: LmKernel| -> Result<f64> {
            let mut calls = || {
                for _ in 0..20 {
                    ops::lm_head_i8_with(gpu, &head, &dx, m, &mut out, k)?;
                }
                Ok(())
            };
            Ok(t.time_graph(&mut calls)? * 1e3 / 20.0)
        };
        let (a, b) = (time(LmKernel::Mma)?, time(LmKernel::Simt)?);
        let pct = 100.0 * (v * d) as f64 / (a * 1e-6) / copy;
        println!("| {m} | {a:.1} | {pct:.0}% | {b:.1} |");
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
