"""Adapter: factors in and out as NumPy arrays, PEFT files, and its effect on generation."""

import json

import numpy as np
import pytest

import tailor

# The tiny model: d_model 64, 4 query heads / 2 KV heads of 16 -> q [64 <- 64], v [32 <- 64].
SHAPES = {"q_proj": (64, 64), "v_proj": (32, 64)}
PREFIX = "base_model.model.model.layers.{}.self_attn.{}"


def random_factors(rng, rank, layers=(0, 1), scale=1.0):
    out = {}
    for layer in layers:
        for proj, (d_out, d_in) in SHAPES.items():
            a = rng.normal(scale=scale, size=(rank, d_in)).astype(np.float32)
            b = rng.normal(scale=scale, size=(d_out, rank)).astype(np.float32)
            out[PREFIX.format(layer, proj)] = (a, b)
    return out


def test_from_factors_and_factors_round_trip(rng):
    f = random_factors(rng, rank=3)
    ad = tailor.Adapter.from_factors(f, rank=3, alpha=6.0, base_fingerprint="fp")
    assert (ad.rank, ad.alpha, ad.scale) == (3, 6.0, 2.0)
    assert ad.targets == ["q_proj", "v_proj"]
    assert ad.layers == [0, 1]
    assert ad.base_fingerprint == "fp"
    assert len(ad) == 4
    assert ad.num_parameters == sum(a.size + b.size for a, b in f.values())
    back = ad.factors()
    assert set(back) == set(f)
    for m, (a, b) in f.items():
        a2, b2 = back[m]
        assert a2.dtype == np.float32 and b2.dtype == np.float32
        assert a2.shape == a.shape and b2.shape == b.shape
        np.testing.assert_array_equal(a2, a)
        np.testing.assert_array_equal(b2, b)
        a2[0, 0] += 1.0  # fresh, writable copies: the adapter is unchanged
    np.testing.assert_array_equal(ad.factors()[next(iter(f))][0], f[next(iter(f))][0])


def test_from_factors_takes_any_float_layout(rng):
    a = rng.normal(size=(64, 2)).T  # float64, Fortran order (a transposed view)
    b = rng.normal(size=(64, 2))
    assert not a.flags.c_contiguous
    ad = tailor.Adapter.from_factors({"model.layers.1.self_attn.q_proj": (a, b.tolist())}, rank=2, alpha=2.0)
    a2, b2 = ad.factors()[PREFIX.format(1, "q_proj")]
    np.testing.assert_array_equal(a2, a.astype(np.float32))
    np.testing.assert_array_equal(b2, b.astype(np.float32))


def test_from_factors_rejects_bad_input(rng):
    good = random_factors(rng, rank=2, layers=(0,))
    m = PREFIX.format(0, "q_proj")
    with pytest.raises(tailor.InvalidArgumentError, match="rank"):
        tailor.Adapter.from_factors(good, rank=3, alpha=1.0)
    with pytest.raises(tailor.InvalidArgumentError, match="module name"):
        tailor.Adapter.from_factors({"layers.0.q": good[m]}, rank=2, alpha=1.0)
    with pytest.raises(tailor.InvalidArgumentError):
        tailor.Adapter.from_factors({m: (np.zeros(4), np.zeros(4))}, rank=2, alpha=1.0)
    nan = (good[m][0].copy(), good[m][1])
    nan[0][0, 0] = np.nan
    with pytest.raises(tailor.TailorError):
        tailor.Adapter.from_factors({m: nan}, rank=2, alpha=1.0)
    kept = tailor.Adapter.from_factors({m: nan}, rank=2, alpha=1.0, check_finite=False)
    assert np.isnan(kept.factors()[m][0][0, 0])


def test_save_load_round_trip(tmp_path, rng):
    f = random_factors(rng, rank=4)
    ad = tailor.Adapter.from_factors(f, rank=4, alpha=8.0, base_fingerprint="fp")
    out = tmp_path / "adapter"
    ad.save(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8.0 and cfg["peft_type"] == "LORA"
    assert (out / "adapter_model.safetensors").exists()
    back = tailor.Adapter.load(out)
    assert (back.rank, back.alpha, back.base_fingerprint) == (4, 8.0, "fp")
    assert back.config["r"] == 4
    for m, (a, b) in f.items():
        np.testing.assert_array_equal(back.factors()[m][0], a)
        np.testing.assert_array_equal(back.factors()[m][1], b)
    # Saving again over it is atomic and leaves no temporary files beside it.
    ad.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_zero_b_is_the_base_and_a_real_adapter_changes_the_answer(engine, rng):
    f = random_factors(rng, rank=4)
    zero = {m: (a, np.zeros_like(b)) for m, (a, b) in f.items()}
    fp = engine.fingerprint
    base = engine.generate("Hello there", max_tokens=10)
    za = tailor.Adapter.from_factors(zero, rank=4, alpha=4.0, base_fingerprint=fp)
    assert engine.generate("Hello there", max_tokens=10, adapter=za) == base
    # A large random delta on every layer's q and v projections changes the logits.
    big = tailor.Adapter.from_factors(random_factors(rng, rank=4, scale=2.0), rank=4, alpha=4.0, base_fingerprint=fp)
    nll_base = tailor.mean_nll(engine, [("Hello there", "the heron")])
    nll_big = tailor.mean_nll(engine, [("Hello there", "the heron")], adapter=big)
    assert nll_big != pytest.approx(nll_base, rel=1e-6)
    s = engine.session(adapter=za)
    assert s.send("Hello there", max_tokens=10) == base
