"""Drives `tailor serve`'s assistant features with the official OpenAI Python client: function
tools (Chat Completions and Responses shapes, streamed and not, a full round trip),
structured output (json_object, json_schema, the client's pydantic `parse`), `n`, seeds,
logit_bias, OpenAI's penalties, stop strings, the sampling defaults, the Responses API and 16
concurrent requests. Run by cli/tests/serve.rs with a venv holding `openai` and `jsonschema`.

The model is tiny (SmolLM2-135M-Instruct): every check is on structure and validity (JSON
that parses and validates, ids, indices, counts, event order), never on the quality of text.
Each feature logs one line to standard error; the last line printed on standard output is a
JSON summary the Rust test checks again.

usage: assistant.py BASE_URL
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from typing import Literal

import httpx
import jsonschema
import openai
from pydantic import BaseModel, Field

p = argparse.ArgumentParser()
p.add_argument("base_url")
args = p.parse_args()

client = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=120)
http = httpx.Client(base_url=args.base_url, timeout=120)
summary = {}
# `tailor serve --parallel`'s default: generations that run at once (more requests queue).
DEFAULT_PARALLEL = 8
# Tailor's option: no KV cache reuse. Answers compared token for token both start cold (a
# reused cache is computed in other shapes and may round differently).
COLD = {"tailor": {"prefix_cache": False}}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def stats():
    return http.get("/tailor/stats").json()


def rejected(param, what, call):
    """`call()` must fail with a 400 in OpenAI's shape naming `param`."""
    try:
        call()
    except openai.BadRequestError as err:
        assert err.status_code == 400, (what, err.status_code, err.body)
        assert err.type == "invalid_request_error", (what, err.body)
        assert err.param == param, f"{what}: expected param {param!r}, got {err.param!r}: {err.body}"
        return err
    raise AssertionError(f"{what} was accepted")


def valid(instance, schema, what):
    try:
        jsonschema.validate(instance, schema)
    except jsonschema.ValidationError as e:
        raise AssertionError(f"{what}: {json.dumps(instance)} does not validate: {e.message}") from None


def arguments(call_args, schema, what):
    """A call's arguments: JSON text of an object valid against `schema`, with no keys beyond
    its properties (the server closes object schemas)."""
    assert isinstance(call_args, str), f"{what}: arguments must be a JSON string, got {call_args!r}"
    try:
        v = json.loads(call_args)
    except json.JSONDecodeError as e:
        raise AssertionError(f"{what}: arguments are not JSON ({e}): {call_args!r}") from None
    assert isinstance(v, dict), f"{what}: arguments must be a JSON object: {call_args!r}"
    valid(v, schema, what)
    extra = set(v) - set(schema.get("properties", {}))
    assert not extra, f"{what}: keys beyond the schema's properties {sorted(extra)}: {call_args!r}"
    return v


models = {m.id: m for m in client.models.list().data}
kinds = {i: (m.model_extra or {}).get("tailor", {}).get("kind") for i, m in models.items()}
base = next(i for i, k in kinds.items() if k == "base")

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TIME = {"type": "object",
        "properties": {"timezone": {"enum": ["UTC", "Europe/Paris", "America/New_York"]}},
        "required": ["timezone"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city.",
                                      "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "The current time in a time zone.",
                                      "parameters": TIME, "strict": True}},
]
WEATHER_Q = [{"role": "user", "content": "What is the weather like in Paris right now? Use celsius."}]
FORCE_WEATHER = {"type": "function", "function": {"name": "get_weather"}}


def check_calls(msg, finish, what, names=("get_weather", "get_time")):
    """A non-streamed answer made only of calls: content None, ids, names, valid arguments."""
    assert finish == "tool_calls", f"{what}: finish_reason {finish!r}, expected 'tool_calls'"
    assert msg.role == "assistant", (what, msg)
    assert msg.content is None, f"{what}: content must be None when the answer is only calls: {msg.content!r}"
    calls = msg.tool_calls
    assert calls, f"{what}: no tool_calls: {msg}"
    for c in calls:
        assert c.type == "function", (what, c)
        assert c.id.startswith("call_"), f"{what}: call id {c.id!r}"
        assert c.function.name in names, f"{what}: called {c.function.name!r}, not among {names}"
        arguments(c.function.arguments, SCHEMAS[c.function.name], f"{what}: {c.function.name}")
    assert len({c.id for c in calls}) == len(calls), f"{what}: call ids repeat: {[c.id for c in calls]}"
    return calls


