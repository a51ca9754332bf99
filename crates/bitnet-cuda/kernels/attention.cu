// Causal attention over the KV cache (f32, or f16 bits: ld_kv in common.cuh; the arithmetic
// is f32 either way), one block per (split, head, row): each row attends to
// positions 0..=pos of its slot. Positions are split across `splits` blocks (flash-decoding);
// with more than one split, partial (max, sum, acc[hd]) go to `part` and attn_combine finishes.
// Block: 4 warps; warp w takes 4 consecutive positions per step; lane holds dims lane + 32 i.

// Rotary embedding (rotate-half) of value d of the head held in x, at position fpos: exactly
// the arithmetic of the rope kernels.
__device__ __forceinline__ float rope_at(const float* x, int d, int hd, float fpos,
                                         const float* __restrict__ inv_freq) {
    const int half = hd >> 1, j = d < half ? d : d - half;
    float sn, cs;
    sincosf(__fmul_rn(fpos, inv_freq[j]), &sn, &cs);
    const float x1 = x[j], x2 = x[j + half];
    return d < half ? __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn))
                    : __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
}

// Rotary embedding of a head held across a warp's lanes, lane l holding values l + 32 i
// (i < ND) of a head of exactly 32 ND values: value i pairs with value i + ND / 2, so each lane
// rotates its own pairs, with rope_at's arithmetic (one sincosf per pair, rope_angles).
#define ROPE_PAIRS(ND) ((ND) / 2 > 0 ? (ND) / 2 : 1)
template <int ND>
__device__ __forceinline__ void rope_angles(float (&sn)[ROPE_PAIRS(ND)],
                                            float (&cs)[ROPE_PAIRS(ND)], int lane, float fpos,
                                            const float* __restrict__ inv_freq) {
#pragma unroll
    for (int i = 0; i < ND / 2; ++i)
        sincosf(__fmul_rn(fpos, inv_freq[lane + 32 * i]), &sn[i], &cs[i]);
}
template <int ND>
__device__ __forceinline__ void rope_lanes(float (&x)[ND], const float (&sn)[ROPE_PAIRS(ND)],
                                           const float (&cs)[ROPE_PAIRS(ND)]) {
#pragma unroll
    for (int i = 0; i < ND / 2; ++i) {
        const float x1 = x[i], x2 = x[i + ND / 2];
        x[i] = __fsub_rn(__fmul_rn(x1, cs[i]), __fmul_rn(x2, sn[i]));
        x[i + ND / 2] = __fadd_rn(__fmul_rn(x2, cs[i]), __fmul_rn(x1, sn[i]));
    }
}

// An activation written earlier in the same kernel by another block (CG: through L2 only, never
// a stale L1 or read-only-cache line), or by an earlier kernel.
template <bool CG>
__device__ __forceinline__ float ld_act(const float* p) {
    return CG ? __ldcg(p) : *p;
}

// Value d of the merge of `splits` partials (max, sum, acc[hd]); ld(s, i) is element i of split
// s's partial. Partials are loaded 8 splits at a time (independent loads, one memory round trip
// per 8) and summed in split order: every merge (attn_combine, decode.cu, the cluster merge)
// runs this arithmetic, so they agree bit for bit.
template <typename Ld>
__device__ __forceinline__ float attn_merge(Ld ld, int hd, int splits, int d) {
    float M = NEG_INF;
    for (int s0 = 0; s0 < splits; s0 += 8) {
        float ms[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) ms[u] = s0 + u < splits ? ld(s0 + u, 0) : NEG_INF;
#pragma unroll
        for (int u = 0; u < 8; ++u) M = fmaxf(M, ms[u]);
    }
    float L = 0.0f, A = 0.0f;
    for (int s0 = 0; s0 < splits; s0 += 8) {
        float ms[8], ls[8], as[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            const bool ok = s0 + u < splits;
            ms[u] = ok ? ld(s0 + u, 0) : NEG_INF;
            ls[u] = ok ? ld(s0 + u, 1) : 0.0f;
            as[u] = ok && d < hd ? ld(s0 + u, 2 + d) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            if (s0 + u < splits) {
                const float f = ms[u] == NEG_INF ? 0.0f : expf(ms[u] - M);
                L += ls[u] * f;
                if (d < hd) A += as[u] * f;
            }
        }
    }
    return A / L;
}

