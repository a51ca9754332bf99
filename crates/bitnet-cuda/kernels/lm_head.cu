// The vocabulary projection: one warp per vocabulary row, for up to 8 tokens per launch
// (tokens tok0 .. tok0 + M).
//
// int8 weight layout (LmI8 in ops/lm_head.rs): rows in tiles of 16, each tile stored as its
// 64-column steps one after another, a step being 16 rows x 64 bytes (1 KB) contiguous. Rows
// are `dp` bytes (a multiple of 64) once padded, so a tile has dp / 64 steps.

// The 16-byte chunk c (columns 16c .. 16c + 15) of `row`, as a uint4 index.
__device__ __forceinline__ size_t lm_chunk(int row, int c, int steps) {
    return (((size_t)(row >> 4) * steps + (c >> 2)) * 16 + (row & 15)) * 4 + (c & 3);
}

// Four int8 weights (one u32) to exact f32: bias each byte to unsigned, place it in the mantissa
// of 2^23 (one PRMT), subtract 2^23 + 128 (one FADD). No I2F (quarter rate) on the hot path.
__device__ __forceinline__ float4 i8x4_to_f32(u32 w) {
    const u32 v = w ^ 0x80808080u;
    const float base = 8388736.0f;  // 2^23 + 128
    return make_float4(__int_as_float(__byte_perm(v, 0x4B000000u, 0x7540)) - base,
                       __int_as_float(__byte_perm(v, 0x4B000000u, 0x7541)) - base,
                       __int_as_float(__byte_perm(v, 0x4B000000u, 0x7542)) - base,
                       __int_as_float(__byte_perm(v, 0x4B000000u, 0x7543)) - base);
}

__device__ __forceinline__ float dot4(float4 w, float4 x, float acc) {
    acc = fmaf(w.x, x.x, acc);
    acc = fmaf(w.y, x.y, acc);
    acc = fmaf(w.z, x.z, acc);
    return fmaf(w.w, x.w, acc);
}

// 16 activations of token row `xr` from column `k0` (zero past `d`); float4 loads when aligned.
__device__ __forceinline__ void load_x16(const float* __restrict__ xr, int k0, int d, bool vec,
                                         float4 (&xv)[4]) {
    if (vec) {
        const float4* p = (const float4*)(xr + k0);
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = __ldg(p + j);
    } else {
        float t[16];
#pragma unroll
        for (int e = 0; e < 16; ++e) t[e] = k0 + e < d ? __ldg(xr + k0 + e) : 0.0f;
#pragma unroll
        for (int j = 0; j < 4; ++j) xv[j] = make_float4(t[4 * j], t[4 * j + 1], t[4 * j + 2], t[4 * j + 3]);
    }
}

// int8 rows with one f32 scale per row, times f32 activations (as the CPU's I8Matrix):
// out = (Σ q·x) * scale[row]. Rows of W are dq = ceil(d / 16) chunks (zero-padded); x rows are
// `d` values.
template <int M>
__device__ __forceinline__ void lm_i8_body(const uint4* __restrict__ W,
                                           const float* __restrict__ wscale,
                                           const float* __restrict__ x, float* __restrict__ out,
                                           int vocab, int dq, int d, int tok0) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= vocab) return;
    const int steps = dq >> 2;
    const float* xa = x + (size_t)tok0 * d;
    const bool vec = (d & 15) == 0;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.0f;
    constexpr int U = 4;
    for (int c0 = lane; c0 < dq; c0 += 32 * U) {
        uint4 wv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            wv[u] = c < dq ? ld_stream(W + lm_chunk(row, c, steps)) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < dq) {
                const float4 w0 = i8x4_to_f32(wv[u].x), w1 = i8x4_to_f32(wv[u].y);
                const float4 w2 = i8x4_to_f32(wv[u].z), w3 = i8x4_to_f32(wv[u].w);
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    float4 xv[4];
                    load_x16(xa + (size_t)m * d, 16 * c, d, vec, xv);
                    float a = acc[m];
                    a = dot4(w0, xv[0], a);
                    a = dot4(w1, xv[1], a);
                    a = dot4(w2, xv[2], a);
                    acc[m] = dot4(w3, xv[3], a);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const float s = warp_sum(acc[m]);
        if (lane == 0) out[(size_t)(tok0 + m) * vocab + row] = s * wscale[row];
    }
}

