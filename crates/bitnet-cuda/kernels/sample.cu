// Token sampling: one block per row of logits, one token id out per row.
//
// Semantics are those of the host sampler (bitnet_inference::sampling, `Sampler::pick`):
// NaN counts as -inf; the first +inf logit wins; greedy = argmax, lowest index among ties; a row
// with nothing finite gives -1 (the host turns it into its error). Otherwise, with m the largest
// logit, weights w = exp((l - m) * inv_t) (f32 subtract and multiply, exp rounded to f32);
// candidates = finite logits, cut to the top-k by (logit desc, id asc); when top-k or top-p is
// on they are walked in (weight desc, id asc) order, else in id order; top-p keeps the shortest
// prefix of that order whose mass reaches top_p * total; min-p keeps w >= min_p; the draw walks
// the candidates with r = u * (their mass) and takes the first whose running mass exceeds r.
//
// No sort: every threshold is found by bisection over the bits of a value (order keys of the
// logits, or the weights, whose bits order like the values since they are >= 0), each step one
// pass over the row with a block reduction (count and f64 mass). Ties inside one value are
// resolved by a second bisection over the ids. The weights go to a scratch row (`wbuf`), -1
// marking tokens that are no longer candidates.

#define SAMPLE_THREADS 1024
// Bits of 1.0f: no weight is larger (the top logit has weight exp(0) = 1).
#define ONE_BITS 0x3f800000u
#define FLT_BIG 3.402823466e38f
#define POS_INF __int_as_float(0x7f800000)

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

// Count and f64 mass of a set of tokens.
struct Stat {
    int n;
    double m;
};

// Block-wide sum of (count, mass). The xor butterfly adds commuted pairs only, so every thread
// gets the bitwise same result: the bisections below branch on it uniformly.
__device__ __forceinline__ Stat block_stat(int n, double m, int* rn, double* rm) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    n = warp_sum_i(n);
    m = smp_warp_sum_d(m);
    __syncthreads();
    if (lane == 0) {
        rn[warp] = n;
        rm[warp] = m;
    }
    __syncthreads();
    n = lane < nw ? rn[lane] : 0;
    m = lane < nw ? rm[lane] : 0.0;
    Stat s;
    s.n = warp_sum_i(n);
    s.m = smp_warp_sum_d(m);
    return s;
}

// Block-wide maximum of a u64 (every thread gets it).
__device__ __forceinline__ unsigned long long block_max_u64(unsigned long long v,
                                                            unsigned long long* r) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long t = __shfl_xor_sync(FULL_MASK, v, o);
        v = t > v ? t : v;
    }
    __syncthreads();
    if (lane == 0) r[warp] = v;
    __syncthreads();
    v = lane < nw ? r[lane] : 0ull;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long t = __shfl_xor_sync(FULL_MASK, v, o);
        v = t > v ? t : v;
    }
    return v;
}

// Shared scratch of the reductions.
struct Red {
    int n[32];
    double m[32];
    unsigned long long k[32];
};

// Finite logits whose order key is in [klo, khi] and whose id is <= xmax: their count.
__device__ int key_count(const float* l, int n, u32 klo, u32 khi, int xmax, Red& red) {
    const int end = xmax < n ? xmax + 1 : n;
    int c = 0;
    for (int i = threadIdx.x; i < end; i += blockDim.x) {
        const float x = l[i];
        const u32 k = order_key(x);
        c += (fabsf(x) <= FLT_BIG && k >= klo && k <= khi) ? 1 : 0;
    }
    return block_stat(c, 0.0, red.n, red.m).n;
}

// Candidates (w >= fl, fl >= 0) whose weight bits are in [blo, bhi] and whose id is
// <= xmax: count and mass.
__device__ Stat weight_stat(const float* w, int n, float fl, u32 blo, u32 bhi, int xmax,
                            Red& red) {
    const int end = xmax < n ? xmax + 1 : n;
    int c = 0;
    double m = 0.0;
#pragma unroll 4
    for (int i = threadIdx.x; i < end; i += blockDim.x) {
        const float v = w[i];
        const u32 b = __float_as_uint(v);
        if (v >= fl && b >= blo && b <= bhi) {
            ++c;
            m += (double)v;
        }
    }
    return block_stat(c, m, red.n, red.m);
}

