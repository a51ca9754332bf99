//! Element types, including the packed ternary formats.

use crate::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// The element type of a tensor.
///
/// Packed ternary types store several weights per byte in blocks; use
/// [`DType::storage_bytes`] for the byte size of `n` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// bitnet.cpp I2_S, x86 layout: 128-weight blocks of 32 bytes, plus a 32-byte f32 scale tail.
    I2S,
    /// ggml TQ1_0: 256-weight blocks of 54 bytes.
    TQ1_0,
    /// ggml TQ2_0: 256-weight blocks of 66 bytes.
    TQ2_0,
    /// Hugging Face offline packed ternary: uint8 `[out/4, in]`, four rows per byte.
    HfPackedU8,
    /// ggml Q8_0: 32-element blocks of 34 bytes (f16 scale + 32 i8), used for embeddings.
    Q8_0,
    /// ggml Q6_K: 256-element blocks of 210 bytes, used for embeddings / output.
    Q6K,
}

impl DType {
    /// All dtypes, for iteration in tests and help texts.
    pub const ALL: [DType; 12] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I2S,
        DType::TQ1_0,
        DType::TQ2_0,
        DType::HfPackedU8,
        DType::Q8_0,
        DType::Q6K,
    ];

    /// The lower-case name used on the command line and in messages.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I2S => "i2_s",
            DType::TQ1_0 => "tq1_0",
            DType::TQ2_0 => "tq2_0",
            DType::HfPackedU8 => "hf_packed_u8",
            DType::Q8_0 => "q8_0",
            DType::Q6K => "q6_k",
        }
    }

    /// Elements per block (1 for plain types).
    pub fn block_len(self) -> usize {
        match self {
            DType::I2S => 128,
            DType::TQ1_0 | DType::TQ2_0 | DType::Q6K => 256,
            DType::Q8_0 => 32,
            DType::HfPackedU8 => 4,
            _ => 1,
        }
    }

    /// Bytes per block (the element size for plain types).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::HfPackedU8 => 1,
            DType::I2S => 32,
            DType::TQ1_0 => 54,
            DType::TQ2_0 => 66,
            DType::Q8_0 => 34,
            DType::Q6K => 210,
        }
    }

    /// Whether this is one of the packed ternary formats.
    pub fn is_ternary(self) -> bool {
        matches!(self, DType::I2S | DType::TQ1_0 | DType::TQ2_0 | DType::HfPackedU8)
    }

    /// Bytes needed to store `n` elements, or an error if `n` is not a whole number of blocks.
    ///
    /// I2_S includes its 32-byte scale tail (bitnet.cpp's `n/4 + 32`).
    pub fn storage_bytes(self, n: usize) -> Result<usize> {
        let b = self.block_len();
        if !n.is_multiple_of(b) {
            return Err(Error::shape(format!(
                "{n} elements is not a multiple of the {} block of {b}",
                self.name()
            )));
        }
        let tail = if self == DType::I2S { 32 } else { 0 };
        (n / b).checked_mul(self.block_bytes()).and_then(|body| body.checked_add(tail)).ok_or_else(
            || Error::shape(format!("{n} {} elements overflow usize bytes", self.name())),
        )
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let l = s.to_ascii_lowercase();
        DType::ALL.iter().copied().find(|d| d.name() == l).ok_or_else(|| {
            let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
            Error::invalid(format!("unknown dtype `{s}` (expected one of {})", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_from_str() {
        for d in DType::ALL {
            assert_eq!(d.name().parse::<DType>().unwrap(), d);
        }
        assert_eq!("I2_S".parse::<DType>().unwrap(), DType::I2S);
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let e = "q4_k".parse::<DType>().unwrap_err().to_string();
        assert!(e.contains("unknown dtype `q4_k`"), "{e}");
    }

    #[test]
    fn storage_bytes_match_the_formats() {
        assert_eq!(DType::I2S.storage_bytes(2560 * 2560).unwrap(), 2560 * 2560 / 4 + 32);
        assert_eq!(DType::TQ2_0.storage_bytes(512).unwrap(), 132);
        assert_eq!(DType::TQ1_0.storage_bytes(256).unwrap(), 54);
        assert_eq!(DType::F16.storage_bytes(3).unwrap(), 6);
        assert!(DType::TQ2_0.storage_bytes(100).is_err());
        assert!(DType::I2S.storage_bytes(129).is_err());
        assert!(DType::F32.storage_bytes(usize::MAX / 2).is_err());
    }
}