// Merges the `splits` partials of head h, row r into out; thread d < hd computes value d. CG:
// the partials were written earlier in the same kernel by other blocks.
template <bool CG>
__device__ __forceinline__ void attn_combine_head(const float* part, float* out, int h, int r,
                                                  int heads, int hd, int splits, int d) {
    const int st = hd + 2;
    const float* pp = part + ((size_t)r * heads + h) * splits * st;
    auto ld = [&](int s, int i) { return ld_act<CG>(pp + s * st + i); };
    const float v = attn_merge(ld, hd, splits, d);
    if (d < hd) out[((size_t)r * heads + h) * hd + d] = v;
}

// Shared memory of one attention item (128 threads).
template <int ND>
struct AttnSmem {
    float m[4], l[4];
    float acc[4][ND * 32];
    float sx[2][ND * 32];
};

// The cluster merge's shared memory (attention_item's `cm`; only rank 0's is used): each
// split's partial (max, sum, acc[hd]) and the mbarrier the other ranks' stores complete on.
// 16 slots: the host never launches larger clusters (device.rs, cluster_max).
template <int ND>
struct ClusterMerge {
    unsigned long long bar;
    float part[16][32 * ND + 2];
};

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
// The cluster merge's barrier, before the item: rank 0 initializes its mbarrier (one arrival:
// its own, with the bytes the other ranks will store), and every thread arrives on the cluster
// barrier whose wait (cluster_merge_ready) orders that before any rank's stores.
template <int ND>
__device__ __forceinline__ void cluster_merge_init(ClusterMerge<ND>& cm) {
    if (cluster_rank() == 0 && threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n\tfence.mbarrier_init.release.cluster;"
                     ::"r"((u32)__cvta_generic_to_shared(&cm.bar)) : "memory");
    }
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_merge_ready() {
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
}
// Stores v at `p` (this block's address of a shared variable) in rank 0's shared memory,
// completing 4 bytes on rank 0's mbarrier `bar` (this block's address of it).
__device__ __forceinline__ void st_rank0(const float* p, float v, const unsigned long long* bar) {
    u32 a = (u32)__cvta_generic_to_shared(p), b = (u32)__cvta_generic_to_shared(bar);
    asm volatile("mapa.shared::cluster.u32 %0, %0, 0;\n\tmapa.shared::cluster.u32 %1, %1, 0;"
                 : "+r"(a), "+r"(b));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];"
                 ::"r"(a), "r"(__float_as_uint(v)), "r"(b) : "memory");
}
// Rank 0, thread 0: arrives on its mbarrier expecting `bytes` from the other ranks (every
// thread then waits for that phase: mbar_wait<true>, after which the stores are visible).
__device__ __forceinline__ void cluster_merge_expect(unsigned long long* bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.release.cta.shared::cta.b64 _, [%0], %1;"
                 ::"r"((u32)__cvta_generic_to_shared(bar)), "r"(bytes) : "memory");
}
#else
template <int ND>
__device__ __forceinline__ void cluster_merge_init(ClusterMerge<ND>&) { __trap(); }
__device__ __forceinline__ void cluster_merge_ready() { __trap(); }
__device__ __forceinline__ void st_rank0(const float*, float, const unsigned long long*) { __trap(); }
__device__ __forceinline__ void cluster_merge_expect(unsigned long long*, u32) { __trap(); }
#endif

