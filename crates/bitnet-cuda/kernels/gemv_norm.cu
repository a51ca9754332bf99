// One token's RMSNorm (+ BitLinear quantization) fused into the ternary GEMV that reads it.
//
// Decode runs one token through a chain of small kernels, and each costs a fixed ~2 µs in
// that chain however little it does; the norm kernels before the projections were a third of
// the batch-1 time. Here every CUDA block first computes the whole norm of the (single) input
// row itself, from L2, into shared memory, then runs several independent GEMV blocks of 256
// threads over its tiles with the activations read from shared memory. Block 0 also writes
// what the separate norm kernel would have (the f32 norm output and its int8 copy), so callers
// see the same buffers either way.

// Rows of up to 8192 values (GEMV_NORM_MAX), a multiple of 4; the wide kernels (norm_to_smem_wide)
// take up to 16384 (GEMV_NORM_WIDE_MAX: Llama3-8B's 14336-wide down projection, 1bitLLM-3B's 8640).
#define GEMV_NORM_MAX 8192
#define GEMV_NORM_WIDE_MAX 16384

// The norm feeding the projection (mirrors `NormArg` in ops/fused.rs). Input as norm_inputs:
// x, relu(x)^2 * y or silu(x) * y (1bitLLM's sub-norm over a SiLU gate), normed; or, with no
// norm (LLaMA-architecture blocks: no weight, w unused), x or silu(x) * y as it is. Each kernel
// is compiled for one of these modes; the host picks it.
#define NORM_PLAIN 0
#define NORM_RELU2 1
#define NORM_NONE 2
#define NORM_SILU 3
#define NORM_SILU_NORMED 4
// Whether a mode normalizes (loads the norm weights, sums squares, scales by the inverse RMS).
__host__ __device__ constexpr bool norm_mode_normed(int mode) {
    return mode == NORM_PLAIN || mode == NORM_RELU2 || mode == NORM_SILU_NORMED;
}
struct NormArg {
    const float* x;
    const float* y;
    const float* w;
    float* out;
    i8* q;
    float* qscale;
    int* qsum;
    int d;
    int kp;
    float eps;
};

// Float4 slots of a row per thread of the 1024 (rows of up to GEMV_NORM_MAX values, a multiple
// of 4: see sum_sq4 in norm.cu).
#define NORM4_SLOTS (GEMV_NORM_MAX / 4 / 1024)

// True when slot j and all later ones lie at or past n4 (float4s) for every thread of the block:
// the same answer block-wide, so the loops over slots break there.
__device__ __forceinline__ bool slots4_past(int j, int n4) { return j * (int)blockDim.x >= n4; }

// Thread-private copy of the norm weights into shared memory (issued before the PDL wait:
// they are constant); each thread later reads only the slots it copied.
__device__ __forceinline__ void norm_weights_async(float* wsm, const float* w, int d4) {
#pragma unroll
    for (int j = 0; j < NORM4_SLOTS; ++j) {
        if (slots4_past(j, d4)) break;
        const int f = threadIdx.x + j * blockDim.x;
        if (f < d4) {
            const u32 dst = (u32)__cvta_generic_to_shared(wsm + 4 * f);
            asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" ::"r"(dst), "l"(w + 4 * f)
                         : "memory");
        }
    }
    asm volatile("cp.async.commit_group;" ::: "memory");
}

// Σv² and max|p| over the block of 1024 threads (32 warps) in one reduction, one barrier
// (`red1`, `red2` not read by an earlier reduction still in progress): the sum in block_sum's
// order, the max exact in any order (non-negative, no NaN).
__device__ __forceinline__ void block_sum_max(float& ss, float& m, float* red1, float* red2) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    ss = warp_sum(ss);
    m = warp_max_nonneg(m);
    if (lane == 0) {
        red1[warp] = ss;
        red2[warp] = m;
    }
    __syncthreads();
    ss = warp_sum(red1[lane]);
    m = warp_max_nonneg(red2[lane]);
}

