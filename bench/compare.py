#!/usr/bin/env python3
"""Print Tailor's and llama.cpp's bench figures side by side, with tailor/llama.cpp ratios.

    python3 bench/compare.py TAILOR.json LLAMACPP.json

Either file may be missing or empty (that column then shows n/a). Both are the JSON objects
printed by `tailor bench --json` and bench/llamacpp_peer.py: fields threads, prompt_tokens,
gen_tokens, load_ms, prefill_tok_per_s, decode_tok_per_s, ttft_ms, peak_rss_mb.
Standard library only.
"""

import json
import os
import sys

# (field, label, which way is better)
ROWS = [
    ("prefill_tok_per_s", "prefill tok/s", "higher"),
    ("decode_tok_per_s", "decode tok/s", "higher"),
    ("ttft_ms", "ttft ms", "lower"),
    ("peak_rss_mb", "peak RSS MiB", "lower"),
    ("load_ms", "load ms", "lower"),
]
SETTINGS = ["threads", "prompt_tokens", "gen_tokens", "repeat"]


def load(path):
    if not path or not os.path.isfile(path) or os.path.getsize(path) == 0:
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            sys.stderr.write("compare: %s is not JSON (%s)\n" % (path, e))
            return None


def num(d, k):
    v = d.get(k) if d else None
    return float(v) if isinstance(v, (int, float)) else None


def fmt(v):
    if v is None:
        return "n/a"
    return "%.1f" % v if abs(v) < 1e5 else "%.3g" % v


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip())
    tailor, peer = load(sys.argv[1]), load(sys.argv[2])
    if tailor is None and peer is None:
        sys.exit("compare: neither result is available")

    for name, d in (("tailor", tailor), ("llama.cpp", peer)):
        if d is not None:
            print("%-10s %s" % (name + ":", ", ".join(
                "%s=%s" % (k, d[k]) for k in ["version"] + SETTINGS + ["ctx", "repack", "model"] if k in d)))
            busy = [x for x in (d.get("samples") or {}).get("other_cpu_pct", []) if x is not None]
            if busy and max(busy) > 5:
                print("WARNING: other processes took up to %.0f%% of the CPU during %s's runs" % (max(busy), name))
    if tailor is not None and peer is not None:
        diff = [k for k in SETTINGS if k in tailor and k in peer and tailor[k] != peer[k]]
        if diff:
            print("WARNING: settings differ: " + ", ".join(
                "%s (tailor %s, llama.cpp %s)" % (k, tailor[k], peer[k]) for k in diff))
    print()
    header = "%-15s %12s %12s %18s" % ("", "tailor", "llama.cpp", "tailor/llama.cpp")
    print(header)
    print("-" * len(header))
    for key, label, better in ROWS:
        a, b = num(tailor, key), num(peer, key)
        ratio = "%.2fx" % (a / b) if a is not None and b else "n/a"
        print("%-15s %12s %12s %12s (%s better)" % (label, fmt(a), fmt(b), ratio, better))


if __name__ == "__main__":
    main()
