"""Drives `tailor serve` with the official OpenAI Python client (and httpx, which it ships
with, for Tailor's /v1/tailor/ extensions). Run by cli/tests/serve.rs; every check is an
assert, and the last line printed is a JSON summary the Rust test checks again.

usage: client.py BASE_URL [--adapter DIR]
"""
import argparse
import json
import math
import sys
import threading
import time

import httpx
import openai

p = argparse.ArgumentParser()
p.add_argument("base_url")
p.add_argument("--adapter", help="a PEFT adapter directory to load and choose per request")
p.add_argument("--steering", help="a steering vector file to load and choose per request")
args = p.parse_args()

client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
http = httpx.Client(base_url=args.base_url, timeout=120)
summary = {}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def stats():
    return http.get("/tailor/stats").json()


# --- models -------------------------------------------------------------------------------
models = {m.id: m for m in client.models.list().data}
kinds = {m.id: (m.model_extra or {}).get("tailor", {}).get("kind") for m in models.values()}
base = next(i for i, k in kinds.items() if k == "base")
personal = next(i for i, k in kinds.items() if k == "personal")
embedder = next(i for i, k in kinds.items() if k == "embedding")
assert client.models.retrieve(personal).id == personal
summary["models"] = sorted(models)

question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

# --- chat, not streamed and streamed (greedy, both cold: the same text) ----------------------
r = client.chat.completions.create(model=base, messages=question, max_tokens=24, temperature=0,
                                   extra_body={"tailor": {"prefix_cache": False}})
c = r.choices[0]
assert r.object == "chat.completion" and r.id.startswith("chatcmpl-"), r
assert c.message.role == "assistant" and c.message.content, r
assert c.finish_reason in ("stop", "length"), c.finish_reason
assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24, r.usage
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
assert "Paris" in c.message.content, c.message.content
text = c.message.content
log("chat:", text)

chunks = list(client.chat.completions.create(model=base, messages=question, max_tokens=24, temperature=0, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body={"tailor": {"prefix_cache": False}}))
assert chunks[0].choices[0].delta.role == "assistant"
streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
assert finish == [c.finish_reason], finish
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
assert len({ch.id for ch in chunks}) == 1
assert streamed == text, (streamed, text)
summary["stream_chunks"] = len(chunks)

