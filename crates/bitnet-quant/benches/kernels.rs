//! Kernel benchmarks: GEMV (decode) and GEMM (prefill, 128 tokens) per kernel variant and
//! thread count, a memory-bandwidth baseline, and the thread pool's dispatch cost vs rayon.
//!
//! `cargo bench -p bitnet-quant --bench kernels` runs everything in a few minutes;
//! add a filter to run a part: `-- gemv/`, `-- gemv_hot`, `-- gemm_batch`, `-- gemm/`,
//! `-- membw`, `-- pool`, or e.g. `-- 'gemv/avx512-vnni/2t'`.
//!
//! GEMV rotates over enough distinct weight matrices (72 MB; `BITNET_BENCH_ROTATION_MB=N`
//! changes it) that every call reads its weights from DRAM, not from the 32 MB L3;
//! `gemv_hot` calls one matrix again and again (L3-resident: the compute ceiling).
//! GEMV throughput is weight bytes per second (GB/s); GEMM's is tokens per second ("elem/s").

use bitnet_core::{DType, Tensor, ThreadPool};
use bitnet_quant::formats::i2s::{I2sMatrix, TAIL_BYTES};
use bitnet_quant::kernels::{gemm_with, gemv_with, Kernel};
use bitnet_quant::quantize::{quantize_row_with, ActScale};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Mutex;
use std::time::Duration;

/// (rows, cols) of the 2B-4T projections.
const SHAPES: [(usize, usize); 4] = [(2560, 2560), (640, 2560), (6912, 2560), (2560, 6912)];
/// Distinct weight bytes each GEMV rotates over, by default (more than twice a 32 MB L3);
/// `BITNET_BENCH_ROTATION_MB` overrides it for machines with a larger L3.
const ROTATION_BYTES: usize = 72 << 20;
const GEMM_TOKENS: usize = 128;
/// Tokens per call of the batched-decode group.
const BATCH_TOKENS: [usize; 3] = [2, 4, 8];
const MEMBW_BYTES: usize = 256 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A random ternary matrix, packed directly as I2_S bytes (4 random codes of 0..=2 a byte).
fn random_matrix(rows: usize, cols: usize, rng: &mut Rng) -> I2sMatrix {
    let n = rows * cols / 4;
    let mut bytes = vec![0u8; n + TAIL_BYTES];
    for b in &mut bytes[..n] {
        let mut v = rng.next();
        for _ in 0..4 {
            *b = (*b << 2) | (v % 3) as u8;
            v /= 3;
        }
    }
    bytes[n..n + 4].copy_from_slice(&0.02f32.to_le_bytes());
    let t = Tensor::from_bytes(DType::U8, [bytes.len()], &bytes).expect("tensor");
    I2sMatrix::from_i2s_tensor(t, rows, cols).expect("matrix")
}

fn rotation_bytes() -> usize {
    std::env::var("BITNET_BENCH_ROTATION_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(ROTATION_BYTES, |mb| mb << 20)
}

fn random_acts(n_tok: usize, cols: usize, rng: &mut Rng) -> (Vec<i8>, Vec<ActScale>) {
    let mut xq = vec![0i8; n_tok * cols];
    let acts = xq
        .chunks_exact_mut(cols)
        .map(|q| {
            let x: Vec<f32> =
                (0..cols).map(|_| (rng.next() % 2001) as f32 / 100.0 - 10.0).collect();
            quantize_row_with(Kernel::Scalar, &x, q).expect("quantize")
        })
        .collect();
    (xq, acts)
}

fn bench_gemv(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut g = c.benchmark_group("gemv");
    for (rows, cols) in SHAPES {
        let bytes = rows * cols / 4;
        let count = rotation_bytes().div_ceil(bytes);
        let ms: Vec<I2sMatrix> = (0..count).map(|_| random_matrix(rows, cols, &mut rng)).collect();
        let (xq, acts) = random_acts(1, cols, &mut rng);
        let mut out = vec![0f32; rows];
        g.throughput(Throughput::BytesDecimal(bytes as u64));
        for kernel in Kernel::available() {
            for pool in &pools {
                let id = format!("{kernel}/{}t/{rows}x{cols}", pool.n_threads());
                let mut i = 0;
                g.bench_function(id, |b| {
                    b.iter(|| {
                        i = (i + 1) % ms.len();
                        gemv_with(kernel, &ms[i], &xq, acts[0], &mut out, pool).expect("gemv");
                    })
                });
            }
        }
    }
    g.finish();
}

/// GEMV on one matrix called again and again (its weights stay in L3): the compute ceiling.
fn bench_gemv_hot(c: &mut Criterion) {
    let mut rng = Rng(0x5851_f42d_4c95_7f2d);
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut g = c.benchmark_group("gemv_hot");
    for (rows, cols) in [(6912, 2560), (2560, 6912)] {
        let m = random_matrix(rows, cols, &mut rng);
        let (xq, acts) = random_acts(1, cols, &mut rng);
        let mut out = vec![0f32; rows];
        g.throughput(Throughput::BytesDecimal((rows * cols / 4) as u64));
        for kernel in Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar) {
            for pool in &pools {
                let id = format!("{kernel}/{}t/{rows}x{cols}", pool.n_threads());
                g.bench_function(id, |b| {
                    b.iter(|| gemv_with(kernel, &m, &xq, acts[0], &mut out, pool).expect("gemv"))
                });
            }
        }
    }
    g.finish();
}

