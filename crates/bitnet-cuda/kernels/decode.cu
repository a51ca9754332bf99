// One token through every transformer layer in one persistent kernel (batch-1 decode; used
// with BITNET_CUDA_ONE_KERNEL=1). Status (H200, NOTES.md): bit-identical to the layer-by-layer
// kernels and 37.7 µs per 2B-4T layer against their ~33: the attention phase's slowest blocks
// (a chain of dependent L2/HBM round trips) and the per-block norms are the critical path.
//
// As a chain of kernels, each of the ~6 kernels of a layer pays a launch boundary and its own
// norm, and a block can fetch weights only once it is resident, i.e. after the previous kernel's
// block on that SM has left: a layer took ~33 µs on the H100 against ~6 µs of weight bytes.
// Here one block per SM (1024 threads) runs the whole stack; the phases of a layer are separated
// by grid barriers (grid_sync), and each block's share of every matrix streams into shared
// memory ahead of use: one slot per matrix of a layer, refilled with the next layer's share by
// a bulk copy (cp.async.bulk + mbarrier) as soon as the block has multiplied it, so weights
// arrive while the block works through the other three phases.
//
// Per layer, with x the hidden state (the residual stream, updated in place):
//   A  n = input_norm(x); q, k, v = W_qkv n                        (grid barrier)
//   B  RoPE, KV store, attention of q over the cache -> att           (grid barrier)
//   C  x += W_o attn_sub_norm(att)                                    (grid barrier)
//   D  m = post_norm(x); gate, up = W_gu m                            (grid barrier)
//   E  x += W_down ffn_sub_norm(relu(gate)^2 * up)                   (grid barrier, but last)
// Every norm is computed by every block from L2 (each block needs the whole int8 row); every
// matrix's 8-row tiles are split into one contiguous range per block. Arithmetic is that of the
// separate kernels (norm.cu, gemv_norm.cu, gemv.cu, attention.cu, with attention split as
// `attention_splits` splits it), so results match them bit for bit. The rows of x a block adds
// into (o and down have the same tiles) are only ever written by that block: it keeps them in
// shared memory (xres) and never reads them back from L2.

#define DEC_THREADS 1024
// Most values of a normed row (hidden, q width, intermediate).
#define DEC_MAX_D 8192
// Attention: head dims up to 32 * DEC_ND.
#define DEC_ND 4
// Teams of 128 threads per block (attention items; GEMV teams are 128 * G threads).
#define DEC_TEAMS 8
// Most rows of x one block adds into (its tiles of o and down, 8 rows each).
#define DEC_MAX_XROWS 256
// For measurements only (BITNET_NVRTC_OPTIONS="-DDEC_SKIP=n", results are then wrong): bit 1
// skips the GEMVs, bit 2 the norms, bit 4 attention, so that `bitnet-cuda-bench --stack` shows
// what each costs on the critical path.
#ifndef DEC_SKIP
#define DEC_SKIP 0
#endif

// One projection of a layer: weights in the GPU layout (layout.rs), kc chunks per row and
// `tiles` 8-row tiles, and where its rows go (with `add`: added into the hidden state x, which
// the launch names; o.y[0] is unset).
// Mirrors `DecMat` in ops/decode.rs.
struct DecMat {
    const uint4* w;
    OutArg o;
    int kc;
    int tiles;
    int add;
};

// One layer: q/k/v, o, gate/up and down, and the input, attention-sub, post-attention and
// FFN-sub norm weights. Mirrors `DecLayer`.
struct DecLayer {
    DecMat m[4];
    const float* norm[4];
};

// Mirrors `DecArgs`.
struct DecArgs {
    const DecLayer* layers;
    float* x;
    float* q;
    float* k;
    float* v;
    float* att;
    float* gate;
    float* up;
    // Attention partials: heads x (most splits) x (hd + 2).
    float* part;
    // [0] barrier arrivals, [1] blocks done, [2 + h] head h's split tickets; zero between launches.
    u32* sync;
    float* kc;
    float* vc;
    const float* inv_freq;
    RowsArg rows;
    int nlayers, slots, max_seq;
    int hidden, qdim, inter, heads, kvh, hd;
    float eps, scale;
    // Most attention splits per head (part's size: attention_splits' limit for one row) and
    // fewest positions per split (a power of two); byte offset of each matrix's shared-memory
    // slot.
    int max_splits, split_len;
    u32 slot_off[4];
    // When set: DEC_STAMPS global-timer stamps per block and layer (DEC_STAMP), for the bench.
    unsigned long long* trace;
};

