//! Every SIMD variant against the scalar reference, and the reference against plain maths.

use super::*;
use crate::quantize::quantize_row_with;
use proptest::prelude::*;

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn ternary(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| (self.next() % 3) as i8 - 1).collect()
    }
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() % 20001) as f32 / 1000.0 - 10.0).collect()
    }
}

/// Quantizes `n_tok` rows of `x` (each `m.cols()` long) into padded activations.
fn quantize(m: &I2sMatrix, x: &[f32]) -> (Vec<i8>, Vec<ActScale>) {
    let k = m.padded_cols();
    let n_tok = x.len() / m.cols();
    let mut xq = vec![0i8; n_tok * k];
    let acts = x
        .chunks_exact(m.cols())
        .zip(xq.chunks_exact_mut(k))
        .map(|(x, q)| quantize_row_with(Kernel::Scalar, x, q).unwrap())
        .collect();
    (xq, acts)
}

/// Runs every available variant (GEMM, and GEMV too for one token) on 1 and 2 threads and
/// checks each output bit against the scalar one, which must match plain integer maths.
fn check_all_variants(m: &I2sMatrix, xq: &[i8], acts: &[ActScale]) {
    let n_tok = acts.len();
    let run = |k: Kernel, pool: &ThreadPool| {
        let mut out = vec![f32::NAN; n_tok * m.rows()];
        gemm_with(k, m, xq, acts, &mut out, pool).unwrap();
        if n_tok == 1 {
            let mut gv = vec![f32::NAN; m.rows()];
            gemv_with(k, m, xq, acts[0], &mut gv, pool).unwrap();
            assert!(gv.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()), "{k}");
        }
        out
    };
    let one = ThreadPool::new(1);
    let want = run(Kernel::Scalar, &one);
    let w = m.to_ternary();
    let k = m.padded_cols();
    for t in 0..n_tok {
        for r in 0..m.rows() {
            let dot: i32 = (0..m.cols())
                .map(|c| i32::from(w[r * m.cols() + c]) * i32::from(xq[t * k + c]))
                .sum();
            let y = (dot as f32) / acts[t].scale * m.scale();
            assert_eq!(want[t * m.rows() + r].to_bits(), y.to_bits(), "scalar row {r} tok {t}");
        }
    }
    let two = ThreadPool::new(2);
    for kernel in Kernel::available() {
        for pool in [&one, &two] {
            let got = run(kernel, pool);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{kernel} ({} threads) differs from scalar on {m:?}", pool.n_threads());
        }
    }
}

fn random_case(rows: usize, cols: usize, n_tok: usize, seed: u64) {
    let mut rng = Rng(seed | 1);
    let m = I2sMatrix::from_ternary(&rng.ternary(rows * cols), rows, cols, 0.37).unwrap();
    let (xq, acts) = quantize(&m, &rng.floats(n_tok * cols));
    check_all_variants(&m, &xq, &acts);
}

#[test]
fn every_variant_equals_scalar_on_odd_and_small_row_counts() {
    for rows in [1, 3, 5, 17, 31] {
        random_case(rows, 256, 1, rows as u64);
        random_case(rows, 256, 3, rows as u64 + 100);
    }
}

#[test]
fn every_variant_equals_scalar_on_padded_columns() {
    for cols in [1, 64, 100, 160, 200, 300] {
        random_case(17, cols, 1, cols as u64);
        random_case(17, cols, 5, cols as u64 + 7);
    }
}

#[test]
fn every_variant_equals_scalar_at_model_sizes() {
    random_case(40, 6912, 1, 11);
    random_case(67, 2560, 1, 12);
    random_case(2560, 640, 1, 13); // big enough to split over threads
    random_case(19, 6912, 3, 14);
}

#[test]
fn multi_token_gemv_equals_scalar_for_two_to_seventeen_tokens() {
    // Decode batches take GEMV passes of up to four tokens (AVX2 up to 8 tokens, AVX-512 up to
    // 16; more the GEMM): odd row counts (a row past the two streams' segments), padded
    // columns, model sizes, two threads.
    for n_tok in (2..=10).chain([15, 16, 17]) {
        random_case(33, 256, n_tok, 40 + n_tok as u64);
        random_case(17, 200, n_tok, 50 + n_tok as u64);
        random_case(41, 6912, n_tok, 60 + n_tok as u64);
        random_case(2560, 640, n_tok, 70 + n_tok as u64);
    }
}

#[test]
fn gemm_equals_scalar_for_one_three_and_128_tokens() {
    random_case(33, 256, 1, 21);
    random_case(33, 256, 3, 22);
    random_case(70, 384, 128, 23);
    random_case(9, 160, 7, 24);
}

