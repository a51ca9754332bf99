//! Tensor operations the training graph needs beyond candle's: the BitNet b1.58 quantizers
//! (forward only; gradients go around them by the straight-through estimator), and a
//! row softmax / log-softmax with hand-written backward passes (candle's fused softmax has
//! none, and the composed one is slow on the CPU).

use bitnet_quant::quantize::{absmean_ternary, act_scale_for, quantize_value};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

/// The contiguous f32 data of a CPU storage, or an error naming `op`.
fn f32_data<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 tensors are supported, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The last dimension of `layout` (the row length), at least 1 element.
fn row_len(op: &str, layout: &Layout) -> Result<usize> {
    match layout.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => candle_core::bail!("{op}: needs a non-empty last dimension"),
    }
}

/// Per-token absmax int8 fake quantization: each row `x` becomes `clamp(round(x * s_a),
/// -128, 127) / s_a` with `s_a = 127 / max(|x|)` (max clamped to >= 1e-5), rounding half to
/// even, exactly as `bitnet_quant::quantize`.
struct ActQuant;

impl CustomOp1 for ActQuant {
    fn name(&self) -> &'static str {
        "bitnet-act-quant"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), storage, layout)?;
        let n = row_len(self.name(), layout)?;
        let mut out = vec![0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            let s = act_scale_for(r.iter().fold(0f32, |m, v| m.max(v.abs())));
            for (o, &v) in o.iter_mut().zip(r) {
                *o = f32::from(quantize_value(v, s)) / s;
            }
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// Per-tensor absmean ternary fake quantization: `W` becomes `Wq * s_w` with
/// `(Wq, s_w) = bitnet_quant::quantize::absmean_ternary(W)`.
struct WeightQuant;

impl CustomOp1 for WeightQuant {
    fn name(&self) -> &'static str {
        "bitnet-weight-quant"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let w = f32_data(self.name(), storage, layout)?;
        let (q, s) = absmean_ternary(w);
        let out = q.iter().map(|&t| f32::from(t) * s).collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// The quantized activations `q(x)` (no gradient).
pub fn act_quant(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ActQuant)
}

/// The dequantized ternary weight `q(W) = Wq * s_w` (no gradient).
pub fn weight_quant(w: &Tensor) -> Result<Tensor> {
    w.contiguous()?.apply_op1_no_bwd(&WeightQuant)
}

/// The straight-through estimator: forward `q(x)`, backward as if `q` were the identity,
/// written as `x + (q(x) - x).detach()`.
pub fn ste(x: &Tensor, qx: &Tensor) -> Result<Tensor> {
    x + (qx - x)?.detach()
}

/// Softmax over the last dimension.
struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "bitnet-softmax"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), storage, layout)?;
        let n = row_len(self.name(), layout)?;
        let mut out = vec![0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            let max = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let mut sum = 0f32;
            for (o, &v) in o.iter_mut().zip(r) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|v| *v *= inv);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let dot = (grad * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad.broadcast_sub(&dot)? * res)?))
    }
}

/// Log-softmax over the last dimension.
struct LogSoftmax;

impl CustomOp1 for LogSoftmax {
    fn name(&self) -> &'static str {
        "bitnet-log-softmax"
    }
    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(self.name(), storage, layout)?;
        let n = row_len(self.name(), layout)?;
        let mut out = vec![0f32; x.len()];
        for (o, r) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            let max = r.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let lse = max + r.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
            o.iter_mut().zip(r).for_each(|(o, &v)| *o = v - lse);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = g - softmax(x) * sum(g)
        let sum = grad.sum_keepdim(D::Minus1)?;
        Ok(Some((grad - res.exp()?.broadcast_mul(&sum)?)?))
    }
}

/// Softmax over the last dimension (differentiable).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
}

/// Log-softmax over the last dimension (differentiable).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(LogSoftmax)
}

/// Mean cross-entropy of `logits` `[n, vocab]` against `targets` `[n]` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let lp = log_softmax_last(logits)?;
    let picked = lp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}

/// RMSNorm as HF's `BitNetRMSNorm`: `weight * x / sqrt(mean(x²) + eps)` over the last dim.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn act_quant_rounds_half_to_even_like_bitnet_quant() {
        // s_a = 63.5: 1.0 scales to 63.5, a tie, which rounds to the even 64.
        let x = Tensor::new(&[[1.0f32, -2.0, 0.5, 0.0]], &Device::Cpu).unwrap();
        let q = act_quant(&x).unwrap().to_vec2::<f32>().unwrap();
        let s = 63.5f32;
        let want = [64.0 / s, -127.0 / s, 32.0 / s, 0.0];
        assert_eq!(q[0], want);
        // s_a = 1: ties 2.5 and -2.5 round to 2 and -2 (candle's round() would give 3 and -3).
        let x = Tensor::new(&[[127.0f32, 2.5, -2.5, 3.5]], &Device::Cpu).unwrap();
        let q = act_quant(&x).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(q[0], [127.0, 2.0, -2.0, 4.0]);
    }

    #[test]
    fn weight_quant_is_absmean_ternary() {
        let w = Tensor::new(&[[0.5f32, -1.5], [0.1, 1.0]], &Device::Cpu).unwrap();
        let q = weight_quant(&w).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(q, [[0.775, -0.775], [0.0, 0.775]]);
    }

    #[test]
    fn softmax_and_log_softmax_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x0 = [0.3f32, -1.2, 2.0, 0.7];
        let wts = Tensor::new(&[1.0f32, -2.0, 0.5, 3.0], &dev).unwrap();
        for f in [softmax_last, log_softmax_last] {
            let obj = |x: &Tensor| f(x).unwrap().mul(&wts).unwrap().sum_all().unwrap();
            let v = candle_core::Var::new(&x0, &dev).unwrap();
            let g = obj(v.as_tensor()).backward().unwrap();
            let g = g.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
            for i in 0..4 {
                let eval = |d: f32| {
                    let mut x = x0;
                    x[i] += d;
                    let t = Tensor::new(&x, &dev).unwrap();
                    obj(&t).to_scalar::<f32>().unwrap()
                };
                let fd = (eval(1e-2) - eval(-1e-2)) / 2e-2;
                assert!((fd - g[i]).abs() < 2e-3, "component {i}: fd {fd} vs grad {}", g[i]);
            }
        }
    }
}
