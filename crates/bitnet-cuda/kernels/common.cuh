// Shared definitions for every BitNet CUDA kernel. Compiled by NVRTC at run time (no system
// headers): the Rust side concatenates this file before the others.
typedef unsigned int u32;
typedef unsigned short u16;
typedef signed char i8;

#define FULL_MASK 0xffffffffu
#define NEG_INF (-__int_as_float(0x7f800000))
// Programmatic dependent launch (sm_90+): every kernel is launched allowed to start before the
// previous one on the stream finishes. PDL_TRIGGER lets the next kernel launch now; PDL_WAIT
// blocks until the previous kernel has finished and its writes are visible. Every kernel calls
// PDL_WAIT before it reads activations or writes anything; only constant data (weights) may be
// read before it.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
#define PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#define PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_TRIGGER()
#define PDL_WAIT()
#endif
#define PDL_ENTER() \
    do {            \
        PDL_TRIGGER(); \
        PDL_WAIT();    \
    } while (0)

// `p` laundered through an opaque move: loads through the result stay after this point. Take
// it right after PDL_WAIT for data the previous kernel wrote and that is read through the
// read-only path (`const __restrict__`, __ldg): the compiler treats such data as constant for
// the whole kernel and may otherwise hoist its loads above the wait.
template <typename T>
__device__ __forceinline__ T* after_wait(T* p) {
    asm volatile("mov.b64 %0, %0;" : "+l"(p));
    return p;
}

// Two-bit codes (weight + 1) of four weights, one per byte lane.
#define CODE_MASK 0x03030303u

// Rows of one call: KV slot and position of each, by value for small batches (decode), or on
// the device as [n][2] (slot, pos) pairs when `dev` is set. Mirrors `RowsArg` in ops.rs.
struct RowsArg {
    int n;
    int slot[8];
    int pos[8];
    const int* dev;
};

// Token ids of one call: by value for up to 8 ids, else on the device. Mirrors `IdsArg`.
struct IdsArg {
    int n;
    int id[8];
    const int* dev;
};

// Where a ternary projection's output rows go: up to 3 stacked matrices (fused q/k/v or
// gate/up), segment j covering padded weight rows off[j] .. off[j + 1] with n[j] real rows,
// written to y[j] (tokens x n[j]) and scaled by s[j]; with `add` (one segment), added into
// y[0] instead (a layer's residual add). Mirrors `OutArg` in ops/linear.rs.
struct OutArg {
    float* y[3];
    int n[3];
    int off[3];
    float s[3];
    int segs;
    int add;
};

// y = (Σ code·x − Σx) / sa · s_w for token m, padded weight row `row` (same float operations
// as the CPU's BitLinear); rows in a segment's padding are dropped.
__device__ __forceinline__ void store_row(const OutArg& o, int m, int row, int acc, int sx,
                                          float sa) {
    int j = 0;
    if (o.segs > 1 && row >= o.off[1]) j = 1;
    if (o.segs > 2 && row >= o.off[2]) j = 2;
    const int local = row - o.off[j];
    if (local >= o.n[j]) return;
    float* y = o.y[j] + (size_t)m * o.n[j] + local;
    const float v = (float)(acc - sx) / sa * o.s[j];
    // The residual add rounds the product first, as a separate add would (no fused multiply-add).
    *y = o.add ? __fadd_rn(*y, v) : v;
}

__device__ __forceinline__ int row_slot(const RowsArg& r, int i) {
    return r.dev ? r.dev[2 * i] : r.slot[i];
}
__device__ __forceinline__ int row_pos(const RowsArg& r, int i) {
    return r.dev ? r.dev[2 * i + 1] : r.pos[i];
}
__device__ __forceinline__ int token_id(const IdsArg& a, int i) {
    return a.dev ? a.dev[i] : a.id[i];
}

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
// f32 to f16 bits, IEEE round to nearest even (beyond ±65504: ±inf; NaN stays NaN), as the
// CPU's half::f16::from_f32.
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// The KV cache holds keys and values as f32 or as f16 bits (u16); attention computes in f32.
// ld_kv_raw: one cached value as stored (CG: through L2 only, as ld_act), kv_f32: as f32 (a
// step's loads all go out before any is converted: a conversion next to its load would wait
// for it); st_kv: stores v rounded to the cache's type; kv_round: v as the cache would hold it
// (the rows a kernel keeps in registers instead of reading back what it stored).
template <bool CG>
__device__ __forceinline__ float ld_kv_raw(const float* p) {
    return CG ? __ldcg(p) : *p;
}
template <bool CG>
__device__ __forceinline__ u16 ld_kv_raw(const u16* p) {
    return CG ? __ldcg(p) : *p;
}
__device__ __forceinline__ float kv_f32(float v) { return v; }
__device__ __forceinline__ float kv_f32(u16 h) { return h2f(h); }
__device__ __forceinline__ void st_kv(float* p, float v) { *p = v; }
__device__ __forceinline__ void st_kv(u16* p, float v) { *p = f2h(v); }
__device__ __forceinline__ float kv_round(const float*, float v) { return v; }
__device__ __forceinline__ float kv_round(const u16*, float v) { return h2f(f2h(v)); }

