//! GPU kernels against the CPU reference (`bitnet-quant`'s BitLinear and quantizers).
//! Every test skips, saying why, when no CUDA driver or device is present.

use bitnet_core::ThreadPool;
use bitnet_cuda::layout::PackedTernary;
use bitnet_cuda::ops::{self, DeviceTernary, LmI8, LmKernel, QuantActs};
use bitnet_cuda::Gpu;
use bitnet_quant::bitlinear::{BitLinear, BitLinearScratch};
use bitnet_quant::formats::i2s::I2sMatrix;
use std::sync::Arc;

fn gpu() -> Option<Arc<Gpu>> {
    match bitnet_cuda::probe(0) {
        Ok(_) => Some(Gpu::open(0).expect("a CUDA device is present but could not be opened")),
        Err(e) => {
            eprintln!("skipped: no usable CUDA device ({e})");
            None
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
    fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() % 3) as i8 - 1).collect()
    }
}

/// GPU BitLinear (quantize_act + ternary_matmul) vs the CPU's BitLinear::forward.
fn check_bitlinear(g: &Gpu, w: &[i8], rows: usize, cols: usize, s_w: f32, x: &[f32], m: usize) {
    let cpu = BitLinear::new(I2sMatrix::from_ternary(w, rows, cols, s_w).unwrap());
    let mut want = vec![0f32; m * rows];
    cpu.forward(x, m, &mut want, &mut BitLinearScratch::default(), &ThreadPool::new(2)).unwrap();
    let packed = PackedTernary::pack(w, rows, cols).unwrap();
    let dw = DeviceTernary::upload(g, &packed, s_w).unwrap();
    let mut q = QuantActs::new(g, m, dw.padded_cols()).unwrap();
    let dx = ops::upload(g, x).unwrap();
    ops::quantize_act(g, &dx, cols, m, &mut q).unwrap();
    let mut out = ops::upload(g, &vec![f32::NAN; m * rows]).unwrap(); // poisoned
    ops::ternary_matmul(g, &dw, &q, m, &mut out).unwrap();
    let mut got = vec![0f32; m * rows];
    ops::download(g, &out, &mut got).unwrap();
    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
        assert!(a.to_bits() == b.to_bits() || a == b, "{rows}x{cols} m={m} [{i}]: gpu {a} cpu {b}");
    }
}

#[test]
fn ternary_matmul_equals_cpu_bitlinear_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(1);
    // 2000 and 5000 rows: more tiles than GEMV blocks at one token (several tiles per block).
    let shapes = [
        (1, 64),
        (7, 130),
        (9, 128),
        (64, 200),
        (130, 2560),
        (640, 2560),
        (257, 6912),
        (2000, 256),
        (5000, 512),
    ];
    for (rows, cols) in shapes {
        let w = rng.ternary(rows * cols);
        for m in [1, 2, 3, 5, 8, 9, 16, 31, 33, 64, 65, 128, 129] {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 3.0).collect();
            check_bitlinear(&g, &w, rows, cols, 0.37, &x, m);
        }
    }
}

#[test]
fn ternary_matmul_with_many_tiles_per_block() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(5);
    // 8752 tiles of 8 rows: every GEMV block loops over several tiles. 1125 tiles of 100
    // chunks: one or two tiles per block at one token, each tile in several weight batches
    // (an odd number of batches for a one-tile block: the walk ends on either buffer).
    for (rows, cols, ms) in [(70_000, 256, &[1, 3, 8][..]), (9000, 6400, &[1, 2][..])] {
        let w = rng.ternary(rows * cols);
        for &m in ms {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 3.0).collect();
            check_bitlinear(&g, &w, rows, cols, 0.37, &x, m);
        }
    }
}