// silu(g) * u = g / (1 + exp(-g)) * u (as torch's SiLU), lane by lane; the silu_mul kernel
// (elementwise.cu) uses it too, so fused and unfused agree bit for bit.
__device__ __forceinline__ float silu_mul1(float g, float u) {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}
__device__ __forceinline__ float4 silu_mul4(float4 g, float4 u) {
    return make_float4(silu_mul1(g.x, u.x), silu_mul1(g.y, u.y), silu_mul1(g.z, u.z),
                       silu_mul1(g.w, u.w));
}

// a * b and a * s, lane by lane, each product rounded (no fused multiply-add).
__device__ __forceinline__ float4 mul4(float4 a, float4 b) {
    return make_float4(__fmul_rn(a.x, b.x), __fmul_rn(a.y, b.y), __fmul_rn(a.z, b.z),
                       __fmul_rn(a.w, b.w));
}
__device__ __forceinline__ float4 scale4(float4 a, float s) {
    return make_float4(__fmul_rn(a.x, s), __fmul_rn(a.y, s), __fmul_rn(a.z, s), __fmul_rn(a.w, s));
}

// The norm of the block's single input row into shared memory: xs gets its int8 quantization
// (zero from d to kp), qpart each warp's part of Σq (wsm holds the norm's weights);
// returns the scale. Block 0 also writes the norm's outputs (out, q, qscale; qsum later).
//
// The row is read in float4 slots (NORM4_SLOTS per thread; a 2560-wide row is one slot of 640
// threads): against one value per slot (up to 8 slots, most of them dead for 2560), the norm
// issues a quarter of the loads and a fraction of the per-slot instructions, and with 32 warps
// to a block its phase is issue-bound.
template <int MODE>
__device__ __forceinline__ float norm_to_smem(const NormArg& n, i8* xs, float* wsm, int* qpart,
                                              float* red1, float* red2) {
    constexpr int P = NORM4_SLOTS;
    const int tid = threadIdx.x, nt = blockDim.x, d4 = n.d >> 2, kp4 = n.kp >> 2;
    constexpr bool relu2 = MODE == NORM_RELU2;
    constexpr bool silu = MODE == NORM_SILU || MODE == NORM_SILU_NORMED;
    constexpr bool normed = norm_mode_normed(MODE);
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[P], b[P];
    // Every load goes out before any value is combined.
#pragma unroll
    for (int j = 0; j < P; ++j) {
        v[j] = b[j] = zero;
        if (slots4_past(j, d4)) break;
        const int f = tid + j * nt;
        if (f < d4) {
            v[j] = ((const float4*)n.x)[f];
            if (relu2 || silu) b[j] = ((const float4*)n.y)[f];
        }
    }
    // Each value as (x·w)·inv, where the norm kernel computes w·(x·inv) (an ulp apart at
    // most): rounding is monotonic, so the largest |(x·w)·inv| is max|x·w|·inv exactly, and
    // max|x·w| joins Σx²'s reduction: one block reduction and barrier instead of two (H100 tg64
    // +0.3%, same-call rounds). The int8 copy is still exactly the CPU quantization of the f32
    // output.
    if (normed) asm volatile("cp.async.wait_all;" ::: "memory");
    const float4* w4 = (const float4*)wsm;
    float ss = 0.0f, m = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (slots4_past(j, d4)) break;
        v[j] = silu ? silu_mul4(v[j], b[j]) : norm_combine4(v[j], b[j], relu2);
        if (normed) ss = sum_sq4(ss, v[j]);
        const int f = tid + j * nt;
        if (f < d4) {
            if (normed) v[j] = mul4(v[j], w4[f]);
            m = max_abs4(m, v[j]);
        }
    }
    block_sum_max(ss, m, red1, red2);
    STAMP(7);
    const float inv = normed ? norm_inv(ss, n.d, n.eps) : 1.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (!normed || slots4_past(j, d4)) break;
        v[j] = scale4(v[j], inv);
    }
    const float amax = normed ? __fmul_rn(m, inv) : m;
    const float s = quant_scale(amax);
    int part = 0;
    const bool first = blockIdx.x == 0;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (slots4_past(j, kp4)) break;
        const int f = tid + j * nt;
        u32 q = 0;
        if (f < d4) {
            q = quant4(v[j], s, part);
            if (first) ((float4*)n.out)[f] = v[j];
        }
        if (f < kp4) {
            ((u32*)xs)[f] = q;
            if (first) ((u32*)n.q)[f] = q;
        }
    }
    part = warp_sum_i(part);
    if ((tid & 31) == 0) qpart[tid >> 5] = part;
    if (first && tid == 0) *n.qscale = s;
    return s;
}

