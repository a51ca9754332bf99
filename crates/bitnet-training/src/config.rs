//! Training configuration: the model's dimensions and the optimisation schedule, as built-in
//! presets (`tiny`, `small`) or a TOML file whose missing keys take the `small` values.

use bitnet_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Everything a training run needs besides the data, the seed and the output directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Tokenizer vocabulary size (specials included).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (GQA when fewer than `num_heads`).
    pub num_kv_heads: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Tokens per training window (BOS included); also `max_position_embeddings`.
    pub seq_len: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Linear warm-up steps.
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (projections only; not norms or embeddings).
    pub weight_decay: f64,
    /// AdamW beta1.
    pub beta1: f64,
    /// AdamW beta2.
    pub beta2: f64,
    /// AdamW epsilon.
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Evaluate on the held-out split every this many steps (and at the end).
    pub eval_every: usize,
    /// Held-out windows per evaluation (at most what the split holds).
    pub eval_windows: usize,
    /// Write a checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Standard deviation of the initial weights.
    pub init_std: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::small()
    }
}

impl TrainConfig {
    /// The default model: ~6M parameters (hidden 256, 6 layers, 4 heads / 2 KV heads,
    /// FFN 768, vocabulary 4096), batches of 8 windows of 256 tokens, 1000 steps.
    pub fn small() -> Self {
        TrainConfig {
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 768,
            num_layers: 6,
            num_heads: 4,
            num_kv_heads: 2,
            rope_theta: 10000.0,
            rms_norm_eps: 1e-5,
            seq_len: 256,
            batch_size: 8,
            steps: 1000,
            lr: 3e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 100,
            weight_decay: 0.05,
            beta1: 0.9,
            beta2: 0.95,
            adam_eps: 1e-8,
            grad_clip: 1.0,
            eval_every: 100,
            eval_windows: 48,
            checkpoint_every: 100,
            init_std: 0.02,
        }
    }

    /// A model small enough to train in seconds (tests, smoke runs).
    pub fn tiny() -> Self {
        TrainConfig {
            vocab_size: 512,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            seq_len: 64,
            batch_size: 8,
            steps: 200,
            warmup_steps: 10,
            eval_every: 50,
            eval_windows: 16,
            checkpoint_every: 50,
            ..Self::small()
        }
    }

    /// `tiny`, `small`, or a path to a TOML file (missing keys take the `small` values).
    pub fn resolve(name: &str) -> Result<Self> {
        let cfg = match name {
            "tiny" => Self::tiny(),
            "small" => Self::small(),
            path => Self::from_toml_file(Path::new(path))?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML file.
    pub fn from_toml_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text).map_err(|e| e.context(format!("reading {}", path.display())))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }

    /// Checks every field; one message per bad field.
    pub fn validate(&self) -> Result<()> {
        let mut p = Vec::new();
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("seq_len", self.seq_len),
            ("batch_size", self.batch_size),
            ("eval_every", self.eval_every),
            ("eval_windows", self.eval_windows),
            ("checkpoint_every", self.checkpoint_every),
        ];
        p.extend(positive.iter().filter(|(_, v)| *v == 0).map(|(k, _)| format!("{k} must be > 0")));
        if self.vocab_size < 260 {
            p.push(format!("vocab_size {} < 260 (256 bytes + 3 specials + 1)", self.vocab_size));
        }
        if self.num_heads > 0 && !self.hidden_size.is_multiple_of(self.num_heads) {
            p.push("hidden_size must be a multiple of num_heads".into());
        }
        if !self.head_dim().is_multiple_of(2) {
            p.push("the head width (hidden_size / num_heads) must be even for RoPE".into());
        }
        if self.num_kv_heads > 0 && !self.num_heads.is_multiple_of(self.num_kv_heads) {
            p.push("num_heads must be a multiple of num_kv_heads".into());
        }
        // Offline packing stores four output rows per byte.
        let kv_width = self.num_kv_heads * self.head_dim();
        for (k, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("kv width", kv_width),
        ] {
            if !v.is_multiple_of(4) {
                p.push(format!("{k} = {v} must be a multiple of 4 (packed ternary rows)"));
            }
        }
        for (k, v) in [
            ("lr", self.lr),
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
            ("adam_eps", self.adam_eps),
            ("init_std", self.init_std),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("{k} = {v} must be a positive number"));
            }
        }
        for (k, v) in
            [("beta1", self.beta1), ("beta2", self.beta2), ("min_lr_ratio", self.min_lr_ratio)]
        {
            if !(0.0..=1.0).contains(&v) {
                p.push(format!("{k} = {v} must lie in [0, 1]"));
            }
        }
        if !(self.weight_decay >= 0.0 && self.grad_clip >= 0.0) {
            p.push("weight_decay and grad_clip must be >= 0".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(p.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_toml_overrides_small() {
        TrainConfig::tiny().validate().unwrap();
        TrainConfig::small().validate().unwrap();
        let c = TrainConfig::from_toml("hidden_size = 128\nsteps = 5\n").unwrap();
        assert_eq!((c.hidden_size, c.steps, c.num_layers), (128, 5, 6));
    }

    #[test]
    fn bad_fields_are_each_reported() {
        let e = TrainConfig::from_toml("num_heads = 3\nlr = -1.0\n").unwrap_err().to_string();
        assert!(e.contains("num_heads") && e.contains("lr"), "{e}");
        assert!(TrainConfig::from_toml("hiden_size = 1").is_err(), "unknown keys are refused");
    }
}
