"""train_lora and mean_nll on the tiny model: the trainer overfits a tiny set."""

import math

import numpy as np

import tailor

EXAMPLES = [("What is my dog called?", "Rex the heron."), ("Where do I live?", "On the river.")]


def test_train_lora_overfits_a_tiny_set(engine):
    before = tailor.mean_nll(engine, EXAMPLES)
    adapter, m = tailor.train_lora(engine, EXAMPLES, steps=40, learning_rate=1e-2, rank=4, alpha=8.0, seed=1)
    after = tailor.mean_nll(engine, EXAMPLES, adapter=adapter)
    losses = m["losses"]
    assert m["steps"] == 40 and len(losses) == 40 and m["stop"]
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert after < 0.5 * before, (before, after)
    assert m["final_loss"] == losses[-1]
    assert m["trained_tokens"] > 0 and m["seconds"] > 0
    assert adapter.rank == 4 and adapter.base_fingerprint == engine.fingerprint


def test_training_is_seeded_and_continues_from_init(engine):
    a1, _ = tailor.train_lora(engine, EXAMPLES, steps=3, rank=2, seed=5, targets=["q_proj", "v_proj"])
    a2, _ = tailor.train_lora(engine, EXAMPLES, steps=3, rank=2, seed=5, targets=["q_proj", "v_proj"])
    assert a1.targets == ["q_proj", "v_proj"]
    for m, (a, b) in a1.factors().items():
        np.testing.assert_array_equal(a, a2.factors()[m][0])
        np.testing.assert_array_equal(b, a2.factors()[m][1])
    # freeze_a: training from an init keeps its A and moves its B.
    cont, _ = tailor.train_lora(engine, EXAMPLES, steps=3, rank=2, init=a1, freeze_a=True, learning_rate=1e-2)
    for m, (a, b) in cont.factors().items():
        np.testing.assert_array_equal(a, a1.factors()[m][0])
        assert not np.array_equal(b, a1.factors()[m][1])


def test_mean_nll_without_chat_template(engine):
    with_t = tailor.mean_nll(engine, EXAMPLES)
    raw = tailor.mean_nll(engine, EXAMPLES, chat_template=False)
    assert math.isfinite(with_t) and math.isfinite(raw) and with_t > 0 and raw > 0
    assert with_t != raw