// f32 rows times f32 activations (exact mode). Rows are `dq` float4 chunks.
template <int M>
__device__ __forceinline__ void lm_f32_body(const float4* __restrict__ W,
                                            const float* __restrict__ x, float* __restrict__ out,
                                            int vocab, int dq, int tok0) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= vocab) return;
    const float4* wr = W + (size_t)row * dq;
    const float4* xa = (const float4*)x + (size_t)tok0 * dq;
    float acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0.0f;
    for (int c = lane; c < dq; c += 32) {
        const float4 w = __ldg(wr + c);
#pragma unroll
        for (int m = 0; m < M; ++m) {
            const float4 a = __ldg(xa + (size_t)m * dq + c);
            acc[m] += w.x * a.x + w.y * a.y + w.z * a.z + w.w * a.w;
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const float s = warp_sum(acc[m]);
        if (lane == 0) out[(size_t)(tok0 + m) * vocab + row] = s;
    }
}

#define LM_KERNELS(M)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        lm_i8_m##M(const uint4* __restrict__ W, const float* __restrict__ wscale,              \
                   const float* __restrict__ x, float* __restrict__ out, int vocab, int dq,    \
                   int d, int tok0) {                                                          \
        STAMP_BEGIN(2);                                                                        \
        PDL_ENTER();                                                                           \
        STAMP(1);                                                                              \
        lm_i8_body<M>(W, wscale, x, out, vocab, dq, d, tok0);                                  \
        STAMP(3);                                                                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        lm_f32_m##M(const float4* __restrict__ W, const float* __restrict__ x,                 \
                    float* __restrict__ out, int vocab, int dq, int tok0) {                    \
        PDL_ENTER();                                                                           \
        lm_f32_body<M>(W, x, out, vocab, dq, tok0);                                            \
    }
LM_KERNELS(1)
LM_KERNELS(2)
LM_KERNELS(4)
LM_KERNELS(8)

// ---- int8 rows x f16 activations on tensor cores (mma.sync m16n8k16, f32 accumulate) ----
//
// Block: LMM_WARPS warps, 16 vocabulary rows each, x all NT*8 tokens of one launch (each
// weight byte is read once per launch), tiles in the layout above. Per 64-column
// step, thread (g, t) holds 16 weight bytes of rows g and g+8 at columns 16t..16t+15; the k
// order inside a step is permuted identically for A and B: in sub-step s, fragment columns
// (2t, 2t+1, 2t+8, 2t+9) are physical columns 16t + 4s + (0, 1, 2, 3). int8 -> f16 is exact
// (PRMT into the mantissa of 1024, one f16x2 subtract); activations are rounded to f16 (clamped
// to ±65504) while staged in shared memory. out = (Σ q·x) * scale[row].

#define LMM_WARPS 8
#define LMM_XS 72  // halves per staged token row: 64 + 8 of padding (conflict-free reads)

