#!/usr/bin/env python3
"""`tailor serve` benchmark (standard library only): starts the server, then measures

1. time to first token of a follow-up chat turn on a ~1,000-token history, with the prefix
   cache (the previous turn's KV cache is reused, only the new turn is prefilled) and without
   it (`"tailor": {"prefix_cache": false}`, the whole history prefilled), alternating, medians;
2. requests per second with 1 and with 4 concurrent clients (short chats, `max_tokens` 32).

    python3 bench/serve_bench.py [--bin target/release/tailor] [--threads 2] [--trials 7]

Build first: cargo build --release -p tailor-cli. Run it on an otherwise idle machine.
"""
import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--bin", default="target/release/tailor")
p.add_argument("--threads", type=int, default=2)
p.add_argument("--trials", type=int, default=7)
p.add_argument("--history-tokens", type=int, default=1000)
p.add_argument("--requests", type=int, default=8, help="requests per client in the throughput runs")
p.add_argument("--only", choices=["ttft", "throughput"], help="run one of the two parts")
p.add_argument("--serve-arg", action="append", default=[], help="an extra argument for tailor serve (repeatable)")
args = p.parse_args()

server = subprocess.Popen([args.bin, "serve", "--port", "0", "--threads", str(args.threads), "--ctx", "4096", *args.serve_arg],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
addr = None
for line in server.stderr:
    if "listening on http://" in line:
        addr = line.split("http://")[1].strip().removesuffix("/v1")
        break
if addr is None:
    sys.exit("the server did not start")
threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
host, port = addr.rsplit(":", 1)


def post(path, body, stream=False):
    """POSTs JSON; returns (seconds to the first content token or None, full text, usage, tailor)."""
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {**body, "stream": stream}
    t0 = time.perf_counter()
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"{r.status}: {r.read()!r}")
    if not stream:
        v = json.loads(r.read())
        conn.close()
        return None, v["choices"][0]["message"]["content"], v["usage"], v.get("tailor")
    first, text, usage, extra = None, "", None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage, extra = v["usage"], v.get("tailor")
        for c in v.get("choices", []):
            piece = c["delta"].get("content")
            if piece:
                if first is None:
                    first = time.perf_counter() - t0
                text += piece
    conn.close()
    return first, text, usage, extra


conn = http.client.HTTPConnection(host, int(port))
conn.request("GET", "/v1/models")
model = json.loads(conn.getresponse().read())["data"][0]["id"]
conn.close()

# A ~1,000-token history: alternating user/assistant turns of plain prose.
TOPICS = ["the history of the bicycle", "how bread rises", "why the sky is blue", "the rules of chess", "how bees make honey",
          "the water cycle", "how a compass works", "the first printing presses", "how volcanoes form", "the life of a tree",
          "how trains changed travel", "the phases of the moon", "how glass is made", "the migration of birds"]


def history(trial):
    msgs = [{"role": "system", "content": f"You are a helpful assistant (conversation {trial})."}]
    i = 0
    while True:
        t = TOPICS[(i + trial) % len(TOPICS)]
        msgs.append({"role": "user", "content": f"Tell me about {t}."})
        msgs.append({"role": "assistant", "content": (
            f"Here is a short overview of {t}. It is a subject with a long story, many small discoveries and a few "
            f"surprises. People have studied {t} for generations, and each explanation builds on the one before it. "
            f"The main ideas are simple once they are laid out step by step, and the details make them memorable.")})
        i += 1
        if len(msgs) > 2 * args.history_tokens // 90:
            break
    msgs.append({"role": "user", "content": "Which of these topics is the oldest?"})
    return msgs


chat = "/v1/chat/completions"


def ttft():
    """Follow-up turn latency with and without the prefix cache."""
    warm, cold, prompt_tokens, cached = [], [], [], []
    for trial in range(args.trials):
        h = history(trial)
        # The previous turn: its answer is generated with the history in the cache.
        _, answer, _, _ = post(chat, {"model": model, "messages": h, "max_tokens": 16, "temperature": 0}, stream=True)
        follow = h + [{"role": "assistant", "content": answer}, {"role": "user", "content": "Why do you think so?"}]
        base = {"model": model, "messages": follow, "max_tokens": 8, "temperature": 0, "stream_options": {"include_usage": True}}
        runs = [("cold", {**base, "tailor": {"prefix_cache": False}}), ("warm", base)]
        if trial % 2:
            runs.reverse()  # the cold run never touches the pool, so the order only alternates the machine's state
        for kind, body in runs:
            first, _, usage, _ = post(chat, body, stream=True)
            (warm if kind == "warm" else cold).append(first)
            if kind == "warm":
                prompt_tokens.append(usage["prompt_tokens"])
                cached.append(usage["prompt_tokens_details"]["cached_tokens"])
    mw, mc = statistics.median(warm), statistics.median(cold)
    print(f"follow-up turn on a {statistics.median(prompt_tokens):.0f}-token history ({statistics.median(cached):.0f} tokens reused), "
          f"{args.trials} trials, {args.threads} threads:")
    print(f"  time to first token, prefix cache:    median {mw * 1000:7.1f} ms  (all: {', '.join(f'{x * 1000:.0f}' for x in warm)})")
    print(f"  time to first token, no prefix cache: median {mc * 1000:7.1f} ms  (all: {', '.join(f'{x * 1000:.0f}' for x in cold)})")
    print(f"  ratio: {mc / mw:.1f}x faster with the prefix cache")


def throughput(clients):
    """Requests/s and completion tokens/s of `clients` clients sending short chats back to back."""
    done, tokens, errors = [0], [0], []
    lock = threading.Lock()

    def client(c):
        try:
            for r in range(args.requests):
                body = {"model": model, "max_tokens": 32, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Write a paragraph about {TOPICS[(c * 5 + r) % len(TOPICS)]}."}]}
                _, _, usage, _ = post(chat, body)
                with lock:
                    done[0] += 1
                    tokens[0] += usage["completion_tokens"]
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors)
    return done[0] / dt, tokens[0] / dt


def rates():
    r1, t1 = throughput(1)
    r4, t4 = throughput(4)
    print(f"throughput, chats of max_tokens 32, {args.requests} requests per client:")
    print(f"  1 client:  {r1:.2f} requests/s, {t1:.0f} completion tokens/s")
    print(f"  4 clients: {r4:.2f} requests/s, {t4:.0f} completion tokens/s  ({r4 / r1:.2f}x one client)")


def main():
    # Warm-up (first-touch page faults, thread start).
    post(chat, {"model": model, "messages": history(999), "max_tokens": 4, "temperature": 0}, stream=True)
    if args.only != "throughput":
        ttft()
    if args.only != "ttft":
        rates()


try:
    main()
finally:
    server.terminate()
    server.wait(timeout=30)
