// Ternary GEMV for 1..8 tokens: 2-bit weight codes, int8 activations, dp4a.
//
// Weight layout (see layout.rs): rows in tiles of 8; a tile is `kc` chunks of 64 weights, and
// chunk c of row r is the 16 bytes at uint4 index (tile * kc + c) * 8 + r. Word j (0..3) of a
// chunk, byte lane i, bits 2s..2s+1 hold the code (weight + 1) of column 64c + 16j + 4s + i, so
// `(word_j >> 2s) & 0x03030303` is four codes that pair with activation int32 number 4j + s.
// Σ code·x = Σ w·x + Σ x, and Σ x (per token) comes from the quantizer.

__device__ __forceinline__ void decode_chunk(const uint4 w, u32 (&d)[16]) {
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int s = 0; s < 4; ++s) d[4 * j + s] = (ws[j] >> (2 * s)) & CODE_MASK;
    }
}

// Activations from global memory (read-only path) or, when SMEM, from shared memory.
template <bool SMEM>
__device__ __forceinline__ int dot_chunk(const u32 (&d)[16], const int4* __restrict__ a, int acc) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int4 av = SMEM ? a[j] : __ldg(a + j);
        acc = __dp4a((int)d[4 * j + 0], av.x, acc);
        acc = __dp4a((int)d[4 * j + 1], av.y, acc);
        acc = __dp4a((int)d[4 * j + 2], av.z, acc);
        acc = __dp4a((int)d[4 * j + 3], av.w, acc);
    }
    return acc;
}

// y[m][row] = (Σ code·xq[m] − Σxq[m]) / sa[m] · s_w for M tokens (see store_row).

// Batch starting at chunk c0 (chunks c0, c0 + cs, ...) of the tile whose row base is wt.
template <int U>
__device__ __forceinline__ void gemv_fetch(uint4 (&w)[U], const uint4* wt, int c0, int cs,
                                           int kc) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int c = c0 + cs * u;
        w[u] = c < kc ? ld_stream(wt + (size_t)c * 8) : make_uint4(0, 0, 0, 0);
    }
}

// Barrier of the `n` threads running one GEMV block: the whole CUDA block (id 0), or one of
// several independent GEMV blocks inside a CUDA block (named barrier id > 0, see gemv_norm.cu).
__device__ __forceinline__ void gemv_sync(int id, int n) {
    if (id == 0) {
        __syncthreads();
    } else {
        asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
    }
}

