//! Rotary position embedding frequencies, shared by every backend.

use crate::config::Llama3Scaling;

/// Rotary embedding frequencies: the base and, for Llama-3 checkpoints, its scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    /// The base (`rope_theta`).
    pub theta: f32,
    /// Llama-3 frequency scaling (`rope_type: llama3`), if any.
    pub llama3: Option<Llama3Scaling>,
}

impl Rope {
    /// Plain RoPE with base `theta`.
    pub fn new(theta: f32) -> Self {
        Rope { theta, llama3: None }
    }

    /// The inverse frequency of pair `i` of a head of `head_dim` values, in f32 as HF computes
    /// it: `1 / theta^(2i / d)`, then, with Llama-3 scaling, divided by `factor` for wavelengths
    /// over `original / low_freq_factor`, kept under `original / high_freq_factor`, and blended
    /// in between (`_compute_llama3_parameters`).
    pub fn inv_freq(&self, i: usize, head_dim: usize) -> f32 {
        let f = 1.0f32 / self.theta.powf((2 * i) as f32 / head_dim as f32);
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

    /// A key that tells two RoPEs apart exactly (for caches of their frequencies).
    pub fn key(&self) -> [u64; 5] {
        let s = self.llama3.map_or([0.0; 4], |s| {
            [s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_positions]
        });
        [
            self.theta.to_bits() as u64,
            s[0].to_bits(),
            s[1].to_bits(),
            s[2].to_bits(),
            s[3].to_bits(),
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
        let (plain, scaled) = (Rope::new(500_000.0), Rope { theta: 500_000.0, llama3: Some(s) });
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
}