#[test]
fn all_zero_activations_give_zero_outputs() {
    let mut rng = Rng(5);
    let m = I2sMatrix::from_ternary(&rng.ternary(7 * 200), 7, 200, 1.0).unwrap();
    let (xq, acts) = quantize(&m, &vec![0.0; 200]);
    assert_eq!(acts[0].scale, 127.0 / crate::quantize::EPS);
    check_all_variants(&m, &xq, &acts);
    let mut out = vec![1.0; 7];
    gemv(&m, &xq, acts[0], &mut out, &ThreadPool::new(1)).unwrap();
    assert!(out.iter().all(|&y| y == 0.0));
    // A zero token between nonzero ones (the multi-token GEMV and the GEMM).
    for n_tok in [3, 6] {
        let mut x = rng.floats(n_tok * 200);
        x[200..400].fill(0.0);
        let (xq, acts) = quantize(&m, &x);
        check_all_variants(&m, &xq, &acts);
    }
}

#[test]
fn extreme_weights_and_activations_stay_exact() {
    // Rows of all -1, all +1, all 0 and alternating, against activations of -128 and 127.
    let k = 6912;
    let mut w = vec![-1i8; k];
    w.extend(vec![1i8; k]);
    w.extend(vec![0i8; k]);
    w.extend((0..k).map(|i| if i % 2 == 0 { 1 } else { -1 }));
    let m = I2sMatrix::from_ternary(&w, 4, k, 1.0).unwrap();
    for xv in [-128i8, 127] {
        let xq = vec![xv; k];
        let act = ActScale { scale: 1.0, sum: i32::from(xv) * k as i32 };
        let mut out = vec![0.0; 4];
        for kernel in Kernel::available() {
            gemv_with(kernel, &m, &xq, act, &mut out, &ThreadPool::new(2)).unwrap();
            let full = (i32::from(xv) * k as i32) as f32;
            assert_eq!(out, [-full, full, 0.0, 0.0], "{kernel} x = {xv}");
        }
        check_all_variants(&m, &xq, &[act]);
        for n_tok in [2, 3, 4] {
            let xqn: Vec<i8> = xq.iter().cycle().take(n_tok * k).copied().collect();
            check_all_variants(&m, &xqn, &vec![act; n_tok]);
        }
    }
}

#[test]
fn wrong_lengths_are_shape_errors() {
    let m = I2sMatrix::from_ternary(&[1; 3 * 64], 3, 64, 1.0).unwrap();
    let pool = ThreadPool::new(1);
    let act = ActScale { scale: 1.0, sum: 0 };
    let e = gemv(&m, &[0; 64], act, &mut [0.0; 3], &pool).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}"); // activations must be padded to 128
    assert!(gemv(&m, &[0; 128], act, &mut [0.0; 2], &pool).is_err());
    assert!(gemm(&m, &[0; 256], &[act; 2], &mut [0.0; 3], &pool).is_err());
    gemm(&m, &[], &[], &mut [], &pool).unwrap();
}

#[test]
fn kernel_names_parse_and_unknown_ones_are_errors() {
    for k in Kernel::ALL {
        assert_eq!(k.name().parse::<Kernel>().unwrap(), k);
    }
    assert_eq!(Kernel::parse_available("auto").unwrap(), Kernel::detect());
    assert_eq!(Kernel::parse_available("").unwrap(), Kernel::detect());
    let e = Kernel::parse_available("sse9").unwrap_err().to_string();
    assert!(e.contains("unknown kernel `sse9`"), "{e}");
    for k in Kernel::ALL.into_iter().filter(|k| !k.is_available()) {
        let e = Kernel::parse_available(k.name()).unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e}");
        let m = I2sMatrix::from_ternary(&[0; 128], 1, 128, 1.0).unwrap();
        let act = ActScale::default();
        assert!(gemv_with(k, &m, &[0; 128], act, &mut [0.0], &ThreadPool::new(1)).is_err());
    }
    assert!(Kernel::available().contains(&Kernel::Scalar));
    // NEON is part of every aarch64 CPU: its kernels are among those compared above.
    #[cfg(target_arch = "aarch64")]
    assert!(Kernel::available().contains(&Kernel::Neon));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn every_variant_equals_scalar_on_random_shapes(
        rows in 1usize..40, cols in 1usize..400, n_tok in 1usize..7, seed in any::<u64>()
    ) {
        random_case(rows, cols, n_tok, seed);
    }
}

#[test]
fn unused_code_three_reads_as_plus_two_in_every_variant() {
    // The worst case for 16-bit partial sums: every 2-bit field 3, activations at the extremes.
    let (rows, k) = (5, 6912);
    let n = rows * k / 4;
    let mut bytes = vec![0xffu8; n + 32];
    bytes[n..].fill(0);
    bytes[n..n + 4].copy_from_slice(&1.0f32.to_le_bytes());
    let t = bitnet_core::Tensor::from_bytes(bitnet_core::DType::U8, [n + 32], &bytes).unwrap();
    let m = I2sMatrix::from_i2s_tensor(t, rows, k).unwrap();
    for xv in [-128i8, 127] {
        let act = ActScale { scale: 1.0, sum: i32::from(xv) * k as i32 };
        check_all_variants(&m, &vec![xv; k], &[act]);
        check_all_variants(&m, &vec![xv; 5 * k], &[act; 5]);
        check_all_variants(&m, &vec![xv; 4 * k], &[act; 4]);
    }
}
