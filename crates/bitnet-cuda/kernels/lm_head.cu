// The vocabulary projection: one warp per vocabulary row, for up to 8 tokens per launch
// (tokens tok0 .. tok0 + M). Rows are `dq` 16-byte chunks (padded with zeros).

// int8 rows with one f32 scale per row, times symmetric int8 activations with one step per
// token: out = (Σ w·x) as f32 * (wscale[row] * xstep[tok]), as the CPU's I8Matrix.
template <int M>
__device__ __forceinline__ void lm_i8_body(const uint4* __restrict__ W,
                                           const float* __restrict__ wscale,
                                           const i8* __restrict__ xq,
                                           const float* __restrict__ xstep, float* __restrict__ out,
                                           int vocab, int dq, int tok0) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= vocab) return;
    const uint4* wr = W + (size_t)row * dq;
    const int4* xa = (const int4*)xq + (size_t)tok0 * dq;
    int acc[M];
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] = 0;
    constexpr int U = 4;
    for (int c0 = lane; c0 < dq; c0 += 32 * U) {
        uint4 wv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            wv[u] = c < dq ? ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int c = c0 + 32 * u;
            if (c < dq) {
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const int4 a = __ldg(xa + (size_t)m * dq + c);
                    acc[m] = __dp4a((int)wv[u].x, a.x, acc[m]);
                    acc[m] = __dp4a((int)wv[u].y, a.y, acc[m]);
                    acc[m] = __dp4a((int)wv[u].z, a.z, acc[m]);
                    acc[m] = __dp4a((int)wv[u].w, a.w, acc[m]);
                }
            }
        }
    }
#pragma unroll
    for (int m = 0; m < M; ++m) {
        const int s = warp_sum_i(acc[m]);
        if (lane == 0)
            out[(size_t)(tok0 + m) * vocab + row] = (float)s * (wscale[row] * xstep[tok0 + m]);
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
                   const i8* __restrict__ xq, const float* __restrict__ xstep,                 \
                   float* __restrict__ out, int vocab, int dq, int tok0) {                     \
        lm_i8_body<M>(W, wscale, xq, xstep, out, vocab, dq, tok0);                             \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                          \
        lm_f32_m##M(const float4* __restrict__ W, const float* __restrict__ x,                 \
                    float* __restrict__ out, int vocab, int dq, int tok0) {                    \
        lm_f32_body<M>(W, x, out, vocab, dq, tok0);                                            \
    }
LM_KERNELS(1)
LM_KERNELS(2)
LM_KERNELS(4)
LM_KERNELS(8)