// A 16-byte load of data read exactly once (weights): no L1 allocation.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
// Integer sums are exact in any order: one warp-reduction instruction (sm_80+).
__device__ __forceinline__ int warp_sum_i(int v) { return __reduce_add_sync(FULL_MASK, v); }
// Max of non-negative floats (no NaN): their bits order as unsigned integers, so one
// warp-reduction instruction does it, exactly.
__device__ __forceinline__ float warp_max_nonneg(float v) {
    return __uint_as_float(__reduce_max_sync(FULL_MASK, __float_as_uint(v)));
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024); `red` holds 32 values.
// Every thread gets the result. `fresh`: `red` is not read by an earlier reduction still in
// progress, so the barrier that protects its reuse is skipped.
__device__ __forceinline__ float block_sum(float v, float* red, bool fresh = false) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (!fresh) __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}
// Max of non-negative values with no NaN (amax folded with fmaxf from 0: every caller).
__device__ __forceinline__ float block_max(float v, float* red, bool fresh = false) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max_nonneg(v);
    if (!fresh) __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_max_nonneg(v);
}
__device__ __forceinline__ int block_sum_i(int v, int* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_i(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0;
    return warp_sum_i(v);
}

// Barrier of the `n` threads of one team: the whole CUDA block (id 0), or one of several
// independent teams inside a CUDA block (named barrier id > 0: gemv_norm.cu, decode.cu).
__device__ __forceinline__ void team_sync(int id, int n) {
    if (id == 0) {
        __syncthreads();
    } else {
        asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory");
    }
}

// Thread-block clusters (sm_90+; the host launches clusters only there): this block's rank in
// its cluster.
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
#else
__device__ __forceinline__ u32 cluster_rank() { return 0; }
#endif

// A spin that has waited SPIN_LIMIT_NS traps (the launch fails with an error) instead of
// hanging the process: a block that never arrives, or a copy that never lands, is a bug.
#define SPIN_LIMIT_NS 2000000000ull

__device__ __forceinline__ unsigned long long globaltimer_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Per-block timeline stamps for measurements (compile with -DBITNET_STAMPS through
// BITNET_NVRTC_OPTIONS; off otherwise, when the macros are empty). Thread 0 of each block of an
// instrumented kernel takes a ticket of its kind and fills a record of a ring per kind: header
// (ticket | block << 32 | grid << 48), SM id, then global-timer stamps at points 0 (start), 1
// (after the PDL wait), 2 (kernel-specific), 3 (end) and 4..11 (kernel-specific). The host dumps
// the rings when a Gpu is dropped with BITNET_CUDA_STAMPS=<file> set (device.rs);
// tools/stamps.py reads them.
#ifdef BITNET_STAMPS
#define STAMP_KINDS 8
#define STAMP_CAP 131072
#define STAMP_WORDS 14
__device__ unsigned long long g_stamp[STAMP_KINDS * STAMP_CAP * STAMP_WORDS];
__device__ u32 g_stamp_ticket[STAMP_KINDS];
__device__ __forceinline__ unsigned long long*& stamp_rec() {
    __shared__ unsigned long long* rec;
    return rec;
}
__device__ __forceinline__ void stamp_begin(int kind) {
    if (threadIdx.x | threadIdx.y | threadIdx.z) return;
    const unsigned long long t0 = globaltimer_ns();
    const u32 blk = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const u32 grid = gridDim.x * gridDim.y * gridDim.z;
    u32 sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    const u32 t = atomicAdd(&g_stamp_ticket[kind], 1u);
    unsigned long long* r = g_stamp + ((size_t)kind * STAMP_CAP + t % STAMP_CAP) * STAMP_WORDS;
    r[0] = (unsigned long long)t | ((unsigned long long)(blk & 0xffff) << 32) |
           ((unsigned long long)(grid & 0xffff) << 48);
    r[1] = sm;
    r[2] = t0;
    for (int i = 3; i < STAMP_WORDS; ++i) r[i] = 0;
    stamp_rec() = r;
}
__device__ __forceinline__ void stamp_at(int point) {
    if (threadIdx.x | threadIdx.y | threadIdx.z) return;
    stamp_rec()[2 + point] = globaltimer_ns();
}
#define STAMP_BEGIN(kind) stamp_begin(kind)
#define STAMP(point) stamp_at(point)
// The end of the whole block (every thread past this point).
#define STAMP_END()      \
    do {                 \
        __syncthreads(); \
        stamp_at(3);     \
    } while (0)
#else
#define STAMP_BEGIN(kind)
#define STAMP(point)
#define STAMP_END()
#endif

// Called on every turn of a spin that began at `t0`: traps past the limit (checked every 1024
// turns).
__device__ __forceinline__ void spin_check(unsigned long long t0, u32& turns) {
    if ((++turns & 1023u) == 0 && globaltimer_ns() - t0 > SPIN_LIMIT_NS) __trap();
}

// Waits until the mbarrier at shared address `bar` has completed the phase of the given
// parity (sm_90+). CLUSTER: acquire at cluster scope (writes from other blocks of the cluster,
// st.async), else at block scope (bulk copies).
template <bool CLUSTER>
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    u32 done = 0, turns = 0;
    const unsigned long long t0 = globaltimer_ns();
    while (true) {
        if (CLUSTER) {
            asm volatile(
                "{\n .reg .pred p;\n mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, "
                "[%1], %2;\n selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(bar), "r"(parity)
                : "memory");
        } else {
            asm volatile(
                "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                " selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(bar), "r"(parity) : "memory");
        }
        if (done) break;
        spin_check(t0, turns);
    }
#else
    __trap();
#endif
}