# --- logprobs ----------------------------------------------------------------------------
r = client.chat.completions.create(model=base, messages=question, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
lp = r.choices[0].logprobs.content
assert len(lp) == r.usage.completion_tokens, (len(lp), r.usage)
for t in lp:
    assert t.logprob <= 0 and len(t.top_logprobs) == 3
    # Greedy: the chosen token is the most likely one.
    assert t.top_logprobs[0].token == t.token, t
    assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    assert bytes(t.bytes).decode("utf-8", "replace") == t.token
assert "".join(t.token for t in lp) == r.choices[0].message.content
summary["logprobs"] = len(lp)

# Streamed logprobs arrive with their chunks.
chunks = list(client.chat.completions.create(model=base, messages=question, max_tokens=6, temperature=0, logprobs=True,
                                             top_logprobs=1, stream=True))
n = sum(len(ch.choices[0].logprobs.content) for ch in chunks if ch.choices and ch.choices[0].logprobs)
assert n >= 1, chunks

# --- sampling parameters: seeded sampling repeats ------------------------------------------
kw = dict(model=base, messages=[{"role": "user", "content": "Tell me a word."}], max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
a = client.chat.completions.create(**kw).choices[0].message.content
b = client.chat.completions.create(**kw).choices[0].message.content
assert a == b, (a, b)
r = client.chat.completions.create(model=base, messages=question, max_tokens=40, temperature=0, stop=["Paris"])
assert "Paris" not in r.choices[0].message.content and r.choices[0].finish_reason == "stop", r.choices[0]

# --- completions --------------------------------------------------------------------------
r = client.completions.create(model=base, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2)
assert r.object == "text_completion" and r.choices[0].text, r
assert len(r.choices[0].logprobs.tokens) == r.usage.completion_tokens
assert all(len(t) == 2 for t in r.choices[0].logprobs.top_logprobs)
parts = [ch.choices[0].text for ch in client.completions.create(model=base, prompt="The capital of France is", max_tokens=6,
                                                                 temperature=0, stream=True)]
assert "".join(parts) == r.choices[0].text, (parts, r.choices[0].text)

# --- embeddings (the client asks for base64 by default; float too) -------------------------
e = client.embeddings.create(model=embedder, input=["I have a golden retriever.", "My dog is a retriever.", "Quarterly tax filing deadlines."])
v = [d.embedding for d in e.data]
assert len(v) == 3 and all(len(x) == 384 for x in v)
assert all(abs(math.sqrt(sum(t * t for t in x)) - 1) < 1e-3 for x in v)
dot = lambda x, y: sum(s * t for s, t in zip(x, y))
assert dot(v[0], v[1]) > dot(v[0], v[2]) + 0.1, (dot(v[0], v[1]), dot(v[0], v[2]))
f = client.embeddings.create(model=embedder, input="I have a golden retriever.", encoding_format="float")
assert max(abs(s - t) for s, t in zip(f.data[0].embedding, v[0])) < 1e-6
assert e.usage.prompt_tokens > 3
summary["embedding_similarity"] = [round(dot(v[0], v[1]), 3), round(dot(v[0], v[2]), 3)]

# --- errors in OpenAI's shape --------------------------------------------------------------
try:
    client.chat.completions.create(model="gpt-4o", messages=question, max_tokens=4)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as err:
    assert err.status_code == 404 and err.code == "model_not_found" and err.param == "model", err.body
try:
    client.chat.completions.create(model=base, messages=question, temperature=5)
    raise AssertionError("temperature 5 was accepted")
except openai.BadRequestError as err:
    assert err.status_code == 400 and err.param == "temperature" and err.type == "invalid_request_error", err.body
try:
    client.chat.completions.create(model=base, messages=question, max_tokens=2, n=100)
    raise AssertionError("n = 100 was accepted")
except openai.BadRequestError as err:
    assert err.param == "n", err.body
try:
    client.chat.completions.create(model=base, messages=[{"role": "user", "content": "hello " * 5000}], max_tokens=4)
    raise AssertionError("a prompt longer than the context was accepted")
except openai.BadRequestError as err:
    assert err.code == "context_length_exceeded", err.body
try:
    client.embeddings.create(model=base, input="x")
    raise AssertionError("a chat model made embeddings")
except openai.NotFoundError as err:
    assert err.code == "model_not_found"
r = http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
assert http.get("/nowhere").json()["error"]["code"] == "not_found"

# --- 8 concurrent streams all complete ------------------------------------------------------
results = [None] * 8
errors = []


def run_stream(i):
    try:
        s = client.chat.completions.create(
            model=base if i % 2 else personal,
            messages=[{"role": "user", "content": f"Write one sentence about the number {i + 1}."}],
            max_tokens=16, temperature=0.7, seed=i, stream=True)
        text, fin = "", None
        for ch in s:
            if ch.choices:
                text += ch.choices[0].delta.content or ""
                fin = ch.choices[0].finish_reason or fin
        results[i] = (text, fin)
    except Exception as ex:  # noqa: BLE001 - reported below
        errors.append(repr(ex))


t0 = time.time()
threads = [threading.Thread(target=run_stream, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
assert all(r is not None and r[0] and r[1] in ("stop", "length") for r in results), results
summary["concurrent_8_seconds"] = round(time.time() - t0, 2)

# --- a client that goes away cancels its generation -----------------------------------------
before = stats()
s = client.completions.create(model=base, prompt="1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", max_tokens=256, temperature=0, stream=True,
                              extra_body={"tailor": {"prefix_cache": False}})
got = 0
for ch in s:
    got += 1
    if got == 3:
        break
s.close()
deadline = time.time() + 20
while time.time() < deadline:
    after = stats()
    if after["cancelled"] > before["cancelled"] and after["active"] == 0:
        break
    time.sleep(0.05)
assert after["cancelled"] == before["cancelled"] + 1, (before, after)
made = after["completion_tokens"] - before["completion_tokens"]
assert made < 200, f"the generation went on after the client left: {made} tokens"
summary["cancelled_after_tokens"] = made

# --- prefix reuse: a follow-up turn only prefills what is new -------------------------------
conv = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Name three fruits that are red."}]
r1 = client.chat.completions.create(model=base, messages=conv, max_tokens=24, temperature=0)
conv += [{"role": "assistant", "content": r1.choices[0].message.content},
         {"role": "user", "content": "And three that are yellow?"}]
r2 = client.chat.completions.create(model=base, messages=conv, max_tokens=8, temperature=0)
cached = r2.usage.prompt_tokens_details.cached_tokens
assert cached >= r1.usage.prompt_tokens, (cached, r1.usage, r2.usage)
assert cached < r2.usage.prompt_tokens
cold = client.chat.completions.create(model=base, messages=conv, max_tokens=8, temperature=0,
                                      extra_body={"tailor": {"prefix_cache": False}})
assert cold.usage.prompt_tokens_details.cached_tokens == 0
summary["follow_up"] = {"prompt_tokens": r2.usage.prompt_tokens, "cached_tokens": cached,
                        "prefill_ms_warm": r2.model_extra["tailor"]["timings"]["prefill_ms"],
                        "prefill_ms_cold": cold.model_extra["tailor"]["timings"]["prefill_ms"]}

# --- the personal model: memories, feedback, training jobs -----------------------------------
m = http.post("/tailor/memories", json={"model": personal, "text": "The user's dog is a golden retriever called Biscuit."})
assert m.status_code == 201, m.text
mid = m.json()["id"]
hits = http.post("/tailor/memories/search", json={"model": personal, "query": "what is my dog called", "limit": 3}).json()["data"]
assert hits and hits[0]["memory"]["id"] == mid, hits
r = client.chat.completions.create(model=personal, messages=[{"role": "user", "content": "What is my dog called?"}], max_tokens=24, temperature=0)
used = [x["id"] for x in r.model_extra["tailor"]["memories"]]
assert used == [mid], r.model_extra
summary["personal_answer"] = r.choices[0].message.content
r = client.chat.completions.create(model=personal, messages=[{"role": "user", "content": "What is my dog called?"}], max_tokens=4,
                                   extra_body={"tailor": {"memory": False}})
assert r.model_extra["tailor"]["memories"] == []
assert [x["id"] for x in http.get("/tailor/memories", params={"model": personal}).json()["data"]] == [mid]
assert http.delete(f"/tailor/memories/{mid}", params={"model": personal}).json()["deleted"] is True
assert http.get("/tailor/memories", params={"model": personal}).json()["data"] == []
assert http.delete(f"/tailor/memories/{mid}").status_code == 404

fb = http.post("/tailor/feedback", json={"prompt": "What is my dog called?", "answer": "I don't know.",
                                         "kind": "correction", "corrected": "Your dog is called Biscuit."})
assert fb.status_code == 201, fb.text
fid = fb.json()["id"]
assert isinstance(fb.json()["memory_id"], int), fb.json()  # the correction, mirrored into a memory
assert fb.json()["training"] == {"started": False}, fb.json()  # one event: no run by itself
assert [x["id"] for x in http.get("/tailor/feedback").json()["data"]] == [fid]
assert http.post("/tailor/feedback", json={"prompt": "x", "answer": "y", "kind": "sideways"}).status_code == 400
job = http.post("/tailor/training", json={"model": personal, "max_steps": 2})
assert job.status_code == 202 and job.json()["state"] == "running", job.text
assert http.post("/tailor/training", json={"model": personal}).status_code in (202, 409)
http.post("/tailor/training/cancel", json={"model": personal}).raise_for_status()
deadline = time.time() + 300
while time.time() < deadline:
    st = http.get("/tailor/training", params={"model": personal}).json()
    if st["state"] != "running":
        break
    time.sleep(0.2)
assert st["state"] in ("cancelled", "refused", "promoted"), st
summary["training"] = st["state"]
assert http.delete(f"/tailor/feedback/{fid}").json()["deleted"] is True
r = http.post("/tailor/adapters/rollback", json={"model": personal})
assert r.status_code == 400 and "roll back" in r.json()["error"]["message"], r.text

# --- automatic training (the server runs with the default --auto-train-after 3) --------------
# The third new feedback event starts a background run; the personal model answers while it
# goes on (the run pauses between steps for generations); a run going on starts no other.
started, ids = [], []
for prompt, answer, corrected in [("What is my dog called?", "I don't know.", "Your dog is called Biscuit."),
                                  ("Where do I live?", "I cannot know that.", "You live in Lisbon."),
                                  ("What do I do for work?", "No idea.", "You work as a nurse.")]:
    r = http.post("/tailor/feedback", json={"model": personal, "prompt": prompt, "answer": answer,
                                            "kind": "correction", "corrected": corrected})
    assert r.status_code == 201, r.text
    ids.append(r.json()["id"])
    started.append(r.json()["training"]["started"])
assert started == [False, False, True], started
st = http.get("/tailor/training", params={"model": personal}).json()
assert st["state"] == "running", st
r = client.chat.completions.create(model=personal, messages=[{"role": "user", "content": "Where do I live?"}],
                                   max_tokens=16, temperature=0)
assert r.choices[0].message.content and r.choices[0].finish_reason in ("stop", "length"), r
st = http.get("/tailor/training", params={"model": personal}).json()
assert st["state"] == "running", f"the run ended before the answer did: {st}"
r = http.post("/tailor/feedback", json={"model": personal, "prompt": "Hi", "answer": "Hello!", "kind": "thumbs_up"})
assert r.status_code == 201 and r.json()["training"] == {"started": False}, r.text
ids.append(r.json()["id"])
assert http.post("/tailor/training", json={"model": personal}).status_code == 409
http.post("/tailor/training/cancel", json={"model": personal}).raise_for_status()
deadline = time.time() + 300
while time.time() < deadline:
    st = http.get("/tailor/training", params={"model": personal}).json()
    if st["state"] != "running":
        break
    time.sleep(0.2)
assert st["state"] == "cancelled", st
summary["auto_training"] = {"state": st["state"], "step": st["step"], "paused_seconds": st["paused_seconds"]}
for i in ids:
    assert http.delete(f"/tailor/feedback/{i}").json()["deleted"] is True

# --- adapters: load, choose per request, activate -------------------------------------------
if args.adapter:
    r = http.post("/tailor/adapters/load", json={"name": "noise", "path": args.adapter})
    assert r.status_code == 200, r.text
    assert [a["name"] for a in r.json()["adapters"]] == ["noise"]
    plain = client.chat.completions.create(model=base, messages=question, max_tokens=12, temperature=0).choices[0].message.content
    noisy = client.chat.completions.create(model=base, messages=question, max_tokens=12, temperature=0,
                                           extra_body={"tailor": {"adapters": [{"name": "noise", "weight": 1.0}]}}).choices[0].message.content
    zero = client.chat.completions.create(model=base, messages=question, max_tokens=12, temperature=0,
                                          extra_body={"tailor": {"adapters": [{"name": "noise", "weight": 0.0}]}}).choices[0].message.content
    assert noisy != plain and zero == plain, (plain, noisy, zero)
    r = http.post("/tailor/adapters/activate", json={"adapters": [{"name": "noise", "weight": 1.0}]})
    assert r.json()["adapters"][0]["active_weight"] == 1.0, r.text
    active = client.chat.completions.create(model=base, messages=question, max_tokens=12, temperature=0).choices[0].message.content
    assert active == noisy, (active, noisy)
    http.post("/tailor/adapters/activate", json={"adapters": []}).raise_for_status()
    assert http.post("/tailor/adapters/unload", json={"name": "noise"}).json()["adapters"] == []
    assert http.post("/tailor/adapters/unload", json={"name": "noise"}).status_code == 404
    try:
        client.chat.completions.create(model=base, messages=question, max_tokens=2, extra_body={"tailor": {"adapters": [{"name": "nope"}]}})
        raise AssertionError("an unknown adapter was accepted")
    except openai.BadRequestError as err:
        assert err.param == "tailor.adapters", err.body
    summary["adapter_changes_output"] = True

if args.steering:
    r = http.post("/tailor/steering/load", json={"name": "kind", "path": args.steering})
    assert r.status_code == 200 and r.json()["loaded_steering"] == ["kind"], r.text
    ask = dict(model=base, messages=[{"role": "user", "content": "Describe Mondays."}], max_tokens=16, temperature=0)
    plain = client.chat.completions.create(**ask).choices[0].message.content
    steer = lambda scale: client.chat.completions.create(**ask, extra_body={"tailor": {"steering": [
        {"name": "kind", "scale": scale, "layers": [6, 14]}]}}).choices[0].message.content
    strong, zero = steer(8.0), steer(0.0)
    assert strong != plain and zero == plain, (plain, strong, zero)
    r = http.post("/tailor/adapters/activate", json={"steering": [{"name": "kind", "scale": 8.0, "layers": [6, 14]}]})
    assert r.json()["steering"] == [{"name": "kind", "active_scale": 8.0}], r.text
    assert client.chat.completions.create(**ask).choices[0].message.content == strong
    http.post("/tailor/adapters/activate", json={"steering": []}).raise_for_status()
    assert client.chat.completions.create(**ask).choices[0].message.content == plain
    try:
        client.chat.completions.create(**ask, extra_body={"tailor": {"steering": [{"name": "kind", "scale": 1, "layers": [0, 99]}]}})
        raise AssertionError("layers past the model were accepted")
    except openai.BadRequestError as err:
        assert err.param == "tailor.steering", err.body
    summary["steering"] = {"plain": plain, "scale_8": strong}

summary["stats"] = stats()
print(json.dumps(summary))
