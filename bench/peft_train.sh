#!/usr/bin/env bash
# Tailor vs PEFT: LoRA training throughput and peak RSS on the same model, same settings, back
# to back in one run (r = 8 on all seven projections, sequence 256, batch 1, f32 LoRA
# parameters, AdamW, 2 threads). Not a test; prints both JSON lines and the ratios.
#
#   bench/peft_train.sh [--model M.gguf] [--threads 2] [--seq 256] [--steps 6] [--checkpointing]
#   bench/peft_train.sh --short 64 [--batch 16] [--pack 512] [--repeat 3] [--steps 6] ...
#
# --checkpointing runs Tailor with activation checkpointing (PEFT stays without).
# --short N: the feedback case: N chat-templated question + one-sentence answer examples
# (30-80 tokens), --batch per step. Each repetition runs, as separate processes: Tailor packed
# (--pack tokens per pass), Tailor unpacked (one pass per example), PEFT on the same token ids
# (padded batches) and PEFT on one --seq sequence (the long-sequence reference); prints the
# medians over --repeat repetitions and the ratios.
#
# Model: default $TAILOR_HOME/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf
# (TAILOR_HOME defaults to ~/.cache/tailor). PEFT runs in the torch venv: $TORCH_VENV, else
# /work/venv-torch if present, else the one scripts/torch-venv.sh makes (~3 GB, once).
# Run it on an otherwise idle machine: both sides use all the threads asked for.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${TAILOR_HOME:-$HOME/.cache/tailor}/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
threads=2 seq=256 steps=6 extra=() short=0 batch=16 pack=512 repeat=3
while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --seq) seq="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --checkpointing) extra+=(--checkpointing); shift ;;
        --short) short="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --pack) pack="$2"; shift 2 ;;
        --repeat) repeat="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "peft_train.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -f "$model" ] || { echo "peft_train.sh: model not found: $model" >&2; exit 2; }

if [ -n "${TORCH_VENV:-}" ]; then py="$TORCH_VENV/bin/python"
elif [ -x /work/venv-torch/bin/python ]; then py=/work/venv-torch/bin/python
else py="$("$root/scripts/torch-venv.sh")"; fi

out="${OUT_DIR:-$(mktemp -d)}"
mkdir -p "$out"
echo "peft_train.sh: building the Tailor bench ..." >&2
(cd "$root" && cargo build -q --release -p tailor-trainer --bench train)
bin="$(ls -t "$root"/target/release/deps/train-* | grep -v '\.d$' | head -1)"

if [ "$short" -gt 0 ]; then
    ex="$out/examples.json"
    for r in $(seq "$repeat"); do
        echo "peft_train.sh: repetition $r/$repeat: Tailor packed ..." >&2
        "$bin" --model "$model" --threads "$threads" --steps "$steps" --short "$short" --batch "$batch" --pack "$pack" \
            --dump-examples "$ex" ${extra[@]+"${extra[@]}"} > "$out/tailor-packed-$r.json"
        echo "peft_train.sh: Tailor unpacked ..." >&2
        "$bin" --model "$model" --threads "$threads" --steps "$steps" --short "$short" --batch "$batch" --pack 0 \
            ${extra[@]+"${extra[@]}"} > "$out/tailor-unpacked-$r.json"
        echo "peft_train.sh: PEFT on the same examples ..." >&2
        "$py" "$root/bench/peft_train.py" --model "$model" --threads "$threads" --steps "$steps" --examples "$ex" --batch "$batch" > "$out/peft-short-$r.json"
        echo "peft_train.sh: PEFT on one $seq-token sequence ..." >&2
        "$py" "$root/bench/peft_train.py" --model "$model" --threads "$threads" --seq "$seq" --steps "$steps" > "$out/peft-seq-$r.json"
    done
    python3 - "$out" "$repeat" <<'PY'
