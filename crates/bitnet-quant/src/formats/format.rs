//! [`TernaryFormat`]: the packed ternary layouts by name, their sizes, and one dispatching
//! [`to_ternary`]; plus the argument checks every format module shares.

use bitnet_core::{DType, Error, Result};
use half::f16;
use std::fmt;
use std::str::FromStr;

/// A packed ternary weight layout that a file may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TernaryFormat {
    /// bitnet.cpp I2_S, x86 layout (128-weight blocks, f32 scale tail): the CPU's canonical layout.
    I2S,
    /// ggml TQ1_0: 256-weight blocks of 54 bytes, base-3 packed.
    TQ1_0,
    /// ggml TQ2_0: 256-weight blocks of 66 bytes, 2 bits per weight.
    TQ2_0,
    /// Hugging Face offline packed uint8 `[out/4, in]`; its scale is a separate tensor.
    HfPacked,
}

impl TernaryFormat {
    /// Every format, for iteration in tests and help texts.
    pub const ALL: [TernaryFormat; 4] =
        [TernaryFormat::I2S, TernaryFormat::TQ1_0, TernaryFormat::TQ2_0, TernaryFormat::HfPacked];

    /// The lower-case name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            TernaryFormat::I2S => "i2_s",
            TernaryFormat::TQ1_0 => "tq1_0",
            TernaryFormat::TQ2_0 => "tq2_0",
            TernaryFormat::HfPacked => "hf_packed",
        }
    }

    /// The matching tensor element type.
    pub fn dtype(self) -> DType {
        match self {
            TernaryFormat::I2S => DType::I2S,
            TernaryFormat::TQ1_0 => DType::TQ1_0,
            TernaryFormat::TQ2_0 => DType::TQ2_0,
            TernaryFormat::HfPacked => DType::HfPackedU8,
        }
    }

    /// Bytes of a packed `[rows, cols]` weight, or a shape error if the dims do not fit the blocks.
    ///
    /// I2_S includes its 32-byte scale tail; HF packed excludes its separate scale tensor.
    pub fn size_bytes(self, rows: usize, cols: usize) -> Result<usize> {
        match self {
            TernaryFormat::I2S => super::i2s::storage_bytes(rows, cols),
            TernaryFormat::TQ1_0 => super::tq1::size(rows, cols),
            TernaryFormat::TQ2_0 => super::tq2::size(rows, cols),
            TernaryFormat::HfPacked => super::hf_packed::size(rows, cols),
        }
    }
}

impl fmt::Display for TernaryFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TernaryFormat {
    type Err = Error;
    /// Parses a format name case-insensitively (`"hf_packed_u8"` is accepted for HF packed).
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase();
        if l == "hf_packed_u8" {
            return Ok(TernaryFormat::HfPacked);
        }
        TernaryFormat::ALL.iter().copied().find(|f| f.name() == l).ok_or_else(|| {
            let names: Vec<_> = TernaryFormat::ALL.iter().map(|f| f.name()).collect();
            Error::invalid(format!(
                "unknown ternary format `{s}` (expected one of {})",
                names.join(", ")
            ))
        })
    }
}

/// Unpacks a weight in any [`TernaryFormat`] to row-major ternary values and the tensor scale.
///
/// HF packed bytes carry no scale (it is the separate `weight_scale` tensor): the returned
/// scale is then `1.0` and the caller must apply the stored one.
pub fn to_ternary(
    format: TernaryFormat,
    bytes: &[u8],
    rows: usize,
    cols: usize,
) -> Result<(Vec<i8>, f32)> {
    match format {
        TernaryFormat::I2S => super::i2s::unpack(bytes, rows, cols),
        TernaryFormat::TQ1_0 => super::tq1::unpack(bytes, rows, cols),
        TernaryFormat::TQ2_0 => super::tq2::unpack(bytes, rows, cols),
        TernaryFormat::HfPacked => Ok((super::hf_packed::unpack(bytes, rows, cols)?, 1.0)),
    }
}

/// Checks `rows x cols` (both positive, multiples of `row_mult` / `col_mult`); returns the count.
pub(crate) fn check_dims(
    format: &'static str,
    rows: usize,
    cols: usize,
    row_mult: usize,
    col_mult: usize,
) -> Result<usize> {
    if rows == 0 || cols == 0 {
        return Err(Error::shape(format!("{format}: empty weight [{rows}, {cols}]")));
    }
    if !rows.is_multiple_of(row_mult) {
        return Err(Error::shape(format!("{format}: {rows} rows is not a multiple of {row_mult}")));
    }
    if !cols.is_multiple_of(col_mult) {
        return Err(Error::shape(format!(
            "{format}: {cols} columns is not a multiple of the block of {col_mult}"
        )));
    }
    rows.checked_mul(cols)
        .ok_or_else(|| Error::shape(format!("{format}: [{rows}, {cols}] overflows usize")))
}