#[test]
fn ternary_matmul_handles_zero_rows_and_extreme_scales() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(2);
    let (rows, cols) = (33, 300);
    let mut w = rng.ternary(rows * cols);
    w[5 * cols..6 * cols].iter_mut().for_each(|v| *v = 0); // an all-zero weight row
    w[6 * cols..7 * cols].iter_mut().for_each(|v| *v = 1); // all +1
    w[7 * cols..8 * cols].iter_mut().for_each(|v| *v = -1); // all -1
    for m in [1, 4, 8, 12] {
        let mut x: Vec<f32> = (0..m * cols).map(|_| rng.unit()).collect();
        x[..cols].iter_mut().for_each(|v| *v = 0.0); // an all-zero activation row
        if m > 1 {
            x[cols..2 * cols]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = if i % 2 == 0 { 1e30 } else { -1e30 });
        }
        if m > 2 {
            x[2 * cols..3 * cols].iter_mut().for_each(|v| *v = 1e-30);
        }
        for s_w in [1e-20, 1.0, 3e15] {
            check_bitlinear(&g, &w, rows, cols, s_w, &x, m);
        }
    }
}

#[test]
fn fused_rms_norm_quantizes_like_the_cpu() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(3);
    for d in [64, 100, 2560, 6912, 8640, 14336, 16384] {
        let rows = 5;
        let x: Vec<f32> = (0..rows * d).map(|_| rng.unit() * 4.0).collect();
        let w: Vec<f32> = (0..d).map(|_| 1.0 + 0.1 * rng.unit()).collect();
        let kp = bitnet_cuda::layout::padded_cols(d);
        let mut q = QuantActs::new(&g, rows, kp).unwrap();
        let (dx, dw) = (ops::upload(&g, &x).unwrap(), ops::upload(&g, &w).unwrap());
        let mut out = ops::zeros::<f32>(&g, rows * d).unwrap();
        ops::rms_norm(&g, &dx, &dw, d, 1e-5, rows, &mut out, Some(&mut q)).unwrap();
        let mut y = vec![0f32; rows * d];
        ops::download(&g, &out, &mut y).unwrap();
        let (qv, sc, sums) = q.download(&g, rows).unwrap();
        for r in 0..rows {
            let xr = &x[r * d..(r + 1) * d];
            let ss = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            let inv = 1.0 / (ss + 1e-5f32).sqrt();
            for i in 0..d {
                let want = w[i] * (xr[i] * inv);
                assert!(
                    (y[r * d + i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "d={d} r={r} i={i}"
                );
            }
            // The int8 copy is exactly the CPU quantization of the GPU's f32 output.
            let mut wq = vec![0i8; kp];
            let a = bitnet_quant::quantize::quantize_row(&y[r * d..(r + 1) * d], &mut wq).unwrap();
            assert_eq!(&qv[r * kp..(r + 1) * kp], &wq[..], "d={d} r={r}");
            assert_eq!((sc[r], sums[r]), (a.scale, a.sum), "d={d} r={r}");
        }
    }
}

/// Activation quantization at its edges: exact halves (round half to even), values past ±127
/// (saturation), an all-zero row and huge values, against the CPU's quantize_row.
#[test]
fn quantize_act_rounds_halves_to_even_and_saturates_like_the_cpu() {
    let Some(g) = gpu() else { return };
    let d = 100;
    let halves = [127.0f32, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 63.5, -127.0];
    let mut x = vec![0f32; 4 * d];
    for (i, v) in x[..d].iter_mut().enumerate() {
        *v = halves[i % halves.len()]; // absmax 127: scale 1, every value as written
    }
    for (i, v) in x[d..2 * d].iter_mut().enumerate() {
        *v = [1e30, -1e30, 3.0, -7.5e29][i % 4];
    }
    for (i, v) in x[3 * d..].iter_mut().enumerate() {
        *v = (i as f32 - 50.0) * 1e-30;
    }
    let kp = bitnet_cuda::layout::padded_cols(d);
    let mut q = QuantActs::new(&g, 4, kp).unwrap();
    ops::quantize_act(&g, &ops::upload(&g, &x).unwrap(), d, 4, &mut q).unwrap();
    let (qv, sc, sums) = q.download(&g, 4).unwrap();
    for r in 0..4 {
        let mut want = vec![0i8; kp];
        let a = bitnet_quant::quantize::quantize_row(&x[r * d..(r + 1) * d], &mut want).unwrap();
        assert_eq!(&qv[r * kp..(r + 1) * kp], &want[..], "row {r}");
        assert_eq!((sc[r], sums[r]), (a.scale, a.sum), "row {r}");
    }
    assert_eq!(&qv[..8], &[127, 0, 2, 2, 0, -2, -2, 126]);
}

#[test]
fn shape_errors_are_reported_before_launch() {
    let Some(g) = gpu() else { return };
    let w = PackedTernary::pack(&[1, 0, -1, 1], 2, 2).unwrap();
    let dw = DeviceTernary::upload(&g, &w, 1.0).unwrap();
    let q = QuantActs::new(&g, 1, 128).unwrap();
    let mut out = ops::zeros::<f32>(&g, 1).unwrap();
    // Nothing quantized yet, and the output is too small.
    assert!(ops::ternary_matmul(&g, &dw, &q, 1, &mut out).is_err());
    assert!(QuantActs::new(&g, 1, 100).is_err());
}

/// Both int8 lm_head kernels against an f64 host reference: rows not a multiple of the tile,
/// widths not a multiple of 64, 1..130 tokens, an all-zero row and extreme row scales.
#[test]
fn int8_lm_head_kernels_match_the_host_reference() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(5);
    for (vocab, d) in [(1, 64), (130, 100), (1000, 256), (257, 2560)] {
        let mut q: Vec<i8> = (0..vocab * d).map(|_| (rng.next() % 255) as i8 - 127).collect();
        q[..d].iter_mut().for_each(|v| *v = 0);
        let s: Vec<f32> = (0..vocab).map(|i| [1e-3, 0.5, 1e-30, 3e20][i % 4]).collect();
        let head = LmI8::upload(&g, &q, &s, vocab, d).unwrap();
        for m in [1, 7, 9, 64, 65, 130] {
            let x: Vec<f32> = (0..m * d).map(|_| rng.unit() * 4.0).collect();
            let dx = ops::upload(&g, &x).unwrap();
            for k in [LmKernel::Mma, LmKernel::Simt] {
                let mut out = ops::upload(&g, &vec![f32::NAN; m * vocab]).unwrap();
                ops::lm_head_i8_with(&g, &head, &dx, m, &mut out, k).unwrap();
                let mut got = vec![0f32; m * vocab];
                ops::download(&g, &out, &mut got).unwrap();
                for t in 0..m {
                    for v in 0..vocab {
                        let (row, xr) = (&q[v * d..(v + 1) * d], &x[t * d..(t + 1) * d]);
                        let dot: f64 = row.iter().zip(xr).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let mag: f64 =
                            row.iter().zip(xr).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        let want = dot * s[v] as f64;
                        // f16 activations: 2^-11 relative per product, at most.
                        let tol = (mag * s[v] as f64) * 1e-3 + 1e-30;
                        let have = got[t * vocab + v] as f64;
                        assert!(
                            (have - want).abs() <= tol,
                            "{k:?} {vocab}x{d} m={m} [{t}][{v}]: {have} vs {want} (tol {tol})"
                        );
                    }
                }
            }
        }
    }
}