// Per block and layer: each projection phase p (0, 2, 3, 4 for q/k/v, o, gate/up, down) stamps
// 4p + {0 start, 1 norm done, 2 weights ready, 3 rows stored}; attention stamps 4 (start) and 5
// (done) of slot 1.
#define DEC_STAMPS 20
#define DEC_STAMP(a, L, k)                                                                \
    do {                                                                                   \
        if ((a).trace && threadIdx.x == 0) {                                               \
            const size_t at = ((size_t)blockIdx.x * (a).nlayers + (L)) * DEC_STAMPS + (k); \
            (a).trace[at] = globaltimer_ns();                                              \
        }                                                                                  \
    } while (0)

// Grid-wide barrier (every block resident, one per SM), in two halves so that a block can
// issue work between them: arrivals count up in `count` within a launch; barrier number k waits
// until k * gridDim.x blocks have arrived. grid_arrive is called by thread 0 after a
// __syncthreads (the release covers the whole block's writes); grid_wait by every thread.
__device__ __forceinline__ void grid_arrive(u32* count) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(count) : "memory");
}

__device__ __forceinline__ void grid_wait(const u32* count, u32 target) {
    if (threadIdx.x == 0) {
        u32 v, turns = 0;
        const unsigned long long t0 = globaltimer_ns();
        // Relaxed loads while spinning (an acquire load invalidates L1 each time), one acquire
        // once the count is reached.
        while (true) {
            asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
            if (v >= target) break;
            spin_check(t0, turns);
        }
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(count) : "memory");
    }
    __syncthreads();
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}

// Block b's tiles of a matrix of `tiles` tiles: [first, first + count).
__device__ __forceinline__ void dec_tiles(int tiles, int& first, int& count) {
    const int b = blockIdx.x, g = gridDim.x;
    first = b * tiles / g;
    count = (b + 1) * tiles / g - first;
}

#if !defined(__CUDA_ARCH__) || (__CUDA_ARCH__ >= 900)
// Thread 0: streams this block's tiles of m into shared memory at `dst`, completing on the
// mbarrier at `bar` (one arrival per call, also when the block has no tiles).
__device__ __forceinline__ void dec_load(const DecMat& m, u32 dst, u32 bar) {
    int first, count;
    dec_tiles(m.tiles, first, count);
    const u32 bytes = (u32)count * (u32)m.kc * 128u;
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
    const char* src = (const char*)(m.w + (size_t)first * m.kc * 8);
    for (u32 o = 0; o < bytes; o += 32768u) {
        const u32 n = min(32768u, bytes - o);
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
            "[%3];" ::"r"(dst + o),
            "l"(src + o), "r"(n), "r"(bar)
            : "memory");
    }
}

#endif

// Float4 slots of a normed row per thread (rows of a multiple of 4 values, as gemv_norm.cu's).
#define DEC_SLOTS4 (DEC_MAX_D / 4 / DEC_THREADS)

