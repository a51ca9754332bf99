// Greedy token picks over many blocks per row (uses argmax_key and argmax_id from sample.cu,
// each_logit and block_max_u64 from sample_search.cu; compiled after both).

// Greedy picks split over gridDim.x blocks per row (grid: parts x rows, chunks of `chunk`
// logits, a multiple of 4): each block's best (value key, ~id) goes to parts[row][p], and the
// last block of a row to finish (a ticket) merges them, puts the pick where `to` says (out[row]
// and so on, put_id) and resets the ticket.
// The answer is sample_rows's with greedy set (scan_row): the first +inf, else the largest
// finite logit (lowest id among equals, -0 as +0), else -1. One block per row scanned the
// 128,256 logits of a 2B-4T row in ~18 us of a decode step.
#define GREEDY_THREADS 256
extern "C" __global__ void __launch_bounds__(GREEDY_THREADS)
    sample_greedy(const float* __restrict__ logits, u64* parts, u32* tickets,
                  int* __restrict__ out, const __grid_constant__ PickTo to, int n, int chunk) {
    STAMP_BEGIN(3);
    PDL_ENTER();
    STAMP(1);
    __shared__ u64 slots[32];
    __shared__ int last;
    const int row = blockIdx.y, p = blockIdx.x, np = gridDim.x;
    const int i0 = p * chunk, len = max(0, min(n - i0, chunk));
    u64 best = 0ull;
    auto f = [&](int i, float x) {
        if (x == POS_INF || fabsf(x) <= FLT_BIG) {
            const u64 k = argmax_key(x, i0 + i);
            best = k > best ? k : best;
        }
    };
    each_logit(logits + (size_t)row * n + i0, len, f);
    best = block_max_u64(best, slots);
    u64* pr = parts + (size_t)row * np;
    if (threadIdx.x == 0) {
        pr[p] = best;
        __threadfence();  // the part before the ticket
        last = atomicAdd(tickets + row, 1u) == (u32)(np - 1);
    }
    __syncthreads();
    STAMP(2);
    if (!last) return;
    __threadfence();
    u64 k = 0ull;
    for (int j = threadIdx.x; j < np; j += blockDim.x) {
        const u64 t = __ldcg(pr + j);
        k = t > k ? t : k;
    }
    k = block_max_u64(k, slots);
    if (threadIdx.x == 0) {
        put_id(out, to, row, argmax_id(k));
        tickets[row] = 0u;
    }
    STAMP(3);
}
