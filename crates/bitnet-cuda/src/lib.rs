//! `bitnet-cuda`: CUDA kernels for BitNet b1.58 inference.
//!
//! - [`device`]: opening a GPU ([`Gpu::open`], never a panic when CUDA is missing: see
//!   [`device::probe`]), the kernels compiled by NVRTC for the device's own architecture at first
//!   use (sources in `kernels/*.cu`, embedded), cached per process.
//! - [`layout`]: the GPU layout of ternary weights (2-bit codes, 16-byte chunks, 8-row tiles).
//! - Deferred launches replayed as CUDA graphs ([`Gpu::defer`], [`Gpu::flush`]).
//! - [`ops`]: typed launchers for every kernel (ternary GEMV/GEMM, RMSNorm with fused int8
//!   quantization, RoPE, KV store, attention, lm_head, element-wise ops).
//!
//! CUDA libraries are loaded dynamically (cudarc `dynamic-loading`), so this crate builds and its
//! tests run on machines without CUDA; GPU tests skip there with a printed reason.
#![warn(missing_docs)]

mod compile;
pub mod device;
mod graph;
mod kcache;
pub mod layout;
pub mod ops;

/// The CUDA bindings this crate is built on (same version for dependents).
pub use cudarc;
pub use device::{probe, DeviceInfo, Gpu};
pub use layout::PackedTernary;
