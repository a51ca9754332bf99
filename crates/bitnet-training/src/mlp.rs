//! The BitNet MLP classifier: `784 → hidden → 10` with BitLinear layers (per-token int8
//! activations, ternary weights, STE gradients), an RMSNorm before each layer as BitNet puts
//! one in front of every BitLinear, and ReLU between. With `hidden = 1280` it has ~1.0M
//! parameters.

use crate::bitlinear::{BitLinear, Quant};
use crate::ops::{cross_entropy, rms_norm};
use crate::params::{Params, Rng};
use crate::CandleExt;
use bitnet_core::Result;
use candle_core::{Tensor, Var};

/// Inputs (28 x 28 images).
pub const INPUTS: usize = 784;
/// Classes.
pub const CLASSES: usize = 10;

/// A two-layer BitNet classifier.
pub struct BitNetMlp {
    params: Params,
    norm1: Var,
    fc1: BitLinear,
    norm2: Var,
    fc2: BitLinear,
}

impl BitNetMlp {
    /// A fresh classifier with `hidden` units, initialised from `seed`.
    pub fn new(hidden: usize, seed: u64) -> Result<Self> {
        let mut p = Params::new();
        let mut rng = Rng::stream(seed, 2);
        let norm1 = p.constant("norm1.weight", &[INPUTS], 1.0)?;
        let fc1 = BitLinear::new(&mut p, "fc1.weight", INPUTS, hidden, 0.02, &mut rng)?;
        let norm2 = p.constant("norm2.weight", &[hidden], 1.0)?;
        let fc2 = BitLinear::new(&mut p, "fc2.weight", hidden, CLASSES, 0.02, &mut rng)?;
        Ok(Self { params: p, norm1, fc1, norm2, fc2 })
    }

    /// The trainable parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Logits `[n, 10]` for inputs `[n, 784]`.
    pub fn forward(&self, x: &Tensor, quant: Quant) -> Result<Tensor> {
        let h = rms_norm(x, self.norm1.as_tensor(), 1e-5).ce()?;
        let h = self.fc1.forward(&h, quant).ce()?.relu().ce()?;
        let h = rms_norm(&h, self.norm2.as_tensor(), 1e-5).ce()?;
        self.fc2.forward(&h, quant).ce()
    }

    /// Mean cross-entropy against labels `[n]` (u32).
    pub fn loss(&self, x: &Tensor, labels: &Tensor, quant: Quant) -> Result<Tensor> {
        cross_entropy(&self.forward(x, quant)?, labels).ce()
    }

    /// Fraction of rows whose arg-max logit is the label.
    pub fn accuracy(&self, x: &Tensor, labels: &[u32]) -> Result<f32> {
        let pred = self.forward(x, Quant::Ste)?.argmax(1).ce()?.to_vec1::<u32>().ce()?;
        let hits = pred.iter().zip(labels).filter(|(a, b)| a == b).count();
        Ok(hits as f32 / labels.len().max(1) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamW, AdamWConfig};
    use candle_core::Device;

    /// Ten noisy class prototypes in 784 dimensions.
    fn synthetic(n: usize, seed: u64) -> (Tensor, Vec<u32>) {
        let mut proto_rng = Rng::new(42);
        let protos: Vec<f32> = (0..CLASSES * INPUTS).map(|_| proto_rng.normal()).collect();
        let mut r = Rng::new(seed);
        let mut x = Vec::with_capacity(n * INPUTS);
        let labels: Vec<u32> = (0..n).map(|_| r.below(CLASSES) as u32).collect();
        for &l in &labels {
            let p = &protos[l as usize * INPUTS..(l as usize + 1) * INPUTS];
            x.extend(p.iter().map(|v| v + 1.5 * r.normal()));
        }
        (Tensor::from_vec(x, (n, INPUTS), &Device::Cpu).unwrap(), labels)
    }

    #[test]
    fn default_size_has_about_a_million_parameters() {
        let n = BitNetMlp::new(1280, 0).unwrap().params().count();
        assert!((950_000..1_100_000).contains(&n), "{n}");
    }

    #[test]
    fn mlp_learns_a_synthetic_ten_class_problem() {
        let m = BitNetMlp::new(128, 3).unwrap();
        let (x, y) = synthetic(256, 1);
        let yt = Tensor::new(y.as_slice(), &Device::Cpu).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(m.params(), cfg, |_| false).unwrap();
        let first = m.loss(&x, &yt, Quant::Ste).unwrap().to_scalar::<f32>().unwrap();
        for _ in 0..30 {
            let g = m.loss(&x, &yt, Quant::Ste).unwrap().backward().unwrap();
            opt.step(&g, 5e-3, 1.0).unwrap();
        }
        let last = m.loss(&x, &yt, Quant::Ste).unwrap().to_scalar::<f32>().unwrap();
        assert!(last < 0.3 * first, "loss {first} -> {last}");
        let (xt, yt) = synthetic(200, 2);
        let acc = m.accuracy(&xt, &yt).unwrap();
        assert!(acc > 0.9, "held-out accuracy {acc}");
    }
}
