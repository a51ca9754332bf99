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
// No sort: every threshold is found by a K-ary search over the bits of a value (order keys of
// the logits, weight bits, or ids: weights are >= 0, so their bits order like the values). Each
// search step is one pass over the candidates that counts them (and sums their weights, in f64)
// at K thresholds, then one block reduction. After the top-k cut the candidates are compacted
// into a list of (weight, id) in the scratch (`wbuf`/`ibuf`, two lists of `stride` per row), so
// later passes read only them; top-p first drops, as the host does, the weights too small to be
// in the nucleus.

// The building blocks (reductions, passes over logits and candidate lists, the K-ary search)
// are in sample_search.cu, compiled just before this file.

// The candidates of a list: w >= fl, and not past the top-p cut (bits > cut_b, or == cut_b with
// id <= cut_id; cut_b = 0 and cut_id = INT_MAX keep everything).
struct Sel {
    const float* w;
    const int* id;
    int len4;
    float fl;
    u32 cut_b;
    int cut_id;
    __device__ __forceinline__ bool keep(int i, float v) const {
        const u32 b = __float_as_uint(v);
        return v >= fl && (b > cut_b || (b == cut_b && i <= cut_id));
    }
};

// Count and mass of the selected candidates.
__device__ Stat sel_total(const Sel& s, Red& red) {
    int c[1] = {0};
    double m[1] = {0.0};
    auto f = [&](int i, float v) {
        if (s.keep(i, v)) {
            ++c[0];
            m[0] += (double)v;
        }
    };
    each_cand(s.w, s.id, s.len4, f);
    block_stats<1, true>(c, m, red);
    Stat r;
    r.n = c[0];
    r.m = m[0];
    return r;
}

// Walking the selected candidates in (weight desc, id asc) order: the first one whose running
// mass exceeds `r` (`strict`) or reaches it. Returns its id and weight bits, or -1.
__device__ int find_desc(const Sel& s, int n, double r, bool strict, u32* wbits, Red& red) {
    auto ok = [&](Stat t) { return strict ? t.m > r : t.m >= r; };
    const Stat all = sel_total(s, red);
    if (!ok(all)) return -1;
    auto pass = [&](const u32 (&th)[KM], int (&c)[KM], double (&m)[KM]) {
#pragma unroll
        for (int j = 0; j < KM; ++j) {
            c[j] = 0;
            m[j] = 0.0;
        }
        auto f = [&](int i, float v) {
            if (s.keep(i, v)) {
                const u32 b = __float_as_uint(v);
#pragma unroll
                for (int j = 0; j < KM; ++j) {
                    if (b >= th[j]) {
                        ++c[j];
                        m[j] += (double)v;
                    }
                }
            }
        };
        each_cand(s.w, s.id, s.len4, f);
        block_stats<KM, true>(c, m, red);
    };
    Stat none, at, next;
    none.n = 0;
    none.m = 0.0;
    const u32 wb = ksearch<KM>(0u, ONE_BITS, all, none, pass, ok, &at, &next);
    *wbits = wb;
    // Equal weights go by ascending id: the answer is the j-th of the group of weight wb.
    const int group = at.n - next.n;
    int j = 0;
    const double wv = (double)__uint_as_float(wb);
    if (group > 1 && wv > 0.0) {
        const double q = (r - next.m) / wv;
        const double jj = strict ? floor(q) : ceil(q) - 1.0;
        j = jj < 0.0 ? 0 : (jj > (double)(group - 1) ? group - 1 : (int)jj);
    }
    if (j == 0) {
        u64 best = 0ull;
        auto f = [&](int i, float v) {
            if (s.keep(i, v) && __float_as_uint(v) == wb) {
                const u64 k = (unsigned)(~i);
                best = k > best ? k : best;
            }
        };
        each_cand(s.w, s.id, s.len4, f);
        return (int)~(u32)block_max_u64(best, red.k);
    }
    // The (j + 1)-th smallest id of the group: positions n - 1 - id, largest P with more than j
    // group members at positions >= P.
    auto pass2 = [&](const u32 (&th)[KC], int (&c)[KC], double (&m)[KC]) {
#pragma unroll
        for (int k = 0; k < KC; ++k) {
            c[k] = 0;
            m[k] = 0.0;
        }
        auto f = [&](int i, float v) {
            if (s.keep(i, v) && __float_as_uint(v) == wb) {
                const u32 p = (u32)(n - 1 - i);
#pragma unroll
                for (int k = 0; k < KC; ++k) c[k] += p >= th[k] ? 1 : 0;
            }
        };
        each_cand(s.w, s.id, s.len4, f);
        block_stats<KC, false>(c, m, red);
    };
    auto ok2 = [&](Stat t) { return t.n > j; };
    Stat g;
    g.n = group;
    g.m = 0.0;
    const u32 p = ksearch<KC>(0u, (u32)(n - 1), g, none, pass2, ok2, &at, &next);
    return n - 1 - (int)p;
}