# =============================================================================================
# 1. Chat Completions: function tools
# =============================================================================================

# (a) A forced named call.
r = client.chat.completions.create(model=base, messages=WEATHER_Q, tools=TOOLS, tool_choice=FORCE_WEATHER,
                                   max_tokens=96, temperature=0)
calls = check_calls(r.choices[0].message, r.choices[0].finish_reason, "forced get_weather", names=("get_weather",))
assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0, r.usage
forced = r.choices[0].message
log("tools, forced:", [(c.function.name, c.function.arguments) for c in calls])

# (b) "required" with two tools: at least one call, each valid; parallel_tool_calls=False: one.
r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "What is the weather in Paris and the time in New York?"}],
                                   tools=TOOLS, tool_choice="required", max_tokens=128, temperature=0)
required = check_calls(r.choices[0].message, r.choices[0].finish_reason, "tool_choice required")
r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "What is the weather in Paris and the time in New York?"}],
                                   tools=TOOLS, tool_choice="required", parallel_tool_calls=False, max_tokens=128, temperature=0)
single = check_calls(r.choices[0].message, r.choices[0].finish_reason, "required, parallel_tool_calls=False")
assert len(single) == 1, f"parallel_tool_calls=False made {len(single)} calls: {single}"
log("tools, required:", [c.function.name for c in required], "· not parallel:", [c.function.name for c in single])

# "auto": the model chooses; either way the answer is consistent.
r = client.chat.completions.create(model=base, messages=WEATHER_Q, tools=TOOLS, tool_choice="auto", max_tokens=128, temperature=0)
c = r.choices[0]
if c.message.tool_calls:
    check_calls(c.message, c.finish_reason, "tool_choice auto")
else:
    assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length"), c
log("tools, auto:", "calls" if c.message.tool_calls else "text")

