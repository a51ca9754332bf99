//! Launch-shape overrides (`BITNET_*` environment variables) for comparisons on the GPU machine.

/// Launch-shape overrides for comparisons, read from the environment once per process (when
/// the device's program is built), not on every launch.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Knobs {
    /// `BITNET_GEMV_BPS`: GEMV blocks per SM (0 = one block per tile).
    gemv_bps: Option<usize>,
    /// `BITNET_GEMV_GROUPS`: GEMV thread groups per tile (1 or 2).
    gemv_groups: Option<usize>,
    /// `BITNET_GEMM_BPS`: blocks per SM the split-K GEMM aims at (default 3).
    gemm_bps: Option<usize>,
    /// `BITNET_CUDA_LM=simt`: the int8 lm_head on CUDA cores.
    pub(crate) lm_simt: bool,
    /// `BITNET_GEMV_MAX_M`: most tokens the GEMV takes (more go to the tensor-core GEMM).
    gemv_max: Option<usize>,
    /// `BITNET_CUDA_FUSE_NORM`: `0`: one-token norms run as their own kernel, not inside the
    /// GEMV; a larger number: only projections of at least that many weights fuse their norm.
    fuse_norm_min: Option<usize>,
    /// `BITNET_CUDA_FUSE_ROPE=0`: decode RoPE and the KV store run as their own kernel, not
    /// inside attention.
    unfused_rope: bool,
    /// `BITNET_CUDA_ONE_KERNEL=1`: one-token steps run every layer in one persistent kernel.
    one_kernel: bool,
    /// `BITNET_ATTN_SPLIT_LEN`: fewest positions per attention split by default (64).
    attn_split_len: Option<usize>,
    /// `BITNET_ATTN_FILL`: attention blocks a long context may split into, per SM.
    attn_fill: Option<usize>,
}

impl Knobs {
    pub(crate) fn from_env() -> Self {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        Knobs {
            gemv_bps: num("BITNET_GEMV_BPS"),
            gemv_groups: num("BITNET_GEMV_GROUPS"),
            gemm_bps: num("BITNET_GEMM_BPS"),
            lm_simt: std::env::var("BITNET_CUDA_LM").is_ok_and(|v| v == "simt"),
            gemv_max: num("BITNET_GEMV_MAX_M"),
            fuse_norm_min: num("BITNET_CUDA_FUSE_NORM"),
            unfused_rope: std::env::var("BITNET_CUDA_FUSE_ROPE").is_ok_and(|v| v == "0"),
            one_kernel: std::env::var("BITNET_CUDA_ONE_KERNEL").is_ok_and(|v| v == "1"),
            attn_split_len: num("BITNET_ATTN_SPLIT_LEN"),
            attn_fill: num("BITNET_ATTN_FILL"),
        }
    }

    /// Whether one token's RMSNorm runs inside the GEMV of `weights` weights that reads it
    /// (default: always).
    pub(crate) fn fuse_norm(&self, weights: usize) -> bool {
        match self.fuse_norm_min {
            Some(0) => false,
            Some(min) => weights >= min,
            None => true,
        }
    }

    /// Whether a decode step's RoPE and KV store run inside attention (default on).
    pub(crate) fn fuse_rope(&self) -> bool {
        !self.unfused_rope
    }

    /// Whether a one-token step runs every layer in one kernel. Default off: on the H200 it is
    /// bit-identical to the layer-by-layer path but slower (NOTES.md: tg64 817 against 929 tok/s).
    pub(crate) fn one_kernel(&self) -> bool {
        self.one_kernel
    }

    /// Most tokens a projection runs on the GEMV (1..=8). Default 4 (H100, NOTES.md): batch-4
    /// decode 2,215 / 2,147 tok/s against 2,108 / 2,061 on the tensor-core GEMM; at 8 tokens
    /// the GEMM is faster (batch 8: 4,152 / 3,983 against 3,542 / 3,441).
    pub(crate) fn gemv_max_rows(&self) -> usize {
        self.gemv_max.unwrap_or(4).clamp(1, super::SMALL)
    }

    /// GEMV launch shape for `tiles` 8-row tiles and `rows` tokens: (blocks per SM, 0 = one
    /// block per tile; groups of 128 threads per tile, 1 or 2). Defaults (H100 measurements,
    /// NOTES.md): one token: at most 8 blocks per SM, and two groups while every block of two
    /// groups stays resident (at most 4 x SMs tiles: short matrices and long rows gain from the
    /// extra loads in flight); more tokens (more arithmetic per weight): one block of one
    /// group per tile.
    pub(crate) fn gemv_shape(&self, tiles: usize, rows: usize, sms: usize) -> (usize, usize) {
        let (bps, groups) = match rows {
            1 => (8, if tiles <= 4 * sms { 2 } else { 1 }),
            _ => (0, 1),
        };
        (self.gemv_bps.unwrap_or(bps), self.gemv_groups.unwrap_or(groups).clamp(1, 2))
    }

    /// Fewest positions per attention split (a power of two). Default 64 (H100, NOTES.md).
    pub(crate) fn attn_split_len(&self) -> usize {
        super::split_len_pow2(self.attn_split_len.unwrap_or(64))
    }

    /// Attention blocks per SM that splitting a long context aims at. Default 4 (H100,
    /// NOTES.md, `bench -d D -n 64`, fill 2 / 4 / 8 / 16): d2000 863 / 930 / 897 / 899 tok/s,
    /// d4000 661 / 770 / 691 / 702; d0 and d1000 within noise. Past 16 splits the partials
    /// merge in `attn_combine` instead of the cluster.
    pub(crate) fn attn_fill(&self) -> usize {
        self.attn_fill.unwrap_or(4).max(1)
    }

    /// Blocks per SM the split-K GEMM aims at.
    pub(crate) fn split_blocks_per_sm(&self) -> usize {
        self.gemm_bps.unwrap_or(3).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::Knobs;

    #[test]
    fn fuse_norm_threshold() {
        let with = |min| Knobs { fuse_norm_min: min, ..Knobs::default() };
        assert!(with(None).fuse_norm(1));
        assert!(!with(Some(0)).fuse_norm(usize::MAX));
        assert!(with(Some(1)).fuse_norm(1));
        let big = with(Some(16_000_000));
        assert!(!big.fuse_norm(3840 * 2560) && big.fuse_norm(13824 * 2560));
    }
}
