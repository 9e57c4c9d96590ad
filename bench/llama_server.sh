#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` from the llama-cpp-python sdist (PyPI, the same pinned
# source the decode benches use), for bench/serve_bench.py's load comparison; prints its path.
#
#   bench/llama_server.sh [native|avx2]    (default native: GGML_NATIVE=ON, AMX/VNNI where the CPU has it;
#                                           avx2: GGML_NATIVE=OFF with AVX2/FMA/F16C, AMX off)
#
# Everything comes from PyPI (the sdist, cmake and ninja in a venv under target/llama-server/);
# ~10 min on 2 cores the first time, then cached.
set -euo pipefail
flavour="${1:-native}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/target/llama-server"
version=0.3.16
bin="$work/build-$flavour/bin/llama-server"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$work"
[ -x "$work/venv/bin/python" ] || python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check cmake ninja >&2
if [ ! -d "$work/src" ]; then
    # The sdist from the package index's simple API (pip download would build its metadata).
    mkdir -p "$work/sdist" "$work/src"
    python3 - "$version" "$work/sdist/llama.tar.gz" <<'PY'
import json, sys, urllib.request
version, out = sys.argv[1], sys.argv[2]
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req))["files"]
url = next(f["url"] for f in files if f["filename"] == f"llama_cpp_python-{version}.tar.gz")
urllib.request.urlretrieve(url, out)
PY
    tar -xzf "$work/sdist/llama.tar.gz" -C "$work/src" --strip-components=1
fi
case "$flavour" in
    native) flags=(-DGGML_NATIVE=ON) ;;
    avx2) flags=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF) ;;
    *) echo "llama_server.sh: unknown flavour $flavour (native|avx2)" >&2; exit 2 ;;
esac
PATH="$work/venv/bin:$PATH" cmake -S "$work/src/vendor/llama.cpp" -B "$work/build-$flavour" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF "${flags[@]}" >&2
PATH="$work/venv/bin:$PATH" cmake --build "$work/build-$flavour" --target llama-server -j "$(nproc)" >&2
echo "$bin"