// Walking the selected candidates in id order: the first id whose running mass exceeds `r`;
// -1 if none does. Positions n - 1 - id: largest P whose mass at positions >= P exceeds r.
__device__ int find_by_id(const Sel& s, int n, double r, Red& red) {
    auto ok = [&](Stat t) { return t.m > r; };
    const Stat all = sel_total(s, red);
    if (!ok(all)) return -1;
    auto pass = [&](const u32 (&th)[KM], int (&c)[KM], double (&m)[KM]) {
#pragma unroll
        for (int j = 0; j < KM; ++j) {
            c[j] = 0;
            m[j] = 0.0;
        }
        auto f = [&](int i, float v) {
            if (s.keep(i, v)) {
                const u32 p = (u32)(n - 1 - i);
#pragma unroll
                for (int j = 0; j < KM; ++j) {
                    if (p >= th[j]) {
                        ++c[j];
                        m[j] += (double)v;
                    }
                }
            }
        };
        each_cand(s.w, s.id, s.len4, f);
        block_stats<KM, true>(c, m, red);
    };
    Stat none, at, next;
    none.n = 0;
    none.m = 0.0;
    const u32 p = ksearch<KM>(0u, (u32)(n - 1), all, none, pass, ok, &at, &next);
    return n - 1 - (int)p;
}

// The last candidate of the walk (where rounding leaves the draw): the highest id in id order,
// else the smallest weight, highest id among equals.
__device__ int last_candidate(const Sel& s, bool desc, Red& red) {
    u64 best = 0ull;
    auto f = [&](int i, float v) {
        if (s.keep(i, v)) {
            const u32 rank = desc ? ~__float_as_uint(v) : 0u;
            const u64 k = ((u64)rank << 32) | (unsigned)i;
            best = k > best ? k : best;
        }
    };
    each_cand(s.w, s.id, s.len4, f);
    return (int)(block_max_u64(best, red.k) & 0xffffffffull);
}

// The greedy order as one u64: larger value first, then the lower id (-0 and +0 are equal on
// the host, where the lower id wins, so -0 takes the key of +0). 0 for no logit at all.
__device__ __forceinline__ u64 argmax_key(float x, int id) {
    return ((u64)order_key(x == 0.0f ? 0.0f : x) << 32) | (unsigned)(~id);
}

// The id an argmax_key (or a max over them) names; -1 for the zero key (no candidate).
__device__ __forceinline__ int argmax_id(u64 k) {
    return k == 0ull ? -1 : (int)~(u32)(k & 0xffffffffull);
}

// The largest finite logit (lowest index among ties), the first +inf, the finite count.
struct Scan {
    float max;
    int arg;
    int pinf;
    int finite;
};

__device__ Scan scan_row(const float* l, int n, Red& red) {
    float best = NEG_INF;
    int arg = n, pinf = n;
    int fin[1] = {0};
    auto f = [&](int i, float x) {
        if (x == POS_INF) {
            pinf = min(pinf, i);
        } else if (fabsf(x) <= FLT_BIG) {
            ++fin[0];
            if (x > best) {  // ids grow along a thread: the first of equals stays
                best = x;
                arg = i;
            }
        }
    };
    each_logit(l, n, f);
    // Largest value, then lowest id: a u64 max over argmax_key.
    const u64 k = arg < n ? argmax_key(best, arg) : 0ull;
    const u64 kb = block_max_u64(k, red.k);
    double unused[1] = {0.0};
    block_stats<1, false>(fin, unused, red);
    Scan s;
    s.finite = fin[0];
    s.pinf = n - (int)block_max_u64((u64)(n - pinf), red.k);
    s.arg = argmax_id(kb);
    s.max = s.arg < 0 ? NEG_INF : l[s.arg];
    return s;
}