// The id of the `j`-th (0-based) candidate by ascending id among those with weight bits `wb`
// (at least j + 1 exist).
__device__ int nth_of_weight(const float* w, int n, float fl, u32 wb, int j, Red& red) {
    int lo = -1, hi = n - 1;  // count(id <= lo) <= j < count(id <= hi)
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (weight_stat(w, n, fl, wb, wb, mid, red).n > j) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    return hi;
}

// The lowest id among the candidates with weight bits `wb` (one pass).
__device__ int first_of_weight(const float* w, int n, float fl, u32 wb, Red& red) {
    unsigned long long best = 0ull;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = w[i];
        if (v >= fl && __float_as_uint(v) == wb) {
            const unsigned long long k = (unsigned)(~i);
            best = k > best ? k : best;
        }
    }
    return (int)~(u32)block_max_u64(best, red.k);
}

// Walking the candidates (w >= fl) in (weight desc, id asc) order: the id of the first one
// whose running mass exceeds `r` (`strict`) or reaches it; -1 when none does.
__device__ int find_desc(const float* w, int n, float fl, double r, bool strict, Red& red) {
    const Stat all = weight_stat(w, n, fl, 0u, 0xffffffffu, n - 1, red);
    if (!(strict ? all.m > r : all.m >= r)) return -1;
    // Largest weight bits `lo` whose mass of weights >= lo passes; `hi` = lo + 1 fails.
    u32 lo = 0u, hi = ONE_BITS + 1u;
    Stat slo = all, shi;
    shi.n = 0;
    shi.m = 0.0;
    while (hi - lo > 1u) {
        const u32 mid = lo + (hi - lo) / 2u;
        const Stat s = weight_stat(w, n, fl, mid, 0xffffffffu, n - 1, red);
        if (strict ? s.m > r : s.m >= r) {
            lo = mid;
            slo = s;
        } else {
            hi = mid;
            shi = s;
        }
    }
    // Equal weights go by ascending id: the j-th of the group of weight `lo` is the answer.
    const int group = slo.n - shi.n;
    int j = 0;
    const double wv = (double)__uint_as_float(lo);
    if (group > 1 && wv > 0.0) {
        const double q = (r - shi.m) / wv;
        const double jj = strict ? floor(q) : ceil(q) - 1.0;
        j = jj < 0.0 ? 0 : (jj > (double)(group - 1) ? group - 1 : (int)jj);
    }
    return j == 0 ? first_of_weight(w, n, fl, lo, red) : nth_of_weight(w, n, fl, lo, j, red);
}

// Walking the candidates in id order: the first id whose running mass exceeds `r`; -1 if none.
__device__ int find_by_id(const float* w, int n, float fl, double r, Red& red) {
    int lo = -1, hi = n - 1;  // mass(id <= lo) <= r < mass(id <= hi)
    if (!(weight_stat(w, n, fl, 0u, 0xffffffffu, hi, red).m > r)) return -1;
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (weight_stat(w, n, fl, 0u, 0xffffffffu, mid, red).m > r) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    return hi;
}

// The last candidate of the walk (where rounding leaves the draw): the highest id in id order,
// else the smallest weight, highest id among equals.
__device__ int last_candidate(const float* w, int n, float fl, bool desc, Red& red) {
    unsigned long long best = 0ull;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = w[i];
        if (v >= fl) {
            const u32 rank = desc ? ~__float_as_uint(v) : 0u;
            const unsigned long long k = ((unsigned long long)rank << 32) | (unsigned)i;
            best = k > best ? k : best;
        }
    }
    return (int)(block_max_u64(best, red.k) & 0xffffffffull);
}

// Phase 1: the largest finite logit (lowest index among ties), the first +inf, the finite count.
struct Scan {
    float max;
    int arg;
    int pinf;
    int finite;
};

__device__ Scan scan_row(const float* l, int n, Red& red) {
    float best = NEG_INF;
    int arg = n, pinf = n, fin = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = l[i];
        if (x == POS_INF) {
            pinf = min(pinf, i);
        } else if (fabsf(x) <= FLT_BIG) {
            ++fin;
            if (x > best) {  // ids grow along a thread: the first of equals stays
                best = x;
                arg = i;
            }
        }
    }
    // Largest value, then lowest id: a u64 max over (value key, ~id). -0 and +0 are equal on
    // the host (the lower id wins), so -0 takes the key of +0.
    const unsigned long long k =
        arg < n ? ((unsigned long long)order_key(best == 0.0f ? 0.0f : best) << 32) |
                      (unsigned)(~arg)
                : 0ull;
    const unsigned long long kb = block_max_u64(k, red.k);
    Scan s;
    s.finite = block_stat(fin, 0.0, red.n, red.m).n;
    s.pinf = n - (int)block_max_u64((unsigned long long)(n - pinf), red.k);
    s.arg = kb == 0ull ? -1 : (int)~(u32)(kb & 0xffffffffull);
    s.max = s.arg < 0 ? NEG_INF : l[s.arg];
    return s;
}

