#!/usr/bin/env python3
"""Measure a llama.cpp `llama-server` binary on a GGUF the way `tailor bench --json` does.

    python3 bench/llamacpp_server_peer.py --server PATH/llama-server --model M.gguf --threads 2
        [--prompt-tokens 128] [--gen-tokens 128] [--repeat 5] [--ctx 2048] [--no-repack]

For llama.cpp builds that are not in the peer venv (bench/llama_server.sh builds them:
`native` = GGML_NATIVE=ON, which on an AMX Xeon repacks Q4 weights into its AMX/VNNI
layouts; `--no-repack` runs the same binary on the weights as stored, its plain AVX-512/VNNI
dot products). Prints one JSON object on stdout with the fields of bench/llamacpp_peer.py
(medians over --repeat; per-run values under "samples"). Standard library only.

One run = one fresh server process (-t T -tb T -c ctx -b/-ub max(512, P), --no-warmup off so
its own warm-up runs before we time anything), then:
  prompt   bench/prompt.txt repeated, tokenized by the server (/tokenize, no special tokens),
           first P ids
  request  POST /completion {prompt: ids, n_predict: G, ignore_eos, temperature 0,
           cache_prompt false}; prefill_tok_per_s and decode_tok_per_s are the server's own
           timings (prompt_per_second, predicted_per_second), ttft = prompt_ms + one decode step
  rss      VmHWM of the server process at the end (MiB)
  load_ms  process start to /health answering 200
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT_FILE = os.path.join(HERE, "prompt.txt")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, timeout=600):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def vm_hwm_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def one_run(a):
    port = free_port()
    batch = max(512, a.prompt_tokens)
    cmd = [a.server, "-m", a.model, "-t", str(a.threads), "-tb", str(a.threads), "-c", str(a.ctx),
           "-b", str(batch), "-ub", str(batch), "--port", str(port), "--host", "127.0.0.1", "-np", "1"]
    if a.no_repack:
        cmd.append("--no-repack")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("llama-server exited with %s" % proc.returncode)
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.05)
        load_ms = (time.time() - t0) * 1000.0
        with open(PROMPT_FILE, encoding="utf-8") as f:
            para = f.read().strip()
        text = para
        ids = post(port, "/tokenize", {"content": text, "add_special": False})["tokens"]
        while len(ids) < a.prompt_tokens:
            text += "\n" + para
            ids = post(port, "/tokenize", {"content": text, "add_special": False})["tokens"]
        ids = ids[:a.prompt_tokens]
        r = post(port, "/completion", {"prompt": ids, "n_predict": a.gen_tokens, "ignore_eos": True,
                                       "temperature": 0.0, "cache_prompt": False, "top_k": 1})
        t = r["timings"]
        if t.get("predicted_n") != a.gen_tokens:
            raise RuntimeError("generated %s tokens, wanted %d" % (t.get("predicted_n"), a.gen_tokens))
        return {
            "load_ms": load_ms,
            "prefill_tok_per_s": t["prompt_per_second"],
            "decode_tok_per_s": t["predicted_per_second"],
            "ttft_ms": t["prompt_ms"] + t["predicted_per_token_ms"],
            "peak_rss_mb": vm_hwm_mb(proc.pid),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--no-repack", action="store_true", help="llama.cpp's --no-repack (weights as stored)")
    a = ap.parse_args()
    runs = []
    for i in range(max(1, a.repeat)):
        f = one_run(a)
        sys.stderr.write("llama-server%s run %d: prefill %.1f tok/s, decode %.1f tok/s, peak RSS %.1f MiB\n" % (
            " --no-repack" if a.no_repack else "", i, f["prefill_tok_per_s"], f["decode_tok_per_s"], f["peak_rss_mb"]))
        runs.append(f)
    out = {"engine": "llama.cpp", "version": "llama-server " + os.path.basename(os.path.dirname(os.path.dirname(a.server))),
           "threads": a.threads, "prompt_tokens": a.prompt_tokens, "gen_tokens": a.gen_tokens, "repeat": a.repeat,
           "ctx": a.ctx, "repack": not a.no_repack, "model": os.path.basename(a.model)}
    for k in runs[0]:
        out[k] = statistics.median(r[k] for r in runs)
    out["samples"] = {k: [r[k] for r in runs] for k in runs[0]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
