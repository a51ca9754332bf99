// RMSNorm with the BitLinear activation quantization fused in.

// Values per thread of rms_norm_q: the host picks blockDim.x >= d / NORM_PER (rows of up to 8192
// values); rms_norm_q_wide takes NORM_PER_WIDE (up to 16384).
#define NORM_PER 8
#define NORM_PER_WIDE 16

// One value of a norm's input: x, or relu(x)^2 * y (act).
__device__ __forceinline__ float norm_combine(float x, float y, int act) {
    if (act) {
        const float g = fmaxf(x, 0.0f);
        return __fmul_rn(__fmul_rn(g, g), y);
    }
    return x;
}

// The values a norm reads, in this thread's slots i = threadIdx.x + j * blockDim.x (zero from d
// on): x, or relu(x)^2 * y (act, y set). Every load is issued before any value is combined
// (combined slot by slot, each slot waited for its round trip to L2 before the next slot's
// loads went out).
template <int PER>
__device__ __forceinline__ void norm_inputs(float (&v)[PER], const float* x, const float* y,
                                            int act, int d) {
    const int tid = threadIdx.x, nt = blockDim.x;
    float b[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        const int i = tid + j * nt;
        v[j] = b[j] = 0.0f;
        if (i < d) v[j] = x[i];
        if (i < d && y != 0) b[j] = y[i];
    }
    // The same arithmetic as norm_combine, spelled out: with norm_combine here rms_norm_q
    // compiled to 8 more instructions and batched decode was ~3% slower (H100).
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        if (act) {
            const float g = fmaxf(v[j], 0.0f);
            v[j] = __fmul_rn(__fmul_rn(g, g), b[j]);
        }
    }
}

// The norm's and BitLinear quantization's arithmetic, exactly as the CPU's (rms_norm and
// bitnet_quant::quantize::quantize_row); every kernel that norms or quantizes uses these (the
// fused norm + GEMV scales a value as (x·w)·inv instead of norm_scale's w·(x·inv): see
// gemv_norm.cu).
__device__ __forceinline__ float norm_inv(float ss, int d, float eps) {
    return 1.0f / sqrtf(ss / (float)d + eps);
}
__device__ __forceinline__ float norm_scale(float w, float v, float inv) {
    return __fmul_rn(w, __fmul_rn(v, inv));
}
// s = 127 / max(max|v|, 1e-5).
__device__ __forceinline__ float quant_scale(float amax) { return 127.0f / fmaxf(amax, 1e-5f); }
// q = clamp(round_half_even(v * s), -128, 127), as one saturating conversion (F2I.S8); NaN gives
// 0, as the CPU's `as i8` does. Against rintf and two clamps (three instructions more per value,
// in a phase all 32 warps of a fused projection run): H100 tg64 +2.2%.
__device__ __forceinline__ int quant_value(float v, float s) {
    int q;
    asm("cvt.rni.sat.s8.f32 %0, %1;" : "=r"(q) : "f"(__fmul_rn(v, s)));
    return q;
}

// Rows read four values at a time (the fused norm + GEMV and the one-kernel decode, rows of a
// multiple of 4 values): slot j of thread t holds values 4f .. 4f + 3, f = t + j * blockDim.x.
// Each thread sums its squares in this order (slots, then the four values), so that both
// kernels get the same Σx² bit for bit.
__device__ __forceinline__ float sum_sq4(float ss, float4 v) {
    ss = __fmaf_rn(v.x, v.x, ss);
    ss = __fmaf_rn(v.y, v.y, ss);
    ss = __fmaf_rn(v.z, v.z, ss);
    return __fmaf_rn(v.w, v.w, ss);
}
__device__ __forceinline__ float4 norm_combine4(float4 x, float4 y, int act) {
    return make_float4(norm_combine(x.x, y.x, act), norm_combine(x.y, y.y, act),
                       norm_combine(x.z, y.z, act), norm_combine(x.w, y.w, act));
}
__device__ __forceinline__ float4 norm_scale4(float4 w, float4 v, float inv) {
    return make_float4(norm_scale(w.x, v.x, inv), norm_scale(w.y, v.y, inv),
                       norm_scale(w.z, v.z, inv), norm_scale(w.w, v.w, inv));
}
__device__ __forceinline__ float max_abs4(float m, float4 v) {
    return fmaxf(fmaxf(fmaxf(m, fabsf(v.x)), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
}
// The four values' quantization (quant_value), packed little-endian into one word; `sum` gets
// their sum added.
__device__ __forceinline__ u32 quant4(float4 v, float s, int& sum) {
    const int a = quant_value(v.x, s), b = quant_value(v.y, s), c = quant_value(v.z, s),
              d = quant_value(v.w, s);
    sum += a + b + c + d;
    return (u32)(a & 0xff) | ((u32)(b & 0xff) << 8) | ((u32)(c & 0xff) << 16) | ((u32)d << 24);
}

// RMSNorm of one row spread over the block, PER values per thread (i = tid + j * blockDim.x,
// zero past d) with Σv² of this thread's values in `ss`: v becomes w * (v / rms).
template <int PER>
__device__ __forceinline__ void norm_apply(float (&v)[PER], float ss, const float* __restrict__ w,
                                           int d, float eps, float* red) {
    ss = block_sum(ss, red);
    const float inv = norm_inv(ss, d, eps);
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d) v[j] = norm_scale(w[i], v[j], inv);
    }
}

