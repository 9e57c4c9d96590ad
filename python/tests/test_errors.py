"""Errors: every Rust error is a tailor.TailorError subclass chosen by its kind; a panic is an
InternalError; wrong Python types are Python's own TypeError / UnicodeEncodeError, and the
engine goes on working after each."""

import numpy as np
import pytest

import tailor
import tailor._testing

CLASSES = [
    tailor.InvalidArgumentError,
    tailor.NotFoundError,
    tailor.FileSystemError,
    tailor.CorruptDataError,
    tailor.UnsupportedError,
    tailor.IncompatibleError,
    tailor.ContextOverflowError,
    tailor.CancelledError,
    tailor.BusyError,
    tailor.TrainingError,
    tailor.InternalError,
]


def test_hierarchy():
    assert issubclass(tailor.TailorError, Exception)
    for c in CLASSES:
        assert issubclass(c, tailor.TailorError), c


def test_missing_model_file(tmp_path):
    with pytest.raises(tailor.NotFoundError) as e:
        tailor.Engine(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(e.value)


def test_corrupt_model_file(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(tailor.CorruptDataError):
        tailor.Engine(bad)
    text = tmp_path / "text.gguf"
    text.write_text("not a model at all")
    with pytest.raises((tailor.CorruptDataError, tailor.UnsupportedError)):
        tailor.Engine(text)


def test_missing_adapter_dir(tmp_path):
    with pytest.raises(tailor.NotFoundError):
        tailor.Adapter.load(tmp_path / "no-adapter")


def test_panic_is_internal_error():
    with pytest.raises(tailor.InternalError, match="panic"):
        tailor._testing.panic()
    # An InternalError is a TailorError, hence an Exception: `except Exception` catches it.
    try:
        tailor._testing.panic()
    except Exception as e:  # noqa: BLE001
        assert isinstance(e, tailor.TailorError)


def test_wrong_python_types(engine):
    with pytest.raises(TypeError):
        engine.generate(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.tokenize(b"bytes are not text")  # type: ignore[arg-type]
    # A lone surrogate is not UTF-8: Python's own UnicodeEncodeError, not a crash.
    with pytest.raises(UnicodeEncodeError):
        engine.generate("bad \ud800 text", max_tokens=2)
    with pytest.raises(UnicodeEncodeError):
        engine.tokenize("\udcff")
    with pytest.raises(OverflowError):
        engine.detokenize([-1])
    with pytest.raises(tailor.InvalidArgumentError, match="outside the vocabulary"):
        engine.detokenize([10**9])
    assert engine.generate("still fine", max_tokens=2) == engine.generate("still fine", max_tokens=2)


def test_invalid_arguments(engine):
    with pytest.raises(tailor.InvalidArgumentError):
        engine.generate("x", raw=True, system="s")
    with pytest.raises(tailor.InvalidArgumentError):
        tailor.mean_nll(engine, [])
    # An unknown projection name is the adapters crate's "unsupported" kind.
    with pytest.raises(tailor.UnsupportedError, match="no_such_proj"):
        tailor.train_lora(engine, [("q", "a")], steps=1, targets=["no_such_proj"])


def test_adapter_for_another_base(engine, rng):
    a = tailor.Adapter.from_factors(
        {"model.layers.0.self_attn.q_proj": (rng.normal(size=(2, 64)), np.zeros((64, 2)))},
        rank=2,
        alpha=2.0,
        base_fingerprint="some-other-base",
    )
    with pytest.raises(tailor.IncompatibleError):
        engine.generate("x", adapter=a, max_tokens=1)
    with pytest.raises(tailor.IncompatibleError):
        engine.session(adapter=a)


def test_session_context_overflow(engine):
    s = engine.session(context_length=32)
    with pytest.raises(tailor.ContextOverflowError):
        s.send("the there " * 40, max_tokens=4)
