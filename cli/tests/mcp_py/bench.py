"""Latency of `tailor mcp` as the official MCP Python client sees it (not a test).

Usage (the venv is the one cli/tests/mcp.rs makes):
  cargo build --release -p tailor-cli
  target/tmp/mcp-venv/bin/python cli/tests/mcp_py/bench.py target/release/tailor [--n 50] [--mode auto|legacy]

Prints, for a fresh profile: the time from spawning the server to a connected session (model
and embedder loaded), and the median / p90 round trip of remember, recall, resources/read and
ask_personal_model (a 16-token answer with a memory retrieved into the prompt).
"""

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from mcp import Client, StdioServerParameters


def summary(xs):
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:7.1f} ms · p90 {xs[int(0.9 * (len(xs) - 1))] * 1000:7.1f} ms (n={len(xs)})"


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tailor")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--asks", type=int, default=10)
    ap.add_argument("--mode", default="auto")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        env = {k: os.environ[k] for k in ("TAILOR_HOME",) if k in os.environ}
        params = StdioServerParameters(command=a.tailor, args=["mcp", "--profile", os.path.join(d, "me.db"), "--threads", "2"], env=env)
        t0 = time.perf_counter()
        async with Client(params, mode=a.mode, cache=None, read_timeout_seconds=300) as client:
            print(f"protocol {client.protocol_version}; spawn to connected session: {(time.perf_counter() - t0) * 1000:.0f} ms")
            timings = {"remember": [], "recall": [], "resources/read": [], "ask_personal_model": []}
            ids = []
            for i in range(a.n):
                t = time.perf_counter()
                r = await client.call_tool("remember", {"text": f"Fact number {i}: my friend number {i} lives in city {i * 7}."})
                timings["remember"].append(time.perf_counter() - t)
                ids.append(r.structured_content["id"])
            await client.call_tool("remember", {"text": "My dog is called Biscuit."})
            for i in range(a.n):
                t = time.perf_counter()
                await client.call_tool("recall", {"query": f"where does friend {i} live", "limit": 5})
                timings["recall"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await client.read_resource(f"memory://{ids[i]}")
                timings["resources/read"].append(time.perf_counter() - t)
            for _ in range(a.asks):
                t = time.perf_counter()
                r = await client.call_tool("ask_personal_model", {"question": "What is my dog called?", "max_tokens": 16})
                timings["ask_personal_model"].append(time.perf_counter() - t)
            print(f"last answer: {r.structured_content['answer']!r}, {r.structured_content['tokens']} tokens")
            for k, v in timings.items():
                print(f"{k:>20}: {summary(v)}")


asyncio.run(main())