// Top-k by (logit desc, id asc) among the finite logits: the k-th key and, among the logits of
// that key, the largest id kept. Requires 0 < k < finite.
__device__ void top_k_cut(const float* l, int n, int k, int finite, u32 kmax, u32* kt, int* kx,
                          Red& red) {
    // Largest key `lo` with count(key >= lo) >= k; count(key >= hi) < k. kmax >= every key.
    u32 lo = 0u, hi = kmax + 1u;
    int clo = finite, chi = 0;
    while (hi - lo > 1u) {
        const u32 mid = lo + (hi - lo) / 2u;
        const int c = key_count(l, n, mid, 0xffffffffu, n - 1, red);
        if (c >= k) {
            lo = mid;
            clo = c;
        } else {
            hi = mid;
            chi = c;
        }
    }
    const int need = k - chi;  // from the logits equal to key lo, lowest ids first
    int x = n - 1;
    if (need < clo - chi) {
        int a = -1, b = n - 1;  // count(id <= a) < need <= count(id <= b)
        while (b - a > 1) {
            const int mid = a + (b - a) / 2;
            if (key_count(l, n, lo, lo, mid, red) >= need) {
                b = mid;
            } else {
                a = mid;
            }
        }
        x = b;
    }
    *kt = lo;
    *kx = x;
}

// logits: rows x n. wbuf: rows x n scratch (unused when greedy). uniforms: one per row (unused
// when greedy). out: one id per row, -1 when the row has no finite and no +inf logit.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* __restrict__ logits, float* __restrict__ wbuf,
                const double* __restrict__ uniforms, int* __restrict__ out, int n, int greedy,
                float inv_t, int top_k, float top_p, float min_p) {
    __shared__ Red red;
    const int row = blockIdx.x;
    const float* l = logits + (size_t)row * n;
    const Scan s = scan_row(l, n, red);
    if (s.pinf < n || s.arg < 0 || greedy) {
        if (threadIdx.x == 0) out[row] = s.pinf < n ? s.pinf : s.arg;
        return;
    }
    // Top-k membership: finite, and key > kt or (key == kt and id <= kx).
    u32 kt = 0u;
    int kx = n - 1;
    if (top_k > 0 && top_k < n && top_k < s.finite) {
        top_k_cut(l, n, top_k, s.finite, order_key(s.max == 0.0f ? 0.0f : s.max), &kt, &kx, red);
    }
    float* w = wbuf + (size_t)row * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float x = l[i];
        const u32 k = order_key(x);
        const bool member = fabsf(x) <= FLT_BIG && (k > kt || (k == kt && i <= kx));
        w[i] = member ? (float)exp((double)__fmul_rn(__fsub_rn(x, s.max), inv_t)) : -1.0f;
    }
    __syncthreads();
    const bool desc = top_k > 0 || top_p < 1.0f;
    if (top_p < 1.0f) {
        const double total = weight_stat(w, n, 0.0f, 0u, 0xffffffffu, n - 1, red).m;
        const int e = find_desc(w, n, 0.0f, (double)top_p * total, false, red);
        if (e >= 0) {
            // Drop everything after e in (weight desc, id asc) order.
            const u32 eb = __float_as_uint(w[e]);
            __syncthreads();
            for (int i = threadIdx.x; i < n; i += blockDim.x) {
                const float v = w[i];
                const u32 b = __float_as_uint(v);
                if (v >= 0.0f && (b < eb || (b == eb && i > e))) w[i] = -1.0f;
            }
            __syncthreads();
        }
    }
    const float floor_w = min_p > 0.0f ? min_p : 0.0f;
    const double mass = weight_stat(w, n, floor_w, 0u, 0xffffffffu, n - 1, red).m;
    const double r = uniforms[row] * mass;
    int pick = desc ? find_desc(w, n, floor_w, r, true, red) : find_by_id(w, n, floor_w, r, red);
    if (pick < 0) pick = last_candidate(w, n, floor_w, desc, red);
    if (threadIdx.x == 0) out[row] = pick;
}