# (c) A round trip: the call as returned (the client serializes the message object), the
# tool's result, then an answer in text.
call = forced.tool_calls[0]
conversation = WEATHER_Q + [forced, {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]
# Both start cold (COLD), so they compare token for token.
r = client.chat.completions.create(model=base, messages=conversation, tools=TOOLS, tool_choice="none", max_tokens=48, temperature=0,
                                   extra_body=COLD)
c = r.choices[0]
assert c.finish_reason in ("stop", "length"), c
assert isinstance(c.message.content, str), f"the answer after the tool's result has no text: {c.message}"
assert not c.message.tool_calls, c.message
# The same history as plain dicts (as a client without the SDK's types would send it).
as_dicts = WEATHER_Q + [
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]
r2 = client.chat.completions.create(model=base, messages=as_dicts, tools=TOOLS, tool_choice="none", max_tokens=48, temperature=0,
                                    extra_body=COLD)
assert r2.choices[0].message.content == c.message.content, (r2.choices[0].message.content, c.message.content)
assert r2.usage.prompt_tokens == r.usage.prompt_tokens, (r2.usage, r.usage)
summary["tool_round_trip"] = c.message.content
log("tools, round trip:", repr(c.message.content))

# (d) A streamed forced call, assembled from its deltas.
chunks = list(client.chat.completions.create(model=base, messages=WEATHER_Q, tools=TOOLS, tool_choice=FORCE_WEATHER,
                                             parallel_tool_calls=False, max_tokens=96, temperature=0, stream=True))
assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
assert len({ch.id for ch in chunks}) == 1, "chunks of one answer share an id"
streamed = {}
finishes = []
for ch in chunks:
    for choice in ch.choices:
        assert choice.index == 0, choice
        d = choice.delta
        assert not d.content, f"a call-only answer streamed text: {d.content!r}"
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
        for tc in d.tool_calls or []:
            if tc.index not in streamed:
                # The first piece of a call: its id, type, name and empty arguments.
                assert tc.id and tc.id.startswith("call_"), f"the first delta of call {tc.index} has no id: {tc}"
                assert tc.type == "function" and tc.function.name == "get_weather", tc
                assert tc.function.arguments == "", f"the first delta of a call carries arguments {tc.function.arguments!r}"
                streamed[tc.index] = {"id": tc.id, "name": tc.function.name, "fragments": []}
            else:
                assert tc.id is None and tc.function.name is None, f"a later delta repeats the call's id or name: {tc}"
                assert isinstance(tc.function.arguments, str) and tc.function.arguments, f"a later delta without arguments: {tc}"
                streamed[tc.index]["fragments"].append(tc.function.arguments)
assert finishes == ["tool_calls"], f"finish reasons {finishes}"
assert [ch for ch in chunks if ch.choices][-1].choices[0].finish_reason == "tool_calls", chunks[-1]
assert sorted(streamed) == [0], f"parallel_tool_calls=False streamed calls {sorted(streamed)}"
s = streamed[0]
assert len(s["fragments"]) >= 2, f"the arguments came in {len(s['fragments'])} piece(s), not streamed: {s['fragments']}"
arguments("".join(s["fragments"]), WEATHER, "streamed call")
summary["streamed_call_fragments"] = len(s["fragments"])
log("tools, streamed:", s["id"], "".join(s["fragments"]), f"({len(s['fragments'])} fragments)")

# (e) tool_choice "none" with tools: plain text.
r = client.chat.completions.create(model=base, messages=WEATHER_Q, tools=TOOLS, tool_choice="none", max_tokens=32, temperature=0)
c = r.choices[0]
assert not c.message.tool_calls, f"tool_choice none made calls: {c.message.tool_calls}"
assert isinstance(c.message.content, str) and c.message.content and c.finish_reason in ("stop", "length"), c

# Invalid: an unknown function named by tool_choice; a tool that is not a function.
rejected("tool_choice", "tool_choice naming an unknown function", lambda: client.chat.completions.create(
    model=base, messages=WEATHER_Q, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_stock_price"}}, max_tokens=8))
rejected("tools", "a tool of type custom", lambda: client.chat.completions.create(
    model=base, messages=WEATHER_Q, tools=[{"type": "custom", "custom": {"name": "shell"}}], max_tokens=8))
log("tools: none → text, bad tool_choice and tool type → 400")

# =============================================================================================
# 2. Structured output
# =============================================================================================
r = client.chat.completions.create(model=base, messages=[
    {"role": "system", "content": "You reply with one JSON object and nothing else."},
    {"role": "user", "content": "Describe a cat as a JSON object with the keys name, color and age."}],
    response_format={"type": "json_object"}, max_tokens=160, temperature=0)
c = r.choices[0]
assert c.finish_reason == "stop", f"json_object answer did not end by itself ({c.finish_reason}): {c.message.content!r}"
obj = json.loads(c.message.content)
assert isinstance(obj, dict), c.message.content
log("json_object:", c.message.content)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "mood": {"enum": ["happy", "sad", "calm"]},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "home": {"type": "object",
                 "properties": {"city": {"type": "string", "maxLength": 20}, "country": {"type": "string", "maxLength": 20}},
                 "required": ["city", "country"], "additionalProperties": False},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
    },
    "required": ["name", "mood", "age", "home", "hobbies"],
    "additionalProperties": False,
}
person_q = [{"role": "user", "content": "Invent a person: their name, mood, age, home and hobbies, as JSON."}]
person_format = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
r = client.chat.completions.create(model=base, messages=person_q, response_format=person_format, max_tokens=200, temperature=0)
c = r.choices[0]
assert c.finish_reason == "stop", f"json_schema answer did not end by itself ({c.finish_reason}): {c.message.content!r}"
person = json.loads(c.message.content)
valid(person, PERSON, "json_schema answer")
log("json_schema:", c.message.content)

# Streamed: the pieces join into a valid document.
chunks = list(client.chat.completions.create(model=base, messages=person_q, response_format=person_format, max_tokens=200,
                                             temperature=0.8, seed=3, stream=True))
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
assert finish == ["stop"], (finish, text)
valid(json.loads(text), PERSON, "streamed json_schema answer")
log("json_schema, streamed (sampled):", text)


class Weather(BaseModel):
    city: str = Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]
    temperature: int = Field(ge=-50, le=60)