// Top-k by (logit desc, id asc) among the finite logits: the k-th key, and among the logits of
// that key the largest id kept. Requires 0 < k < finite; every key is <= kmax.
__device__ void top_k_cut(const float* l, int n, int k, int finite, u32 kmax, u32* kt, int* kx,
                          Red& red) {
    auto pass = [&](const u32 (&th)[KC], int (&c)[KC], double (&m)[KC]) {
#pragma unroll
        for (int j = 0; j < KC; ++j) {
            c[j] = 0;
            m[j] = 0.0;
        }
        auto f = [&](int, float x) {
            if (fabsf(x) <= FLT_BIG) {
                const u32 key = order_key(x);
#pragma unroll
                for (int j = 0; j < KC; ++j) c[j] += key >= th[j] ? 1 : 0;
            }
        };
        each_logit(l, n, f);
        block_stats<KC, false>(c, m, red);
    };
    auto ok = [&](Stat s) { return s.n >= k; };
    Stat all, none, at, next;
    all.n = finite;
    all.m = 0.0;
    none.n = 0;
    none.m = 0.0;
    const u32 t = ksearch<KC>(0u, kmax, all, none, pass, ok, &at, &next);
    const int need = k - next.n;  // from the logits of key t, lowest ids first
    int x = n - 1;
    if (need < at.n - next.n) {
        auto pass2 = [&](const u32 (&th)[KC], int (&c)[KC], double (&m)[KC]) {
#pragma unroll
            for (int j = 0; j < KC; ++j) {
                c[j] = 0;
                m[j] = 0.0;
            }
            auto f = [&](int i, float v) {
                if (fabsf(v) <= FLT_BIG && order_key(v) == t) {
                    const u32 p = (u32)(n - 1 - i);
#pragma unroll
                    for (int j = 0; j < KC; ++j) c[j] += p >= th[j] ? 1 : 0;
                }
            };
            each_logit(l, n, f);
            block_stats<KC, false>(c, m, red);
        };
        auto ok2 = [&](Stat s) { return s.n >= need; };
        Stat g;
        g.n = at.n - next.n;
        g.m = 0.0;
        const u32 p = ksearch<KC>(0u, (u32)(n - 1), g, none, pass2, ok2, &at, &next);
        x = n - 1 - (int)p;
    }
    *kt = t;
    *kx = x;
}

// The candidates (finite, in the top-k: key > kt, or == kt with id <= kx) with their weights,
// into the list (lw, li); their count and (in *mass) their f64 mass.
__device__ int compact_members(const float* l, int n, float max, float inv_t, u32 kt, int kx,
                               float* lw, int* li, double* mass, Red& red) {
    if (threadIdx.x == 0) red.count = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const bool vec = vec_ok(l, n);
    const int groups = vec ? n >> 2 : n;
    double m[1] = {0.0};
    for (int g0 = threadIdx.x - lane; g0 < groups; g0 += blockDim.x) {
        const int g = g0 + lane;
        float x[4] = {NEG_INF, NEG_INF, NEG_INF, NEG_INF};
        int id[4] = {0, 0, 0, 0};
        if (g < groups) {
            if (vec) {
                const float4 v = ((const float4*)l)[g];
                x[0] = v.x;
                x[1] = v.y;
                x[2] = v.z;
                x[3] = v.w;
#pragma unroll
                for (int t = 0; t < 4; ++t) id[t] = 4 * g + t;
            } else {
                x[0] = l[g];
                id[0] = g;
            }
        }
        float w[4];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const u32 key = order_key(x[t]);
            const bool member =
                fabsf(x[t]) <= FLT_BIG && (key > kt || (key == kt && id[t] <= kx));
            w[t] = member ? (float)exp((double)__fmul_rn(__fsub_rn(x[t], max), inv_t)) : -1.0f;
            if (member) m[0] += (double)w[t];
        }
        warp_append(w, id, lw, li, red);
    }
    const int cnt = finish_list(lw, li, red);
    int unused[1] = {0};
    block_stats<1, true>(unused, m, red);
    *mass = m[0];
    return cnt;
}

