// Embedding lookup, RoPE, KV store and the element-wise operations.

// The table row of id `i` of `ids`, clamped into the table's `rows`: ids on the device may come
// from a sampler that found nothing to sample (-1); the host reports that, and the step that
// read it is discarded, but the read stays inside the table.
__device__ __forceinline__ size_t embed_row(const IdsArg& ids, int i, int rows) {
    return (size_t)min(max(token_id(ids, i), 0), rows - 1);
}

// The embedding kernels wait for their predecessor before they let the next kernel launch
// (the other kernels trigger first): every kernel queued after an embedding starts only once all
// work queued before it has finished, which lets a decode step's attention read the KV cache
// of earlier steps before its own PDL wait (ops::rope_attention, `early`).
#define EMBED_ENTER() \
    do {              \
        PDL_WAIT();   \
        PDL_TRIGGER(); \
    } while (0)

// out[r] = table[ids[r]] (f16 table, `rows` rows); grid: one block per row.
extern "C" __global__ void embed_f16(const u16* __restrict__ table, const __grid_constant__ IdsArg ids,
                                     float* __restrict__ out, int d, int rows) {
    STAMP_BEGIN(4);
    EMBED_ENTER();
    STAMP(1);
    const int r = blockIdx.x;
    const u16* src = table + embed_row(ids, r, rows) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)r * d + i] = h2f(src[i]);
    STAMP_END();
}

// out[r] = table[ids[r]] (f32 table).
extern "C" __global__ void embed_f32(const float* __restrict__ table, const __grid_constant__ IdsArg ids,
                                     float* __restrict__ out, int d, int rows) {
    STAMP_BEGIN(4);
    EMBED_ENTER();
    STAMP(1);
    const int r = blockIdx.x;
    const float* src = table + embed_row(ids, r, rows) * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[(size_t)r * d + i] = src[i];
}

// Rotate-half RoPE in place on head blockIdx.y of row blockIdx.x: with a = pos * inv_freq[i],
// (x_i, x_{i+half}) <- (x_i cos a - x_{i+half} sin a, x_{i+half} cos a + x_i sin a).
extern "C" __global__ void rope(float* __restrict__ x, const float* __restrict__ inv_freq,
                                const __grid_constant__ RowsArg rows, int heads, int hd) {
    PDL_ENTER();
    const int r = blockIdx.x, h = blockIdx.y, half = hd >> 1;
    const float pos = (float)row_pos(rows, r);
    float* v = x + ((size_t)r * heads + h) * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float sn, cs;
        sincosf(__fmul_rn(pos, inv_freq[j]), &sn, &cs);
        const float x1 = v[j], x2 = v[j + half];
        v[j] = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
        v[j + half] = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
    }
}

// rope on q (heads) and k (kvh heads) in place, then k and v into the cache of `layer`, in one
// launch: grid (rows, heads + kvh); block y < heads ropes q head y, the others k head y - heads
// and store it with its v head (the same float operations as rope + store_kv). KV: the cache's
// element (float, or u16 holding f16: st_kv).
template <typename KV>
__device__ __forceinline__ void rope_store_body(float* __restrict__ q, float* __restrict__ k,
                                                const float* __restrict__ v,
                                                const float* __restrict__ inv_freq,
                                                KV* __restrict__ kc, KV* __restrict__ vc,
                                                const RowsArg& rows, int heads, int kvh, int hd,
                                                int layer, int slots, int max_seq) {
    PDL_ENTER();
    const int r = blockIdx.x, h = blockIdx.y, half = hd >> 1;
    const int p = row_pos(rows, r);
    const float pos = (float)p;
    const bool is_k = h >= heads;
    const int kh = h - heads;
    float* x = is_k ? k + ((size_t)r * kvh + kh) * hd : q + ((size_t)r * heads + h) * hd;
    size_t dst = 0;
    if (is_k) dst = ((((size_t)layer * slots + row_slot(rows, r)) * kvh + kh) * max_seq + p) * hd;
    const float* vr = v + ((size_t)r * kvh + kh) * hd;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float sn, cs;
        sincosf(__fmul_rn(pos, inv_freq[j]), &sn, &cs);
        const float x1 = x[j], x2 = x[j + half];
        const float y1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
        const float y2 = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
        x[j] = y1;
        x[j + half] = y2;
        if (is_k) {
            st_kv(kc + dst + j, y1);
            st_kv(kc + dst + j + half, y2);
            st_kv(vc + dst + j, vr[j]);
            st_kv(vc + dst + j + half, vr[j + half]);
        }
    }
}

