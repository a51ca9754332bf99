//! Model architectures, written once against [`crate::backend::Backend`].

pub mod bitnet;
pub mod synthetic;
pub mod weights;

pub use bitnet::{BitNetModel, Dims, LogitsFor, State};