# The client's own structured-output helper (a pydantic model → a strict json_schema).
r = client.chat.completions.parse(model=base, messages=[{"role": "user", "content": "Report the weather in Lisbon."}],
                                  response_format=Weather, max_tokens=96, temperature=0)
parsed = r.choices[0].message.parsed
assert isinstance(parsed, Weather), f"parse gave {parsed!r}: {r.choices[0].message.content!r}"
log("parse (pydantic):", parsed)

rejected("response_format", "a malformed json_schema", lambda: client.chat.completions.create(
    model=base, messages=person_q, max_tokens=8,
    response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": 12}}}))
summary["structured"] = {"json_schema": person, "parsed": parsed.model_dump()}

# =============================================================================================
# 3. n: several choices per request
# =============================================================================================
story = [{"role": "user", "content": "Write one sentence about a lighthouse."}]
one = client.chat.completions.create(model=base, messages=story, max_tokens=24, temperature=0)
r = client.chat.completions.create(model=base, messages=story, max_tokens=24, temperature=1.0, seed=42, n=2, logprobs=True)
assert [c.index for c in r.choices] == [0, 1], [c.index for c in r.choices]
for c in r.choices:
    assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length"), c
    assert "".join(t.token for t in c.logprobs.content) or not c.message.content, c
assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices), \
    f"completion_tokens {r.usage.completion_tokens} is not the sum over choices {[len(c.logprobs.content) for c in r.choices]}"
assert r.usage.prompt_tokens == one.usage.prompt_tokens, f"the prompt was not counted once: {r.usage} vs n=1 {one.usage}"
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
log("n=2:", [c.message.content for c in r.choices])

chunks = list(client.chat.completions.create(model=base, messages=story, max_tokens=24, temperature=1.0, seed=42, n=2, logprobs=True,
                                             stream=True, stream_options={"include_usage": True}))
texts, counts, finishes, first_delta = {}, {}, {}, {}
for ch in chunks:
    for c in ch.choices:
        first_delta.setdefault(c.index, c.delta)
        texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        counts[c.index] = counts.get(c.index, 0) + len(c.logprobs.content if c.logprobs and c.logprobs.content else [])
        if c.finish_reason:
            assert c.index not in finishes, f"choice {c.index} finished twice"
            finishes[c.index] = c.finish_reason
assert sorted(texts) == [0, 1] and sorted(finishes) == [0, 1], (sorted(texts), finishes)
assert all(first_delta[i].role == "assistant" for i in (0, 1)), first_delta
assert all(finishes[i] in ("stop", "length") for i in (0, 1)), (texts, finishes)
u = chunks[-1].usage
assert u is not None and not chunks[-1].choices, chunks[-1]
assert u.completion_tokens == counts[0] + counts[1], (u, counts)
assert u.prompt_tokens == one.usage.prompt_tokens, (u, one.usage)
summary["n2"] = {"streamed": [texts[0], texts[1]], "usage": u.completion_tokens}
log("n=2, streamed:", [texts[0], texts[1]])

# =============================================================================================
# 4. Seeds, logit_bias, penalties, stop
# =============================================================================================
kw = dict(model=base, messages=[{"role": "user", "content": "Tell me something about the moon."}], max_tokens=24, temperature=0.8, seed=11,
          extra_body=COLD)
a = client.chat.completions.create(**kw).choices[0].message.content
b = client.chat.completions.create(**kw).choices[0].message.content
assert a == b, f"the same seed gave different text:\n{a!r}\n{b!r}"

# logit_bias takes token ids: +100 forces a token; -100 on the first token of the greedy
# answer (its id from `tailor tokenize`) makes the answer start otherwise.
hello = [{"role": "user", "content": "Say hello."}]
plain = client.chat.completions.create(model=base, messages=hello, max_tokens=1, temperature=0, logprobs=True)
plain_first = plain.choices[0].logprobs.content[0].token
ids = json.loads(subprocess.check_output([os.environ["TAILOR_BIN"], "tokenize", plain_first]))
assert len(ids) == 1, (plain_first, ids)
r = client.chat.completions.create(model=base, messages=hello, max_tokens=3, temperature=0, logprobs=True, logit_bias={"2500": 100})
toks = [t.token for t in r.choices[0].logprobs.content]
assert len(toks) == 3 and len(set(toks)) == 1 and toks[0] != plain_first, f"logit_bias {{2500: 100}} did not force one token: {toks}"
ban = client.chat.completions.create(model=base, messages=hello, max_tokens=1, temperature=0, logprobs=True, logit_bias={str(ids[0]): -100})
assert ban.choices[0].logprobs.content[0].token != plain_first, f"logit_bias {{{ids[0]}: -100}} did not ban {plain_first!r}"
forced_id, banned_id = 2500, (ids[0], plain_first, ban.choices[0].logprobs.content[0].token)
summary["logit_bias"] = {"forced": forced_id, "banned": list(banned_id)}
log("logit_bias: +100 forces, -100 bans:", banned_id)

r = client.chat.completions.create(model=base, messages=hello, max_tokens=4, logit_bias={"1000": -100, "2000": 5})
assert r.choices[0].message.content is not None, r
q = dict(model=base, messages=hello, max_tokens=2)
rejected("logit_bias", "a logit_bias key that is not a token id", lambda: client.chat.completions.create(**q, logit_bias={"hello": 5}))
rejected("logit_bias", "a logit_bias of 150", lambda: client.chat.completions.create(**q, logit_bias={"10": 150}))
rejected("logit_bias", "a logit_bias of -101", lambda: client.chat.completions.create(**q, logit_bias={"10": -101}))
rejected("logit_bias", "a token id past the vocabulary", lambda: client.chat.completions.create(**q, logit_bias={"99999999": 1}))

r = client.chat.completions.create(**q, presence_penalty=1.5, frequency_penalty=-0.5)
assert isinstance(r.choices[0].message.content, str), r
r = client.chat.completions.create(**q, presence_penalty=-2, frequency_penalty=2, temperature=0)
assert isinstance(r.choices[0].message.content, str), r
rejected("presence_penalty", "presence_penalty 2.5", lambda: client.chat.completions.create(**q, presence_penalty=2.5))
rejected("frequency_penalty", "frequency_penalty -3", lambda: client.chat.completions.create(**q, frequency_penalty=-3))

r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": "Write three sentences about dogs."}],
                                   max_tokens=64, temperature=0, stop=["."])