// Keys and values of positions pb .. pb + 3 (those below `lim`) for this lane's dims. L2: load
// through L2 only (before the PDL wait: no line an earlier kernel left in this SM's L1). Every
// load goes out before any value is converted (over an f16 cache, a conversion next to its
// load would wait for it: H100 tg64 at depth 4000 449 against 765 tok/s for f32).
template <int ND, bool L2 = false, typename KV = float>
__device__ __forceinline__ void attn_load_step(const KV* K, const KV* V, int pb, int lim,
                                               int hd, int lane, float (&kv)[4][ND],
                                               float (&vv)[4][ND]) {
    KV rk[4][ND], rv[4][ND];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int p = pb + j;
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            const int d = lane + 32 * i;
            const bool ok = p < lim && d < hd;
            const size_t at = (size_t)p * hd + d;
            rk[j][i] = ok ? ld_kv_raw<L2>(K + at) : (KV)0;
            rv[j][i] = ok ? ld_kv_raw<L2>(V + at) : (KV)0;
        }
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            kv[j][i] = kv_f32(rk[j][i]);
            vv[j][i] = kv_f32(rv[j][i]);
        }
    }
}

// One (split s, head h, row r) item of attention, run by 128 threads (thread `tid`, barrier
// `bar`: team_sync). With ROPE (one call per decode step, every row in a slot of its own): q and
// the row's own key arrive unrotated (kin, vin: rows x kvh x hd); the item rotates q itself, and
// every item whose positions include the row's own writes the rotated key and the value into the
// cache (items of one kv head write the same values) before reading it back. CG: q, kin and vin
// were written earlier in the same kernel (decode.cu).
//
// cm (set: the `splits` items of this (head, row) run as one thread-block cluster, split s
// its block of rank s, and cluster_merge_init has run): ranks 1.. store their partials into
// rank 0's shared memory, which merges them (attn_merge) and writes out, instead of going to
// `part` for attn_combine.
//
// PRE (the decode kernel, which has not waited for its predecessor yet): the item waits itself
// (PDL_WAIT), and with `pre` set first loads its first step of keys and values from the cache,
// all positions but the row's own (that one from registers, or from `own_kv`, 2 x 32 ND floats
// of shared memory, which the item fills as it writes the position): the caller vouches that
// whatever wrote those positions finished before the previous kernel started
// (ops::rope_attention). KV: the cache's element (float, or u16 holding f16); the row's own
// key and value, kept in registers or own_kv, are rounded as the cache holds them (kv_round).
template <int ND, bool ROPE, bool CG, bool PRE = false, typename KV = float>
__device__ __forceinline__ void attention_item(AttnSmem<ND>& sm, int s, int h, int r, int tid,
                                               int bar, const float* q, const KV* kc,
                                               const KV* vc, float* out, float* part,
                                               const RowsArg& rows, int layer, int slots,
                                               int max_seq, int heads, int kvh, int hd,
                                               float scale, int splits, const float* kin,
                                               const float* vin,
                                               const float* __restrict__ inv_freq,
                                               bool pre = false, float* own_kv = 0,
                                               ClusterMerge<ND>* cm = 0) {
    const int warp = tid >> 5, lane = tid & 31;
    const int slot = row_slot(rows, r), len = row_pos(rows, r) + 1;
    const int per = (len + splits - 1) / splits;
    const int p0 = s * per, p1 = min(len, p0 + per);
    const int kh = h / (heads / kvh);
    const size_t base = (((size_t)layer * slots + slot) * kvh + kh) * (size_t)max_seq * hd;
    const KV* K = kc + base;
    const KV* V = vc + base;
    const int pb0 = p0 + 4 * warp;
    const bool own = p0 <= len - 1 && len - 1 < p1;
    float kv[4][ND], vv[4][ND];
    // A head of exactly 32 ND values (even ND): each lane loads and rotates its own values of q,
    // and the warp whose positions include the row's own (wown) those of the key and value, in
    // registers (ok, ov) and into the cache: no shared memory, no barrier before the positions.
    // The rotation's angles depend on the position alone: computed first (before the PDL wait
    // where the item waits itself, PRE), off the path from q's load to the scores.
    const bool lanes = ROPE && (ND % 2 == 0) && hd == 32 * ND;
    float rsn[ROPE_PAIRS(ND)], rcs[ROPE_PAIRS(ND)];
    if (lanes) rope_angles<ND>(rsn, rcs, lane, (float)(len - 1), inv_freq);
    const bool ahead = PRE && pre;
    if (ahead) attn_load_step<ND, true>(K, V, pb0, min(p1, len - 1), hd, lane, kv, vv);
    if (PRE) {
        PDL_WAIT();
        STAMP(1);
        q = after_wait(q);
        kin = after_wait(kin);
        vin = after_wait(vin);
    }
    const float* qr = q + ((size_t)r * heads + h) * hd;
    float qv[ND], acc[ND];
    const int wown = own ? ((len - 1 - p0) & 15) >> 2 : -1;
    float ok[ND], ov[ND];
    if (lanes) {
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            qv[i] = ld_act<CG>(qr + lane + 32 * i);
            acc[i] = 0.0f;
        }
        rope_lanes<ND>(qv, rsn, rcs);
        if (warp == wown) {
            const size_t kv_at = ((size_t)r * kvh + kh) * hd, at = (size_t)(len - 1) * hd;
#pragma unroll
            for (int i = 0; i < ND; ++i) {
                ok[i] = ld_act<CG>(kin + kv_at + lane + 32 * i);
                ov[i] = ld_act<CG>(vin + kv_at + lane + 32 * i);
            }
            rope_lanes<ND>(ok, rsn, rcs);
#pragma unroll
            for (int i = 0; i < ND; ++i) {
                ok[i] = kv_round(K, ok[i]);
                ov[i] = kv_round(K, ov[i]);
                // Read back only by this lane (the same addresses, in program order).
                st_kv((KV*)K + at + lane + 32 * i, ok[i]);
                st_kv((KV*)V + at + lane + 32 * i, ov[i]);
            }
        }
    } else if (ROPE) {
        const float fpos = (float)(len - 1);
        const float* kr = kin + ((size_t)r * kvh + kh) * hd;
        for (int d = tid; d < hd; d += 128) {
            sm.sx[0][d] = ld_act<CG>(qr + d);
            if (own) sm.sx[1][d] = ld_act<CG>(kr + d);
        }
        team_sync(bar, 128);
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            const int d = lane + 32 * i;
            qv[i] = d < hd ? rope_at(sm.sx[0], d, hd, fpos, inv_freq) : 0.0f;
            acc[i] = 0.0f;
        }
        if (own) {
            const float* vr = vin + ((size_t)r * kvh + kh) * hd;
            const size_t at = (size_t)(len - 1) * hd;
            for (int d = tid; d < hd; d += 128) {
                const float kd = kv_round(K, rope_at(sm.sx[1], d, hd, fpos, inv_freq));
                const float vd = kv_round(K, ld_act<CG>(vr + d));
                st_kv((KV*)K + at + d, kd);
                st_kv((KV*)V + at + d, vd);
                if (ahead) {
                    own_kv[d] = kd;
                    own_kv[32 * ND + d] = vd;
                }
            }
        }
        team_sync(bar, 128);  // this item's cache writes before its reads
    } else {
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            const int d = lane + 32 * i;
            qv[i] = d < hd ? ld_act<CG>(qr + d) : 0.0f;
            acc[i] = 0.0f;
        }
    }
    float m = NEG_INF, l = 0.0f;
    for (int pb = pb0; pb < p1; pb += 16) {
        // Keys and values of the step's 4 positions are requested together (values do not
        // depend on the scores): one memory round trip per step instead of two.
        if (!ahead || pb != pb0) {
            attn_load_step<ND>(K, V, pb, p1, hd, lane, kv, vv);
        } else if (own) {
            // The row's own position (in registers by constant index only: no local memory);
            // with `lanes`, only warp wown has it, and in registers.
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                if (pb + j != len - 1) continue;
#pragma unroll
                for (int i = 0; i < ND; ++i) {
                    const int d = lane + 32 * i;
                    kv[j][i] = lanes ? ok[i] : d < hd ? own_kv[d] : 0.0f;
                    vv[j][i] = lanes ? ov[i] : d < hd ? own_kv[32 * ND + d] : 0.0f;
                }
            }
        }
        float sc[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float dot = 0.0f;
#pragma unroll
            for (int i = 0; i < ND; ++i) dot += qv[i] * kv[j][i];
            sc[j] = dot;
        }
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            sc[j] = warp_sum(sc[j]) * scale;
            if (pb + j < p1) mx = fmaxf(mx, sc[j]);
        }
        const float mn = fmaxf(m, mx);
        const float c = expf(m - mn);
        float e[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) e[j] = pb + j < p1 ? expf(sc[j] - mn) : 0.0f;
        l = l * c + ((e[0] + e[1]) + (e[2] + e[3]));
