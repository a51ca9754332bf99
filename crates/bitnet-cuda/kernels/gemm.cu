// Ternary GEMM (more than 8 tokens) on int8 tensor cores: mma.sync m16n8k32 s8.
//
// The weight chunk layout of gemv.cu is exactly an A fragment source: for an mma over columns
// 32h..32h+31 of a 64-column chunk, thread (g = lane / 4, t = lane % 4) needs rows g and g+8 at
// columns 32h + 4t (+16): that is (word_{2h} >> 2t) & 0x03030303 (and word_{2h+1}). Codes are
// weight + 1, corrected by Σx per token in the epilogue.
//
// Block: 4 warps, 128 weight rows (32 per warp: each activation fragment read from shared
// memory feeds two mma) x all NT*8 tokens of one token group (so each weight byte is read once
// per group); grid (row blocks, token groups, K splits). Weights and activations go to shared
// memory with cp.async, GEMM_CH chunks (64 columns each) per stage, GEMM_STAGES stages in a
// ring: later stages load while the current one is multiplied. Staged token rows are padded
// to GEMM_CH * 64 + 16 bytes (conflict-free fragment reads).
// Split K (gridDim.z > 1): each block stores its int32 partial sums in `ws` at its split's
// slice, and gemm_reduce (one thread per output) adds the slices (integer sums: exact) and
// applies the epilogue.
// Weight rows are padded to a multiple of 64 by the layout; rows of the block past `rows_padded`
// read as zero.

