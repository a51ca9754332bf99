//! Hugging Face offline packed ternary weights (`quant_method: bitnet`, offline mode).
//!
//! A `[out, in]` ternary weight is stored as uint8 `[out/4, in]`, packed along the OUTPUT
//! dimension: bits `2i..2i+1` of byte `[r, c]` hold `w + 1` for row `i * (out/4) + r`,
//! column `c` (transformers' `pack_weights` / `unpack_weights`). The scale is the separate
//! `weight_scale` tensor, so these functions carry values only.

use super::format::{check_dims, check_len, check_ternary};
use bitnet_core::{Error, Result};

const NAME: &str = "HF packed";

/// Bytes of a packed `[rows, cols]` weight (`rows` a multiple of 4).
pub fn size(rows: usize, cols: usize) -> Result<usize> {
    let n = check_dims(NAME, rows, cols, 4, 1)?;
    Ok(n / 4)
}

/// Packs row-major ternary `values` of shape `[rows, cols]` into `[rows/4, cols]` bytes.
pub fn pack(values: &[i8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let n = check_dims(NAME, rows, cols, 4, 1)?;
    check_ternary(NAME, values, n)?;
    let quarter = rows / 4;
    let mut out = vec![0u8; n / 4];
    for (row, src) in values.chunks_exact(cols).enumerate() {
        let (i, r) = (row / quarter, row % quarter);
        let dst = &mut out[r * cols..(r + 1) * cols];
        for (byte, &t) in dst.iter_mut().zip(src) {
            *byte |= ((t + 1) as u8) << (2 * i);
        }
    }
    Ok(out)
}

/// Unpacks `[rows/4, cols]` bytes to row-major ternary values of shape `[rows, cols]`.
pub fn unpack(bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    let n = check_dims(NAME, rows, cols, 4, 1)?;
    check_len(NAME, bytes.len(), n / 4)?;
    let quarter = rows / 4;
    let mut values = vec![0i8; n];
    for (row, dst) in values.chunks_exact_mut(cols).enumerate() {
        let (i, r) = (row / quarter, row % quarter);
        let src = &bytes[r * cols..(r + 1) * cols];
        for (c, (v, &byte)) in dst.iter_mut().zip(src).enumerate() {
            let code = (byte >> (2 * i)) & 3;
            if code == 3 {
                return Err(Error::format(
                    NAME,
                    format!("code 3 (not ternary) at row {row}, column {c}"),
                ));
            }
            *v = code as i8 - 1;
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_transformers_docstring_example() {
        // transformers' unpack_weights docstring: packed [[0b10100001, 0b00011000],
        // [0b10010000, 0b00001010]] unpacks to 8 rows x 2 columns.
        let packed = [0b1010_0001u8, 0b0001_1000, 0b1001_0000, 0b0000_1010];
        let v = unpack(&packed, 8, 2).unwrap();
        let want: [[i8; 2]; 8] =
            [[0, -1], [-1, 1], [-1, 1], [-1, 1], [1, 0], [0, -1], [1, -1], [1, -1]];
        assert_eq!(v, want.concat());
        assert_eq!(pack(&v, 8, 2).unwrap(), packed);
    }

    #[test]
    fn rows_not_multiple_of_four_are_a_shape_error() {
        assert!(matches!(pack(&[0; 6], 6, 1), Err(Error::Shape(_))));
        assert!(matches!(unpack(&[0; 2], 6, 1), Err(Error::Shape(_))));
    }

    #[test]
    fn code_three_is_a_format_error() {
        assert!(matches!(unpack(&[0b0000_1101], 4, 1), Err(Error::Format { .. })));
    }
}
