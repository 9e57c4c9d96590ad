#!/usr/bin/env bash
# Makes (once) the Python venv with the reference libraries that produced our golden files:
# torch, transformers, peft, sentence-transformers, gguf. Used only by the scripts that
# regenerate fixtures (scripts/peft_golden.py, scripts/golden_embeddings.py), never by the SDK
# or the test suite, which read the committed outputs. About 3 GB (PyPI's torch wheel pulls
# the CUDA runtime packages). Prints the venv's python.
set -euo pipefail
VENV="${TORCH_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv-torch}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, peft, transformers, gguf" 2>/dev/null; then
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.23.0 peft==0.21.2 \
        sentence-transformers==6.2.0 gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0 >&2
fi
echo "$VENV/bin/python"
