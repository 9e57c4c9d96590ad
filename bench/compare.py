#!/usr/bin/env python3
"""Print Tailor's and llama.cpp's bench figures side by side, with tailor/llama.cpp ratios.

    python3 bench/compare.py TAILOR.json LLAMACPP.json [MORE_LLAMACPP.json ...]

Prints a markdown table: Tailor, each llama.cpp result, and Tailor's ratio to each. A file
may be missing or empty (its column is then left out, or n/a for Tailor). Both are the JSON objects
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


def label(d):
    """Column name of a peer: llama.cpp plus how it ran."""
    name = "llama.cpp"
    if d.get("version", "").startswith("llama-server"):
        name += " " + d["version"].split()[-1].replace("build-", "")
    return name + (" repack" if d.get("repack") else " no-repack")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__.strip())
    tailor = load(sys.argv[1])
    peers = [p for p in (load(a) for a in sys.argv[2:]) if p is not None]
    if tailor is None and not peers:
        sys.exit("compare: no result is available")

    for name, d in [("tailor", tailor)] + [(label(p), p) for p in peers]:
        if d is not None:
            print("%-10s %s" % (name + ":", ", ".join(
                "%s=%s" % (k, d[k]) for k in ["version"] + SETTINGS + ["ctx", "repack", "model"] if k in d)))
            busy = [x for x in (d.get("samples") or {}).get("other_cpu_pct", []) if x is not None]
            if busy and max(busy) > 5:
                print("WARNING: other processes took up to %.0f%% of the CPU during %s's runs" % (max(busy), name))
    for p in peers:
        if tailor is not None:
            diff = [k for k in SETTINGS if k in tailor and k in p and tailor[k] != p[k]]
            if diff:
                print("WARNING: settings differ: " + ", ".join(
                    "%s (tailor %s, %s %s)" % (k, tailor[k], label(p), p[k]) for k in diff))
    print()
    # A markdown table: tailor, each peer, and tailor / peer for each.
    cols = ["tailor"] + [label(p) for p in peers] + ["tailor / " + label(p) for p in peers]
    print("| | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for key, name, better in ROWS:
        a = num(tailor, key)
        vals = [fmt(a)] + [fmt(num(p, key)) for p in peers]
        for p in peers:
            b = num(p, key)
            vals.append("%.2fx" % (a / b) if a is not None and b else "n/a")
        print("| %s (%s better) | %s |" % (name, better, " | ".join(vals)))


if __name__ == "__main__":
    main()