/// Batched decode: a few tokens per call, weights rotated as in GEMV so they come from DRAM.
/// Throughput is weight bytes per second, as GEMV's (a call reads each weight byte once).
fn bench_gemm_batch(c: &mut Criterion) {
    let mut rng = Rng(0x1405_7b7e_f767_814f);
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut g = c.benchmark_group("gemm_batch");
    for (rows, cols) in [(6912, 2560), (2560, 6912)] {
        let bytes = rows * cols / 4;
        let count = rotation_bytes().div_ceil(bytes);
        let ms: Vec<I2sMatrix> = (0..count).map(|_| random_matrix(rows, cols, &mut rng)).collect();
        g.throughput(Throughput::BytesDecimal(bytes as u64));
        for n_tok in BATCH_TOKENS {
            let (xq, acts) = random_acts(n_tok, cols, &mut rng);
            let mut out = vec![0f32; n_tok * rows];
            for kernel in Kernel::available().into_iter().filter(|&k| k != Kernel::Scalar) {
                for pool in &pools {
                    let id = format!("{kernel}/{}t/{rows}x{cols}x{n_tok}", pool.n_threads());
                    let mut i = 0;
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            i = (i + 1) % ms.len();
                            gemm_with(kernel, &ms[i], &xq, &acts, &mut out, pool).expect("gemm")
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

fn bench_gemm(c: &mut Criterion) {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pools = [ThreadPool::new(1), ThreadPool::new(2)];
    let mut g = c.benchmark_group("gemm");
    g.throughput(Throughput::Elements(GEMM_TOKENS as u64));
    for (rows, cols) in SHAPES {
        let m = random_matrix(rows, cols, &mut rng);
        let (xq, acts) = random_acts(GEMM_TOKENS, cols, &mut rng);
        let mut out = vec![0f32; GEMM_TOKENS * rows];
        for kernel in Kernel::available() {
            // The scalar reference is slow: time it on the smallest shape only.
            if kernel == Kernel::Scalar && rows * cols > 640 * 2560 {
                continue;
            }
            for pool in &pools {
                let id = format!("{kernel}/{}t/{rows}x{cols}x{GEMM_TOKENS}", pool.n_threads());
                g.bench_function(id, |b| {
                    b.iter(|| gemm_with(kernel, &m, &xq, &acts, &mut out, pool).expect("gemm"))
                });
            }
        }
    }
    g.finish();
}

/// Sums `words` (the compiler vectorizes the independent lanes).
fn read_sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for c in words.chunks_exact(8) {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

fn bench_membw(c: &mut Criterion) {
    let src: Vec<u64> = (0..MEMBW_BYTES / 8).map(|i| i as u64).collect();
    let mut dst = vec![0u64; src.len()];
    let mut g = c.benchmark_group("membw");
    g.throughput(Throughput::BytesDecimal(MEMBW_BYTES as u64));
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads);
        let part = src.len() / threads;
        g.bench_function(format!("read/{threads}t"), |b| {
            b.iter(|| {
                let sums: Vec<std::sync::atomic::AtomicU64> =
                    (0..threads).map(|_| Default::default()).collect();
                pool.run(threads, &|i| {
                    let s = read_sum(&src[i * part..(i + 1) * part]);
                    sums[i].store(s, std::sync::atomic::Ordering::Relaxed);
                });
                black_box(sums)
            })
        });
        // Throughput counts bytes copied; the memory traffic is twice that (read + write).
        let parts: Vec<Mutex<&mut [u64]>> = dst.chunks_mut(part).map(Mutex::new).collect();
        g.bench_function(format!("memcpy/{threads}t"), |b| {
            b.iter(|| {
                pool.run(threads, &|i| {
                    parts[i].lock().expect("lock").copy_from_slice(&src[i * part..(i + 1) * part]);
                })
            })
        });
    }
    black_box(&mut dst);
    g.finish();
}

fn bench_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    {
        let pool = ThreadPool::new(2);
        g.bench_function("bitnet_empty_job/2t", |b| {
            b.iter(|| {
                pool.run(2, &|i| {
                    black_box(i);
                })
            })
        });
    }
    {
        use rayon::prelude::*;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("rayon");
        g.bench_function("rayon_install_par_iter_empty_job/2t", |b| {
            b.iter(|| {
                pool.install(|| {
                    (0..2usize).into_par_iter().for_each(|i| {
                        black_box(i);
                    })
                })
            })
        });
        g.bench_function("rayon_join_in_pool_empty_job/2t", |b| {
            pool.install(|| b.iter(|| rayon::join(|| black_box(0), || black_box(1))))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_membw, bench_pool, bench_gemv, bench_gemv_hot, bench_gemm_batch, bench_gemm
}
criterion_main!(benches);
