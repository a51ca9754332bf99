//! Synthetic models: random ternary weights at the dimensions of real BitNet models, built in
//! memory (no file), for `bitnet bench --synthetic` and tests.

use super::bitnet::{BitNetModel, Dims, Layer, Proj};
use crate::backend::{Backend, DenseMatrix, LmHeadMode, Rope};
use crate::config::{Architecture, HiddenAct};
use bitnet_core::{DType, Error, Result, Tensor};
use bitnet_quant::formats::i2s::I2sMatrix;

/// The named synthetic shapes.
pub fn preset(name: &str) -> Result<Dims> {
    let d = |hidden, intermediate, layers, heads, kv_heads, vocab| Dims {
        hidden,
        intermediate,
        layers,
        heads,
        kv_heads,
        head_dim: hidden / heads,
        vocab,
        max_positions: 4096,
        eps: 1e-5,
        rope: Rope::new(500_000.0),
        arch: Architecture::BitNet,
        act: HiddenAct::Relu2,
    };
    Ok(match name {
        // microsoft/bitnet-b1.58-2B-4T
        "2b4t" => d(2560, 6912, 30, 20, 5, 128_256),
        // 1bitLLM/bitnet_b1_58-large (0.7B: BitNet's sub-norms, SiLU)
        "large" => Dims {
            eps: 1e-5,
            rope: Rope::new(10_000.0),
            act: HiddenAct::Silu,
            ..d(1536, 4096, 24, 16, 16, 32_002)
        },
        // 1bitLLM/bitnet_b1_58-3B (3.3B: sub-norms, SiLU, heads of 100, FFN 8640 wide)
        "3b" => Dims {
            eps: 1e-5,
            rope: Rope::new(10_000.0),
            act: HiddenAct::Silu,
            ..d(3200, 8640, 26, 32, 32, 32_002)
        },
        "tiny" => d(256, 640, 4, 4, 2, 1024),
        // tiiuae/Falcon3-1B-Instruct-1.58bit (LLaMA architecture: SiLU, no sub-norms)
        "falcon3-1b" => Dims {
            max_positions: 8192,
            eps: 1e-6,
            rope: Rope::new(1_000_042.0),
            arch: Architecture::Llama,
            act: HiddenAct::Silu,
            ..d(2048, 8192, 18, 8, 4, 131_072)
        },
        // HF1BitLLM/Llama3-8B-1.58-100B-tokens (LLaMA architecture)
        "llama3-8b" => Dims {
            max_positions: 8192,
            rope: Rope::new(500_000.0),
            arch: Architecture::Llama,
            act: HiddenAct::Silu,
            ..d(4096, 14336, 32, 32, 8, 128_256)
        },
        _ => {
            return Err(Error::invalid(format!(
                "unknown synthetic model `{name}` (expected 2b4t, large, 3b, tiny, falcon3-1b or \
                 llama3-8b)"
            )))
        }
    })
}

/// A small, fast, reproducible generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn ternary(&mut self, out: &mut [i8]) {
        for chunk in out.chunks_mut(32) {
            let mut bits = self.next();
            for v in chunk {
                // 2 bits -> {-1, 0, 1, 0}: half the weights zero, as trained BitNets roughly have.
                *v = [-1i8, 0, 1, 0][(bits & 3) as usize];
                bits >>= 2;
            }
        }
    }
}

/// Builds a model with random weights on `backend`.
pub fn build<B: Backend>(
    backend: B,
    dims: Dims,
    seed: u64,
    lm_mode: LmHeadMode,
) -> Result<BitNetModel<B>> {
    let mut rng = Rng(seed);
    let d = &dims;
    let (h, qd, kvd, f) = (d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate);
    let mut vals = Vec::new();
    let mut lin = |rows: usize, cols: usize, rng: &mut Rng| -> Result<B::Linear> {
        vals.resize(rows * cols, 0i8);
        rng.ternary(&mut vals);
        backend.linear(I2sMatrix::from_ternary(&vals, rows, cols, 0.02)?)
    };
    let mut layers = Vec::with_capacity(d.layers);
    for _ in 0..d.layers {
        layers.push(Layer {
            input_norm: backend.upload(&vec![1.0; h])?,
            post_norm: backend.upload(&vec![1.0; h])?,
            sub_norms: match d.arch {
                Architecture::BitNet => {
                    Some([backend.upload(&vec![1.0; qd])?, backend.upload(&vec![1.0; f])?])
                }
                Architecture::Llama => None,
            },
            qkv: Proj::new(
                &backend,
                vec![lin(qd, h, &mut rng)?, lin(kvd, h, &mut rng)?, lin(kvd, h, &mut rng)?],
            )?,
            o: lin(h, qd, &mut rng)?,
            gate_up: Proj::new(&backend, vec![lin(f, h, &mut rng)?, lin(f, h, &mut rng)?])?,
            down: lin(h, f, &mut rng)?,
        });
    }
    let table: Vec<half::f16> =
        (0..d.vocab * h).map(|_| half::f16::from_f32(rng.unit() * 0.05)).collect();
    let t = Tensor::from_slice(DType::F16, [d.vocab, h], &table)?;
    drop(table);
    let emb = DenseMatrix::new(t, "synthetic embedding")?;
    let lm_head = backend.lm_head(emb.clone(), lm_mode)?;
    let embed = backend.embedding(emb)?;
    let norm = backend.upload(&vec![1.0; h])?;
    BitNetModel::new(dims, backend, embed, layers, norm, lm_head)
}