// norm_to_smem for rows wider than GEMV_NORM_MAX, which do not fit the registers (64 a thread
// at 1024 threads) or the shared memory of the norm weights: two passes over the row, both from
// L1/L2. The first sums squares and finds max|x·w| without keeping the values; the second loads
// and combines them again (the same operations, so the same values), scales and quantizes them.
// The norm weights are read from global memory in both passes. The quantization tail is
// norm_to_smem's, spelled out again: shared through a helper taking the values as a lambda, it
// changed the one-pass kernels' SASS (24 more instructions in gemv_norm_m1_g1_plain), which
// decode runs all the time.
template <int MODE>
__device__ __forceinline__ float norm_to_smem_wide(const NormArg& n, i8* xs, int* qpart,
                                                   float* red1, float* red2) {
    constexpr int P = GEMV_NORM_WIDE_MAX / 4 / 1024;
    const int tid = threadIdx.x, nt = blockDim.x, d4 = n.d >> 2, kp4 = n.kp >> 2;
    constexpr bool relu2 = MODE == NORM_RELU2;
    constexpr bool silu = MODE == NORM_SILU || MODE == NORM_SILU_NORMED;
    constexpr bool normed = norm_mode_normed(MODE);
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const float4* x4 = (const float4*)n.x;
    const float4* y4 = (const float4*)n.y;
    const float4* w4 = (const float4*)n.w;
    // The combined value of float4 f (before the norm weight).
    auto value = [&](int f) {
        const float4 x = x4[f], y = (relu2 || silu) ? y4[f] : zero;
        return silu ? silu_mul4(x, y) : norm_combine4(x, y, relu2);
    };
    float ss = 0.0f, m = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (slots4_past(j, d4)) break;
        const int f = tid + j * nt;
        if (f < d4) {
            float4 v = value(f);
            if (normed) {
                ss = sum_sq4(ss, v);
                v = mul4(v, w4[f]);
            }
            m = max_abs4(m, v);
        }
    }
    block_sum_max(ss, m, red1, red2);
    const float inv = normed ? norm_inv(ss, n.d, n.eps) : 1.0f;
    const float amax = normed ? __fmul_rn(m, inv) : m;
    const float s = quant_scale(amax);
    int part = 0;
    const bool first = blockIdx.x == 0;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (slots4_past(j, kp4)) break;
        const int f = tid + j * nt;
        u32 q = 0;
        if (f < d4) {
            float4 v = value(f);
            if (normed) v = scale4(mul4(v, w4[f]), inv);
            q = quant4(v, s, part);
            if (first) ((float4*)n.out)[f] = v;
        }
        if (f < kp4) {
            ((u32*)xs)[f] = q;
            if (first) ((u32*)n.q)[f] = q;
        }
    }
    part = warp_sum_i(part);
    if ((tid & 31) == 0) qpart[tid >> 5] = part;
    if (first && tid == 0) *n.qscale = s;
    return s;
}

