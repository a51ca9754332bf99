//! Packed weight formats: each module packs and unpacks one byte layout, exactly as the
//! tool that writes it (bitnet.cpp, ggml, Hugging Face transformers) does.
//!
//! Ternary values are `i8` in {-1, 0, 1}, row-major `[rows = out, cols = in]`. Every ternary
//! format has `pack(values, rows, cols, scale)`, `unpack(bytes, rows, cols)` and
//! `size(rows, cols)`, and answers bad lengths, dims or values with an [`bitnet_core::Error`].
//!
//! - [`format`](mod@format): [`TernaryFormat`] (by name), its sizes, and [`to_ternary`] for any of them.
//! - [`tq2`], [`tq1`]: ggml's TQ2_0 and TQ1_0 (256-weight blocks with an f16 scale each).
//! - [`hf_packed`]: Hugging Face offline uint8 `[out/4, in]` (scale stored apart).
//! - [`i2s_arm`]: bitnet.cpp I2_S as its ARM build writes it (64-weight blocks; read only).
//! - [`ggml`]: Q8_0 and Q6_K, the embedding / output types of GGUF files.
//! - [`i2s`]: bitnet.cpp I2_S, x86 layout: the CPU's canonical layout.

pub mod format;
pub mod ggml;
pub mod hf_packed;
pub mod i2s;
pub mod i2s_arm;
pub mod tq1;
pub mod tq2;

pub use format::{to_ternary, TernaryFormat};
