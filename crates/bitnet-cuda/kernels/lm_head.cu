// The vocabulary projection: one warp per vocabulary row, for up to 8 tokens per launch
// (tokens tok0 .. tok0 + M).

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
    const uint4* wr = W + (size_t)row * dq;
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
            wv[u] = c < dq ? ld_stream(wr + c) : make_uint4(0, 0, 0, 0);
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
        lm_i8_body<M>(W, wscale, x, out, vocab, dq, d, tok0);                                  \
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