// The norm weights this thread applies (constant: loaded before the barrier that precedes use).
__device__ __forceinline__ void dec_norm_weights(float4 (&wv)[DEC_SLOTS4],
                                                 const float* __restrict__ w, int d) {
#pragma unroll
    for (int j = 0; j < DEC_SLOTS4; ++j) {
        const int f = threadIdx.x + j * DEC_THREADS;
        wv[j] = 4 * f < d ? __ldg((const float4*)w + f) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
}

// RMSNorm (weights wv) and BitLinear quantization of one row of d values into xs (zero from d
// to kp), read through L2 (written by other blocks): x, or relu(x)^2 * y with `act`. Returns
// the scale. Reads and sums in the order of gemv_norm.cu's norm_to_smem (float4 slots). Σq is
// not needed: dec_gemv subtracts each chunk's activations itself (dot_chunk with MINUS_SUM).
// Ends with a barrier (xs is complete).
__device__ __forceinline__ float dec_norm(const float* x, const float* y, int act,
                                          const float4 (&wv)[DEC_SLOTS4], int d, int kp,
                                          float eps, i8* xs, float* red1, float* red2) {
    constexpr int P = DEC_SLOTS4;
    const int tid = threadIdx.x, d4 = d >> 2, kp4 = kp >> 2;
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 v[P], b[P];
#pragma unroll
    for (int j = 0; j < P; ++j) {
        const int f = tid + j * DEC_THREADS;
        v[j] = b[j] = zero;
        if (f < d4) {
            v[j] = __ldcg((const float4*)x + f);
            if (act) b[j] = __ldcg((const float4*)y + f);
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        v[j] = norm_combine4(v[j], b[j], act);
        ss = sum_sq4(ss, v[j]);
    }
    // red1 and red2 were last read several barriers ago: no barrier before writing them.
    ss = block_sum(ss, red1, true);
    const float inv = norm_inv(ss, d, eps);
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        if (tid + j * DEC_THREADS < d4) {
            v[j] = norm_scale4(wv[j], v[j], inv);
            amax = max_abs4(amax, v[j]);
        }
    }
    amax = block_max(amax, red2, true);
    const float s = quant_scale(amax);
    int sum = 0;
#pragma unroll
    for (int j = 0; j < P; ++j) {
        const int f = tid + j * DEC_THREADS;
        if (f < kp4) ((u32*)xs)[f] = f < d4 ? quant4(v[j], s, sum) : 0u;
    }
    __syncthreads();
    return s;
}

// The block's tiles of m (in shared memory at `slot`) times xs, one round: teams of W warps
// take one tile each (W = 1 when the block has more than 8 tiles, else 4 * the largest power of
// two <= 8 / tiles, so that the 32 / W teams cover its tiles); lane l of a warp has row l % 8
// and chunks l / 8 + 4 (W w + ...) for warp w of its team. A team of one warp sums with
// shuffles alone; larger teams add their warps' partials (`red`) in the first warp. A matrix
// with `add` adds its rows into x and into the block's copy of its rows of x (xres, row i of
// the block's first tile at xres[i]).
__device__ __forceinline__ void dec_gemv(const DecMat& m, const uint4* slot, const i8* xs,
                                         float sa, int (*red)[8], float* x, float* xres) {
    const OutArg o = m.o;
    const int kc = m.kc, add = m.add;
    int first, count;
    dec_tiles(m.tiles, first, count);
    const int most = (m.tiles + gridDim.x - 1) / gridDim.x;
    const int W = most > 8 ? 1 : most > 4 ? 4 : most > 2 ? 8 : most > 1 ? 16 : 32;
    const int nt = 32 * W, team = threadIdx.x / nt, lt = threadIdx.x % nt, teams = 32 / W;
    const int r = lt & 7, ks = lt >> 3, cs = 4 * W, lane = lt & 31, warp = threadIdx.x >> 5;
    for (int t = team; t < count; t += teams) {
        const uint4* tw = slot + (size_t)t * kc * 8 + r;
        int acc = 0;
#pragma unroll 4
        for (int c = ks; c < kc; c += cs) {
            u32 d[16];
            decode_chunk(tw[(size_t)c * 8], d);
            acc = dot_chunk<true, true>(d, (const int4*)(xs + (size_t)c * 64), acc);
        }
        acc += __shfl_xor_sync(FULL_MASK, acc, 8);
        acc += __shfl_xor_sync(FULL_MASK, acc, 16);
        if (W > 1) {
            if (lane < 8) red[warp][lane] = acc;
            team_sync(1 + team, nt);
            acc = 0;
            if (lt < 32) {
                // Lane l sums warps l / 8, + 4, ... of row l % 8; two shuffles finish the rows.
                for (int w = lt >> 3; w < W; w += 4) acc += red[team * W + w][lt & 7];
                acc += __shfl_xor_sync(FULL_MASK, acc, 8);
                acc += __shfl_xor_sync(FULL_MASK, acc, 16);
            }
        }
        if (lt < 8) {
            const int row = (first + t) * 8 + lt;
            if (!add) {
                store_row(o, 0, row, acc, 0, sa);
            } else if (row < o.n[0]) {
                // Rounded as store_row's product and the separate add (no fused multiply-add).
                const float nx =
                    __fadd_rn(xres[t * 8 + lt], __fmul_rn((float)acc / sa, o.s[0]));
                xres[t * 8 + lt] = nx;
                x[row] = nx;
            }
        }
        if (W > 1) team_sync(1 + team, nt);  // red is rewritten by the next tile
    }
}

// Phase B: attention of the row over its cache, items (head, split) spread over every team of
// the grid, split as the separate kernels split it (`attention_splits`: at most max_splits, at
// least split_len positions per split of the length rounded up to a power of two); with
// several splits, the last item of a head to finish (a ticket) merges them.
__device__ __forceinline__ void dec_attention(const DecArgs& a, int layer,
                                              AttnSmem<DEC_ND>* asm_, u32* tickets) {
    const int team = threadIdx.x >> 7, lt = threadIdx.x & 127;
    const int len = row_pos(a.rows, 0) + 1, teams = gridDim.x * DEC_TEAMS;
    const int np2 = len <= 1 ? 1 : 1 << (32 - __clz(len - 1));
    const int splits = max(1, min(a.max_splits, (np2 + a.split_len - 1) / a.split_len));
    for (int item = blockIdx.x * DEC_TEAMS + team; item < a.heads * splits; item += teams) {
        const int h = item / splits, s = item % splits;
        // Ends with a team barrier: the item's partial is written.
        attention_item<DEC_ND, true, true>(asm_[team], s, h, 0, lt, 1 + team, a.q, a.kc, a.vc,
                                           a.att, a.part, a.rows, layer, a.slots, a.max_seq,
                                           a.heads, a.kvh, a.hd, a.scale, splits, a.k, a.v,
                                           a.inv_freq);
        if (splits == 1) continue;
        if (lt == 0) {
            // Release: the team's partial (ordered before it by the barrier); acquire: every
            // earlier item's.
            u32 t;
            asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                         : "=r"(t) : "l"(a.sync + 2 + h) : "memory");
            tickets[team] = t;
        }
        team_sync(1 + team, 128);
        if (tickets[team] == (u32)splits - 1) {
            attn_combine_head<true>(a.part, a.att, h, 0, a.heads, a.hd, splits, lt);
            if (lt == 0) a.sync[2 + h] = 0;
        }
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS, 1)
    decode_layers(const __grid_constant__ DecArgs a) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 900)
    // Bulk copies and transaction mbarriers are sm_90+: the host does not launch it there.
    __trap();
