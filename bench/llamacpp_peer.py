#!/usr/bin/env python3
"""Measure llama.cpp (through llama-cpp-python) on a GGUF the way `tailor bench --json` does.

    python3 bench/llamacpp_peer.py --model M.gguf --threads 2 [--prompt-tokens 128]
        [--gen-tokens 128] [--repeat 5] [--ctx 2048] [--repack]

Prints one JSON object on stdout (progress goes to stderr):
  {"engine": "llama.cpp", "version", "threads", "prompt_tokens", "gen_tokens", "load_ms",
   "prefill_tok_per_s", "decode_tok_per_s", "ttft_ms", "peak_rss_mb", ...}
with the medians over --repeat runs, each run in a fresh subprocess (so load time and peak
RSS are those of a cold process with a warm page cache).

One run:
  load     Llama(model, n_threads=T, n_threads_batch=T, n_ctx=ctx, n_batch=max(512, P),
           use_mmap=True), timed
  prompt   bench/prompt.txt repeated, tokenized (no BOS, no special tokens), first P ids
  prefill  one eval() of the P ids (a single llama_decode since n_batch >= P) + argmax of
           the last logits; prefill_tok_per_s = P / that time
  decode   G steps of eval([tok]) + argmax of its logits, greedy, EOS ignored;
           decode_tok_per_s = G / total decode time
  ttft     prefill time + the first decode step
  repack   off by default (llama.cpp's --no-repack: weights used as stored, from the mapped
           file). llama.cpp's own default (--repack here) on this AMX Xeon repacks every
           weight into an AMX buffer: prefill ~4x faster but its Q4_1 logits for batches of
           >= 32 tokens are wrong (top logit 31.2 vs 25.0 after a 37-token prompt), and RSS
           carries a second ~95 MiB copy of the weights; not a peer to measure against.
  rss      ru_maxrss at the end, in MiB (KiB / 1024); it includes the Python
           interpreter and numpy: "base_rss_mb" is ru_maxrss after the imports, before load
Runs inside the peer venv (scripts/peer-venv.sh; re-executes itself there if needed).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "scripts"))
import peer_common  # noqa: E402

PROMPT_FILE = os.path.join(HERE, "prompt.txt")
FIELDS = ["load_ms", "prefill_tok_per_s", "decode_tok_per_s", "ttft_ms", "peak_rss_mb", "base_rss_mb"]


def cpu_snapshot():
    """(busy CPU seconds of the whole machine, CPU seconds of our finished children), Linux."""
    import resource

    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[:7])
        busy = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy, ru.ru_utime + ru.ru_stime


def other_cpu_pct(before, after, wall_s):
    """CPU used by other processes during a run, in % of all cores' time (None if unknown)."""
    if before is None or after is None or wall_s <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, 100.0 * others / (wall_s * (os.cpu_count() or 1)))


def rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prompt_ids(llm, n):
    with open(PROMPT_FILE, encoding="utf-8") as f:
        para = f.read().strip()
    text = para
    while True:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if len(ids) >= n:
            return ids[:n]
        text += " " + para


def disable_extra_bufts():
    """llama.cpp's --no-repack: load weights as stored (no AMX/repacked copies).

    llama-cpp-python 0.3.16 has the field (llama_model_params.use_extra_bufts) but no
    Llama() argument for it, so patch the defaults Llama() starts from.
    """
    import llama_cpp.llama_cpp as ll

    orig = ll.llama_model_default_params

    def patched():
        p = orig()
        p.use_extra_bufts = False
        return p

    ll.llama_model_default_params = patched