#pragma unroll
        for (int i = 0; i < ND; ++i) {
            const int d = lane + 32 * i;
            float a = acc[i] * c;
            if (d < hd) {
#pragma unroll
                for (int j = 0; j < 4; ++j)
                    if (pb + j < p1) a += e[j] * vv[j][i];
            }
            acc[i] = a;
        }
        m = mn;
    }
    if (lane == 0) {
        sm.m[warp] = m;
        sm.l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ND; ++i) sm.acc[warp][lane + 32 * i] = acc[i];
    team_sync(bar, 128);
    const float M = fmaxf(fmaxf(sm.m[0], sm.m[1]), fmaxf(sm.m[2], sm.m[3]));
    float f[4], L = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        f[w] = sm.m[w] == NEG_INF ? 0.0f : expf(sm.m[w] - M);
        L += sm.l[w] * f[w];
    }
    const size_t o = ((size_t)r * heads + h) * hd;
    const bool in_cluster = cm != 0 && splits > 1;
    // In a cluster, rank s's block is split s: ranks 1.. store their partials into rank 0's
    // shared memory (st.async, completing on its mbarrier) and are done; rank 0 merges.
    const bool push = in_cluster && s != 0;
    if (in_cluster) {
        cluster_merge_ready();
        if (s == 0 && tid == 0) cluster_merge_expect(&cm->bar, (u32)(splits - 1) * (hd + 2) * 4);
    }
    for (int d = tid; d < hd; d += 128) {
        const float A = sm.acc[0][d] * f[0] + sm.acc[1][d] * f[1] + sm.acc[2][d] * f[2] +
                        sm.acc[3][d] * f[3];
        if (splits == 1) {
            out[o + d] = A / L;
        } else if (push) {
            float* pp = cm->part[s];
            st_rank0(pp + 2 + d, A, &cm->bar);
            if (d == 0) {
                st_rank0(pp, M, &cm->bar);
                st_rank0(pp + 1, L, &cm->bar);
            }
        } else {
            float* pp = in_cluster ? cm->part[0]
                                   : part + (((size_t)r * heads + h) * splits + s) * (hd + 2);
            pp[2 + d] = A;
            if (d == 0) {
                pp[0] = M;
                pp[1] = L;
            }
        }
    }
    if (PRE) STAMP(2);
    if (in_cluster && s == 0) {
        team_sync(bar, 128);  // rank 0's own partial
        mbar_wait<true>((u32)__cvta_generic_to_shared(&cm->bar), 0);
        auto ld = [&](int sp, int i) { return cm->part[sp][i]; };
        for (int d = tid; d < hd; d += 128) out[o + d] = attn_merge(ld, hd, splits, d);
    }
    team_sync(bar, 128);  // sm is reused by the next item
    if (PRE) STAMP(3);
}

