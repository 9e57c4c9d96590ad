#!/usr/bin/env bash
# The sweep that chose PersonalOptions' defaults: the personalization benchmark (10 facts, each
# corrected once; 30 hand-written paraphrases) at several learning rates and replay mixes.
# Each run writes bench/results/sweep/<name>.md (table + JSON); the summary of the runs made
# for the defaults is in bench/results/personalization_sweep.md.
#   bash bench/personalization_sweep.sh            # the grid below, ~5 min a run on 2 cores
#   bash bench/personalization_sweep.sh 6e-4:0.25:96:1:22   # one point: lr:replay:distill[:epochs[:phrasings]]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p tailor-trainer --bench personalization --no-run
bin=$(ls -t target/release/deps/personalization-* | grep -v '\.d$' | head -1)
grid=("${@:-6e-4:0.25:48:1:20 6e-4:0.25:48:1:22 6e-4:0.25:96:1:22}")
mkdir -p bench/results/sweep
for point in ${grid[@]}; do
    IFS=: read -r lr replay distill epochs phrasings <<<"$point"
    epochs=${epochs:-1} phrasings=${phrasings:-22}
    name="lr${lr}-replay${replay}-distill${distill}-epochs${epochs}-phrasings${phrasings}"
    echo "== $name"
    "$bin" --lr "$lr" --replay "$replay" --distill "$distill" --epochs "$epochs" --paraphrases "$phrasings" --no-prefs \
        --out "bench/results/sweep/$name.md" 2>/dev/null | head -20
done
