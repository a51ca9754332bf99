#!/bin/bash
# Runs the CUDA test binaries, the kernel table and the end-to-end benches on a GPU machine;
# its logs are packed into $OUT/cuda-logs.tgz (default OUT ./cuda-logs), one file, also when
# the run is stopped (the device tool brings back only a few files). Build here first and put
# stripped binaries in .prof/:
#   cargo build --release -p bitnet-cli -p bitnet-cuda
#   cargo test --release -p bitnet-cuda -p bitnet-inference --test kernels --test cuda_backend \
#     --test cuda_parity --test cuda_sampling --no-run   (and bitnet-cuda --lib as bitnet_cuda_unit)
OUT=${OUT:-$PWD/cuda-logs}; mkdir -p "$OUT"
LOG=$(mktemp -d)
save() { tar czf "$OUT/cuda-logs.tgz" -C "$LOG" .; }
trap save EXIT
trap 'exit 143' TERM INT
REPO=$(pwd); cd "$REPO/.prof"
libdir() { find / -xdev \( -path /proc -o -path /sys \) -prune -o -name "$1" -print 2>/dev/null | head -1 | xargs -r dirname; }
NV=$(libdir 'libnvrtc.so.13*'); CB=$(libdir 'libcublas.so.13*')
export LD_LIBRARY_PATH=$NV:$CB:$LD_LIBRARY_PATH BITNET_FIXTURES=$REPO/tests/fixtures
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee $LOG/env.log
echo "BITNET_NVRTC_OPTIONS=${BITNET_NVRTC_OPTIONS:-}" | tee -a $LOG/env.log
for t in bitnet_cuda_unit kernels cuda_backend cuda_parity cuda_sampling; do ./$t 2>&1 > $LOG/test_$t.log; grep -E "test result|FAILED|panicked" $LOG/test_$t.log; done
# The GEMV for 3..8 tokens (by default those go to the tensor-core GEMM).
BITNET_GEMV_MAX_M=8 ./kernels 2>&1 > $LOG/test_kernels_gemv8.log; grep -E "test result|FAILED|panicked" $LOG/test_kernels_gemv8.log
./bitnet-cuda-bench 2>&1 | tee $LOG/kbench.log | grep -v "^$"
# The experimental one-kernel decode step (BITNET_CUDA_ONE_KERNEL=1): per layer, per phase.
./bitnet-cuda-bench --stack 128 2>&1 | tee $LOG/stack.log | tail -24
./bitnet bench --device cuda --synthetic 2b4t -p 128 -n 64 -r 3 --batch 1,8,64 2>&1 | tee $LOG/e2e.log | grep -E "pp128|tg64|^\| [0-9]+ \||bytes read"
# Decode deep into a conversation (2000 / 4000 tokens already in the KV cache).
for d in 2000 4000; do ./bitnet bench --device cuda --synthetic 2b4t -p 0 -d $d -n 64 -r 3 2>&1 | tee $LOG/e2e_d$d.log | grep -E "tg64|bytes read"; done
# A LLaMA-architecture model (SiLU, no sub-norms): Falcon3-1B's shapes.
./bitnet bench --device cuda --synthetic falcon3-1b -p 128 -n 64 -r 3 --batch 1,64 2>&1 | tee $LOG/e2e_falcon3.log | grep -E "pp128|tg64|^\| [0-9]+ \||bytes read"
BITNET_CUDA_PDL=0 ./bitnet bench --device cuda --synthetic 2b4t -p 128 -n 64 -r 3 --batch 1,64 2>&1 | tee $LOG/e2e_nopdl.log | grep -E "pp128|tg64|^\| [0-9]+ \|"
BITNET_CUDA_FUSE_NORM=0 BITNET_CUDA_FUSE_ROPE=0 ./bitnet bench --device cuda --synthetic 2b4t -p 128 -n 64 -r 3 --batch 1,8 2>&1 | tee $LOG/e2e_unfused.log | grep -E "tg64|^\| [0-9]+ \|"
BITNET_CUDA_ONE_KERNEL=1 ./bitnet bench --device cuda --synthetic 2b4t -p 128 -n 64 -r 3 --batch 1 2>&1 | tee $LOG/e2e_onekernel.log | grep -E "tg64|^\| [0-9]+ \|"
BITNET_CUDA_GRAPHS=0 ./bitnet bench --device cuda --synthetic 2b4t -p 0 -n 64 -r 3 2>&1 | tee $LOG/e2e_nographs.log | grep -E "tg64"
./bitnet bench --device cuda --synthetic 2b4t -p 128 -n 32 -r 1 --profile --batch 64 2>&1 > $LOG/profile.log
./bitnet generate -m ../models/default -p "ROMEO:" -n 40 --seed 1 --device cuda > $LOG/gen_cuda.log 2> $LOG/gen_cuda.err
./bitnet generate -m ../models/default -p "ROMEO:" -n 40 --seed 1 --device cpu > $LOG/gen_cpu.log 2> $LOG/gen_cpu.err
tail -1 $LOG/gen_cuda.err; cmp -s $LOG/gen_cuda.log $LOG/gen_cpu.log && echo "generate: cuda == cpu text" || echo "generate: cuda and cpu text DIFFER"
