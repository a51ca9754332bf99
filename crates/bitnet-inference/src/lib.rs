//! `bitnet-inference`: load and run BitNet b1.58 models.
#![warn(missing_docs)]