/// Stacked matrices (fused q/k/v, gate/up) give each part's output exactly as the part alone,
/// through the GEMV, the GEMM and the split-K GEMM.
#[test]
fn stacked_matrices_equal_their_parts_bit_for_bit() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(6);
    for (cols, parts) in
        [(200, vec![7, 130, 64]), (2560, vec![640, 130]), (2560, vec![2560, 640, 640])]
    {
        let mats: Vec<(Vec<i8>, usize, f32)> = parts
            .iter()
            .enumerate()
            .map(|(j, &r)| (rng.ternary(r * cols), r, [0.37, 2e-3, 11.0][j]))
            .collect();
        let upload = |(w, r, s): &(Vec<i8>, usize, f32)| {
            DeviceTernary::upload(&g, &PackedTernary::pack(w, *r, cols).unwrap(), *s).unwrap()
        };
        let stacked = DeviceTernary::stack(&g, mats.iter().map(upload).collect()).unwrap();
        assert_eq!(stacked.segment_rows(), parts);
        for m in [1, 3, 8, 9, 64, 129] {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 3.0).collect();
            let dx = ops::upload(&g, &x).unwrap();
            let mut q = QuantActs::new(&g, m, stacked.padded_cols()).unwrap();
            ops::quantize_act(&g, &dx, cols, m, &mut q).unwrap();
            let mut outs: Vec<_> =
                parts.iter().map(|&r| ops::upload(&g, &vec![f32::NAN; m * r]).unwrap()).collect();
            let mut refs: Vec<_> = outs.iter_mut().collect();
            ops::ternary_matmul_multi(&g, &stacked, &q, m, &mut refs).unwrap();
            for (j, part) in mats.iter().enumerate() {
                let alone = upload(part);
                let mut want = ops::zeros::<f32>(&g, m * part.1).unwrap();
                ops::ternary_matmul(&g, &alone, &q, m, &mut want).unwrap();
                let (mut a, mut b) = (vec![0f32; m * part.1], vec![0f32; m * part.1]);
                ops::download(&g, &outs[j], &mut a).unwrap();
                ops::download(&g, &want, &mut b).unwrap();
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "cols {cols} parts {parts:?} m={m}: part {j} differs");
            }
        }
    }
    // Mismatched widths and too many parts are errors.
    let w = |r: usize, c: usize| {
        DeviceTernary::upload(&g, &PackedTernary::pack(&vec![0; r * c], r, c).unwrap(), 1.0)
            .unwrap()
    };
    assert!(DeviceTernary::stack(&g, vec![w(8, 128), w(8, 256)]).is_err());
    assert!(DeviceTernary::stack(&g, vec![w(8, 128), w(8, 128), w(8, 128), w(8, 128)]).is_err());
}