__device__ __forceinline__ void mma_s8(int (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                       u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

#define GEMM_CH 2
#define GEMM_STAGES 3
#define GEMM_ROWS 128
#define GEMM_XS (GEMM_CH * 64 + 16)

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
    const u32 d = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(gmem),
                 "r"(src_bytes)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Weights of chunks c..c+n (n <= GEMM_CH) for the block's GEMM_ROWS rows into wsm (chunk-major,
// GEMM_ROWS uint4 per chunk); rows at or past rows_padded are zero.
__device__ __forceinline__ void gemm_issue_w(uint4* wsm, const uint4* __restrict__ W, int row0b,
                                             int rows_padded, int kc, int c, int n) {
    for (int i = threadIdx.x; i < n * GEMM_ROWS; i += 128) {
        const int cc = i / GEMM_ROWS, r = i % GEMM_ROWS, row = row0b + r;
        const bool ok = row < rows_padded;
        const uint4* src = W + ((size_t)((ok ? row : 0) >> 3) * kc + c + cc) * 8 + (r & 7);
        cp_async16(wsm + i, src, ok ? 16 : 0);
    }
}

// Activations of chunks c..c+n for tokens tok0..tok0+NT*8 into xs (zero past m_tok).
template <int NT>
__device__ __forceinline__ void gemm_issue_x(i8* xs, const i8* __restrict__ xq, int tok0,
                                             int m_tok, int kp, int c, int n) {
    for (int i = threadIdx.x; i < NT * 8 * n * 4; i += 128) {
        const int lt = i / (n * 4), part = i % (n * 4), tok = tok0 + lt;
        const bool ok = tok < m_tok;
        const i8* src = xq + (size_t)(ok ? tok : 0) * kp + (size_t)c * 64 + part * 16;
        cp_async16(xs + lt * GEMM_XS + part * 16, src, ok ? 16 : 0);
    }
}

template <int NT>
__device__ __forceinline__ void gemm_body(const uint4* __restrict__ W, const i8* __restrict__ xq,
                                          const float* __restrict__ sa,
                                          const int* __restrict__ sx, const OutArg& o,
                                          int m_tok, int kc, int kp, int rows_padded,
                                          int* __restrict__ ws, int ws_stride) {
    __shared__ __align__(16) i8 xs[GEMM_STAGES][NT * 8 * GEMM_XS];
    __shared__ __align__(16) uint4 wsm[GEMM_STAGES][GEMM_CH * GEMM_ROWS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int row0b = blockIdx.x * GEMM_ROWS, row0 = row0b + warp * 32;
    const int tok0 = blockIdx.y * NT * 8;
    const int splits = gridDim.z;
    const int c0 = (int)((long long)blockIdx.z * kc / splits);
    const int c1 = (int)((long long)(blockIdx.z + 1) * kc / splits);
    const int stages = (c1 - c0 + GEMM_CH - 1) / GEMM_CH;
    // acc[mt][nt]: rows row0 + 16 mt (+ g, + g + 8), tokens of n-tile nt.
    int acc[2][NT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int i = 0; i < NT; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[mt][i][j] = 0;
    PDL_TRIGGER();
    // Weights are constant: the first stages' are requested before waiting for the previous
    // kernel (PDL); activations after. Commit groups: stage 0 = {W0, W1, X0}, stage 1 = {X1}.
#pragma unroll
    for (int p = 0; p < GEMM_STAGES - 1; ++p) {
        const int c = c0 + p * GEMM_CH;
        if (p < stages) gemm_issue_w(wsm[p], W, row0b, rows_padded, kc, c, min(GEMM_CH, c1 - c));
    }
    PDL_WAIT();
#pragma unroll
    for (int p = 0; p < GEMM_STAGES - 1; ++p) {
        const int c = c0 + p * GEMM_CH;
        if (p < stages) gemm_issue_x<NT>(xs[p], xq, tok0, m_tok, kp, c, min(GEMM_CH, c1 - c));
        cp_async_commit();
    }
    const int sh = 2 * t;
    for (int st = 0; st < stages; ++st) {
        const int buf = st % GEMM_STAGES, c = c0 + st * GEMM_CH, nch = min(GEMM_CH, c1 - c);
        cp_async_wait<GEMM_STAGES - 2>();
        __syncthreads();  // stage st visible to all; stage st - 1's buffer free for refill
        {
            const int sn = st + GEMM_STAGES - 1, cn = c0 + sn * GEMM_CH;
            if (sn < stages) {
                const int nb = sn % GEMM_STAGES, nn = min(GEMM_CH, c1 - cn);
                gemm_issue_w(wsm[nb], W, row0b, rows_padded, kc, cn, nn);
                gemm_issue_x<NT>(xs[nb], xq, tok0, m_tok, kp, cn, nn);
            }
            cp_async_commit();
        }
        for (int cc = 0; cc < nch; ++cc) {
            const uint4* wr = wsm[buf] + cc * GEMM_ROWS + warp * 32 + g;
            const uint4 w0 = wr[0], w1 = wr[8], w2 = wr[16], w3 = wr[24];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const u32 a00 = ((h ? w0.z : w0.x) >> sh) & CODE_MASK;
                const u32 a01 = ((h ? w1.z : w1.x) >> sh) & CODE_MASK;
                const u32 a02 = ((h ? w0.w : w0.y) >> sh) & CODE_MASK;
                const u32 a03 = ((h ? w1.w : w1.y) >> sh) & CODE_MASK;
                const u32 a10 = ((h ? w2.z : w2.x) >> sh) & CODE_MASK;
                const u32 a11 = ((h ? w3.z : w3.x) >> sh) & CODE_MASK;
                const u32 a12 = ((h ? w2.w : w2.y) >> sh) & CODE_MASK;
                const u32 a13 = ((h ? w3.w : w3.y) >> sh) & CODE_MASK;
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
                    const i8* xr = xs[buf] + (nt * 8 + g) * GEMM_XS + cc * 64 + 32 * h + 4 * t;
                    const u32 b0 = *(const u32*)xr;
                    const u32 b1 = *(const u32*)(xr + 16);
                    mma_s8(acc[0][nt], a00, a01, a02, a03, b0, b1);
                    mma_s8(acc[1][nt], a10, a11, a12, a13, b0, b1);
                }
            }
        }
    }
    if (splits > 1) {
        // Partial sums into this split's slice ws[z][tok][row]; gemm_reduce adds the slices.
        const int slots = gridDim.y * NT * 8;
        int* mine = ws + (size_t)blockIdx.z * slots * ws_stride;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int tok = tok0 + nt * 8 + 2 * t + (i & 1);
                    const int row = row0 + 16 * mt + g + (i >= 2 ? 8 : 0);
                    if (tok < m_tok) mine[(size_t)tok * ws_stride + row] = acc[mt][nt][i];
                }
        return;
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const int tok = tok0 + nt * 8 + 2 * t + (i & 1);
                const int row = row0 + 16 * mt + g + (i >= 2 ? 8 : 0);
                if (tok < m_tok) store_row(o, tok, row, acc[mt][nt][i], sx[tok], sa[tok]);
            }
}

#define GEMM_KERNEL(NT)                                                                       \
    extern "C" __global__ void __launch_bounds__(128, 3)                                         \
        gemm_mma_t##NT(const uint4* __restrict__ W, const i8* __restrict__ xq,                \
                       const float* __restrict__ sa, const int* __restrict__ sx,              \
                       const __grid_constant__ OutArg o, int m_tok, int kc, int kp,           \
                       int rows_padded, int* __restrict__ ws, int ws_stride) {                \
        gemm_body<NT>(W, xq, sa, sx, o, m_tok, kc, kp, rows_padded, ws, ws_stride);           \
    }
GEMM_KERNEL(2)
GEMM_KERNEL(4)
GEMM_KERNEL(8)

// Finishes a split-K GEMM: out(tok, row) = Σ_z ws[z][tok][row], then the epilogue. One thread
// per (token, padded row); grid covers m_tok x rows_padded.
extern "C" __global__ void gemm_reduce(const int* __restrict__ ws, const float* __restrict__ sa,
                                       const int* __restrict__ sx,
                                       const __grid_constant__ OutArg o, int m_tok,
                                       int rows_padded, int slots, int ws_stride, int splits) {
    PDL_ENTER();
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)m_tok * rows_padded) return;
    const int tok = (int)(idx / rows_padded), row = (int)(idx % rows_padded);
    int sum = 0;
    for (int z = 0; z < splits; ++z) sum += ws[((size_t)z * slots + tok) * ws_stride + row];
    store_row(o, tok, row, sum, sx[tok], sa[tok]);
}
