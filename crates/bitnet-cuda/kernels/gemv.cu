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

// acc + Σ code·x over one chunk. Activations from global memory (read-only path) or, when
// SMEM, from shared memory. With MINUS_SUM, Σx is subtracted too (dp4a with -1 in every byte):
// Σ (code - 1)·x = Σ w·x, exact in integers, so a row's sum needs no separate Σx (decode.cu).
template <bool SMEM, bool MINUS_SUM = false>
__device__ __forceinline__ int dot_chunk(const u32 (&d)[16], const int4* __restrict__ a, int acc) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int4 av = SMEM ? a[j] : __ldg(a + j);
        acc = __dp4a((int)d[4 * j + 0], av.x, acc);
        acc = __dp4a((int)d[4 * j + 1], av.y, acc);
        acc = __dp4a((int)d[4 * j + 2], av.z, acc);
        acc = __dp4a((int)d[4 * j + 3], av.w, acc);
        if (MINUS_SUM) {
            acc = __dp4a(-1, av.x, acc);
            acc = __dp4a(-1, av.y, acc);
            acc = __dp4a(-1, av.z, acc);
            acc = __dp4a(-1, av.w, acc);
        }
    }
    return acc;
}

// dp4a with unsigned weight bytes and signed activation bytes.
__device__ __forceinline__ int dp4a_us(u32 a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// Σ code·x over one chunk without shifting the codes out: bit pair s of every byte, masked in
// place, is 4^s · code, so acc[s] gathers 4^s times its part (exact in integers; masked_sum
// divides it back out). One AND and one dp4a per four weights, against a shift, an AND and a
// dp4a (decode_chunk + dot_chunk).
template <bool SMEM>
__device__ __forceinline__ void dot_masked(const uint4 w, const int4* __restrict__ a,
                                           int (&acc)[4]) {
    const u32 ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int4 av = SMEM ? a[j] : __ldg(a + j);
        acc[0] = dp4a_us(ws[j] & 0x03030303u, av.x, acc[0]);
        acc[1] = dp4a_us(ws[j] & 0x0c0c0c0cu, av.y, acc[1]);
        acc[2] = dp4a_us(ws[j] & 0x30303030u, av.z, acc[2]);
        acc[3] = dp4a_us(ws[j] & 0xc0c0c0c0u, av.w, acc[3]);
    }
}

// Σ code·x from dot_masked's four sums (each a multiple of its 4^s: the shifts are exact).
__device__ __forceinline__ int masked_sum(const int (&acc)[4]) {
    return acc[0] + (acc[1] >> 2) + (acc[2] >> 4) + (acc[3] >> 6);
}

// Which tokens counts multiply with dot_masked: one token (decode: H200 tg64 949 / 950 tok/s
// against 925 / 927 with the shifts, fused gate/up 7.71 against 8.05 µs); more tokens keep the
// shifts (four sums per token cost registers; batch 4 measured 1-2% slower masked).
// -DGEMV_SHIFTS (BITNET_NVRTC_OPTIONS) shifts at one token too, for comparisons.
#ifdef GEMV_SHIFTS
#define GEMV_MASKED(M) false
#else
#define GEMV_MASKED(M) ((M) == 1)
#endif

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

// The weight batches a GEMV block of 128 * groups threads walks, in order: tiles vb, vb + nvb,
// ... below `tiles`, each in `nb` batches; batch j of a tile is U chunks ks + cs * (U j + u) of
// this thread's row r of it (thread tid: r = tid % 8, k-slot ks = tid % 128 / 8 + 16 * (tid /
// 128), cs = 16 * groups).
template <int U>
struct GemvWalk {
    const uint4* W;
    int kc, tiles, nvb, r, ks, cs, nb;
    __device__ __forceinline__ GemvWalk(const uint4* W_, int kc_, int tiles_, int nvb_, int tid,
                                        int groups)
        : W(W_), kc(kc_), tiles(tiles_), nvb(nvb_), r(tid & 7),
          ks(((tid & 127) >> 3) + 16 * (tid >> 7)), cs(16 * groups),
          nb((kc_ + 16 * groups * U - 1) / (16 * groups * U)) {}
    // A position in the walk: tile, batch j of it.
    struct At {
        int tile, j;
    };
    __device__ __forceinline__ void next(At& a) const {
        if (++a.j == nb) {
            a.j = 0;
            a.tile += nvb;
        }
    }
    // Fetches the batch at `a` into w (nothing past the last tile).
    __device__ __forceinline__ void fetch(uint4 (&w)[U], const At& a) const {
        if (a.tile < tiles) gemv_fetch<U>(w, W + (size_t)a.tile * kc * 8 + r, ks + cs * U * a.j, cs, kc);
    }
    // The first two batches, from tile vb: issued before the PDL wait (weights are constant).
    __device__ __forceinline__ void prefetch(uint4 (&w0)[U], uint4 (&w1)[U], int vb) const {
        At a{vb, 0};
        fetch(w0, a);
        next(a);
        fetch(w1, a);
    }
};

