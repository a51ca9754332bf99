//! BitNet b1.58 quantizers: absmean ternary weights (per tensor) and absmax int8
//! activations (per token), matching Hugging Face's `BitNet` implementation bit for bit.
//!
//! ```
//! use bitnet_quant::quantize::{absmean_ternary, quantize_row};
//!
//! let (q, s_w) = absmean_ternary(&[0.5, -1.5, 0.1, 1.0]);
//! assert_eq!((q, s_w), (vec![1, -1, 0, 1], 0.775));
//! let mut xq = [0i8; 4];
//! let act = quantize_row(&[1.0, -2.0, 0.5, 0.0], &mut xq).unwrap();
//! assert_eq!(xq, [64, -127, 32, 0]); // 63.5 rounds to even
//! assert_eq!((act.scale, act.sum), (63.5, -31));
//! ```

use crate::kernels::Kernel;
use bitnet_core::{Error, Result};

/// Smallest `mean(|W|)` and `max(|x|)` the quantizers divide by (HF's `clamp(min=1e-5)`).
pub const EPS: f32 = 1e-5;

/// The per-token scale of a quantized activation row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ActScale {
    /// `s_a = 127 / max(|x|)`: the quantized row is `x * s_a` rounded.
    pub scale: f32,
    /// `Σ xq` over the whole (padded) row, used to undo the +1 offset of I2_S codes.
    pub sum: i32,
}

/// Quantizes weights to ternary with one absmean scale per tensor.
///
/// Returns `(Wq, s_w)` with `s_w = max(mean(|W|), 1e-5)` (the mean summed in f64, then
/// rounded to f32) and `Wq = clamp(round_half_even(W * (1 / s_w)), -1, 1)`, exactly as HF's
/// `weight_quant`; the dequantized weight is `Wq * s_w`.
pub fn absmean_ternary(w: &[f32]) -> (Vec<i8>, f32) {
    let sum: f64 = w.iter().map(|&v| f64::from(v.abs())).sum();
    let mean = if w.is_empty() { 0.0 } else { (sum / w.len() as f64) as f32 };
    let s_w = mean.max(EPS);
    let inv = 1.0 / s_w;
    let q = w.iter().map(|&v| (v * inv).round_ties_even().clamp(-1.0, 1.0) as i8).collect();
    (q, s_w)
}

/// The scale `s_a = 127 / max(max_abs, 1e-5)` for a row whose largest magnitude is `max_abs`.
#[inline]
pub fn act_scale_for(max_abs: f32) -> f32 {
    127.0 / max_abs.max(EPS)
}

/// Quantizes one value of a row with scale `s_a`: `clamp(round_half_even(x * s_a), -128, 127)`.
///
/// NaN (only possible for non-finite inputs) maps to 0.
#[inline]
pub fn quantize_value(x: f32, s_a: f32) -> i8 {
    (x * s_a).round_ties_even().clamp(-128.0, 127.0) as i8
}

/// Quantizes one activation row to int8 with the best kernel for this CPU (see [`Kernel::select`]).
///
/// `out` must be at least as long as `x`; entries past `x.len()` are the row's padding and
/// are set to zero. Results are identical for every kernel variant.
pub fn quantize_row(x: &[f32], out: &mut [i8]) -> Result<ActScale> {
    quantize_row_with(Kernel::select()?, x, out)
}

/// [`quantize_row`] with an explicit kernel variant (an error if this CPU lacks it).
pub fn quantize_row_with(kernel: Kernel, x: &[f32], out: &mut [i8]) -> Result<ActScale> {
    if out.len() < x.len() {
        return Err(Error::shape(format!(
            "quantize_row: output has {} entries for a row of {}",
            out.len(),
            x.len()
        )));
    }
    let kernel = kernel.ensure_available()?;
    let (head, pad) = out.split_at_mut(x.len());
    pad.fill(0);
    Ok(crate::kernels::quantize_row_unchecked(kernel, x, head))
}

/// The scalar reference of [`quantize_row`]; `out.len()` must equal `x.len()`.
pub(crate) fn quantize_row_scalar(x: &[f32], out: &mut [i8]) -> ActScale {
    let max_abs = x.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    let scale = act_scale_for(max_abs);
    let mut sum = 0i32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_value(v, scale);
        sum += i32::from(*o);
    }
    ActScale { scale, sum }
}

