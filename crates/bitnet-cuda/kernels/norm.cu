// RMSNorm with the BitLinear activation quantization fused in.

// Values per thread of rms_norm_q: the host picks blockDim.x >= d / NORM_PER.
#define NORM_PER 8

// out[r] = w * (x[r] / rms(x[r])); if `q` is set, also the per-token int8 quantization of out[r]
// exactly as bitnet_quant::quantize::quantize_row: s = 127 / max(max|v|, 1e-5),
// q = clamp(round_half_even(v * s), -128, 127), zero past `d` up to `kp`; scale s and Σq.
// If `y` is set, x[r] += y[r] first (written back: the residual add fused in); with `act`, the
// norm's input is relu(x[r])^2 * y[r] instead (ReLU² times up fused in; x is not written).
// Grid: one block per row; each thread keeps its NORM_PER values in registers.
extern "C" __global__ void rms_norm_q(float* __restrict__ x, const float* __restrict__ y,
                                      const float* __restrict__ w,
                                      float* __restrict__ out, i8* __restrict__ q,
                                      float* __restrict__ qscale, int* __restrict__ qsum, int d,
                                      int kp, float eps, int act) {
    PDL_ENTER();
    __shared__ float red[32];
    __shared__ int redi[32];
    const int r = blockIdx.x, bd = blockDim.x, tid = threadIdx.x;
    float* xr = x + (size_t)r * d;
    const float* yr = y + (size_t)r * d;
    float* o = out + (size_t)r * d;
    float v[NORM_PER];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_PER; ++j) {
        const int i = tid + j * bd;
        v[j] = i < d ? xr[i] : 0.0f;
        if (act && i < d) {
            const float g = fmaxf(v[j], 0.0f);
            v[j] = __fmul_rn(__fmul_rn(g, g), yr[i]);
        } else if (y != 0 && i < d) {
            v[j] += yr[i];
            xr[i] = v[j];
        }
        ss += v[j] * v[j];
    }
    ss = block_sum(ss, red);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_PER; ++j) {
        const int i = tid + j * bd;
        if (i < d) {
            const float t = __fmul_rn(w[i], __fmul_rn(v[j], inv));
            v[j] = t;
            o[i] = t;
            amax = fmaxf(amax, fabsf(t));
        }
    }
    if (q == 0) return;
    amax = block_max(amax, red);
    const float s = 127.0f / fmaxf(amax, 1e-5f);
    i8* qr = q + (size_t)r * kp;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < NORM_PER; ++j) {
        const int i = tid + j * bd;
        if (i < d) {
            const int qv = (int)fminf(fmaxf(rintf(__fmul_rn(v[j], s)), -128.0f), 127.0f);
            qr[i] = (i8)qv;
            sum += qv;
        }
    }
    for (int i = d + tid; i < kp; i += bd) qr[i] = 0;
    sum = block_sum_i(sum, redi);
    if (tid == 0) {
        qscale[r] = s;
        qsum[r] = sum;
    }
}

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
    const float s = 127.0f / fmaxf(amax, 1e-5f);
    i8* qr = q + (size_t)r * kp;
    int sum = 0;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        int qv = 0;
        if (i < d) {
            float t = rintf(__fmul_rn(xr[i], s));
            qv = (int)fminf(fmaxf(t, -128.0f), 127.0f);
        }
        qr[i] = (i8)qv;
        sum += qv;
    }
    sum = block_sum_i(sum, redi);
    if (threadIdx.x == 0) {
        qscale[r] = s;
        qsum[r] = sum;
    }
}