// The tile loop of one GEMV block of 128 * groups threads (thread `tid` of it) over walk g's
// batches from tile vb; activations xq (global, or shared memory when SMEM) with scales sa and
// sums sx (token m's sum is sx[m * sx_parts ..] summed over sx_parts parts); the first two
// batches already fetched into w0, w1 (GemvWalk::prefetch). Two batches are in flight while one
// is multiplied: the next batch is fetched before the current one is waited for. `red` holds
// 4 * groups warps' partial sums; `bar` / the block's thread count name its barrier (team_sync).
template <int M, bool SMEM, int U>
__device__ __forceinline__ void gemv_tiles(const GemvWalk<U>& g, const i8* xq, const float* sa,
                                           const int* sx, int sx_parts, const OutArg& o, int kp,
                                           int vb, int tid, int groups, uint4 (&w0)[U],
                                           uint4 (&w1)[U], int (*red)[M][8], int bar) {
    const int lane = tid & 31, warp = tid >> 5;
    // The scale and sum of the token this thread stores rows of, read once, before the tiles.
    // One token: warp 0 sums the parts with one reduction (integers: any order is exact); the
    // storing threads are in warp 0, and a serial sum there held up the team's first barrier
    // (H100 tg64 +1.2%).
    const int mine = tid < 8 * M ? tid >> 3 : 0;
    float sam = 0.0f;
    int sxm = 0;
    if (M == 1 && warp == 0) {
        int v = 0;
        for (int p = lane; p < sx_parts; p += 32) v += sx[p];
        sxm = __reduce_add_sync(FULL_MASK, v);
        sam = sa[0];
    } else if (M > 1 && tid < 8 * M) {
        sam = sa[mine];
        for (int p = 0; p < sx_parts; ++p) sxm += sx[mine * sx_parts + p];
    }
    STAMP(11);
    int acc[M][4];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0;
    // Multiplies the batch w at position a into acc.
    auto multiply = [&](const uint4 (&w)[U], const typename GemvWalk<U>::At& a) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = g.ks + g.cs * (U * a.j + u);
            if (c < g.kc) {
                const i8* xc = xq + (size_t)c * 64;
                if (GEMV_MASKED(M)) {
                    dot_masked<SMEM>(w[u], (const int4*)xc, acc[0]);
                } else {
                    u32 d[16];
                    decode_chunk(w[u], d);
#pragma unroll
                    for (int m = 0; m < M; ++m) {
                        const int4* x = (const int4*)(xc + (size_t)m * kp);
                        acc[m][0] = dot_chunk<SMEM>(d, x, acc[m][0]);
                    }
                }
            }
        }
    };
    // After a tile's last batch: reduces acc over the block and stores the tile's rows.
#ifdef BITNET_STAMPS
    // Tiles stored (stamps 4 and 5: the first two; 8 the first multiply, 9 and 10 after the
    // first tile's barrier and store).
    int done = 0;
