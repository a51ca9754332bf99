//! The reference kernel: plain Rust, one weight at a time. Every SIMD variant must match it
//! bit for bit.

use super::Job;
use crate::formats::i2s::{BLOCK, BLOCK_BYTES};
use std::ops::Range;

/// `Σ_k code_k · xq_k` over one packed I2_S row (codes 0, 1, 2 = weight + 1).
pub fn dot_codes(row: &[u8], xq: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (blk, x) in row.chunks_exact(BLOCK_BYTES).zip(xq.chunks_exact(BLOCK)) {
        for (j, &b) in blk.iter().enumerate() {
            acc += i32::from(b >> 6) * i32::from(x[j])
                + i32::from((b >> 4) & 3) * i32::from(x[j + 32])
                + i32::from((b >> 2) & 3) * i32::from(x[j + 64])
                + i32::from(b & 3) * i32::from(x[j + 96]);
        }
    }
    acc
}

/// Computes output rows `rows` of every token of `job`.
pub(crate) fn run(job: &Job, rows: Range<usize>) {
    let k = job.row_bytes * 4;
    for (t, x) in job.xq.chunks_exact(k).enumerate() {
        for r in rows.clone() {
            let acc = dot_codes(&job.w[r * job.row_bytes..(r + 1) * job.row_bytes], x);
            // SAFETY: t < n_tok and r < rows (launch checked the lengths); this task owns row r.
            unsafe { job.store(t, r, acc) };
        }
    }
}