/// Checks that a packed buffer has exactly `want` bytes.
pub(crate) fn check_len(format: &'static str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(format!("{format}: buffer has {got} bytes, expected {want}")));
    }
    Ok(())
}

/// Checks that `values` has `n` elements, all in {-1, 0, 1}.
pub(crate) fn check_ternary(format: &'static str, values: &[i8], n: usize) -> Result<()> {
    if values.len() != n {
        return Err(Error::shape(format!("{format}: {} values given, expected {n}", values.len())));
    }
    if let Some(i) = values.iter().position(|v| !(-1..=1).contains(v)) {
        return Err(Error::invalid(format!(
            "{format}: value {} at index {i} is not ternary (-1, 0 or 1)",
            values[i]
        )));
    }
    Ok(())
}

/// Checks a tensor scale: finite and not negative.
pub(crate) fn check_scale(format: &'static str, scale: f32) -> Result<()> {
    if !scale.is_finite() || scale < 0.0 {
        return Err(Error::invalid(format!("{format}: scale {scale} must be finite and >= 0")));
    }
    Ok(())
}

/// Converts a checked scale to f16 (round to nearest even, as ggml does), refusing overflow.
pub(crate) fn scale_to_f16(format: &'static str, scale: f32) -> Result<f16> {
    check_scale(format, scale)?;
    let h = f16::from_f32(scale);
    if !h.is_finite() {
        return Err(Error::invalid(format!(
            "{format}: scale {scale} does not fit an f16 (max {})",
            f16::MAX
        )));
    }
    Ok(h)
}

/// Reads a little-endian f16 at `at` as f32.
pub(crate) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The one scale of a tensor with per-block scales: refuses blocks that differ by more than
/// f16 rounding, ignoring blocks whose values are all zero.
pub(crate) fn common_scale(
    format: &'static str,
    values: &[i8],
    scales: &[f32],
    block: usize,
) -> Result<f32> {
    let mut reference: Option<(usize, f32)> = None;
    for (b, (&d, vals)) in scales.iter().zip(values.chunks_exact(block)).enumerate() {
        if vals.iter().all(|&v| v == 0) {
            continue;
        }
        match reference {
            None => reference = Some((b, d)),
            Some((_, r)) if (d - r).abs() <= r.abs().max(d.abs()) / 1024.0 => {}
            Some((rb, r)) => {
                return Err(Error::unsupported(format!(
                    "{format} tensor with differing block scales (block {rb}: {r}, block {b}: {d})"
                )))
            }
        }
    }
    Ok(reference.map(|(_, r)| r).or(scales.first().copied()).unwrap_or(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively_and_round_trip() {
        for f in TernaryFormat::ALL {
            assert_eq!(f.name().parse::<TernaryFormat>().unwrap(), f);
            assert_eq!(f.to_string().to_uppercase().parse::<TernaryFormat>().unwrap(), f);
        }
        assert_eq!("TQ2_0".parse::<TernaryFormat>().unwrap(), TernaryFormat::TQ2_0);
        assert_eq!("hf_packed_u8".parse::<TernaryFormat>().unwrap(), TernaryFormat::HfPacked);
    }

    #[test]
    fn unknown_name_error_lists_valid_names() {
        let e = "q4_0".parse::<TernaryFormat>().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)));
        let msg = e.to_string();
        for f in TernaryFormat::ALL {
            assert!(msg.contains(f.name()), "{msg}");
        }
    }

    #[test]
    fn size_bytes_match_the_dtype_sizes() {
        for f in TernaryFormat::ALL {
            let (rows, cols) = (8, 512);
            let want = f.dtype().storage_bytes(rows * cols).unwrap();
            assert_eq!(f.size_bytes(rows, cols).unwrap(), want, "{f}");
        }
        assert!(matches!(TernaryFormat::I2S.size_bytes(4, 100), Err(Error::Shape(_))));
        assert!(matches!(TernaryFormat::TQ2_0.size_bytes(0, 256), Err(Error::Shape(_))));
    }

    #[test]
    fn scale_that_overflows_f16_is_refused() {
        assert!(matches!(scale_to_f16("t", 1e6), Err(Error::InvalidArgument(_))));
        assert!(matches!(scale_to_f16("t", f32::NAN), Err(Error::InvalidArgument(_))));
        assert!(matches!(scale_to_f16("t", -1.0), Err(Error::InvalidArgument(_))));
        assert_eq!(scale_to_f16("t", 0.5).unwrap().to_f32(), 0.5);
    }
}