// The entries of list (aw, ai) with weight > fl, into (bw, bi); their count.
__device__ int compact_above(const float* aw, const int* ai, int len4, float fl, float* bw,
                             int* bi, Red& red) {
    if (threadIdx.x == 0) red.count = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    for (int g0 = threadIdx.x - lane; g0 < len4; g0 += blockDim.x) {
        const int g = g0 + lane;
        float w[4] = {-1.0f, -1.0f, -1.0f, -1.0f};
        int id[4] = {0, 0, 0, 0};
        if (g < len4) {
            const float4 v = ((const float4*)aw)[g];
            const int4 d = ((const int4*)ai)[g];
            w[0] = v.x > fl ? v.x : -1.0f;
            w[1] = v.y > fl ? v.y : -1.0f;
            w[2] = v.z > fl ? v.z : -1.0f;
            w[3] = v.w > fl ? v.w : -1.0f;
            id[0] = d.x;
            id[1] = d.y;
            id[2] = d.z;
            id[3] = d.w;
        }
        warp_append(w, id, bw, bi, red);
    }
    return finish_list(bw, bi, red);
}

// Where a row's pick goes (mirrors `PickTo` in ops/sample.rs): `out[row]`; also `host[row]`
// when set (page-locked host memory mapped into the device: the host reads it once the kernel
// has finished, with no copy in the stream); and when `advance` is set, the row's position in
// those (slot, position) pairs goes up by one for the next decode step.
struct PickTo {
    int* host;
    int* advance;
};
__device__ __forceinline__ void put_id(int* out, const PickTo& to, int row, int id) {
    out[row] = id;
    if (to.host) to.host[row] = id;
    if (to.advance) to.advance[2 * row + 1] += 1;
}

// logits: rows x n. wbuf / ibuf: rows x 2 x stride scratch (stride >= n, a multiple of 4; not
// touched when greedy). uniforms: one per row (not read when greedy). out: one id per row, -1
// when the row has no finite and no +inf logit.
extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_rows(const float* __restrict__ logits, float* wbuf, int* ibuf,
                const double* __restrict__ uniforms, int* __restrict__ out,
                const __grid_constant__ PickTo to, int n, int stride, int greedy, float inv_t,
                int top_k, float top_p, float min_p) {
    PDL_ENTER();  // launched with programmatic dependent launch, like every kernel
    __shared__ Red red;
    const int row = blockIdx.x;
    const float* l = logits + (size_t)row * n;
    const Scan s = scan_row(l, n, red);
    if (s.pinf < n || s.arg < 0 || greedy) {
        if (threadIdx.x == 0) put_id(out, to, row, s.pinf < n ? s.pinf : s.arg);
        return;
    }
    u32 kt = 0u;
    int kx = n - 1;
    if (top_k > 0 && top_k < n && top_k < s.finite) {
        top_k_cut(l, n, top_k, s.finite, order_key(s.max == 0.0f ? 0.0f : s.max), &kt, &kx, red);
    }
    float* aw = wbuf + (size_t)row * 2 * stride;
    int* ai = ibuf + (size_t)row * 2 * stride;
    double mass_a = 0.0;
    const int ca = compact_members(l, n, s.max, inv_t, kt, kx, aw, ai, &mass_a, red);
    Sel sel = {aw, ai, (ca + 3) >> 2, 0.0f, 0u, 0x7fffffff};
    const bool desc = top_k > 0 || top_p < 1.0f;
    if (top_p < 1.0f) {
        // A nucleus token outweighs (1 - top_p) * mass / count (the host's prefilter).
        const double target = (double)top_p * mass_a;
        const float fl = (float)((1.0 - (double)top_p) * mass_a / (double)ca * 0.999);
        const int cb = compact_above(aw, ai, sel.len4, fl, aw + stride, ai + stride, red);
        sel.w = aw + stride;
        sel.id = ai + stride;
        sel.len4 = (cb + 3) >> 2;
        u32 eb = 0u;
        const int e = find_desc(sel, n, target, false, &eb, red);
        if (e >= 0) {
            sel.cut_b = eb;
            sel.cut_id = e;
        }
    }
    sel.fl = min_p > 0.0f ? min_p : 0.0f;
    const double r = uniforms[row] * sel_total(sel, red).m;
    u32 unused = 0u;
    int pick = desc ? find_desc(sel, n, r, true, &unused, red) : find_by_id(sel, n, r, red);
    if (pick < 0) pick = last_candidate(sel, desc, red);
    if (threadIdx.x == 0) put_id(out, to, row, pick);
}