/// The fused kernel's input: normed plain, relu² or SiLU rows, or with no norm plain or SiLU
/// rows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fuse {
    Plain,
    Relu2,
    SiluNormed,
    None,
    Silu,
}

/// The norm fused into the GEMV (one token): its f32 output matches the norm kernel's (with no
/// norm: the input, or the silu_mul kernel's product, bit for bit), its int8 copy is the CPU
/// quantization of that output, its projection equals the GEMV on that copy bit for bit (so
/// every block used the same activations), and its inputs are left as they were.
#[test]
fn norm_fused_into_the_gemv_matches_norm_then_gemv() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(7);
    // (input width, stacked parts, input; input scale)
    let cases: [(usize, &[usize], Fuse, f32); 25] = [
        (2560, &[2560, 640, 640], Fuse::Plain, 3.0),
        (2560, &[2560], Fuse::Plain, 1.0),
        (2560, &[6912, 6912], Fuse::Plain, 0.5),
        (6912, &[2560], Fuse::Relu2, 2.0),
        (2560, &[2560], Fuse::Relu2, 1.0),
        (200, &[9, 130], Fuse::Plain, 1.0),
        (8192, &[64], Fuse::Relu2, 1.0),
        (4100, &[24], Fuse::Plain, 1.0), // one thread's second float4 slot
        (2560, &[640], Fuse::Plain, 0.0), // all-zero input
        (2560, &[640], Fuse::Plain, 1e18), // Σx² overflows: a zero row
        (2048, &[2048], Fuse::None, 3.0), // Falcon3's o and down (no norm, SiLU)
        (8192, &[2048], Fuse::Silu, 6.0),
        (200, &[9, 130], Fuse::Silu, 100.0), // exp over- and underflows
        (4100, &[24], Fuse::None, 1e30),
        (2560, &[640], Fuse::None, 0.0),
        (2560, &[640], Fuse::Silu, 0.0),
        (4096, &[1536], Fuse::SiluNormed, 2.0), // 1bitLLM's down (ffn_layernorm over SiLU)
        (200, &[9, 130], Fuse::SiluNormed, 100.0),
        (2560, &[640], Fuse::SiluNormed, 0.0),
        // Wider than 8192: the two-pass kernel.
        (8640, &[3200], Fuse::SiluNormed, 2.0), // 1bitLLM-3B's down
        (14336, &[4096], Fuse::Silu, 6.0),      // Llama3-8B's down
        (16384, &[64, 9], Fuse::Relu2, 1.0),
        (8196, &[24], Fuse::Plain, 3.0),
        (12000, &[640], Fuse::None, 1e30),
        (10000, &[640], Fuse::Plain, 0.0),
    ];
    for (d, parts, mode, scale) in cases {
        let what = format!("d={d} parts={parts:?} {mode:?} scale={scale}");
        let x: Vec<f32> = (0..d).map(|_| rng.unit() * scale).collect();
        let y: Vec<f32> = (0..d).map(|_| rng.unit()).collect();
        let nw: Vec<f32> = (0..d).map(|_| 1.0 + 0.2 * rng.unit()).collect();
        let mats: Vec<DeviceTernary> = parts
            .iter()
            .map(|&r| {
                let p = PackedTernary::pack(&rng.ternary(r * d), r, d).unwrap();
                DeviceTernary::upload(&g, &p, 0.37).unwrap()
            })
            .collect();
        let w = DeviceTernary::stack(&g, mats).unwrap();
        let kp = w.padded_cols();
        let (dx, dy, dnw) = (
            ops::upload(&g, &x).unwrap(),
            ops::upload(&g, &y).unwrap(),
            ops::upload(&g, &nw).unwrap(),
        );
        let mut xn = ops::zeros::<f32>(&g, d).unwrap();
        let mut q = QuantActs::new(&g, 1, kp).unwrap();
        let mut outs: Vec<_> =
            parts.iter().map(|&r| ops::upload(&g, &vec![f32::NAN; r]).unwrap()).collect();
        let normed = matches!(mode, Fuse::Plain | Fuse::Relu2 | Fuse::SiluNormed);
        for rep in 0..2 {
            let src = match mode {
                Fuse::Relu2 => ops::NormSrc::Relu2(&dx, &dy),
                Fuse::Silu | Fuse::SiluNormed => ops::NormSrc::Silu(&dx, &dy),
                _ => ops::NormSrc::Plain(&dx),
            };
            let mut refs: Vec<_> = outs.iter_mut().collect();
            let nw = normed.then_some(&dnw);
            ops::norm_ternary_gemv(&g, src, nw, 1e-5, &mut xn, &mut q, &w, &mut refs, false)
                .unwrap();
            // The inputs are read, not written.
            for (buf, host) in [(&dx, &x), (&dy, &y)] {
                let mut got = vec![0f32; d];
                ops::download(&g, buf, &mut got).unwrap();
                let same = got.iter().zip(host).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{what}: an input was written");
            }
            // The norm kernel (or, with no norm, the element-wise kernel) on the same input.
            let mut input = ops::upload(&g, &x).unwrap();
            let gate = if mode == Fuse::Relu2 { ops::Gate::Relu2 } else { ops::Gate::Silu };
            if matches!(mode, Fuse::Relu2 | Fuse::Silu | Fuse::SiluNormed) {
                ops::gated_mul(&g, gate, &mut input, &dy, d).unwrap();
            }
            let ref_out = if normed {
                let mut o = ops::zeros::<f32>(&g, d).unwrap();
                ops::rms_norm(&g, &input, &dnw, d, 1e-5, 1, &mut o, None).unwrap();
                o
            } else {
                input
            };
            let (mut a, mut b) = (vec![0f32; d], vec![0f32; d]);
            ops::download(&g, &xn, &mut a).unwrap();
            ops::download(&g, &ref_out, &mut b).unwrap();
            for i in 0..d {
                let ok = if normed {
                    (a[i] - b[i]).abs() <= 1e-5 * b[i].abs().max(1.0)
                } else {
                    a[i].to_bits() == b[i].to_bits()
                };
                assert!(ok, "{what}: xn[{i}] {} vs {}", a[i], b[i]);
            }
            let (qv, sc, sums) = q.download(&g, 1).unwrap();
            let mut wq = vec![0i8; kp];
            let cpu = bitnet_quant::quantize::quantize_row(&a, &mut wq).unwrap();
            assert_eq!(qv, wq, "{what}: int8 copy");
            assert_eq!((sc[0], sums[0]), (cpu.scale, cpu.sum), "{what}: scale, sum");
            // The projection equals the GEMV on that int8 copy.
            let mut want: Vec<_> =
                parts.iter().map(|&r| ops::zeros::<f32>(&g, r).unwrap()).collect();
            let mut wrefs: Vec<_> = want.iter_mut().collect();
            ops::ternary_matmul_multi(&g, &w, &q, 1, &mut wrefs).unwrap();
            for (j, &r) in parts.iter().enumerate() {
                let (mut a, mut b) = (vec![0f32; r], vec![0f32; r]);
                ops::download(&g, &outs[j], &mut a).unwrap();
                ops::download(&g, &want[j], &mut b).unwrap();
                let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{what} rep {rep}: part {j} differs from the GEMV");
            }
        }
    }
    // Rows wider than the kernel takes, or not a multiple of 4 values (it reads them four at a
    // time): an error, not a launch.
    let mut out = ops::zeros::<f32>(&g, 8).unwrap();
    for d in [16388, 202] {
        let p = PackedTernary::pack(&vec![0; 8 * d], 8, d).unwrap();
        let w = DeviceTernary::upload(&g, &p, 1.0).unwrap();
        let (dx, mut xn) = (ops::zeros::<f32>(&g, d).unwrap(), ops::zeros::<f32>(&g, d).unwrap());
        let mut q = QuantActs::new(&g, 1, w.padded_cols()).unwrap();
        let src = ops::NormSrc::Plain(&dx);
        let outs = &mut [&mut out];
        let r = ops::norm_ternary_gemv(&g, src, Some(&dx), 1e-5, &mut xn, &mut q, &w, outs, false);
        assert!(r.is_err() && !ops::norm_gemv_fits(d), "d = {d}");
    }
}