/// Quantizes `x`, `n_tok` rows of `cols` values, into `out` rows of `out_cols >= cols`
/// entries (the padding is zeroed), writing one [`ActScale`] per row into `acts`.
pub fn quantize_rows(
    x: &[f32],
    cols: usize,
    out: &mut [i8],
    out_cols: usize,
    acts: &mut [ActScale],
) -> Result<()> {
    let n_tok = acts.len();
    if cols == 0 || out_cols < cols {
        return Err(Error::invalid(format!(
            "quantize_rows: cols = {cols}, out_cols = {out_cols} (need 0 < cols <= out_cols)"
        )));
    }
    if x.len() != n_tok * cols || out.len() != n_tok * out_cols {
        return Err(Error::shape(format!(
            "quantize_rows: {n_tok} rows need {} inputs and {} outputs, got {} and {}",
            n_tok * cols,
            n_tok * out_cols,
            x.len(),
            out.len()
        )));
    }
    let kernel = Kernel::select()?;
    for ((xr, or), a) in x.chunks_exact(cols).zip(out.chunks_exact_mut(out_cols)).zip(acts) {
        *a = quantize_row_with(kernel, xr, or)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn absmean_ternary_matches_hand_computed_example() {
        // mean |W| = (0.2 + 0.6 + 0.05 + 0.35) / 4 = 0.3; W / 0.3 = 0.67, -2, 0.17, 1.17
        let (q, s) = absmean_ternary(&[0.2, -0.6, 0.05, 0.35]);
        assert_eq!(q, vec![1, -1, 0, 1]);
        assert_eq!(s, 0.3);
    }

    #[test]
    fn absmean_ternary_rounds_half_to_even() {
        // mean = 1.0, so W * scale is W itself: 0.5 -> 0, -0.5 -> -0, 1.5 -> 1 (clamped 2)
        let (q, s) = absmean_ternary(&[0.5, -0.5, 1.5, 1.5]);
        assert_eq!(s, 1.0);
        assert_eq!(q, vec![0, 0, 1, 1]);
    }

    #[test]
    fn absmean_ternary_clamps_tiny_and_empty_means() {
        let (q, s) = absmean_ternary(&[0.0; 8]);
        assert_eq!((q, s), (vec![0; 8], EPS));
        assert_eq!(absmean_ternary(&[]), (vec![], EPS));
        let (q, s) = absmean_ternary(&[1e-7, -3e-6]);
        assert_eq!(s, EPS);
        assert_eq!(q, vec![0, 0]);
    }

    #[test]
    fn quantize_row_matches_hand_computed_example() {
        // max |x| = 4 -> s_a = 31.75: 1*31.75 = 31.75 -> 32, -4 -> -127, 0.02 -> 0.635 -> 1
        let mut q = [9i8; 6];
        let a = quantize_row_with(Kernel::Scalar, &[1.0, -4.0, 0.02, 4.0], &mut q).unwrap();
        assert_eq!(q, [32, -127, 1, 127, 0, 0]);
        assert_eq!(a, ActScale { scale: 31.75, sum: 33 });
    }

    #[test]
    fn all_zero_row_uses_the_clamped_scale() {
        let mut q = [5i8; 3];
        let a = quantize_row_with(Kernel::Scalar, &[0.0; 3], &mut q).unwrap();
        assert_eq!(q, [0; 3]);
        assert_eq!(a, ActScale { scale: 127.0 / EPS, sum: 0 });
    }

    #[test]
    fn short_output_is_a_shape_error() {
        let e = quantize_row_with(Kernel::Scalar, &[1.0; 4], &mut [0i8; 3]).unwrap_err();
        assert!(matches!(e, Error::Shape(_)), "{e}");
    }

    #[test]
    fn quantize_rows_pads_every_row_with_zeros() {
        let x = [1.0, 2.0, -1.0, -2.0];
        let mut out = [7i8; 6];
        let mut acts = [ActScale::default(); 2];
        quantize_rows(&x, 2, &mut out, 3, &mut acts).unwrap();
        assert_eq!(out, [64, 127, 0, -64, -127, 0]); // 63.5 -> 64 (even)
        assert_eq!(acts[0].sum, 191);
        assert_eq!(acts[1].sum, -191);
        assert!(quantize_rows(&x, 2, &mut out, 1, &mut acts).is_err());
        assert!(quantize_rows(&x, 3, &mut out, 3, &mut acts).is_err());
    }

    fn row(len: usize) -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(-100.0f32..100.0, len)
    }

    proptest! {
        #[test]
        fn every_kernel_quantizes_rows_bit_exactly(x in (0usize..300).prop_flat_map(row)) {
            let mut want = vec![0i8; x.len() + 5];
            let a = quantize_row_with(Kernel::Scalar, &x, &mut want).unwrap();
            for k in Kernel::available() {
                let mut got = vec![1i8; x.len() + 5];
                let b = quantize_row_with(k, &x, &mut got).unwrap();
                prop_assert_eq!(&got, &want, "{}", k);
                prop_assert_eq!(a, b, "{}", k);
            }
        }

        #[test]
        fn quantized_row_dequantizes_within_half_a_step(x in row(64)) {
            let mut q = vec![0i8; 64];
            let a = quantize_row(&x, &mut q).unwrap();
            for (&v, &qv) in x.iter().zip(&q) {
                prop_assert!((f32::from(qv) / a.scale - v).abs() <= 0.5 / a.scale * 1.001 + 1e-6);
            }
            prop_assert_eq!(a.sum, q.iter().map(|&v| i32::from(v)).sum::<i32>());
        }
    }

    #[test]
    fn every_kernel_handles_ties_extremes_and_non_finite_inputs_alike() {
        let mut cases: Vec<Vec<f32>> = vec![
            vec![127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -127.0, 63.5],
            vec![f32::MAX, -f32::MAX, 1.0],
            vec![1e-6, -1e-6, 3e-7],
            vec![f32::NAN, 1.0, -2.0],
            vec![f32::INFINITY, 1.0, f32::NEG_INFINITY],
        ];
        cases.push((0..1000).map(|i| (i as f32 - 500.0) * 0.37).collect());
        for x in cases {
            let mut want = vec![0i8; x.len()];
            let a = quantize_row_with(Kernel::Scalar, &x, &mut want).unwrap();
            for k in Kernel::available() {
                let mut got = vec![0i8; x.len()];
                let b = quantize_row_with(k, &x, &mut got).unwrap();
                assert_eq!(got, want, "{k} on {x:?}");
                assert_eq!(a.sum, b.sum, "{k}");
                assert_eq!(a.scale.to_bits(), b.scale.to_bits(), "{k}");
            }
        }
    }
}