c = r.choices[0]
assert "." not in c.message.content and c.finish_reason == "stop", f"stop ['.']: {c.finish_reason} {c.message.content!r}"
log("seed repeats, penalties in [-2, 2], stop ['.']:", repr(c.message.content))

# =============================================================================================
# 5. Sampling defaults: no temperature samples (the model's recommended settings); 0 is greedy
# =============================================================================================
poem = [{"role": "user", "content": "Write a short poem about the sea."}]
g1 = client.chat.completions.create(model=base, messages=poem, max_tokens=32, temperature=0, extra_body=COLD).choices[0].message.content
g2 = client.chat.completions.create(model=base, messages=poem, max_tokens=32, temperature=0, extra_body=COLD).choices[0].message.content
assert g1 == g2, f"two greedy answers differ:\n{g1!r}\n{g2!r}"
sampled = [client.chat.completions.create(model=base, messages=poem, max_tokens=32, seed=s, extra_body=COLD).choices[0].message.content
           for s in range(8)]
assert all(isinstance(t, str) and t for t in sampled), sampled
assert len(set(sampled)) >= 2, f"eight seeds without a temperature gave one text (not sampling?): {sampled[0]!r}"
again = client.chat.completions.create(model=base, messages=poem, max_tokens=32, seed=3, extra_body=COLD).choices[0].message.content
assert again == sampled[3], f"the default sampling with seed 3 did not repeat:\n{sampled[3]!r}\n{again!r}"
summary["default_sampling_distinct"] = len(set(sampled))
log(f"defaults: greedy repeats; 8 seeds without temperature → {len(set(sampled))} distinct texts")

