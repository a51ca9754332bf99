//! Named trainable parameters with seeded initialisation, and the small deterministic RNG
//! every random choice of training goes through (init, batch windows).

use crate::CandleExt;
use bitnet_core::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// SplitMix64: a tiny, fast, well-mixed generator; the whole state is one `u64`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// A generator for stream `stream` of `seed` (independent of the others).
    pub fn stream(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * n as f64) as usize % n.max(1)
    }
    /// Uniform in `(0, 1]`.
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

/// An ordered set of named trainable tensors (latent f32 weights).
#[derive(Default)]
pub struct Params {
    vars: Vec<(String, Var)>,
}

impl Params {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parameter with `N(0, std²)` entries drawn from `rng`.
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f32, rng: &mut Rng) -> Result<Var> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
        self.add(name, Tensor::from_vec(data, shape, &Device::Cpu).ce()?)
    }

    /// Adds a parameter filled with `value`.
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<Var> {
        let t = (Tensor::ones(shape, DType::F32, &Device::Cpu).ce()? * f64::from(value)).ce()?;
        self.add(name, t)
    }

    fn add(&mut self, name: &str, t: Tensor) -> Result<Var> {
        if self.get(name).is_some() {
            return Err(Error::invalid(format!("parameter {name} is defined twice")));
        }
        let v = Var::from_tensor(&t).ce()?;
        self.vars.push((name.to_string(), v.clone()));
        Ok(v)
    }

    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// All parameters in definition order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v))
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// A snapshot of the current values by name.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        self.vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().copy().ce()?))).collect()
    }

    /// Overwrites every parameter from `map` (all must be present with their shapes).
    pub fn load_from(&self, map: &HashMap<String, Tensor>) -> Result<()> {
        for (name, v) in &self.vars {
            let t = map.get(name).ok_or_else(|| {
                Error::format("checkpoint", format!("parameter {name} is missing"))
            })?;
            if t.dims() != v.dims() {
                return Err(Error::shape(format!(
                    "checkpoint parameter {name} has shape {:?}, the model wants {:?}",
                    t.dims(),
                    v.dims()
                )));
            }
            v.set(&t.to_dtype(DType::F32).ce()?).ce()?;
        }
        Ok(())
    }

    /// Saves the values as a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.tensors()?, path).ce()
    }
}

/// Loads a safetensors file into CPU tensors.
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .ce()
        .map_err(|e| e.context(format!("loading {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_roughly_standard_normal() {
        let a: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        let mut r = Rng::new(1);
        let xs: Vec<f32> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / xs.len() as f32;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
