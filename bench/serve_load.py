#!/usr/bin/env python3
"""Load on an OpenAI-compatible server (standard library only): `tailor serve` and, when
given, llama.cpp's `llama-server` on the same GGUF with the same slots and threads, one after
the other. For 1, 4 and 16 concurrent clients (each sending --requests streamed chats of
max_tokens 64, temperature 0): p50/p99 time to first token, median per-request decode
tok/s (tokens after the first / time after the first), aggregate completion tok/s, errors.
With --soak S: S seconds of 2×parallel clients on Tailor, its RSS sampled every 10 s.

    python3 bench/serve_load.py [--bin target/release/tailor] [--llama-server PATH] [--threads 2]
                                [--parallel 4] [--requests 4] [--soak 600]

Build first: cargo build --release -p tailor-cli; bench/llama_server.sh builds llama-server.
Run it on an otherwise idle machine.
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--bin", default="target/release/tailor")
p.add_argument("--llama-server", help="a llama-server binary to compare with (bench/llama_server.sh)")
p.add_argument("--model", help="the GGUF (default: tailor's cached SmolLM2)")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--parallel", type=int, default=4, help="generation slots of each server")
p.add_argument("--requests", type=int, default=4, help="requests per client")
p.add_argument("--clients", default="1,4,16")
p.add_argument("--max-tokens", type=int, default=64)
p.add_argument("--ctx", type=int, default=1024, help="context per slot")
p.add_argument("--soak", type=int, default=0, help="seconds of soak on tailor (RSS sampled)")
args = p.parse_args()

TOPICS = ["the history of the bicycle", "how bread rises", "why the sky is blue", "the rules of chess", "how bees make honey",
          "the water cycle", "how a compass works", "the first printing presses", "how volcanoes form", "the life of a tree",
          "how trains changed travel", "the phases of the moon", "how glass is made", "the migration of birds"]


def model_path():
    if args.model:
        return args.model
    out = subprocess.run([args.bin, "models", "path"], capture_output=True, text=True, check=True)
    return next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("base model:"))


class Server:
    def __init__(self, name, cmd):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.port = None
        deadline = time.time() + 120
        for line in self.proc.stderr:
            m = re.search(r"listening on http://[^:\s]+:(\d+)", line)  # both servers say so
            if m:
                self.port = int(m.group(1))
                break
            if time.time() > deadline:
                break
        if self.port is None:
            self.proc.kill()
            sys.exit(f"{name} did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        # llama-server answers 503 while loading.
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/v1/models")
                r = c.getresponse()
                body = json.loads(r.read())
                c.close()
                if r.status == 200:
                    self.model = body["data"][0]["id"]
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        sys.exit(f"{name} never became ready")

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one(server, i):
    """One streamed chat: (ttft s, decode tok/s or None, completion tokens)."""
    body = {"model": server.model, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": args.max_tokens,
            "temperature": 0, "messages": [{"role": "user", "content": f"Write a paragraph about {TOPICS[i % len(TOPICS)]}."}]}
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {r.read()[:200]!r}")
    first = last = None
    chunks = 0
    usage = None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage = v["usage"]
        for ch in v.get("choices", []):
            if ch.get("delta", {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    c.close()
    n = usage["completion_tokens"] if usage else chunks
    rate = (n - 1) / (last - first) if first and last and last > first and n > 1 else None
    return (first - t0) if first else None, rate, n


def load(server, clients):
    res, errors = [], []
    lock = threading.Lock()

    def client(k):
        for j in range(args.requests):
            try:
                r = one(server, k * 7 + j)
                with lock:
                    res.append(r)
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in res if r[0] is not None)
    rates = [r[1] for r in res if r[1] is not None]
    q = lambda v, f: v[min(len(v) - 1, round((len(v) - 1) * f))] if v else float("nan")  # noqa: E731
    return {"clients": clients, "requests": len(res), "errors": len(errors), "ttft_p50_ms": q(ttfts, 0.5) * 1000,
            "ttft_p99_ms": q(ttfts, 0.99) * 1000, "tok_s_per_request": statistics.median(rates) if rates else float("nan"),
            "aggregate_tok_s": sum(r[2] for r in res) / wall, "first_error": errors[0] if errors else None}


def soak(server, seconds):
    stop = time.time() + seconds
    samples, errors, done = [], [], [0]

    def client(k):
        j = 0
        while time.time() < stop:
            try:
                one(server, k * 31 + j)
                done[0] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))
            j += 1

    ts = [threading.Thread(target=client, args=(k,)) for k in range(2 * args.parallel)]
    for t in ts:
        t.start()
    while time.time() < stop:
        samples.append(server.rss_mb())
        time.sleep(10)
    for t in ts:
        t.join()
    return samples, done[0], errors


def main():
    model = model_path()
    clients = [int(x) for x in args.clients.split(",")]
    servers = [("tailor", [args.bin, "serve", "--model", model, "--port", "0", "--threads", str(args.threads), "--parallel", str(args.parallel),
                           "--ctx", str(args.ctx), "--pool-size", str(args.parallel)])]
    if args.llama_server:
        servers.append(("llama-server", [args.llama_server, "-m", model, "--port", str(18000 + os.getpid() % 1000), "-t", str(args.threads),
                                         "-np", str(args.parallel), "-c", str(args.ctx * args.parallel), "--no-webui"]))
    table = {}
    for name, cmd in servers:
        s = Server(name, cmd)
        try:
            one(s, 0)  # warm-up
            table[name] = [load(s, c) for c in clients]
            if name == "tailor" and args.soak:
                samples, done, errors = soak(s, args.soak)
                print(f"soak: {args.soak} s, {2 * args.parallel} clients, {done} requests, {len(errors)} errors; tailor RSS MB "
                      f"start {samples[0]:.0f}, end {samples[-1]:.0f}, max {max(samples):.0f} ({len(samples)} samples)")
                print("  RSS MB every 10 s:", " ".join(f"{x:.0f}" for x in samples))
                if errors:
                    print("  first error:", errors[0])
        finally:
            s.stop()
    print(f"\nload: {args.threads} threads, {args.parallel} slots, {args.requests} streamed chats per client, max_tokens {args.max_tokens}, temperature 0")
    print("| server | clients | TTFT p50 ms | TTFT p99 ms | tok/s per request | aggregate tok/s | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in table.items():
        for r in rows:
            print(f"| {name} | {r['clients']} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['tok_s_per_request']:.1f} | "
                  f"{r['aggregate_tok_s']:.1f} | {r['errors']} |")
            if r["first_error"]:
                print("  first error:", r["first_error"])
    if "llama-server" in table:
        print("\nratios tailor / llama-server:")
        for a, b in zip(table["tailor"], table["llama-server"]):
            print(f"  {a['clients']:>2} clients: TTFT p50 {b['ttft_p50_ms'] / a['ttft_p50_ms']:.2f}x faster, "
                  f"aggregate {a['aggregate_tok_s'] / b['aggregate_tok_s']:.2f}x")


main()