# =============================================================================================
# 6. The Responses API
# =============================================================================================


def finished(resp, what, strict=True):
    """A finished response: completed (or, unless strict, cut at max_output_tokens)."""
    if not strict and resp.status == "incomplete":
        assert resp.incomplete_details and resp.incomplete_details.reason == "max_output_tokens", (what, resp.incomplete_details)
    else:
        assert resp.status == "completed", f"{what}: status {resp.status!r} ({resp.incomplete_details})"
    assert resp.object == "response", (what, resp.object)
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0, (what, resp.usage)
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens, (what, resp.usage)


# (a) Text in, text out, with instructions.
resp = client.responses.create(model=base, input="Say hello", instructions="Be brief.", max_output_tokens=48, temperature=0)
finished(resp, "responses text")
assert isinstance(resp.output_text, str) and resp.output_text, resp
msg = resp.output[0]
assert msg.type == "message" and msg.role == "assistant", msg
assert msg.content[0].type == "output_text" and msg.content[0].text == resp.output_text, msg
# Instructions are the system message (in place of the template's default one, if it has one).
bare = client.responses.create(model=base, input="Say hello", max_output_tokens=16, temperature=0)
assert bare.usage.input_tokens != resp.usage.input_tokens, f"instructions did not change the prompt: {bare.usage} vs {resp.usage}"
log("responses:", repr(resp.output_text))

# (b) A list of messages; content as a string or as input_text parts (the same prompt).
q2 = "What is two plus two?"
r1 = client.responses.create(model=base, input=[{"role": "user", "content": q2}], max_output_tokens=32, temperature=0, extra_body=COLD)
r2 = client.responses.create(model=base, input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": q2}]}],
                             max_output_tokens=32, temperature=0, extra_body=COLD)
finished(r1, "responses, message list", strict=False)
finished(r2, "responses, input_text parts", strict=False)
assert r1.output_text and r1.output_text == r2.output_text, (r1.output_text, r2.output_text)
assert r1.usage.input_tokens == r2.usage.input_tokens, (r1.usage, r2.usage)

# (c) Streamed text: created first, completed last, deltas join into the output text.
events = list(client.responses.create(model=base, input="Name a colour.", instructions="Answer in one word.", max_output_tokens=64,
                                      temperature=0, stream=True))