/// The bandwidth probe's read stream covers every word exactly once: its XOR equals the
/// host's, for sizes around the grid-stride and unroll boundaries (and an all-zero buffer).
#[test]
fn read_stream_xor_equals_the_host() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(42);
    let sms = g.info().sms as usize;
    for words in [1usize, 7, 1024, 1025, 8 * sms * 1024 + 3, 3 * 8 * sms * 256 * 4 + 17, 100_000] {
        for zero in [false, true] {
            let bytes: Vec<u8> =
                (0..16 * words + 5).map(|_| if zero { 0 } else { rng.next() as u8 }).collect();
            let want = bytes[..16 * words]
                .chunks_exact(4)
                .fold(0u32, |a, c| a ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let d = ops::upload(&g, &bytes).unwrap();
            let blocks = ops::read_xor_blocks(&g, words);
            // Stale values in the output: every block must overwrite its own.
            let mut out = ops::upload(&g, &vec![0xdead_beef_u32; blocks]).unwrap();
            ops::read_xor(&g, &d, words, &mut out).unwrap();
            let mut parts = vec![0u32; blocks];
            ops::download(&g, &out, &mut parts).unwrap();
            let got = parts.iter().fold(0, |a, p| a ^ p);
            assert_eq!(got, want, "{words} words, zero {zero}");
        }
    }
    let d = ops::zeros::<u8>(&g, 32).unwrap();
    let mut out = ops::zeros::<u32>(&g, 1).unwrap();
    assert!(ops::read_xor(&g, &d, 3, &mut out).is_err(), "a short buffer is an error");
    let d = ops::zeros::<u8>(&g, 16 << 20).unwrap();
    assert!(ops::read_xor(&g, &d, 1 << 20, &mut out).is_err(), "too few output values");
}