#else
    // Dynamic shared memory: four mbarriers, the int8 row, then the four weight slots.
    extern __shared__ __align__(128) unsigned char dsm[];
    __shared__ float red1[32], red2[32];
    __shared__ int red[DEC_THREADS / 32][8];
    __shared__ float xres[DEC_MAX_XROWS];
    __shared__ AttnSmem<DEC_ND> asm_[DEC_TEAMS];
    __shared__ u32 tickets[DEC_TEAMS];
    // The current and next layer's descriptors (read on every phase's critical path).
    __shared__ __align__(16) DecLayer lay[2];
    const int tid = threadIdx.x;
    // Copies layer L's descriptor into lay[L & 1] (visible after the next barrier).
    auto fetch_layer = [&](int L) {
        constexpr int WORDS = sizeof(DecLayer) / 4;
        if (L < a.nlayers && tid < WORDS)
            ((u32*)&lay[L & 1])[tid] = ((const u32*)(a.layers + L))[tid];
    };
    const u32 bars = smem_addr(dsm);
    i8* xs = (i8*)(dsm + 64);
    if (tid == 0) {
        for (int p = 0; p < 4; ++p)
            asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(bars + 8 * p) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        // Weights are constant: layer 0's stream in before the wait for the embedding.
        for (int p = 0; p < 4; ++p)
            dec_load(a.layers[0].m[p], bars + a.slot_off[p], bars + 8 * p);
    }
    float4 wv[DEC_SLOTS4];
    dec_norm_weights(wv, a.layers[0].norm[0], a.hidden);
    fetch_layer(0);
    fetch_layer(1);
    PDL_WAIT();
    {
        // The block's rows of x (its tiles of o, which down shares).
        int first, count;
        dec_tiles(a.layers[0].m[1].tiles, first, count);
        for (int i = tid; i < count * 8; i += DEC_THREADS) {
            const int row = first * 8 + i;
            xres[i] = row < a.hidden ? a.x[row] : 0.0f;
        }
    }
    __syncthreads();
    u32 nbar = 0;
    const u32 g = gridDim.x;
    // Phase p of layer L (p: matrix and norm): the norm of (x, y, act) over d values, then the
    // matrix from its slot; then (thread 0) the arrival at the next barrier, if `arrive`, and
    // the slot's refill with layer L + 1's share.
    auto project = [&](const DecLayer& l, int L, int p, const float* x, const float* y, int act,
                       int d, bool arrive) {
        const int st = 4 * (p == 0 ? 0 : p + 1);
        DEC_STAMP(a, L, st);
        const int kp = l.m[p].kc * 64;
        const float sa =
            (DEC_SKIP & 2) ? 1.0f : dec_norm(x, y, act, wv, d, kp, a.eps, xs, red1, red2);
        DEC_STAMP(a, L, st + 1);
        mbar_wait<false>(bars + 8 * p, (u32)L & 1u);
        DEC_STAMP(a, L, st + 2);
        if (!(DEC_SKIP & 1))
            dec_gemv(l.m[p], (const uint4*)(dsm + a.slot_off[p]), xs, sa, red, a.x, xres);
        DEC_STAMP(a, L, st + 3);
        __syncthreads();  // the block's rows are stored; every thread is done with the slot
        if (tid == 0) {
            if (arrive) grid_arrive(a.sync);
            if (L + 1 < a.nlayers) {
                asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                // Layer L + 1's descriptor is in lay from the end of phase A of layer L on.
                const DecMat& nm = p == 0 ? a.layers[L + 1].m[0] : lay[(L + 1) & 1].m[p];
                dec_load(nm, bars + a.slot_off[p], bars + 8 * p);
            }
        }
    };
    for (int L = 0; L < a.nlayers; ++L) {
        const DecLayer& l = lay[L & 1];
        project(l, L, 0, a.x, 0, 0, a.hidden, true);
        // Layer L + 1's descriptor replaces layer L - 1's (last read in its down phase); read
        // from the next barrier on (layer 1's was fetched at the start).
        if (L > 0) fetch_layer(L + 1);
        grid_wait(a.sync, ++nbar * g);
        DEC_STAMP(a, L, 4);
        if (!(DEC_SKIP & 4)) dec_attention(a, L, asm_, tickets);
        DEC_STAMP(a, L, 5);
        __syncthreads();
        if (tid == 0) grid_arrive(a.sync);
        dec_norm_weights(wv, l.norm[1], a.qdim);
        grid_wait(a.sync, ++nbar * g);
        project(l, L, 1, a.att, 0, 0, a.qdim, true);
        dec_norm_weights(wv, l.norm[2], a.hidden);
        grid_wait(a.sync, ++nbar * g);
        project(l, L, 2, a.x, 0, 0, a.hidden, true);
        dec_norm_weights(wv, l.norm[3], a.inter);
        grid_wait(a.sync, ++nbar * g);
        const bool more = L + 1 < a.nlayers;
        project(l, L, 3, a.gate, a.up, 1, a.inter, more);
        if (more) {
            dec_norm_weights(wv, lay[(L + 1) & 1].norm[0], a.hidden);
            grid_wait(a.sync, ++nbar * g);
        }
    }
    // Every block has passed its last barrier once all have counted themselves out here: the
    // last one resets the words for the next launch.
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(a.sync + 1, 1u) == g - 1) {
            a.sync[0] = 0;
            a.sync[1] = 0;
        }
    }
#endif
}