def one_run(args):
    """A single measurement, in this (fresh) process. Returns a dict."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    if not args.repack:
        disable_extra_bufts()

    base_rss = rss_mb()
    t0 = time.perf_counter()
    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=args.ctx, n_batch=max(512, args.prompt_tokens), use_mmap=True, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()
    ids = prompt_ids(llm, args.prompt_tokens)

    def argmax_last():
        p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(p, shape=(n_vocab,))))

    t0 = time.perf_counter()
    llm.eval(ids)
    tok = argmax_last()
    prefill_s = time.perf_counter() - t0

    steps = []
    for _ in range(args.gen_tokens):
        t0 = time.perf_counter()
        llm.eval([tok])
        tok = argmax_last()
        steps.append(time.perf_counter() - t0)
    decode_s = sum(steps)

    return {
        "load_ms": load_s * 1e3,
        "prefill_tok_per_s": args.prompt_tokens / prefill_s,
        "decode_tok_per_s": args.gen_tokens / decode_s if args.gen_tokens else 0.0,
        "ttft_ms": (prefill_s + (steps[0] if steps else 0.0)) * 1e3,
        "peak_rss_mb": rss_mb(),
        "base_rss_mb": base_rss,
        "n_tokens_in_context": llm.n_tokens,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--repack", action="store_true",
                    help="use llama.cpp's extra buffer types (its default; on x86 with AMX every "
                         "weight is repacked into an AMX buffer, a second ~95 MiB copy, and with "
                         "llama-cpp-python 0.3.16 the Q4_1 AMX path gives wrong logits for "
                         "micro-batches of >= 32 tokens, i.e. prefill)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.repeat < 1:
        ap.error("--prompt-tokens, --gen-tokens and --repeat must be >= 1")
    if args.prompt_tokens + args.gen_tokens > args.ctx:
        ap.error("prompt-tokens + gen-tokens > ctx")
    if not os.path.isfile(args.model):
        ap.error("model not found: %s" % args.model)

    peer_common.ensure_peer_python()

    if args.child:
        json.dump(one_run(args), sys.stdout)
        return

    import llama_cpp

    load1 = os.getloadavg()[0]
    runs = []
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--model", args.model,
           "--threads", str(args.threads), "--prompt-tokens", str(args.prompt_tokens),
           "--gen-tokens", str(args.gen_tokens), "--ctx", str(args.ctx)]
    if args.repack:
        cmd.append("--repack")
    for i in range(args.repeat):
        snap, t0 = cpu_snapshot(), time.perf_counter()
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        wall = time.perf_counter() - t0
        r = json.loads(out)
        r["other_cpu_pct"] = other_cpu_pct(snap, cpu_snapshot(), wall)
        runs.append(r)
        sys.stderr.write("llama.cpp run %d/%d: prefill %.1f tok/s, decode %.1f tok/s, ttft %.1f ms, "
                         "rss %.1f MiB, load %.1f ms, other processes' cpu %s%%\n"
                         % (i + 1, args.repeat, r["prefill_tok_per_s"], r["decode_tok_per_s"], r["ttft_ms"],
                            r["peak_rss_mb"], r["load_ms"],
                            "?" if r["other_cpu_pct"] is None else "%.1f" % r["other_cpu_pct"]))

    result = {
        "engine": "llama.cpp",
        "version": "llama-cpp-python " + peer_common.llama_cpp_version(),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "repeat": args.repeat,
        "ctx": args.ctx,
        "repack": args.repack,
        "loadavg_1m_before": round(load1, 2),
        "model": os.path.basename(args.model),
        "model_sha256": peer_common.sha256_file(args.model),
    }
    for k in FIELDS:
        result[k] = round(statistics.median(r[k] for r in runs), 3)
    result["samples"] = {k: [round(r[k], 3) for r in runs] for k in FIELDS}
    # CPU time other processes took while each run went on (% of all cores); figures from a
    # run where this is more than a few % are not those of an idle machine.
    result["samples"]["other_cpu_pct"] = [None if r["other_cpu_pct"] is None else round(r["other_cpu_pct"], 1)
                                          for r in runs]
    busy = [r["other_cpu_pct"] for r in runs if r["other_cpu_pct"] is not None]
    if busy and max(busy) > 5:
        sys.stderr.write("llama.cpp peer: WARNING: other processes took up to %.0f%% of the CPU during "
                         "the runs; these figures are not those of an idle machine\n" % max(busy))
    result["system_info"] = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