template <int ND, bool ROPE, typename KV>
__device__ __forceinline__ void attention_body(const float* q, const KV* kc, const KV* vc,
                                               float* out, float* part, const RowsArg& rows,
                                               int layer, int slots, int max_seq, int heads,
                                               int kvh, int hd, float scale, int splits,
                                               const float* kin, const float* vin,
                                               const float* __restrict__ inv_freq, int pre,
                                               int merge) {
    __shared__ AttnSmem<ND> sm;
    __shared__ float own_kv[ROPE ? 2 * 32 * ND : 1];
    __shared__ __align__(8) unsigned char cm_raw[ROPE ? sizeof(ClusterMerge<ND>) : 8];
    ClusterMerge<ND>* cm = 0;
    if (ROPE && merge && splits > 1) {
        cm = (ClusterMerge<ND>*)cm_raw;
        cluster_merge_init(*cm);
    }
    attention_item<ND, ROPE, false, ROPE, KV>(sm, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, 0,
                                          q, kc, vc, out, part, rows, layer, slots, max_seq,
                                          heads, kvh, hd, scale, splits, kin, vin, inv_freq,
                                          pre != 0, own_kv, cm);
}

// attention_ndN / attention_rope_ndN over an f32 cache, and (suffix _h) over an f16 one.
#define ATTN_KERNEL(ND, KV, SUF)                                                               \
    extern "C" __global__ void __launch_bounds__(128) attention_nd##ND##SUF(                  \
        const float* __restrict__ q, const KV* __restrict__ kc, const KV* __restrict__ vc,     \
        float* __restrict__ out, float* __restrict__ part,                                     \
        const __grid_constant__ RowsArg rows, int layer, int slots, int max_seq, int heads,   \
        int kvh, int hd, float scale, int splits) {                                            \
        PDL_ENTER();                                                                           \
        attention_body<ND, false, KV>(q, kc, vc, out, part, rows, layer, slots, max_seq,       \
                                      heads, kvh, hd, scale, splits, 0, 0, 0, 0, 0);           \
    }                                                                                          \
    /* Waits for its predecessor inside attention_item (PRE): see `pre` there; `merge`: */     \
    /* launched as clusters of `splits` blocks along x (cm in attention_item). */              \
    extern "C" __global__ void __launch_bounds__(128) attention_rope_nd##ND##SUF(             \
        const float* __restrict__ q, KV* kc, KV* vc, float* __restrict__ out,                  \
        float* __restrict__ part, const __grid_constant__ RowsArg rows, int layer, int slots,  \
        int max_seq, int heads, int kvh, int hd, float scale, int splits,                      \
        const float* __restrict__ kin, const float* __restrict__ vin,                          \
        const float* __restrict__ inv_freq, int pre, int merge) {                              \
        STAMP_BEGIN(1);                                                                        \
        PDL_TRIGGER();                                                                         \
        attention_body<ND, true, KV>(q, kc, vc, out, part, rows, layer, slots, max_seq, heads, \
                                     kvh, hd, scale, splits, kin, vin, inv_freq, pre, merge);  \
    }
ATTN_KERNEL(1, float, )
ATTN_KERNEL(2, float, )
ATTN_KERNEL(4, float, )
ATTN_KERNEL(8, float, )
ATTN_KERNEL(1, u16, _h)
ATTN_KERNEL(2, u16, _h)
ATTN_KERNEL(4, u16, _h)
ATTN_KERNEL(8, u16, _h)

// Merges the splits of attention: grid (heads, rows), block >= hd threads.
extern "C" __global__ void attn_combine(const float* __restrict__ part, float* __restrict__ out,
                                        int heads, int hd, int splits) {
    PDL_ENTER();
    attn_combine_head<false>(part, out, blockIdx.x, blockIdx.y, heads, hd, splits, threadIdx.x);
}
