#!/usr/bin/env bash
# Tailor vs llama.cpp on the same GGUF, same settings, back to back; prints a table.
#
#   bench/compare.sh --model M.gguf [--threads 2] [--prompt-tokens 128] [--gen-tokens 128] [--repeat 5] [--ctx 2048]
#
# Tailor: $TAILOR_BIN (default target/release/tailor; build: cargo build --release -p tailor-cli).
# llama.cpp: bench/llamacpp_peer.py in the peer venv ($PEER_VENV or .venv-peer/, see
# scripts/peer-venv.sh); $PEER_ARGS adds arguments to it (e.g. PEER_ARGS=--repack).
# llama-server builds (bench/llama_server.sh): $LLAMA_SERVER (default
# target/llama-server/build-native/bin/llama-server) when present is measured twice, with its
# default repacking (AMX/VNNI layouts on this Xeon) and with --no-repack (weights as stored:
# its plain AVX-512/VNNI dot products), through bench/llamacpp_server_peer.py.
# The JSON results are kept in $OUT_DIR (default: a temp dir).
# Run it on an otherwise idle machine: both engines use all the threads asked for.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="" threads=2 prompt=128 gen=128 repeat=5 ctx=2048
while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --prompt-tokens) prompt="$2"; shift 2 ;;
        --gen-tokens) gen="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        --ctx) ctx="$2"; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$model" ] || { echo "compare.sh: --model PATH is required" >&2; exit 2; }
[ -f "$model" ] || { echo "compare.sh: model not found: $model" >&2; exit 2; }

tailor_bin="${TAILOR_BIN:-$root/target/release/tailor}"
out="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$out"
settings=(--model "$model" --threads "$threads" --prompt-tokens "$prompt" --gen-tokens "$gen" --repeat "$repeat" --ctx "$ctx")

: > "$out/tailor.json"
if [ ! -x "$tailor_bin" ]; then
    echo "compare.sh: no tailor binary at $tailor_bin (build it: cargo build --release -p tailor-cli);" \
         "showing llama.cpp only" >&2
else
    echo "compare.sh: tailor bench ..." >&2
    # shellcheck disable=SC2086 # $TAILOR_ARGS: extra flags for tailor bench (e.g. --repack)
    if ! "$tailor_bin" bench --json "${settings[@]}" ${TAILOR_ARGS:-} > "$out/tailor.json"; then
        echo "compare.sh: '$tailor_bin bench --json ...' failed; showing llama.cpp only" >&2
        : > "$out/tailor.json"
    fi
fi

peers=()
server="${LLAMA_SERVER:-$root/target/llama-server/build-native/bin/llama-server}"
if [ -x "$server" ]; then
    for mode in repack no-repack; do
        echo "compare.sh: llama-server ($mode) ..." >&2
        extra=()
        [ "$mode" = no-repack ] && extra=(--no-repack)
        if python3 "$root/bench/llamacpp_server_peer.py" --server "$server" "${settings[@]}" "${extra[@]}" > "$out/llama-server-$mode.json"; then
            peers+=("$out/llama-server-$mode.json")
        fi
    done
fi
if [ -z "${SKIP_PEER_VENV:-}" ]; then
    echo "compare.sh: llama.cpp peer (llama-cpp-python) ..." >&2
    # shellcheck disable=SC2086
    if python3 "$root/bench/llamacpp_peer.py" "${settings[@]}" ${PEER_ARGS:-} > "$out/llamacpp.json"; then
        peers+=("$out/llamacpp.json")
    fi
fi

python3 "$root/bench/compare.py" "$out/tailor.json" "${peers[@]}"
echo "(results: $out)" >&2
