//! `bitnet-quant`: BitNet b1.58 quantizers, packed ternary formats and CPU kernels.
//!
//! - [`quantize`]: absmean ternary weights (per tensor) and per-token absmax int8 activations.
//! - [`formats`]: the packed layouts (I2_S, TQ1_0, TQ2_0, HF packed uint8, ...), each with
//!   pack / unpack / size and round-trip tests.
//! - [`kernels`]: ternary x int8 GEMV / GEMM on the CPU's canonical layout (I2_S x86 order):
//!   a scalar reference plus AVX2 and AVX-512 versions chosen at run time.
//! - [`bitlinear`]: the one entry point models call.
#![warn(missing_docs)]

pub mod bitlinear;
pub mod formats;
pub mod kernels;
pub mod quantize;
