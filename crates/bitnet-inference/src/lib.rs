//! `bitnet-inference`: load and run BitNet b1.58 models.
//!
//! - [`formats`]: HF safetensors directories and GGUF files (read by mmap; GGUF writer too).
//! - [`models`]: the BitNet transformer written once against the [`backend::Backend`] trait.
//! - [`backend`]: the CPU backend (and CUDA where built).
//! - [`tokenizer`], [`chat`], [`sampling`]: text in, tokens out.
//! - [`Engine`] / [`EngineBuilder`]: the simple API; [`batch`]: several sequences decoded together;
//!   [`scheduler`]: continuous batching (sequences that join and leave at any step).
//!
//! ```no_run
//! use bitnet_inference::{Engine, GenerationConfig};
//! let mut engine = Engine::builder().model("models/tiny").threads(2).build()?;
//! let out = engine.generate_stream("Once upon a time", &GenerationConfig::default(), |t| {
//!     print!("{}", t.text);
//!     true
//! })?;
//! println!("\n{:.1} tokens/s", out.timings.generate_tps());
//! # Ok::<(), bitnet_core::Error>(())
//! ```
#![warn(missing_docs)]

pub mod backend;
pub mod batch;
pub mod chat;
pub mod config;
pub mod convert;
pub mod engine;
pub mod formats;
pub mod models;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod tokenizer;

pub use engine::{
    Engine, EngineBuilder, GenerationConfig, Output, StopReason, Timings, TokenEvent,
};