types = [e.type for e in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
final = events[-1].response
assert deltas and "".join(deltas) == final.output_text, (deltas, final.output_text)
finished(final, "streamed response")
for e in events:
    if e.type == "response.output_text.done":
        assert e.text == final.output_text, (e.text, final.output_text)
summary["responses_stream_events"] = len(events)
log("responses, streamed:", len(events), "events,", repr(final.output_text))

# (d) Function tools in the Responses shape; the call's output sent back.
R_TOOLS = [{"type": "function", "name": "get_weather", "description": "The current weather in a city.", "parameters": WEATHER, "strict": True},
           {"type": "function", "name": "get_time", "description": "The current time in a time zone.", "parameters": TIME, "strict": True}]
R_FORCE = {"type": "function", "name": "get_weather"}
first_input = [{"role": "user", "content": "What is the weather like in Paris right now? Use celsius."}]
resp = client.responses.create(model=base, input=first_input, tools=R_TOOLS, tool_choice=R_FORCE, max_output_tokens=96, temperature=0)
finished(resp, "responses forced call")
fcalls = [o for o in resp.output if o.type == "function_call"]
assert fcalls, f"no function_call item: {resp.output}"
for fc in fcalls:
    assert fc.name == "get_weather" and fc.call_id, fc
    arguments(fc.arguments, WEATHER, "responses call")
log("responses, call:", fcalls[0].name, fcalls[0].arguments)
follow = first_input + list(resp.output) + [{"type": "function_call_output", "call_id": fc.call_id, "output": "18 degrees"} for fc in fcalls]
resp2 = client.responses.create(model=base, input=follow, tools=R_TOOLS, tool_choice="none", max_output_tokens=48, temperature=0)
finished(resp2, "responses after the call's output", strict=False)
assert [o.type for o in resp2.output] == ["message"], f"tool_choice none: {resp2.output}"
assert isinstance(resp2.output_text, str), resp2
log("responses, after the output:", repr(resp2.output_text))

# (e) Structured output via text.format.
REPORT = {"type": "object",
          "properties": {"city": {"type": "string", "maxLength": 24}, "temperature": {"type": "integer", "minimum": -40, "maximum": 50},
                         "sky": {"enum": ["sunny", "cloudy", "rainy"]}},
          "required": ["city", "temperature", "sky"], "additionalProperties": False}
resp = client.responses.create(model=base, input="Report the weather in Oslo as JSON.", max_output_tokens=96, temperature=0,
                               text={"format": {"type": "json_schema", "name": "report", "schema": REPORT, "strict": True}})
finished(resp, "responses json_schema")
valid(json.loads(resp.output_text), REPORT, "responses json_schema")
log("responses, json_schema:", resp.output_text)

# (f) A streamed call: the argument deltas join into the final item's arguments.
events = list(client.responses.create(model=base, input=first_input, tools=R_TOOLS, tool_choice=R_FORCE, parallel_tool_calls=False,
                                      max_output_tokens=96, temperature=0, stream=True))
types = [e.type for e in events]
assert types[0] == "response.created" and types[-1] == "response.completed", types
final = events[-1].response
finished(final, "streamed responses call")
items = [o for o in final.output if o.type == "function_call"]
assert len(items) == 1, f"parallel_tool_calls=False: {final.output}"
arg_deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
assert arg_deltas and "".join(arg_deltas) == items[0].arguments, (arg_deltas, items[0].arguments)
for e in events:
    if e.type == "response.function_call_arguments.done":
        assert e.arguments == items[0].arguments, (e.arguments, items[0].arguments)
arguments(items[0].arguments, WEATHER, "streamed responses call")
summary["responses_call_deltas"] = len(arg_deltas)
log("responses, streamed call:", len(arg_deltas), "argument deltas,", items[0].arguments)

# =============================================================================================
# 7. Load: twice the default number of slots at once; the rest queue, none fails
# =============================================================================================
before = stats()
N = 2 * DEFAULT_PARALLEL
results, errors = [None] * N, []
peak = [0]
polling = threading.Event()


def poll():
    while not polling.is_set():
        peak[0] = max(peak[0], stats()["active"])
        time.sleep(0.02)


def ask(i):
    try:
        r = client.chat.completions.create(model=base, messages=[{"role": "user", "content": f"Give me a fact about the number {i + 1}."}],
                                           max_tokens=24)
        results[i] = (r.choices[0].message.content, r.choices[0].finish_reason)
    except Exception as ex:  # noqa: BLE001 - reported below
        errors.append(f"request {i}: {ex!r}")


t0 = time.time()
poller = threading.Thread(target=poll)
poller.start()
threads = [threading.Thread(target=ask, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join()
polling.set()
poller.join()
assert not errors, errors
assert all(x is not None and isinstance(x[0], str) and x[1] in ("stop", "length") for x in results), results
after = stats()
assert after["completed"] - before["completed"] == N, (before, after)
assert after["failed"] == before["failed"], (before, after)
assert peak[0] <= DEFAULT_PARALLEL, f"{peak[0]} generations ran at once with {DEFAULT_PARALLEL} slots"
summary["load"] = {"requests": N, "ok": sum(x is not None for x in results), "peak_active": peak[0], "seconds": round(time.time() - t0, 2)}
log("load:", summary["load"])

summary["stats"] = stats()
print(json.dumps(summary))
