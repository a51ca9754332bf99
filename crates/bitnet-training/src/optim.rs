//! AdamW (decoupled weight decay) with linear warm-up + cosine decay and global gradient-norm
//! clipping. Its state (moments and step) is plain tensors, so checkpoints can save it.

use crate::params::Params;
use crate::CandleExt;
use bitnet_core::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use std::collections::HashMap;

/// Learning rate at `step` (0-based): linear warm-up to `peak` over `warmup` steps, then
/// cosine decay to `peak * min_ratio` at `total`.
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64, min_ratio: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let min = peak * min_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    /// beta1.
    pub beta1: f64,
    /// beta2.
    pub beta2: f64,
    /// epsilon.
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters `decay` says yes to.
    pub weight_decay: f64,
}

struct Slot {
    name: String,
    var: Var,
    m: Var,
    v: Var,
    decay: bool,
}

/// AdamW over a [`Params`] set.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    step: usize,
}

impl AdamW {
    /// An optimiser for every parameter of `params`; `decay(name)` picks the decayed ones.
    pub fn new(params: &Params, cfg: AdamWConfig, decay: impl Fn(&str) -> bool) -> Result<Self> {
        let slots = params
            .iter()
            .map(|(name, var)| {
                let z = var.as_tensor().zeros_like().ce()?;
                Ok(Slot {
                    name: name.to_string(),
                    var: var.clone(),
                    m: Var::from_tensor(&z).ce()?,
                    v: Var::from_tensor(&z).ce()?,
                    decay: decay(name),
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { cfg, slots, step: 0 })
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> usize {
        self.step
    }

    /// The global L2 norm of the gradients (parameters without a gradient count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += f64::from(g.sqr().ce()?.sum_all().ce()?.to_scalar::<f32>().ce()?);
            }
        }
        Ok(sq.sqrt())
    }

    /// One update with learning rate `lr`, the gradients scaled by `grad_scale` (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.step += 1;
        let c = self.cfg;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        for s in &self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let g = (g * grad_scale).ce()?;
            let m = ((s.m.as_tensor() * c.beta1).ce()? + (&g * (1.0 - c.beta1)).ce()?).ce()?;
            let v = ((s.v.as_tensor() * c.beta2).ce()? + (g.sqr().ce()? * (1.0 - c.beta2)).ce()?)
                .ce()?;
            let denom = ((&v / bc2).ce()?.sqrt().ce()? + c.eps).ce()?;
            let update = ((&m / bc1).ce()? / denom).ce()?;
            let mut w = s.var.as_tensor().clone();
            if s.decay && c.weight_decay > 0.0 {
                w = (w * (1.0 - lr * c.weight_decay)).ce()?;
            }
            s.var.set(&(w - (update * lr).ce()?).ce()?).ce()?;
            s.m.set(&m).ce()?;
            s.v.set(&v).ce()?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adam.m.NAME`, `adam.v.NAME`) for a checkpoint.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("adam.m.{}", s.name), s.m.as_tensor().copy().ce()?);
            out.insert(format!("adam.v.{}", s.name), s.v.as_tensor().copy().ce()?);
        }
        Ok(out)
    }

    /// Restores the moments from [`AdamW::state`]'s tensors and the step count.
    pub fn load_state(&mut self, map: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        for s in &self.slots {
            for (kind, var) in [("m", &s.m), ("v", &s.v)] {
                let key = format!("adam.{kind}.{}", s.name);
                let t = map.get(&key).ok_or_else(|| {
                    bitnet_core::Error::format("checkpoint", format!("{key} is missing"))
                })?;
                var.set(t).ce()?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let lr = |s| lr_at(s, 110, 10, 1.0, 0.1);
        assert!((lr(0) - 0.1).abs() < 1e-12 && (lr(9) - 1.0).abs() < 1e-12);
        assert!((lr(10) - 1.0).abs() < 1e-12);
        assert!((lr(60) - 0.55).abs() < 1e-9);
        assert!((lr(110) - 0.1).abs() < 1e-12 && (lr(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let mut p = Params::new();
        let w = p.constant("w", &[3], 5.0).unwrap();
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = AdamW::new(&p, cfg, |_| true).unwrap();
        for _ in 0..300 {
            let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            opt.step(&g, 0.1, 1.0).unwrap();
        }
        let v = w.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.abs() < 0.05), "{v:?}");
    }
}