#endif
    auto finish = [&](const typename GemvWalk<U>::At& a) {
        if (a.j != g.nb - 1) return;
#pragma unroll
        for (int m = 0; m < M; ++m) {
            int v = GEMV_MASKED(M) ? masked_sum(acc[m]) : acc[m][0];
            v += __shfl_xor_sync(FULL_MASK, v, 8);
            v += __shfl_xor_sync(FULL_MASK, v, 16);
            if (lane < 8) red[warp][m][lane] = v;
            acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0;
        }
        team_sync(bar, 128 * groups);
#ifdef BITNET_STAMPS
        if (done == 0) STAMP(9);
#endif
        if (tid < 8 * M) {
            int s = 0;
            for (int w = 0; w < 4 * groups; ++w) s += red[w][mine][tid & 7];
            store_row(o, mine, a.tile * 8 + (tid & 7), s, sxm, sam);
        }
#ifdef BITNET_STAMPS
        if (done == 0) STAMP(10);
#endif
        team_sync(bar, 128 * groups);  // red is rewritten by the next tile
#ifdef BITNET_STAMPS
        if (done < 2) STAMP(4 + done);
        ++done;
#endif
    };
    // Each buffer is refilled as soon as it is multiplied, before the tile's reduction. The
    // two halves of the loop differ only in the buffer; written once as a lambda called on each,
    // the walk compiles differently (H100 13824x2560: 4.31 / 4.07 µs rotated / same weights,
    // against 4.76 / 3.85 here), so it stays spelled out.
    typename GemvWalk<U>::At at{vb, 0}, ahead{vb, 0};
    g.next(ahead);
    g.next(ahead);
    while (at.tile < g.tiles) {
        multiply(w0, at);
#ifdef BITNET_STAMPS
        if (done == 0 && at.j == 0) STAMP(8);
#endif
        g.fetch(w0, ahead);
        g.next(ahead);
        finish(at);
        g.next(at);
        if (at.tile >= g.tiles) break;
        multiply(w1, at);
        g.fetch(w1, ahead);
        g.next(ahead);
        finish(at);
        g.next(at);
    }
    STAMP(6);
}

// Block: G groups of 128 threads (G = blockDim.x / 128, 1 or 2) on one 8-row tile at a time:
// thread (row r = tid % 8, k-slot tid / 8 + 16 g) takes chunks k-slot, + 16 G, ... (long rows
// get more threads); tiles blockIdx.x, + gridDim.x, ... A warp reads 32 consecutive 16-byte
// chunks (4 k-chunks x 8 rows): 512 contiguous bytes. Weights stream ahead of the multiply (two
// batches in flight, see gemv_tiles), across tile boundaries.
template <int M, int U>
__device__ __forceinline__ void gemv_body(const uint4* __restrict__ W, const i8* __restrict__ xq,
                                          const float* __restrict__ sa,
                                          const int* __restrict__ sx, const OutArg& o,
                                          int kc, int kp, int tiles) {
    __shared__ int red[16][M][8];
    const int tid = threadIdx.x, groups = blockDim.x >> 7;
    const GemvWalk<U> g(W, kc, tiles, gridDim.x, tid, groups);
    // Weights are constant: the first two batches are in flight before waiting for the
    // previous kernel (PDL).
    STAMP_BEGIN(6);
    PDL_TRIGGER();
    uint4 w0[U], w1[U];
    g.prefetch(w0, w1, blockIdx.x);
    PDL_WAIT();
    STAMP(1);
    gemv_tiles<M, false>(g, after_wait(xq), after_wait(sa), after_wait(sx), 1, o, kp,
                         blockIdx.x, tid, groups, w0, w1, red, 0);
    STAMP_END();
}

// One token: chunks per weight batch (overridable for experiments, BITNET_NVRTC_OPTIONS).
// Three chunks per batch: one batch covers a 2560-wide tile's chunks for each thread of one
// group (H100: 13824x2560 3.83 µs same weights, against 3.89 with four).
#ifndef GEMV1_U
#define GEMV1_U 3
#endif
extern "C" __global__ void __launch_bounds__(256, 4)
    gemv_m1(const uint4* __restrict__ W, const i8* __restrict__ xq, const float* __restrict__ sa,
            const int* __restrict__ sx, const __grid_constant__ OutArg o, int kc, int kp,
            int tiles) {
    gemv_body<1, GEMV1_U>(W, xq, sa, sx, o, kc, kp, tiles);
}
// 2..8 tokens: four chunks per batch for two tokens, two beyond (register room for M
// activation rows).
#define GEMV_KERNEL(M)                                                                        \
    extern "C" __global__ void __launch_bounds__(256, 2)                                      \
        gemv_m##M(const uint4* __restrict__ W, const i8* __restrict__ xq,                     \
                  const float* __restrict__ sa, const int* __restrict__ sx,                   \
                  const __grid_constant__ OutArg o, int kc, int kp, int tiles) {              \
        gemv_body<M, (M) <= 2 ? 4 : 2>(W, xq, sa, sx, o, kc, kp, tiles);                     \
    }
GEMV_KERNEL(2)
GEMV_KERNEL(3)
GEMV_KERNEL(4)
GEMV_KERNEL(5)
GEMV_KERNEL(6)
GEMV_KERNEL(7)
GEMV_KERNEL(8)
