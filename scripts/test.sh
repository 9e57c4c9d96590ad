#!/usr/bin/env bash
# The test suite: fetches the real model (a no-op when present), runs every workspace test,
# and runs the kernel tests for ARM64 under qemu when the cross toolchain is installed
# (.ci/run installs it; on a machine without it that part is skipped with a notice).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo run --release -q -p tailor-cli -- models fetch >/dev/null
cargo test --workspace --release
# The memory crate's encryption at rest (SQLCipher with vendored OpenSSL; a separate build).
cargo test --release -p tailor-memory --features encryption

if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null \
    && rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu; then
    echo "== ARM64 kernels under qemu-aarch64 =="
    cargo test --release -p tailor --lib --target aarch64-unknown-linux-gnu kernels
    echo "== C ABI (tailor-ffi) cross-built for ARM64: C programs under qemu-aarch64 =="
    cargo test --release -p tailor-ffi --target aarch64-unknown-linux-gnu --test it
    if rustup target list --installed 2>/dev/null | grep -q aarch64-linux-android; then
        bash ffi/ci/check-mobile.sh android
    fi
    if rustup target list --installed 2>/dev/null | grep -q aarch64-apple-ios; then
        bash ffi/ci/check-mobile.sh ios
    fi
else
    echo "NOTICE: ARM64 kernel tests skipped (needs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user and the rustup target aarch64-unknown-linux-gnu; .ci/run installs them)" >&2
fi
