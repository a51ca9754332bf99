//! `bitnet-training`: quantization-aware training of BitNet b1.58 models on the CPU with
//! [candle](https://github.com/huggingface/candle) (autograd and tensors; the optimiser,
//! quantizers and data pipeline are ours).
//!
//! It owns [`BitLinear`] for training (latent f32 weights, absmean ternary weights and
//! per-token int8 activations in the forward pass, straight-through gradients), the BitNet
//! transformer [`BitNetLm`] (the architecture of `bitnet_inference`) and the classifier
//! [`BitNetMlp`], the data pipeline (corpus, held-out split, byte-level BPE tokenizer,
//! random windows), [`AdamW`] with warm-up + cosine decay and clipping, the training loop
//! with evaluation, checkpoints and resume ([`train`]), and the export of a Hugging Face
//! BitNet directory with offline-packed ternary weights ([`export_hf`]).
//!
//! ```
//! use bitnet_training::{BitNetLm, TrainConfig, Quant};
//!
//! let model = BitNetLm::new(&TrainConfig::tiny(), 7).unwrap();
//! let logits = model.logits(&[0, 42, 17]).unwrap(); // quantized evaluation forward
//! assert_eq!((logits.len(), logits[0].len()), (3, 512));
//! ```
#![warn(missing_docs)]

pub mod bitlinear;
pub mod config;
pub mod data;
pub mod export;
pub mod mlp;
pub mod model;
pub mod ops;
pub mod optim;
pub mod params;
pub mod plot;
pub mod trainer;

pub use bitlinear::{BitLinear, Quant};
pub use config::TrainConfig;
pub use export::export_hf;
pub use mlp::BitNetMlp;
pub use model::BitNetLm;
pub use optim::AdamW;
pub use trainer::{train, Event, StepReport, TrainOptions, TrainSummary};

/// Turns candle's errors into `bitnet_core::Error`.
pub(crate) trait CandleExt<T> {
    /// The value, or the candle error as an [`bitnet_core::Error`].
    fn ce(self) -> bitnet_core::Result<T>;
}

impl<T> CandleExt<T> for candle_core::Result<T> {
    fn ce(self) -> bitnet_core::Result<T> {
        self.map_err(|e| bitnet_core::Error::invalid(format!("tensor operation: {e}")))
    }
}