import json, statistics, sys
out, rep = sys.argv[1], int(sys.argv[2])
def load(name):
    return [json.loads(open(f"{out}/{name}-{r}.json").read().strip().splitlines()[-1]) for r in range(1, rep + 1)]
runs = {k: load(k) for k in ("tailor-packed", "tailor-unpacked", "peft-short", "peft-seq")}
med = lambda k, f: statistics.median(r[f] for r in runs[k])
print(f"medians of {rep}; {'':14} {'tokens/s':>9} {'CPU s/tok':>10} {'peak RSS MB':>12}   (each run: tokens/s)")
for k, rs in runs.items():
    toks = rs[0].get("timed_tokens") or rs[0]["seq"] * rs[0]["timed_steps"]
    cpu_tok = statistics.median(r["cpu_s_per_step"] * r["timed_steps"] / (r.get("timed_tokens") or r["seq"] * r["timed_steps"]) for r in rs)
    print(f"{k:30} {med(k, 'tokens_per_s'):9.1f} {cpu_tok * 1e3:9.2f}m {med(k, 'peak_rss_mb'):12.0f}   {[round(r['tokens_per_s'], 1) for r in rs]}")
t = runs["tailor-packed"][0]["example_tokens"]
print(f"examples: {runs['tailor-packed'][0]['short_examples']}, tokens min/mean/max {t['min']}/{t['mean']:.1f}/{t['max']}, answer mean {t['answer_mean']:.1f}")
r = lambda a, b, f="tokens_per_s": med(a, f) / med(b, f)
print(f"tokens/s: packed/unpacked {r('tailor-packed', 'tailor-unpacked'):.2f}x, packed/PEFT-short {r('tailor-packed', 'peft-short'):.2f}x, "
      f"packed/PEFT-seq {r('tailor-packed', 'peft-seq'):.2f}x (goal >= 1.5)")
print(f"peak RSS: packed/PEFT-seq {r('tailor-packed', 'peft-seq', 'peak_rss_mb'):.2f}x (goal <= 0.3), packed/PEFT-short {r('tailor-packed', 'peft-short', 'peak_rss_mb'):.2f}x")
PY
    echo "(results: $out)" >&2
    exit 0
fi
echo "peft_train.sh: Tailor ..." >&2
"$bin" --model "$model" --threads "$threads" --seq "$seq" --steps "$steps" ${extra[@]+"${extra[@]}"} > "$out/tailor.json"
echo "peft_train.sh: PEFT ..." >&2
"$py" "$root/bench/peft_train.py" --model "$model" --threads "$threads" --seq "$seq" --steps "$steps" > "$out/peft.json"

python3 - "$out/tailor.json" "$out/peft.json" <<'PY'
import json, sys
t, p = (json.loads(open(f).read().strip().splitlines()[-1]) for f in sys.argv[1:3])
print(f"{'':10} {'s/step':>8} {'tokens/s':>9} {'CPU s/step':>11} {'peak RSS MB':>12}")
for r in (t, p):
    print(f"{r['engine']:10} {r['s_per_step']:8.2f} {r['tokens_per_s']:9.1f} {r['cpu_s_per_step']:11.2f} {r['peak_rss_mb']:12.0f}")
dl = max(abs(a - b) for a, b in zip(t["losses"], p["losses"]))
print(f"loss per step, tailor: {[round(x, 4) for x in t['losses']]}")
print(f"loss per step, peft:   {[round(x, 4) for x in p['losses']]}   (max difference {dl:.4f})")
print(f"ratio tailor/peft: CPU time per step {t['cpu_s_per_step'] / p['cpu_s_per_step']:.2f}x")
print(f"ratio tailor/peft: tokens/s {t['tokens_per_s'] / p['tokens_per_s']:.2f}x (goal >= 1), "
      f"peak RSS {t['peak_rss_mb'] / p['peak_rss_mb']:.2f}x (goal <= 0.4)")
PY
echo "(results: $out)" >&2