// The tile loop of one GEMV block of 128 * groups threads (thread `tid` of it): tiles vb,
// vb + nvb, ... of W; activations xq (global, or shared memory when SMEM) with scales sa and
// sums sx (token m's sum is sx[m * sx_parts ..] summed over sx_parts parts), first weight batch
// `wn` already fetched. `red` holds 4 * groups warps' partial sums; `bar` / the block's thread
// count name its barrier (gemv_sync).
template <int M, bool SMEM>
__device__ __forceinline__ void gemv_tiles(const uint4* __restrict__ W, const i8* xq,
                                           const float* sa, const int* sx, int sx_parts,
                                           const OutArg& o, int kc, int kp, int tiles, int vb,
                                           int nvb, int tid, int groups, uint4 (&wn)[4],
                                           int (*red)[M][8], int bar) {
    constexpr int U = 4;
    const int r = tid & 7, lane = tid & 31, warp = tid >> 5, cs = 16 * groups;
    const int ks = ((tid & 127) >> 3) + 16 * (tid >> 7);
    for (int tile = vb; tile < tiles; tile += nvb) {
        const uint4* wt = W + (size_t)tile * kc * 8 + r;
        int acc[M];
#pragma unroll
        for (int m = 0; m < M; ++m) acc[m] = 0;
        for (int c0 = ks; c0 < kc; c0 += cs * U) {
            uint4 wv[U];
#pragma unroll
            for (int u = 0; u < U; ++u) wv[u] = wn[u];
            if (c0 + cs * U < kc) {
                gemv_fetch<U>(wn, wt, c0 + cs * U, cs, kc);
            } else if (tile + nvb < tiles) {
                gemv_fetch<U>(wn, W + (size_t)(tile + nvb) * kc * 8 + r, ks, cs, kc);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int c = c0 + cs * u;
                if (c < kc) {
                    u32 d[16];
                    decode_chunk(wv[u], d);
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        const int4* a = (const int4*)(xq + (size_t)m * kp + (size_t)c * 64);
                        acc[m] = dot_chunk<SMEM>(d, a, acc[m]);
                    }
                }
            }
        }
#pragma unroll
        for (int m = 0; m < M; ++m) {
            acc[m] += __shfl_xor_sync(FULL_MASK, acc[m], 8);
            acc[m] += __shfl_xor_sync(FULL_MASK, acc[m], 16);
            if (lane < 8) red[warp][m][lane] = acc[m];
        }
        gemv_sync(bar, 128 * groups);
        if (tid < 8 * M) {
            const int m = tid >> 3, rr = tid & 7;
            int s = 0;
            for (int w = 0; w < 4 * groups; ++w) s += red[w][m][rr];
            int sxm = 0;
            for (int p = 0; p < sx_parts; ++p) sxm += sx[m * sx_parts + p];
            store_row(o, m, tile * 8 + rr, s, sxm, sa[m]);
        }
        gemv_sync(bar, 128 * groups);  // red is rewritten by the next tile
    }
}

// Block: G groups of 128 threads (G = blockDim.x / 128, 1 or 2) on one 8-row tile at a time:
// thread (row r = tid % 8, k-slot tid / 8 + 16 g) takes chunks k-slot, + 16 G, ... (long rows
// get more threads); tiles blockIdx.x, + gridDim.x, ... A warp reads 32 consecutive 16-byte
// chunks (4 k-chunks x 8 rows): 512 contiguous bytes. Weights stream ahead of the multiply: the
// next batch of this tile, or the first batch of the block's next tile, is in flight meanwhile.
template <int M>
__device__ __forceinline__ void gemv_body(const uint4* __restrict__ W, const i8* __restrict__ xq,
                                          const float* __restrict__ sa,
                                          const int* __restrict__ sx, const OutArg& o,
                                          int kc, int kp, int tiles) {
    __shared__ int red[16][M][8];
    const int tid = threadIdx.x, groups = blockDim.x >> 7;
    const int ks = ((tid & 127) >> 3) + 16 * (tid >> 7);
    // Weights are constant: the first batch is in flight before waiting for the previous
    // kernel (PDL).
    PDL_TRIGGER();
    uint4 wn[4];
    if (blockIdx.x < tiles)
        gemv_fetch<4>(wn, W + (size_t)blockIdx.x * kc * 8 + (tid & 7), ks, 16 * groups, kc);
    PDL_WAIT();
    gemv_tiles<M, false>(W, after_wait(xq), after_wait(sa), after_wait(sx), 1, o, kc, kp, tiles, blockIdx.x, gridDim.x, tid, groups,
                         wn, red, 0);
}

#define GEMV_KERNEL(M)                                                                        \
    extern "C" __global__ void __launch_bounds__(256, (M) == 1 ? 4 : 2)                       \
        gemv_m##M(const uint4* __restrict__ W, const i8* __restrict__ xq,                     \
                  const float* __restrict__ sa, const int* __restrict__ sx,                   \
                  const __grid_constant__ OutArg o, int kc, int kp, int tiles) {              \
        gemv_body<M>(W, xq, sa, sx, o, kc, kp, tiles);                                        \
    }
GEMV_KERNEL(1)
GEMV_KERNEL(2)
GEMV_KERNEL(3)
GEMV_KERNEL(4)
GEMV_KERNEL(5)
GEMV_KERNEL(6)
GEMV_KERNEL(7)
GEMV_KERNEL(8)