__device__ __forceinline__ u32 i8x2_to_h2(u32 biased, u32 sel) {
    const u32 h = __byte_perm(biased, 0x64646464u, sel);  // (1024 + u) as f16, two lanes
    u32 r;
    asm("sub.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(0x64806480u));  // - (1024 + 128)
    return r;
}

__device__ __forceinline__ u32 f2_to_h2(float lo, float hi) {
    lo = fminf(fmaxf(lo, -65504.0f), 65504.0f);
    hi = fminf(fmaxf(hi, -65504.0f), 65504.0f);
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void mma_f16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Columns k0..k0+63 of tokens tok0..tok0+NT*8 (zero past d and m_tok), as float pairs:
// thread i holds pairs i, i + 256, ... (LMM_XV of them). Loaded a step ahead, converted to f16
// and stored to shared memory after the current step's mma.
#define LMM_XV(NT) ((NT) * 8 * 32 / (LMM_WARPS * 32))

template <int NT>
__device__ __forceinline__ void lmm_load(float2 (&v)[LMM_XV(NT)], const float* __restrict__ x,
                                         int tok0, int m_tok, int d, int k0) {
#pragma unroll
    for (int j = 0; j < LMM_XV(NT); ++j) {
        const int i = threadIdx.x + j * LMM_WARPS * 32;
        const int lt = i >> 5, kk = (i & 31) * 2, tok = tok0 + lt, k = k0 + kk;
        v[j] = make_float2(0.0f, 0.0f);
        if (tok < m_tok) {
            const float* xr = x + (size_t)tok * d;
            if (k < d) v[j].x = __ldg(xr + k);
            if (k + 1 < d) v[j].y = __ldg(xr + k + 1);
        }
    }
}

template <int NT>
__device__ __forceinline__ void lmm_store(u32* xs, const float2 (&v)[LMM_XV(NT)]) {
#pragma unroll
    for (int j = 0; j < LMM_XV(NT); ++j) {
        const int i = threadIdx.x + j * LMM_WARPS * 32;
        xs[(i >> 5) * (LMM_XS / 2) + (i & 31)] = f2_to_h2(v[j].x, v[j].y);
    }
}

template <int NT>
__device__ __forceinline__ void lm_mma_body(const i8* __restrict__ W,
                                            const float* __restrict__ wscale,
                                            const float* __restrict__ x, float* __restrict__ out,
                                            int vocab, int dp, int d, int m_tok, int tok0) {
    __shared__ __align__(16) u32 xs[2][NT * 8 * LMM_XS / 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * (LMM_WARPS * 16) + warp * 16;
    const int steps = dp >> 6;
    // Rows g and g + 8 of this warp's tile (the last tile for warps past the vocabulary: read,
    // never stored); a step is 64 uint4s on.
    const int tile = min(row0, vocab - 1) >> 4;
    const uint4* wa = (const uint4*)W + lm_chunk(tile * 16 + g, t, steps);
    const uint4* wb = (const uint4*)W + lm_chunk(tile * 16 + g + 8, t, steps);
    float acc[NT][4];
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    PDL_TRIGGER();
    uint4 nA = ld_stream(wa), nB = ld_stream(wb);  // weights: constant, read before the wait
    PDL_WAIT();
    STAMP(1);
    float2 xv[LMM_XV(NT)];
    lmm_load<NT>(xv, x, tok0, m_tok, d, 0);
    lmm_store<NT>(xs[0], xv);
    for (int st = 0; st < steps; ++st) {
        const int buf = st & 1;
        __syncthreads();
        const uint4 cA = nA, cB = nB;
        if (st + 1 < steps) {
            nA = ld_stream(wa + (size_t)(st + 1) * 64);
            nB = ld_stream(wb + (size_t)(st + 1) * 64);
            lmm_load<NT>(xv, x, tok0, m_tok, d, (st + 1) * 64);
        }
        const u32 va[4] = {cA.x ^ 0x80808080u, cA.y ^ 0x80808080u, cA.z ^ 0x80808080u,
                           cA.w ^ 0x80808080u};
        const u32 vb[4] = {cB.x ^ 0x80808080u, cB.y ^ 0x80808080u, cB.z ^ 0x80808080u,
                           cB.w ^ 0x80808080u};
        uint4 xb[NT][2];
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            const uint4* xr = (const uint4*)(xs[buf] + (nt * 8 + g) * (LMM_XS / 2) + 8 * t);
            xb[nt][0] = xr[0];
            xb[nt][1] = xr[1];
        }
#pragma unroll
        for (int s = 0; s < 4; ++s) {
            const u32 a0 = i8x2_to_h2(va[s], 0x5140u), a2 = i8x2_to_h2(va[s], 0x5342u);
            const u32 a1 = i8x2_to_h2(vb[s], 0x5140u), a3 = i8x2_to_h2(vb[s], 0x5342u);
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const uint4 q = xb[nt][s >> 1];
                const u32 b0 = (s & 1) ? q.z : q.x, b1 = (s & 1) ? q.w : q.y;
                mma_f16(acc[nt], a0, a1, a2, a3, b0, b1);
            }
        }
        if (st + 1 < steps) lmm_store<NT>(xs[buf ^ 1], xv);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int tok = tok0 + nt * 8 + 2 * t + (i & 1);
            const int row = row0 + g + (i >= 2 ? 8 : 0);
            if (tok < m_tok && row < vocab) out[(size_t)tok * vocab + row] = acc[nt][i] * wscale[row];
        }
    }
}

#define LMM_KERNEL(NT)                                                                         \
    extern "C" __global__ void __launch_bounds__(LMM_WARPS * 32)                               \
        lm_i8_mma_t##NT(const i8* __restrict__ W, const float* __restrict__ wscale,            \
                        const float* __restrict__ x, float* __restrict__ out, int vocab,       \
                        int dp, int d, int m_tok, int tok0) {                                  \
        STAMP_BEGIN(2);                                                                        \
        lm_mma_body<NT>(W, wscale, x, out, vocab, dp, d, m_tok, tok0);                         \
        STAMP(3);                                                                              \
    }
LMM_KERNEL(1)
LMM_KERNEL(2)
LMM_KERNEL(4)
LMM_KERNEL(8)
