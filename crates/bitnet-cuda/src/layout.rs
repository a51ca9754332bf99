//! The GPU layout of a ternary matrix (host side: packing and unpacking, no CUDA needed).
//!
//! Rows are grouped in tiles of [`TILE_ROWS`]; columns in chunks of [`CHUNK`] weights held in 16
//! bytes (four little-endian u32 words). Chunk `c` of row `r` is the 16 bytes at chunk index
//! `(r / 8 * kc + c) * 8 + r % 8`, so 8 rows' chunks of one column range are 128 contiguous bytes
//! and a warp's 32 consecutive 16-byte loads cover 4 chunks of 8 rows. Within a chunk, word `j`,
//! byte `i`, bits `2s..2s+1` hold the code `w + 1` of column `64c + 16j + 4s + i`: the GPU gets four
//! consecutive codes (one per byte) with one shift and one AND, ready for `dp4a` or as an int8
//! tensor-core fragment. Columns are padded to a multiple of [`K_ALIGN`] and rows to a multiple of
//! [`ROW_ALIGN`] with code 1 (weight 0).

use bitnet_core::{Error, Result};

/// Rows per tile.
pub const TILE_ROWS: usize = 8;
/// Weights per 16-byte chunk.
pub const CHUNK: usize = 64;
/// Column padding (also the activation row stride unit).
pub const K_ALIGN: usize = 128;
/// Row padding (the GEMM's block height).
pub const ROW_ALIGN: usize = 64;
/// Four zero weights (code 1 in every field) in one byte, four bytes in a word.
const ZERO_WORD: u32 = 0x5555_5555;

/// A ternary matrix in the GPU layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedTernary {
    rows: usize,
    cols: usize,
    words: Vec<u32>,
}

/// Padded column count for `cols`.
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(K_ALIGN) * K_ALIGN
}

/// Padded row count for `rows`.
pub fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(ROW_ALIGN) * ROW_ALIGN
}

fn word_index(r: usize, c: usize, j: usize, kc: usize) -> usize {
    ((r / TILE_ROWS * kc + c) * TILE_ROWS + r % TILE_ROWS) * 4 + j
}

impl PackedTernary {
    /// Packs row-major ternary `values` (`rows x cols`, each -1, 0 or 1).
    pub fn pack(values: &[i8], rows: usize, cols: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || Some(values.len()) != rows.checked_mul(cols) {
            return Err(Error::shape(format!(
                "ternary pack: {rows} x {cols} with {} values",
                values.len()
            )));
        }
        if let Some(v) = values.iter().find(|v| !(-1..=1).contains(*v)) {
            return Err(Error::invalid(format!("value {v} is not ternary (-1, 0 or 1)")));
        }
        let (kc, rp) = (padded_cols(cols) / CHUNK, padded_rows(rows));
        let mut words = vec![ZERO_WORD; rp * kc * 4];
        // Rows in tiles are interleaved, so split the work by groups of whole tiles.
        let tile_words = TILE_ROWS * kc * 4;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
        let tiles_per = (rp / TILE_ROWS).div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (ti, part) in words.chunks_mut(tiles_per * tile_words).enumerate() {
                s.spawn(move || {
                    let r0 = ti * tiles_per * TILE_ROWS;
                    let base = word_index(r0, 0, 0, kc);
                    for r in r0..(r0 + tiles_per * TILE_ROWS).min(rows) {
                        pack_row(&values[r * cols..(r + 1) * cols], r, kc, part, base);
                    }
                });
            }
        });
        Ok(PackedTernary { rows, cols, words })
    }

    /// Logical rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Logical columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Padded columns (activation rows must have this many int8 entries, zero past `cols`).
    pub fn padded_cols(&self) -> usize {
        padded_cols(self.cols)
    }
    /// Padded rows.
    pub fn padded_rows(&self) -> usize {
        padded_rows(self.rows)
    }
    /// 16-byte chunks per row.
    pub fn chunks(&self) -> usize {
        self.padded_cols() / CHUNK
    }
    /// The packed words (`padded_rows * chunks * 4`).
    pub fn words(&self) -> &[u32] {
        &self.words
    }

    /// The weight at row `r`, column `k` (padding reads as 0).
    pub fn get(&self, r: usize, k: usize) -> i8 {
        let (c, rem) = (k / CHUNK, k % CHUNK);
        let (j, s, i) = (rem / 16, (rem % 16) / 4, rem % 4);
        let w = self.words[word_index(r, c, j, self.chunks())];
        ((w >> (8 * i + 2 * s)) & 3) as i8 - 1
    }

    /// Unpacks to row-major `rows x cols` values.
    pub fn to_ternary(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            out.extend((0..self.cols).map(|k| self.get(r, k)));
        }
        out
    }
}

fn pack_row(row: &[i8], r: usize, kc: usize, part: &mut [u32], base: usize) {
    for c in 0..kc {
        for j in 0..4 {
            let mut w = 0u32;
            for s in 0..4 {
                for i in 0..4 {
                    let k = c * CHUNK + 16 * j + 4 * s + i;
                    let code = row.get(k).map_or(1, |&v| (v + 1) as u32);
                    w |= code << (8 * i + 2 * s);
                }
            }
            part[word_index(r, c, j, kc) - base] = w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(rows: usize, cols: usize, seed: u64) -> Vec<i8> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn pack_then_unpack_is_the_identity_on_odd_shapes() {
        for (rows, cols) in [(1, 1), (7, 64), (9, 130), (65, 200), (130, 2560), (8, 128)] {
            let v = values(rows, cols, rows as u64 * 31 + cols as u64);
            let p = PackedTernary::pack(&v, rows, cols).unwrap();
            assert_eq!(p.to_ternary(), v, "{rows}x{cols}");
            assert_eq!(p.words().len(), p.padded_rows() * p.chunks() * 4);
            assert_eq!(p.padded_cols() % K_ALIGN, 0);
        }
    }

    #[test]
    fn padding_holds_zero_weights() {
        let p = PackedTernary::pack(&[1, -1, 1], 1, 3).unwrap();
        assert_eq!(p.get(0, 0), 1);
        assert_eq!(p.get(0, 1), -1);
        for k in 3..p.padded_cols() {
            assert_eq!(p.get(0, k), 0, "col {k}");
        }
        for r in 1..p.padded_rows() {
            assert_eq!(p.get(r, 0), 0, "row {r}");
        }
    }

    #[test]
    fn four_consecutive_columns_share_one_shift_of_one_word() {
        // Columns 64c + 16j + 4s .. +4 are the byte lanes of (word_j >> 2s) & 0x03030303.
        let cols = 128;
        let mut v = vec![0i8; 2 * cols];
        v[cols + 64 + 16 + 8..cols + 64 + 16 + 12].copy_from_slice(&[-1, 0, 1, -1]); // row 1, c 1, j 1, s 2
        let p = PackedTernary::pack(&v, 2, cols).unwrap();
        let w = p.words()[word_index(1, 1, 1, p.chunks())];
        assert_eq!((w >> 4) & 0x0303_0303, 0x0002_0100);
    }

    #[test]
    fn non_ternary_values_and_bad_lengths_are_errors() {
        assert!(PackedTernary::pack(&[2], 1, 1).is_err());
        assert!(PackedTernary::pack(&[0; 5], 2, 3).is_err());
        assert!(PackedTernary::pack(&[], 0, 3).is_err());
    }
}
