#!/usr/bin/env bash
# Ensure the Python venv that holds the llama.cpp peer (llama-cpp-python, pinned) exists.
#
#   scripts/peer-venv.sh                 create/check the venv, print its path
#   scripts/peer-venv.sh python ARGS...  ... then run ARGS with the venv's python
#
# The venv is $PEER_VENV if set (e.g. an existing one), else .venv-peer/ at the repo root.
# Everything comes from PyPI; llama-cpp-python builds llama.cpp from source (~10 min on 2 cores).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.16
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PEER_VENV:-$repo_root/.venv-peer}"
py="$venv/bin/python"

if [ ! -x "$py" ]; then
    echo "peer-venv: creating $venv" >&2
    python3 -m venv "$venv"
fi

have="$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)"
if [ "$have" != "$LLAMA_CPP_PYTHON_VERSION" ]; then
    echo "peer-venv: installing llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION into $venv (builds llama.cpp; takes a while)" >&2
    "$py" -m pip install --quiet "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy jinja2 safetensors >&2
fi

if [ "$#" -eq 0 ]; then
    echo "$venv"
    exit 0
fi
if [ "$1" = "python" ]; then
    shift
    exec "$py" "$@"
fi
echo "usage: $0 [python ARGS...]" >&2
exit 2