/// Picks sent ahead (`sample_to_device` with `PickTo`) land in their host-mapped slot and in
/// the device id buffer, and advance the rows' positions by one, launched directly and replayed
/// in a decode-step graph (one graph per slot); the older slot still holds its picks while the
/// newer one is written. One row, then three (the slots grow), then one again.
#[test]
fn picks_reach_their_host_slot_and_advance_the_row() {
    let Some(g) = gpu() else { return };
    let vocab = 5000;
    let greedy =
        ops::SampleConfig { greedy: true, temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 };
    // Temperature sampling of a row with one finite logit picks that logit's id.
    let tempered = ops::SampleConfig { greedy: false, temperature: 0.7, ..greedy };
    let mut scratch = ops::SampleScratch::new();
    let mut fetch = ops::IdFetch::default();
    let mut ids = ops::upload(&g, &[-7i32; 3]).unwrap();
    let mut rows = ops::upload(&g, &[3i32, 41, 0, 10, 5, 100]).unwrap();
    let start = [41, 10, 100];
    let mut tickets = Vec::new();
    let n_of = |step: usize| if (3..6).contains(&step) { 3 } else { 1 };
    let mut advanced = [0i32; 3];
    for step in 0..9usize {
        let n = n_of(step);
        let want: Vec<usize> = (0..n).map(|r| (step * 977 + r * 311 + 13) % vocab).collect();
        let mut host = vec![-1.0f32; n * vocab];
        for (r, &w) in want.iter().enumerate() {
            let row = &mut host[r * vocab..(r + 1) * vocab];
            if step % 3 == 2 {
                row.iter_mut().for_each(|x| *x = f32::NEG_INFINITY);
            }
            row[w] = 2.5;
        }
        let logits = ops::upload(&g, &host).unwrap();
        let cfg = if step % 3 == 2 { tempered } else { greedy };
        let slot = fetch.reserve(&g, n).unwrap();
        let to = ops::PickTo::host(slot).advancing(&g, &rows).unwrap();
        let graph = step % 3 != 0;
        if graph {
            g.defer();
        }
        let us = vec![0.25; n];
        ops::sample_to_device(&g, &logits, n, vocab, &cfg, &us, &mut scratch, &mut ids, to)
            .unwrap();
        g.flush(graph).unwrap();
        advanced.iter_mut().take(n).for_each(|a| *a += 1);
        tickets.push((fetch.mark(&g, slot).unwrap(), want.clone()));
        if let [.., (older, w_old), _] = &tickets[..] {
            // The slots grew at step 3: the ticket before that is gone.
            if step != 3 {
                let mut got = vec![0i32; w_old.len()];
                fetch.wait(*older, &mut got).unwrap();
                let w_old: Vec<i32> = w_old.iter().map(|&w| w as i32).collect();
                assert_eq!(got, w_old, "step {step}: older slot");
            }
        }
        let want: Vec<i32> = want.iter().map(|&w| w as i32).collect();
        let mut got = vec![0i32; n];
        fetch.wait(tickets[step].0, &mut got).unwrap();
        assert_eq!(got, want, "step {step}: host slot");
        let mut dev = vec![0i32; n];
        ops::download(&g, &ids, &mut dev).unwrap();
        assert_eq!(dev, want, "step {step}: device ids");
        let mut pairs = [0i32; 6];
        ops::download(&g, &rows, &mut pairs).unwrap();
        for r in 0..3 {
            let want = [[3, 0, 5][r], start[r] + advanced[r]];
            assert_eq!(pairs[2 * r..2 * r + 2], want, "step {step}: row {r} position");
        }
    }
    assert!(g.graph_stats().0 >= 2, "graph replays: {:?}", g.graph_stats());
    let slot = fetch.reserve(&g, 3).unwrap();
    let logits = ops::upload(&g, &vec![0.0f32; 3 * vocab]).unwrap();
    let short = ops::PickTo::host(slot).advancing(&g, &ops::zeros(&g, 4).unwrap()).unwrap();
    let r =
        ops::sample_to_device(&g, &logits, 3, vocab, &greedy, &[], &mut scratch, &mut ids, short);
    assert!(r.is_err(), "three rows need three pairs");
    rows = ops::zeros(&g, 1).unwrap();
    assert!(ops::PickTo::host(slot).advancing(&g, &rows).is_err(), "a row needs a pair");
    assert!(fetch.reserve(&g, 0).is_err(), "no rows");
}