// BitLinear quantization (quant_scale, quant_value) of a row held as in norm_apply. Returns s;
// `sum` gets Σq (block-wide).
template <int PER>
__device__ __forceinline__ float quant_apply(const float (&v)[PER], int (&q)[PER], int d,
                                             float* red, int* redi, int& sum) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < PER; ++j)
        if (threadIdx.x + j * blockDim.x < d) amax = fmaxf(amax, fabsf(v[j]));
    amax = block_max(amax, red);
    const float s = quant_scale(amax);
    int part = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        q[j] = 0;
        if (threadIdx.x + j * blockDim.x < d) {
            q[j] = quant_value(v[j], s);
            part += q[j];
        }
    }
    sum = block_sum_i(part, redi);
    return s;
}

// out[r] = w * (x[r] / rms(x[r])) (input as norm_inputs); if `q` is set, also the row's int8
// quantization (quant_apply), zero past `d` up to `kp`, with its scale and Σq. Grid: one block
// per row, PER values per thread (rms_norm_q: NORM_PER, rms_norm_q_wide: NORM_PER_WIDE). Bounded
// to 1024 threads: the host launches up to 1024 (d = 8192 at NORM_PER) and without the bound the
// compiler takes more than 64 registers a thread, which a 1024-thread block cannot get.
template <int PER>
__device__ __forceinline__ void rms_norm_q_body(const float* __restrict__ x,
                                                const float* __restrict__ y,
                                                const float* __restrict__ w,
                                                float* __restrict__ out, i8* __restrict__ q,
                                                float* __restrict__ qscale,
                                                int* __restrict__ qsum, int d, int kp, float eps,
                                                int act) {
    STAMP_BEGIN(5);
    PDL_ENTER();
    STAMP(1);
    __shared__ float red[32];
    __shared__ int redi[32];
    const int r = blockIdx.x, bd = blockDim.x, tid = threadIdx.x;
    // x and y through the read-only path must not be loaded above the PDL wait (after_wait).
    const float* xr = after_wait(x) + (size_t)r * d;
    const float* yr = y != 0 ? after_wait(y) + (size_t)r * d : y;
    float* o = out + (size_t)r * d;
    float v[PER];
    float ss = 0.0f;
    norm_inputs<PER>(v, xr, yr, act, d);
#pragma unroll
    for (int j = 0; j < PER; ++j) ss += v[j] * v[j];
    norm_apply<PER>(v, ss, w, d, eps, red);
#pragma unroll
    for (int j = 0; j < PER; ++j)
        if (tid + j * bd < d) o[tid + j * bd] = v[j];
    STAMP(2);
    if (q == 0) return;
    int qv[PER], sum;
    const float s = quant_apply<PER>(v, qv, d, red, redi, sum);
    i8* qr = q + (size_t)r * kp;
#pragma unroll
    for (int j = 0; j < PER; ++j)
        if (tid + j * bd < d) qr[tid + j * bd] = (i8)qv[j];
    for (int i = d + tid; i < kp; i += bd) qr[i] = 0;
    if (tid == 0) {
        qscale[r] = s;
        qsum[r] = sum;
    }
    STAMP(3);
}

#define RMS_NORM_Q_KERNEL(NAME, PER)                                                            \
    extern "C" __global__ void __launch_bounds__(1024)                                         \
        NAME(const float* __restrict__ x, const float* __restrict__ y,                         \
             const float* __restrict__ w, float* __restrict__ out, i8* __restrict__ q,          \
             float* __restrict__ qscale, int* __restrict__ qsum, int d, int kp, float eps,      \
             int act) {                                                                        \
        rms_norm_q_body<PER>(x, y, w, out, q, qscale, qsum, d, kp, eps, act);                  \
    }
RMS_NORM_Q_KERNEL(rms_norm_q, NORM_PER)
RMS_NORM_Q_KERNEL(rms_norm_q_wide, NORM_PER_WIDE)

// BitLinear quantization of rows that did not come out of rms_norm_q (same maths).
extern "C" __global__ void quantize_act(const float* __restrict__ x, i8* __restrict__ q,
                                        float* __restrict__ qscale, int* __restrict__ qsum,
                                        int d, int kp) {
    PDL_ENTER();
    __shared__ float red[32];
    __shared__ int redi[32];
    const int r = blockIdx.x;
    const float* xr = x + (size_t)r * d;
    float amax = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
    amax = block_max(amax, red);
    const float s = quant_scale(amax);
    i8* qr = q + (size_t)r * kp;
    int sum = 0;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        int qv = 0;
        if (i < d) qv = quant_value(xr[i], s);
        qr[i] = (i8)qv;
        sum += qv;
    }
    sum = block_sum_i(sum, redi);
    if (threadIdx.x == 0) {
        qscale[r] = s;
        qsum[r] = sum;
    }
}
