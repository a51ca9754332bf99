//! `bitnet-quant`: BitNet b1.58 quantizers, packed ternary formats and CPU kernels.
#![warn(missing_docs)]