// Every block (1024 threads, one per SM) computes the norm itself (norm_to_smem), then runs
// 8 / G GEMV blocks of G groups of 128 threads (gemv_tiles) over tiles blockIdx.x * SUBS + sub,
// + SUBS * gridDim.x, ... with the activations from shared memory.
// Chunks per weight batch (overridable for experiments, BITNET_NVRTC_OPTIONS). Two batches are
// in flight; with the float4 norm, H100 tg64 at U = 2 was ahead of U = 3 by 0.5-0.9% in all four
// same-run rounds, and U = 4 was 6% behind (NOTES.md, twelfth session).
#ifndef GEMV_NORM_U
#define GEMV_NORM_U 2
#endif
template <int G, int MODE, bool WIDE>
__device__ __forceinline__ void gemv_norm_body(const uint4* __restrict__ W, const NormArg& n,
                                               const OutArg& o, int kc, int tiles) {
    constexpr int NT = 1024, SUB = 128 * G, SUBS = NT / SUB;
    __shared__ __align__(16) i8 xs[WIDE ? GEMV_NORM_WIDE_MAX : GEMV_NORM_MAX];
    // The norm weights (the wide kernels read them from global memory).
    __shared__ __align__(16) float wsm[WIDE ? 4 : GEMV_NORM_MAX];
    __shared__ float red1[32], red2[32];
    __shared__ int qpart[NT / 32];
    __shared__ int tred[SUBS][4 * G][1][8];
    __shared__ float s_sa;
    const int tid = threadIdx.x, sub = tid / SUB, lt = tid % SUB;
    const int vb = blockIdx.x * SUBS + sub, nvb = gridDim.x * SUBS;
    STAMP_BEGIN(0);
    PDL_TRIGGER();
    const GemvWalk<GEMV_NORM_U> g(W, kc, tiles, nvb, lt, G);
    uint4 w0[GEMV_NORM_U], w1[GEMV_NORM_U];
    g.prefetch(w0, w1, vb);
    if (!WIDE && norm_mode_normed(MODE)) norm_weights_async(wsm, n.w, n.d >> 2);
    PDL_WAIT();
    STAMP(1);
    const float s = WIDE ? norm_to_smem_wide<MODE>(n, xs, qpart, red1, red2)
                         : norm_to_smem<MODE>(n, xs, wsm, qpart, red1, red2);
    if (tid == 0) s_sa = s;
    __syncthreads();
    STAMP(2);
    if (blockIdx.x == 0 && tid == 0) {
        int sum = 0;
        for (int w = 0; w < NT / 32; ++w) sum += qpart[w];
        *n.qsum = sum;
    }
    gemv_tiles<1, true>(g, xs, &s_sa, qpart, NT / 32, o, n.kp, vb, lt, G, w0, w1, tred[sub],
                        1 + sub);
    STAMP_END();
}

// gemv_norm_m1_g<G>_<MODE>: G groups of 128 threads per tile (2: short matrices, long rows, more
// loads in flight; 1: many tiles), the norm's input mode as NormArg says. gemv_norm_wide_<MODE>:
// rows of GEMV_NORM_MAX to GEMV_NORM_WIDE_MAX values, two groups per tile.
#define GEMV_NORM_KERNEL(G, MODE, NAME)                                                 \
    extern "C" __global__ void __launch_bounds__(1024, 1)                              \
        gemv_norm_m1_g##G##_##NAME(const uint4* __restrict__ W,                        \
                                   const __grid_constant__ NormArg n,                  \
                                   const __grid_constant__ OutArg o, int kc, int tiles) { \
        gemv_norm_body<G, MODE, false>(W, n, o, kc, tiles);                             \
    }
#define GEMV_NORM_WIDE_KERNEL(MODE, NAME)                                               \
    extern "C" __global__ void __launch_bounds__(1024, 1)                              \
        gemv_norm_wide_##NAME(const uint4* __restrict__ W,                             \
                              const __grid_constant__ NormArg n,                       \
                              const __grid_constant__ OutArg o, int kc, int tiles) {   \
        gemv_norm_body<2, MODE, true>(W, n, o, kc, tiles);                              \
    }
GEMV_NORM_KERNEL(1, NORM_PLAIN, plain)
GEMV_NORM_KERNEL(1, NORM_RELU2, relu2)
GEMV_NORM_KERNEL(1, NORM_NONE, none)
GEMV_NORM_KERNEL(1, NORM_SILU, silu)
GEMV_NORM_KERNEL(1, NORM_SILU_NORMED, silu_normed)
GEMV_NORM_KERNEL(2, NORM_PLAIN, plain)
GEMV_NORM_KERNEL(2, NORM_RELU2, relu2)
GEMV_NORM_KERNEL(2, NORM_NONE, none)
GEMV_NORM_KERNEL(2, NORM_SILU, silu)
GEMV_NORM_KERNEL(2, NORM_SILU_NORMED, silu_normed)
GEMV_NORM_WIDE_KERNEL(NORM_PLAIN, plain)
GEMV_NORM_WIDE_KERNEL(NORM_RELU2, relu2)
GEMV_NORM_WIDE_KERNEL(NORM_NONE, none)
GEMV_NORM_WIDE_KERNEL(NORM_SILU, silu)
GEMV_NORM_WIDE_KERNEL(NORM_SILU_NORMED, silu_normed)
