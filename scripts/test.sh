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

# The Python package `tailor` (python/) and the Flower harness (tests/federated/), in a venv
# under target/tmp (needs python3 with venv and the package index). The wheel is built by
# maturin into the workspace's target/release, reusing what `cargo test --workspace --release`
# built above (python/Cargo.toml's feature shims keep the dependency hashes equal), and the
# tests import the installed wheel, never python/ itself.
echo "== Python package: build the wheel, pytest python/tests =="
PY_VENV=target/tmp/py-venv
[ -x "$PY_VENV/bin/python" ] || python3 -m venv "$PY_VENV"
"$PY_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    maturin==1.16.0 pytest==9.2.0 numpy==2.4.6
rm -rf target/tmp/wheels
"$PY_VENV/bin/maturin" build --release --strip -m python/Cargo.toml \
    --interpreter "$PY_VENV/bin/python" --out target/tmp/wheels
"$PY_VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
    target/tmp/wheels/tailor-*.whl
"$PY_VENV/bin/python" -m pytest -q -p no:cacheprovider python/tests

echo "== Federated harness: Flower Simulation + Deployment runtimes on the real model =="
"$PY_VENV/bin/python" -m pip install -q --disable-pip-version-check "flwr[simulation]==1.42.0"
"$PY_VENV/bin/python" -m pytest -q -p no:cacheprovider -s tests/federated
