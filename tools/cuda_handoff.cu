// What one step of a dependent kernel chain costs on this GPU, whatever the kernel does: the
// floor under every kernel of a decode step (crates/bitnet-cuda/NOTES.md, thirteenth session).
// Standalone CUDA C++ (not part of the Rust build); on a machine with nvcc:
//
//   nvcc -O3 -arch=sm_90 -o /tmp/cuda_handoff tools/cuda_handoff.cu && /tmp/cuda_handoff
//
// A chain of 150 kernels of one 1024-thread block per SM (as the fused norm + GEMV kernels),
// each reading what the previous one wrote, captured in a CUDA graph and replayed 50 times;
// printed: microseconds per kernel. Each kernel either only writes (the hand-off alone) or
// first reads a 2560-float row and sums it over the block (as a norm does), and waits for its
// predecessor in one of four ways:
//   plain:    no programmatic dependent launch (PDL);
//   pdl:      launched with PDL, griddepcontrol.launch_dependents then griddepcontrol.wait;
//   flag-acq: launched with PDL, no wait: thread 0 spins on the previous kernel's counter with
//             ld.acquire; each block adds 1 to its own counter with red.release at its end;
//   flag-rlx: the same with relaxed loads and one fence.acq_rel after the spin.
// And a persistent kernel doing the same steps separated by a grid barrier (one counter).
// Then the PDL chain again by threads a block, blocks and shared memory a block (with little
// shared memory the next kernel's blocks may be resident while this one runs): smaller blocks
// hand off a little faster but read and sum the row much slower (NOTES.md, 23rd session).
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CK(x)                                                                          \
    do {                                                                               \
        cudaError_t e = (x);                                                           \
        if (e != cudaSuccess) {                                                        \
            printf("%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e));           \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

constexpr int ROW = 2560, CHAIN = 150, REPLAYS = 50;

__device__ __forceinline__ unsigned ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned ld_relaxed(const unsigned* p) {
    unsigned v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void red_release(unsigned* p) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(p) : "memory");
}

// Step i's body: with `read`, the block sums the row step i - 1 wrote; every block writes its
// share of step i's row.
__device__ __forceinline__ void body(float* buf, int i, bool read, float* red) {
    float v = 0.0f;
    if (read) {
        const float* prev = buf + (size_t)((i + 1) & 1) * 4096;
        for (int k = threadIdx.x; k < ROW; k += blockDim.x) v += __ldcg(prev + k);
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
        if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
        __syncthreads();
        if (threadIdx.x < 32) {
            v = red[threadIdx.x];
            for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
        }
    }
    float* out = buf + (size_t)(i & 1) * 4096;
    const int per = (ROW + gridDim.x - 1) / gridDim.x, at = blockIdx.x * per + threadIdx.x;
    if (threadIdx.x < per && at < ROW) out[at] = v * 1e-6f;
}

enum Mode { PLAIN, PDL, FLAG_ACQ, FLAG_RLX };

template <int MODE>
__global__ void __launch_bounds__(1024, 1) step(float* buf, unsigned* cnt, int i, int read) {
    __shared__ float red[32];
    if (MODE != PLAIN) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (MODE == PDL) asm volatile("griddepcontrol.wait;" ::: "memory");
    if (MODE == FLAG_ACQ || MODE == FLAG_RLX) {
        if (threadIdx.x == 0 && i > 0) {
            const unsigned* c = cnt + (i - 1) * 32;
            if (MODE == FLAG_ACQ) {
                while (ld_acquire(c) < gridDim.x) {
                }
            } else {
                while (ld_relaxed(c) < gridDim.x) {
                }
                asm volatile("fence.acq_rel.gpu;" ::: "memory");
            }
        }
        __syncthreads();
    }
    body(buf, i, read != 0, red);
    if (MODE == FLAG_ACQ || MODE == FLAG_RLX) {
        __syncthreads();
        if (threadIdx.x == 0) red_release(cnt + i * 32);
    }
}

__global__ void __launch_bounds__(1024, 1) persistent(float* buf, unsigned* bar, int steps,
                                                      int read) {
    __shared__ float red[32];
    for (int i = 0; i < steps; ++i) {
        body(buf, i, read != 0, red);
        __syncthreads();
        if (threadIdx.x == 0) {
            red_release(bar);
            const unsigned target = (i + 1) * gridDim.x;
            while (ld_relaxed(bar) < target) {
            }
            asm volatile("fence.acq_rel.gpu;" ::: "memory");
        }
        __syncthreads();
    }
}

// Microseconds per kernel of the chain (graph replays).
template <int MODE>
float chain(float* buf, unsigned* cnt, cudaStream_t st, int blocks, int read, int threads = 1024,
            int smem = 150 * 1024) {
    // By default 150 KB of shared memory a block: one block per SM, as the fused kernels'
    // registers force.
    CK(cudaFuncSetAttribute(step<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
    CK(cudaMemsetAsync(cnt, 0, (size_t)CHAIN * 32 * 4, st));
    for (int i = 0; i < CHAIN; ++i) {
        cudaLaunchConfig_t c = {};
        c.gridDim = blocks;
        c.blockDim = threads;
        c.dynamicSmemBytes = smem;
        c.stream = st;
        cudaLaunchAttribute a[1];
        a[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        a[0].val.programmaticStreamSerializationAllowed = 1;
        c.attrs = a;
        c.numAttrs = MODE != PLAIN && i > 0 ? 1 : 0;
        CK(cudaLaunchKernelEx(&c, step<MODE>, buf, cnt, i, read));
    }
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int r = 0; r < 5; ++r) CK(cudaGraphLaunch(ge, st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    CK(cudaEventRecord(e0, st));
    for (int r = 0; r < REPLAYS; ++r) CK(cudaGraphLaunch(ge, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaStreamSynchronize(st));
    float ms;
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return ms * 1000.0f / REPLAYS / CHAIN;
}

// Microseconds per step of the persistent kernel (best of 5 launches).
float grid_barrier(float* buf, unsigned* cnt, cudaStream_t st, int blocks, int read) {
    const int smem = 150 * 1024, steps = 1500;
    CK(cudaFuncSetAttribute(persistent, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e9f;
    for (int r = 0; r < 6; ++r) {
        CK(cudaMemsetAsync(cnt, 0, 128, st));
        CK(cudaEventRecord(e0, st));
        persistent<<<blocks, 1024, smem, st>>>(buf, cnt, steps, read);
        CK(cudaEventRecord(e1, st));
        CK(cudaStreamSynchronize(st));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && ms < best) best = ms;
    }
    return best * 1000.0f / steps;
}

int main() {
    float* buf;
    unsigned* cnt;
    cudaStream_t st;
    CK(cudaMalloc(&buf, 8192 * sizeof(float)));
    CK(cudaMemset(buf, 0, 8192 * sizeof(float)));
    CK(cudaMalloc(&cnt, CHAIN * 32 * sizeof(unsigned)));
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    int sms;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp p;
    CK(cudaGetDeviceProperties(&p, 0));
    printf("%s, %d SMs: a chain of %d kernels of %d x 1024 threads, us per kernel\n", p.name, sms,
           CHAIN, sms);
    printf("| kernel body | plain | pdl | flag-acq | flag-rlx | persistent, grid barrier |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: |\n");
    for (int read = 0; read < 2; ++read) {
        for (int rep = 0; rep < 2; ++rep) {
            printf("| %s | %.3f | %.3f | %.3f | %.3f | %.3f |\n",
                   read ? "read + block sum of a 2560-float row" : "write only",
                   chain<PLAIN>(buf, cnt, st, sms, read), chain<PDL>(buf, cnt, st, sms, read),
                   chain<FLAG_ACQ>(buf, cnt, st, sms, read),
                   chain<FLAG_RLX>(buf, cnt, st, sms, read), grid_barrier(buf, cnt, st, sms, read));
        }
    }
    // The PDL hand-off against block size and residency: with little shared memory the next
    // kernel's blocks can be resident (launched by launch_dependents) while this one runs.
    printf("\nPDL chain, us per kernel, by threads a block, blocks, shared memory a block\n");
    printf("| threads | blocks | smem KB | write only | read + block sum |\n");
    printf("| ---: | ---: | ---: | ---: | ---: |\n");
    const int cfg[][3] = {{1024, 1, 150}, {1024, 1, 0}, {512, 1, 150}, {512, 1, 0},
                          {256, 1, 150}, {256, 1, 0},   {256, 2, 0},   {128, 1, 0}};
    for (const auto& c : cfg) {
        const int blocks = sms * c[1], smem = c[2] * 1024;
        printf("| %d | %d | %d | %.3f | %.3f |\n", c[0], blocks, c[2],
               chain<PDL>(buf, cnt, st, blocks, 0, c[0], smem),
               chain<PDL>(buf, cnt, st, blocks, 1, c[0], smem));
    }
    return 0;
}
