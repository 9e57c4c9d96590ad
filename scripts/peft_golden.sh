#!/usr/bin/env bash
# Regenerates sdk/tests/data/peft/ with the real PEFT (see scripts/peft_golden.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(bash scripts/torch-venv.sh)"
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" scripts/peft_golden.py