// Copies each row's keys and values (kvh * hd values) into the cache of `layer`:
// cache[layer][slot][head][pos][hd]. Grid: rows.
template <typename KV>
__device__ __forceinline__ void store_kv_body(KV* __restrict__ kc, KV* __restrict__ vc,
                                              const float* __restrict__ k,
                                              const float* __restrict__ v, const RowsArg& rows,
                                              int layer, int slots, int max_seq, int kvh,
                                              int hd) {
    PDL_ENTER();
    const int r = blockIdx.x;
    const int slot = row_slot(rows, r), pos = row_pos(rows, r);
    const int w = kvh * hd;
    for (int i = threadIdx.x; i < w; i += blockDim.x) {
        const int h = i / hd, e = i - h * hd;
        const size_t dst = ((((size_t)layer * slots + slot) * kvh + h) * max_seq + pos) * hd + e;
        st_kv(kc + dst, k[(size_t)r * w + i]);
        st_kv(vc + dst, v[(size_t)r * w + i]);
    }
}

// rope_store / store_kv into an f32 cache, and (suffix _h) into an f16 one.
#define KV_STORE_KERNELS(KV, SUF)                                                              \
    extern "C" __global__ void rope_store##SUF(                                                \
        float* __restrict__ q, float* __restrict__ k, const float* __restrict__ v,             \
        const float* __restrict__ inv_freq, KV* __restrict__ kc, KV* __restrict__ vc,          \
        const __grid_constant__ RowsArg rows, int heads, int kvh, int hd, int layer, int slots, \
        int max_seq) {                                                                         \
        rope_store_body<KV>(q, k, v, inv_freq, kc, vc, rows, heads, kvh, hd, layer, slots,     \
                            max_seq);                                                          \
    }                                                                                          \
    extern "C" __global__ void store_kv##SUF(KV* __restrict__ kc, KV* __restrict__ vc,         \
                                             const float* __restrict__ k,                      \
                                             const float* __restrict__ v,                      \
                                             const __grid_constant__ RowsArg rows, int layer,  \
                                             int slots, int max_seq, int kvh, int hd) {        \
        store_kv_body<KV>(kc, vc, k, v, rows, layer, slots, max_seq, kvh, hd);                 \
    }
KV_STORE_KERNELS(float, )
KV_STORE_KERNELS(u16, _h)

// gate = relu(gate)^2 * up.
extern "C" __global__ void relu2_mul(float* __restrict__ gate, const float* __restrict__ up,
                                     int len) {
    PDL_ENTER();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x) {
        const float r = fmaxf(gate[i], 0.0f);
        gate[i] = __fmul_rn(__fmul_rn(r, r), up[i]);
    }
}

// gate = silu(gate) * up = gate / (1 + exp(-gate)) * up (as torch's SiLU; silu_mul1 in
// gemv_norm.cu, shared with the fused kernel).
extern "C" __global__ void silu_mul(float* __restrict__ gate, const float* __restrict__ up,
                                    int len) {
    PDL_ENTER();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        gate[i] = silu_mul1(gate[i], up[i]);
}

// x += y.
extern "C" __global__ void add_f32(float* __restrict__ x, const float* __restrict__ y, int len) {
    PDL_ENTER();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        x[i] += y[i];
}

// dst = src over `len` values (a kernel rather than a memcpy, so deferred steps record it).
extern "C" __global__ void copy_f32(float* __restrict__ dst, const float* __restrict__ src,
                                    int len) {
    PDL_ENTER();
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < len; i += gridDim.x * blockDim.x)
        dst[i] = src[i];
}

// out[block] = XOR of the 16-byte words at p that block `block` read (all four lanes folded;
// the XOR of every out[] is the XOR of all n words): a read-only stream at the GEMV's access
// width, for the device's read bandwidth (the bench's floor for one pass over the weights).
// Grid-stride, four loads in flight per thread, issued before the PDL wait (p is constant data,
// as weights are); one store per block, no atomics.
extern "C" __global__ void read_xor(const uint4* __restrict__ p, long long n, u32* out) {
    __shared__ u32 red[32];
    PDL_TRIGGER();
    const long long stride = (long long)gridDim.x * blockDim.x;
    u32 acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += 4 * stride) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u)
            v[u] = i + u * stride < n ? ld_stream(p + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < 4; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc ^= __shfl_xor_sync(FULL_MASK, acc, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) acc ^= red[w];
        PDL_WAIT();
        out[blockIdx.x] = acc;
    }
}
