// Ternary GEMM for prefill (more than 8 tokens) on int8 tensor cores: mma.sync m16n8k32 s8.
//
// The weight chunk layout of gemv.cu is exactly an A fragment source: for an mma over columns
// 32h..32h+31 of a 64-column chunk, thread (g = lane / 4, t = lane % 4) needs rows g and g+8 at
// columns 32h + 4t (+16): that is (word_{2h} >> 2t) & 0x03030303 (and word_{2h+1}). Codes are
// weight + 1, corrected by Σx per token in the epilogue.
//
// Block: 4 warps, 64 weight rows (16 per warp) x 32 tokens; activations staged through shared
// memory one 64-column chunk at a time (rows padded to 80 bytes: conflict-free fragment reads).
// Weight rows are padded to a multiple of 64 by the layout, so no row guards on loads.

__device__ __forceinline__ void mma_s8(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                       u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#define GEMM_TOK 32
#define XS_STRIDE 80

extern "C" __global__ void __launch_bounds__(128)
    gemm_mma(const uint4* __restrict__ W, const i8* __restrict__ xq, const float* __restrict__ sa,
             const int* __restrict__ sx, float s_w, float* __restrict__ y, int n, int m_tok,
             int kc, int kp) {
    __shared__ __align__(16) i8 xs[GEMM_TOK * XS_STRIDE];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * 64 + warp * 16;
    const int tok0 = blockIdx.y * GEMM_TOK;
    const uint4* wa = W + (size_t)(row0 >> 3) * kc * 8 + g;
    const uint4* wb = wa + (size_t)kc * 8;
    // Cooperative activation load: thread -> (token lt, 16-byte part lp) of the chunk.
    const int lt = threadIdx.x >> 2, lp = threadIdx.x & 3;
    const bool tok_ok = tok0 + lt < m_tok;
    const uint4* xsrc = (const uint4*)(xq + (size_t)(tok_ok ? tok0 + lt : 0) * kp) + lp;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 xn = tok_ok ? __ldg(xsrc) : zero;
    uint4 wan = ld_stream(wa), wbn = ld_stream(wb);
    int acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;
    const int sh = 2 * t;
    for (int c = 0; c < kc; ++c) {
        __syncthreads();
        *(uint4*)&xs[lt * XS_STRIDE + lp * 16] = xn;
        const uint4 wA = wan, wB = wbn;
        if (c + 1 < kc) {
            xn = tok_ok ? __ldg(xsrc + (size_t)(c + 1) * 4) : zero;
            wan = ld_stream(wa + (size_t)(c + 1) * 8);
            wbn = ld_stream(wb + (size_t)(c + 1) * 8);
        }
        __syncthreads();
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const u32 a0 = ((h ? wA.z : wA.x) >> sh) & CODE_MASK;
            const u32 a1 = ((h ? wB.z : wB.x) >> sh) & CODE_MASK;
            const u32 a2 = ((h ? wA.w : wA.y) >> sh) & CODE_MASK;
            const u32 a3 = ((h ? wB.w : wB.y) >> sh) & CODE_MASK;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const i8* xr = xs + (nt * 8 + g) * XS_STRIDE + 32 * h + 4 * t;
                const u32 b0 = *(const u32*)xr;
                const u32 b1 = *(const u32*)(xr + 16);
                mma_s8(acc[nt], a0, a1, a2, a3, b0, b1);
            }
        }
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int tok = tok0 + nt * 8 + 2 * t + (i & 1);
            const int row = row0 + g + (i >= 2 ? 8 : 0);
            if (tok < m_tok && row < n)
                y[(size_t)tok * n + row] = (float)(acc[nt][i] - sx[tok]) / sa[tok] * s_w;
        }
    }
}
