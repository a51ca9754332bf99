#!/usr/bin/env bash
# Builds for aarch64 Linux and runs tests there under qemu user-mode emulation, twice: on a CPU
# with the dot-product extension (qemu's `max`: the `neon-dotprod` kernels) and on one without
# (Cortex-A72, a Raspberry Pi 4's core: the `neon` kernels). Checks correctness only; qemu's
# timings say nothing about a real Arm CPU.
#
#   tools/test_aarch64.sh                       # bitnet-quant (every kernel against scalar.rs)
#   tools/test_aarch64.sh -p bitnet-inference   # other packages: arguments go to `cargo test`
#
# Needs (Debian/Ubuntu): rustup target add aarch64-unknown-linux-gnu;
#   apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
missing=()
rustup target list --installed 2>/dev/null | grep -qx "$target" || missing+=("rustup target add $target")
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=("apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross")
command -v qemu-aarch64-static >/dev/null || missing+=("apt-get install qemu-user-static")
if ((${#missing[@]})); then
    printf 'test_aarch64.sh: missing prerequisites; run:\n' >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 2
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
args=("$@")
((${#args[@]})) || args=(-p bitnet-quant)
for cpu in max cortex-a72; do
    echo "== aarch64, qemu -cpu $cpu"
    QEMU_CPU=$cpu cargo test --release --target "$target" "${args[@]}"
done
