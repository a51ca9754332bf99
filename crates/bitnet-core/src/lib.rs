//! `bitnet-core`: the foundation of BitNet-Rust.
//!
//! It owns the element types ([`DType`], including the packed ternary formats), [`Shape`],
//! the CPU [`Tensor`] (64-byte-aligned owned bytes or a zero-copy slice of an mmap'd file),
//! [`Device`] selection with CPU fallback, the one [`Error`] type, an activation buffer
//! [`Arena`], and the low-overhead [`ThreadPool`] the kernels run on.
//!
//! ```
//! use bitnet_core::{DType, Tensor, DeviceRequest, Device};
//!
//! let t = Tensor::from_f32([2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
//! assert_eq!(t.dtype(), DType::F32);
//! assert_eq!(DType::I2S.storage_bytes(256).unwrap(), 64 + 32);
//! let sel = "auto".parse::<DeviceRequest>().unwrap()
//!     .select(|_| Err(bitnet_core::Error::Device("no CUDA driver".into()))).unwrap();
//! assert_eq!(sel.device, Device::Cpu);
//! ```
#![warn(missing_docs)]

pub mod aligned;
pub mod arena;
pub mod device;
pub mod dtype;
pub mod error;
pub mod hash;
pub mod pool;
pub mod shape;
pub mod tensor;

pub use aligned::{AlignedVec, Pod};
pub use arena::Arena;
pub use device::{Device, DeviceRequest, Selected};
pub use dtype::DType;
pub use error::{Error, Result, ResultExt};
pub use pool::ThreadPool;
pub use shape::Shape;
pub use tensor::{map_file, Storage, Tensor};
