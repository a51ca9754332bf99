// The building blocks of sample.cu's token sampling (its header says what it computes and how):
// block-wide reductions, passes over a row's logits and over compacted candidate lists, and the
// K-ary search for a threshold. Compiled just before sample.cu, which uses them.

#define SAMPLE_THREADS 1024
// Bits of 1.0f: no weight is larger (the top logit has weight exp(0) = 1).
#define ONE_BITS 0x3f800000u
#define FLT_BIG 3.402823466e38f
#define POS_INF __int_as_float(0x7f800000)
// Thresholds per search pass: counting passes are cheap; mass passes add an f64 per threshold.
#define KC 8
#define KM 3

typedef unsigned long long u64;

// Order key of a float: unsigned order of the keys = numeric order (total_cmp) of the values.
__device__ __forceinline__ u32 order_key(float x) {
    const u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ double smp_warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Count and f64 mass of a set of candidates.
struct Stat {
    int n;
    double m;
};

// Shared scratch of the reductions and compactions.
struct Red {
    int n[KC][32];
    double m[KC][32];
    u64 k[32];
    int count;
};

// Block-wide sums of K (count, mass) pairs (mass only when MASS). The xor butterfly adds
// commuted pairs only, so every thread gets the bitwise same sums: the searches branch on them
// uniformly.
template <int K, bool MASS>
__device__ __forceinline__ void block_stats(int (&c)[K], double (&m)[K], Red& red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int k = 0; k < K; ++k) {
        c[k] = warp_sum_i(c[k]);
        if (MASS) m[k] = smp_warp_sum_d(m[k]);
    }
    __syncthreads();
    if (lane == 0) {
#pragma unroll
        for (int k = 0; k < K; ++k) {
            red.n[k][warp] = c[k];
            if (MASS) red.m[k][warp] = m[k];
        }
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
        c[k] = warp_sum_i(lane < nw ? red.n[k][lane] : 0);
        if (MASS) m[k] = smp_warp_sum_d(lane < nw ? red.m[k][lane] : 0.0);
    }
}

// Block-wide maximum of a u64 (every thread gets it); `slots` holds one per warp (Red::k, or
// any 32 u64s).
__device__ __forceinline__ u64 block_max_u64(u64 v, u64* slots) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const u64 t = __shfl_xor_sync(FULL_MASK, v, o);
        v = t > v ? t : v;
    }
    __syncthreads();
    if (lane == 0) slots[warp] = v;
    __syncthreads();
    v = lane < nw ? slots[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const u64 t = __shfl_xor_sync(FULL_MASK, v, o);
        v = t > v ? t : v;
    }
    return v;
}

__device__ __forceinline__ bool vec_ok(const float* p, int n) {
    return (n & 3) == 0 && ((size_t)p & 15) == 0;
}

// Calls f(i, x) for every logit of the row, ids ascending along each thread (16-byte loads when
// the row allows them).
template <class F>
__device__ __forceinline__ void each_logit(const float* __restrict__ l, int n, F& f) {
    if (vec_ok(l, n)) {
        const float4* l4 = (const float4*)l;
        const int n4 = n >> 2;
#pragma unroll 4
        for (int j = threadIdx.x; j < n4; j += blockDim.x) {
            const float4 v = l4[j];
            f(4 * j, v.x);
            f(4 * j + 1, v.y);
            f(4 * j + 2, v.z);
            f(4 * j + 3, v.w);
        }
    } else {
        for (int i = threadIdx.x; i < n; i += blockDim.x) f(i, l[i]);
    }
}

// Calls f(id, w) for every entry of a candidate list of `len4` groups of four (padding entries
// have w = -1). The list was written earlier in this kernel: plain (coherent) loads.
template <class F>
__device__ __forceinline__ void each_cand(const float* w, const int* id, int len4, F& f) {
    const float4* w4 = (const float4*)w;
    const int4* i4 = (const int4*)id;
#pragma unroll 2
    for (int j = threadIdx.x; j < len4; j += blockDim.x) {
        const float4 v = w4[j];
        const int4 d = i4[j];
        f(d.x, v.x);
        f(d.y, v.y);
        f(d.z, v.z);
        f(d.w, v.w);
    }
}

// Appends this lane's entries with w[t] >= 0 to the list (lw, li) at slots taken from
// red.count. Every lane of the warp calls it together (warp-uniform loops).
__device__ __forceinline__ void warp_append(const float (&w)[4], const int (&id)[4], float* lw,
                                            int* li, Red& red) {
    const int lane = threadIdx.x & 31;
    int c = 0;
#pragma unroll
    for (int t = 0; t < 4; ++t) c += w[t] >= 0.0f ? 1 : 0;
    int incl = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += y;
    }
    const int total = __shfl_sync(FULL_MASK, incl, 31);
    int base = 0;
    if (lane == 0 && total > 0) base = atomicAdd(&red.count, total);
    int pos = __shfl_sync(FULL_MASK, base, 0) + incl - c;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
        if (w[t] >= 0.0f) {
            lw[pos] = w[t];
            li[pos] = id[t];
            ++pos;
        }
    }
}

// Ends a compaction: pads the list to a multiple of 4 with weight -1; returns its length.
__device__ __forceinline__ int finish_list(float* lw, int* li, Red& red) {
    __syncthreads();
    const int cnt = red.count;
    for (int i = cnt + threadIdx.x; i < ((cnt + 3) & ~3); i += blockDim.x) {
        lw[i] = -1.0f;
        li[i] = 0;
    }
    __syncthreads();
    return cnt;
}

// Largest t in [lo, hi] with ok(S(t)), where S(t), the stats of the candidates whose position is
// >= t, does not grow with t and ok(S(lo)) holds; `above` is S(hi + 1). `pass(th, c, m)` fills
// the stats at K thresholds in one pass. Sets *at = S(t), *next = S(t + 1).
template <int K, class Pass, class Ok>
__device__ __forceinline__ u32 ksearch(u32 lo, u32 hi, Stat at, Stat above, Pass& pass, Ok& ok, Stat* s_at,
                       Stat* s_next) {
    while (lo < hi) {
        const u64 range = (u64)(hi - lo);
        u32 th[K];
#pragma unroll
        for (int j = 0; j < K; ++j) {
            const u64 step = range <= (u64)K ? ((u64)(j + 1) < range ? (u64)(j + 1) : range)
                                             : range * (u64)(j + 1) / (u64)(K + 1);
            th[j] = lo + (u32)step;  // in (lo, hi], non-decreasing
        }
        int c[K];
        double m[K];
        pass(th, c, m);
        // ok holds on a prefix of the thresholds: move lo to its end, hi below the next.
        int last = -1;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            Stat s;
            s.n = c[j];
            s.m = m[j];
            if (last == j - 1 && ok(s)) last = j;
        }
        // (Selected with constant indices: a dynamic index would put the arrays in local memory.)
        u32 nlo = lo, nhi = hi;
#pragma unroll
        for (int j = 0; j < K; ++j) {
            if (j == last) {
                nlo = th[j];
                at.n = c[j];
                at.m = m[j];
            }
            if (j == last + 1) {
                nhi = th[j] - 1u;
                above.n = c[j];
                above.m = m[j];
            }
        }
        lo = nlo;
        hi = nhi;
    }
    *s_at = at;
    *s_next = above;
    return lo;
}
