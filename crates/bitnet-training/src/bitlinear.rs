//! BitLinear for quantization-aware training.
//!
//! The layer keeps latent f32 weights `W` `[out, in]`. Its forward pass uses the BitNet b1.58
//! quantized values, `y = q_a(x) · q_w(W)ᵀ` with `q_w(W) = Wq * s_w` (absmean ternary, per
//! tensor) and `q_a(x) = xq / s_a` (absmax int8, per token): the same numbers the inference
//! kernel computes as `(xq · Wqᵀ) * s_w / s_a`. Gradients flow by the straight-through
//! estimator, `x + (q(x) - x).detach()`, so backward sees `y = x · Wᵀ`.

use crate::ops::{act_quant, ste, weight_quant};
use crate::params::{Params, Rng};
use bitnet_core::Result;
use candle_core::{Tensor, Var};

/// Whether a forward pass quantizes (the real model) or not (the STE surrogate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// Quantized forward with straight-through gradients (training and evaluation).
    Ste,
    /// No quantization: the identity-quantizer surrogate whose gradients the STE uses.
    Identity,
}

/// A bias-free BitLinear layer with latent f32 weights.
#[derive(Clone)]
pub struct BitLinear {
    weight: Var,
    in_dim: usize,
    out_dim: usize,
}

impl BitLinear {
    /// Creates `name` (`[out, in]`) in `params`, initialised `N(0, std²)`.
    pub fn new(
        params: &mut Params,
        name: &str,
        in_dim: usize,
        out_dim: usize,
        std: f32,
        rng: &mut Rng,
    ) -> Result<Self> {
        let weight = params.normal(name, &[out_dim, in_dim], std, rng)?;
        Ok(Self { weight, in_dim, out_dim })
    }

    /// The latent weight.
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// `x` `[..., in]` to `[..., out]`.
    pub fn forward(&self, x: &Tensor, quant: Quant) -> candle_core::Result<Tensor> {
        let w = self.weight.as_tensor();
        let (x, w) = match quant {
            Quant::Ste => (ste(x, &act_quant(x)?)?, ste(w, &weight_quant(w)?)?),
            Quant::Identity => (x.clone(), w.clone()),
        };
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, self.in_dim))?.matmul(&w.t()?)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.out_dim;
        }
        y.reshape(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn layer(seed: u64) -> BitLinear {
        let mut p = Params::new();
        BitLinear::new(&mut p, "w", 8, 4, 0.5, &mut Rng::new(seed)).unwrap()
    }

    #[test]
    fn quantized_forward_equals_the_integer_formula() {
        let l = layer(3);
        let mut r = Rng::new(9);
        let xs: Vec<f32> = (0..16).map(|_| r.normal()).collect();
        let x = Tensor::from_vec(xs.clone(), (2, 8), &Device::Cpu).unwrap();
        let y = l.forward(&x, Quant::Ste).unwrap().to_vec2::<f32>().unwrap();
        let w = l.weight().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (wq, s_w) = bitnet_quant::quantize::absmean_ternary(&w);
        for (t, row) in xs.chunks(8).enumerate() {
            let mut xq = [0i8; 8];
            let a = bitnet_quant::quantize::quantize_row(row, &mut xq).unwrap();
            for o in 0..4 {
                let dot: i32 = (0..8).map(|c| i32::from(xq[c]) * i32::from(wq[o * 8 + c])).sum();
                let want = dot as f32 * s_w / a.scale;
                assert!((y[t][o] - want).abs() <= 1e-5 * want.abs().max(1.0), "{t},{o}");
            }
        }
    }

    /// STE gradients equal finite differences of the identity-quantizer surrogate.
    #[test]
    fn ste_gradients_match_finite_differences_of_the_surrogate() {
        let l = layer(5);
        let dev = Device::Cpu;
        let mut r = Rng::new(11);
        let x0: Vec<f32> = (0..24).map(|_| r.normal()).collect();
        let c: Vec<f32> = (0..12).map(|_| r.normal()).collect();
        let ct = Tensor::from_vec(c, (3, 4), &dev).unwrap();
        // A nonlinear objective so the gradient depends on where it is taken.
        let obj = |x: &Tensor, q: Quant| -> Tensor {
            let y = l.forward(x, q).unwrap();
            (y.sqr().unwrap() * 0.5).unwrap().add(&(y * &ct).unwrap()).unwrap().sum_all().unwrap()
        };
        let xv = Var::from_tensor(&Tensor::from_vec(x0.clone(), (3, 8), &dev).unwrap()).unwrap();
        let g = obj(xv.as_tensor(), Quant::Ste).backward().unwrap();
        let gx = g.get(xv.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let gw = g.get(l.weight().as_tensor()).unwrap().flatten_all().unwrap();
        let gw = gw.to_vec1::<f32>().unwrap();
        // The STE gradient is the surrogate's gradient taken at the quantized point: check the
        // weight gradient against finite differences at the quantized forward's inputs.
        let xq = act_quant(xv.as_tensor()).unwrap();
        let wq = weight_quant(l.weight().as_tensor()).unwrap();
        let w0 = l.weight().as_tensor().copy().unwrap();
        let eps = 1e-2f32;
        let fd = |v: &mut Vec<f32>, i: usize, f: &dyn Fn(&[f32]) -> f32| {
            let base = v[i];
            v[i] = base + eps;
            let up = f(v);
            v[i] = base - eps;
            let down = f(v);
            v[i] = base;
            (up - down) / (2.0 * eps)
        };
        // d/dx at (q(x), q(W)): surrogate with the weight fixed at q(W).
        l.weight().set(&wq).unwrap();
        let mut xs = xq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fx = |v: &[f32]| {
            let t = Tensor::from_vec(v.to_vec(), (3, 8), &dev).unwrap();
            obj(&t, Quant::Identity).to_scalar::<f32>().unwrap()
        };
        for (i, g) in gx.iter().enumerate() {
            let d = fd(&mut xs, i, &fx);
            assert!((d - g).abs() < 2e-2 * d.abs().max(1.0), "dx[{i}]: fd {d} vs {g}");
        }
        // d/dW at (q(x), q(W)).
        let mut ws = wq.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let fw = |v: &[f32]| {
            l.weight().set(&Tensor::from_vec(v.to_vec(), (4, 8), &dev).unwrap()).unwrap();
            obj(&xq, Quant::Identity).to_scalar::<f32>().unwrap()
        };
        for (i, g) in gw.iter().enumerate() {
            let d = fd(&mut ws, i, &fw);
            assert!((d - g).abs() < 2e-2 * d.abs().max(1.0), "dW[{i}]: fd {d} vs {g}");
        }
        // The check can fail: at the latent point (no quantization) the gradient differs.
        l.weight().set(&w0).unwrap();
        let g = obj(xv.as_tensor(), Quant::Identity).backward().unwrap();
        let gx_latent = g.get(xv.as_tensor()).unwrap().flatten_all().unwrap();
        let gx_latent = gx_latent.to_vec1::<f32>().unwrap();
        assert!(gx.iter().zip(&gx_latent).any(|(a, b)| (a - b).abs() > 1e-2));
    }
}
