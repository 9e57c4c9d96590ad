"""Engine and Session on the tiny model."""

import threading

import pytest

import tailor


def test_engine_properties(engine, tiny_model):
    assert engine.model_path == tiny_model
    cfg = engine.model_config
    assert cfg["n_layers"] == 2 and cfg["d_model"] == 64
    assert engine.threads == 1
    assert isinstance(engine.fingerprint, str) and engine.fingerprint
    assert "Engine(" in repr(engine)


def test_tokenize_detokenize_round_trip(engine):
    text = "the there in a rest, on heron"
    ids = engine.tokenize(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert engine.detokenize(ids) == text
    # Control tokens written in the text are parsed to their ids.
    im = engine.tokenize("<|im_start|>")
    assert len(im) == 1
    assert engine.detokenize(im, skip_control=True) == ""


def test_generate_is_deterministic_at_temperature_zero(engine):
    a = engine.generate("Hello there", max_tokens=12)
    b = engine.generate("Hello there", max_tokens=12)
    assert isinstance(a, str) and a == b
    # At most max_tokens tokens (re-tokenizing may merge them; it never needs more).
    assert len(engine.tokenize(a)) <= 12
    raw = engine.generate(engine.chat_prompt("Hello there"), max_tokens=12, raw=True)
    assert raw == a, "the chat prompt rendered by hand is what generate runs"
    sampled = engine.generate("Hello there", max_tokens=12, temperature=1.0, seed=3)
    assert sampled == engine.generate("Hello there", max_tokens=12, temperature=1.0, seed=3)


def test_chat_prompt_uses_the_template(engine):
    p = engine.chat_prompt("Hi", system="Be brief.")
    assert "Be brief." in p and "Hi" in p and p.rstrip().endswith("assistant")


def test_session_keeps_history_and_cache(engine):
    s = engine.session(system="You are terse.")
    first = s.send("Hello", max_tokens=6)
    second = s.send("And then?", max_tokens=6)
    h = s.history
    assert [r for r, _ in h] == ["system", "user", "assistant", "user", "assistant"]
    assert h[2][1] == first and h[4][1] == second
    assert s.cached_tokens > 0
    s.reset()
    assert s.history == [("system", "You are terse.")]
    assert s.cached_tokens == 0
    assert "Session(" in repr(s)


def test_generate_releases_the_gil(engine):
    # Four generations on four threads: each runs with the GIL released, and all finish with the
    # answer one thread alone gives.
    want = engine.generate("Tell me", max_tokens=8)
    out, errors = [], []

    def work():
        try:
            out.append(engine.generate("Tell me", max_tokens=8))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and out == [want] * 4


def test_default_paths_are_strings():
    assert tailor.default_model_path().endswith(".gguf")
    assert isinstance(tailor.default_embedder_dir(), str)


def test_constrained_generation(engine):
    """A JSON schema (dict or text), a regex or a Lark grammar: the answer always parses."""
    import json

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    for seed in range(4):
        out = json.loads(engine.generate("JSON", max_tokens=40, temperature=1.0, seed=seed, json_schema=schema))
        assert isinstance(out["ok"], bool) and 1 <= out["n"] <= 9, out
    assert json.loads(engine.generate("JSON", max_tokens=40, json_schema=json.dumps(schema)))["n"] in range(1, 10)
    text = engine.generate("x", max_tokens=10, regex="[ab]{4}")
    assert len(text) == 4 and set(text) <= {"a", "b"}, text
    s = engine.session()
    assert s.send("go", max_tokens=10, grammar='start: "up" | "down"') in ("up", "down")
    with pytest.raises(tailor.InvalidArgumentError, match="grammar"):
        engine.generate("x", regex="(unclosed")
    with pytest.raises(tailor.InvalidArgumentError, match="at most one"):
        engine.generate("x", regex="a", grammar='start: "a"')
