//! Rotary position embedding frequencies, shared by every backend.

use crate::config::Llama3Scaling;

/// Rotary embedding frequencies: the base and, for Llama-3 checkpoints, its scaling (as HF's
/// parameters, or as the per-pair divisors a GGUF file stores).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The base (`rope_theta`).
    pub theta: f32,
    /// Llama-3 frequency scaling (`rope_type: llama3`), if any.
    pub llama3: Option<Llama3Scaling>,
    /// Per-pair frequency divisors (llama.cpp's `rope_freqs` tensor), if any.
    pub factors: Option<FreqFactors>,
}

/// Most rotary pairs a head may have (heads of up to 512 values).
pub const MAX_ROPE_PAIRS: usize = 256;

/// Per-pair divisors of the inverse frequencies: llama.cpp's `rope_freqs` tensor (its form of
/// Llama-3 scaling: pair `i` turns at `1 / theta^(2i / d) / factor[i]`). Fixed-size, so that
/// [`Rope`] stays `Copy`.
#[derive(Clone, Copy, PartialEq)]
pub struct FreqFactors {
    len: usize,
    values: [f32; MAX_ROPE_PAIRS],
}

impl FreqFactors {
    /// The divisors of pairs `0..values.len()`; each must be a positive finite number.
    pub fn new(values: &[f32]) -> Option<Self> {
        if values.len() > MAX_ROPE_PAIRS || !values.iter().all(|v| v.is_finite() && *v > 0.0) {
            return None;
        }
        let mut f = FreqFactors { len: values.len(), values: [1.0; MAX_ROPE_PAIRS] };
        f.values[..values.len()].copy_from_slice(values);
        Some(f)
    }
    /// The divisors.
    pub fn values(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl std::fmt::Debug for FreqFactors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FreqFactors({} pairs)", self.len)
    }
}

/// See [`Rope::key`].
pub type RopeKey = [u64; 6];

impl Rope {
    /// Plain RoPE with base `theta`.
    pub fn new(theta: f32) -> Self {
        Rope { theta, llama3: None, factors: None }
    }

    /// The inverse frequency of pair `i` of a head of `head_dim` values, in f32 as HF computes
    /// it: `1 / theta^(2i / d)`, then, with Llama-3 scaling, divided by `factor` for wavelengths
    /// over `original / low_freq_factor`, kept under `original / high_freq_factor`, and blended
    /// in between (`_compute_llama3_parameters`).
    /// With per-pair divisors, pair `i` is divided by its own (pairs past them by 1).
    pub fn inv_freq(&self, i: usize, head_dim: usize) -> f32 {
        let f = 1.0f32 / self.theta.powf((2 * i) as f32 / head_dim as f32);
        if let Some(d) = &self.factors {
            return f / d.values().get(i).copied().unwrap_or(1.0);
        }
        let Some(s) = self.llama3 else { return f };
        let (factor, low, high) =
            (s.factor as f32, s.low_freq_factor as f32, s.high_freq_factor as f32);
        let old = s.original_max_positions as f32;
        let wavelen = 2.0 * std::f32::consts::PI / f;
        if wavelen < old / high {
            f
        } else if wavelen > old / low {
            f / factor
        } else {
            let smooth = (old / wavelen - low) / (high - low);
            (1.0 - smooth) * f / factor + smooth * f
        }
    }

    /// Every pair's inverse frequency for a head of `head_dim` values.
    pub fn inv_freqs(&self, head_dim: usize) -> Vec<f32> {
        (0..head_dim / 2).map(|i| self.inv_freq(i, head_dim)).collect()
    }

    /// A key that tells two RoPEs apart (for caches of their frequencies): their exact
    /// parameters, the divisors by an FNV-1a hash of their bits.
    pub fn key(&self) -> RopeKey {
        let s = self.llama3.map_or([0.0; 4], |s| {
            [s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_positions]
        });
        let factors = self.factors.map_or(0, |d| {
            let mut h = bitnet_core::hash::Fnv64::new();
            d.values().iter().for_each(|v| h.write(&v.to_bits().to_le_bytes()));
            h.finish()
        });
        [
            self.theta.to_bits() as u64,
            s[0].to_bits(),
            s[1].to_bits(),
            s[2].to_bits(),
            s[3].to_bits(),
            factors,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_the_middle() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 64.0,
        };
        let (plain, scaled) =
            (Rope::new(500_000.0), Rope { llama3: Some(s), ..Rope::new(500_000.0) });
        let hd = 16;
        let (mut kept, mut divided, mut blended) = (0, 0, 0);
        for i in 0..hd / 2 {
            let (f, g) = (plain.inv_freq(i, hd), scaled.inv_freq(i, hd));
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < 16.0 {
                assert_eq!(g, f, "pair {i}");
                kept += 1;
            } else if wavelen > 64.0 {
                assert_eq!(g, f / 8.0, "pair {i}");
                divided += 1;
            } else {
                assert!(g < f && g > f / 8.0, "pair {i}: {g} vs {f}");
                blended += 1;
            }
        }
        assert!(kept > 0 && divided > 0 && blended > 0, "{kept} {divided} {blended}");
        assert_ne!(plain.key(), scaled.key());
        assert_eq!(plain.inv_freqs(hd)[1], plain.inv_freq(1, hd));
    }

    /// llama.cpp's divisors (as its converter computes them from the same parameters) give
    /// HF's Llama-3 frequencies to f32 rounding, and a different table is a different key.
    #[test]
    fn gguf_divisors_reproduce_llama3_scaling() {
        let s = Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_positions: 64.0,
        };
        let hd = 16;
        let plain = Rope::new(500_000.0);
        let divisors = crate::formats::gguf_llama::llama3_rope_freqs(500_000.0, hd, &s);
        assert!(divisors.iter().any(|&d| d > 1.0 && d < 8.0), "a blended pair: {divisors:?}");
        let hf = Rope { llama3: Some(s), ..plain };
        let gguf = Rope { factors: FreqFactors::new(&divisors), ..plain };
        for i in 0..hd / 2 {
            let (a, b) = (hf.inv_freq(i, hd), gguf.inv_freq(i, hd));
            assert!((a - b).abs() <= 2e-7 * a, "pair {i}: {a} vs {b}");
        }
        assert_ne!(gguf.key(), plain.key());
        let mut other = divisors.clone();
        other[3] += 0.5;
        assert_ne!(gguf.key(), Rope { factors: FreqFactors::new(&other), ..plain }.key());
        assert!(FreqFactors::new(&[1.0, 0.0]).is_none() && FreqFactors::new(&[f32::NAN]).is_none());
    }
}
