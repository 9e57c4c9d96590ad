"""tailor.federated against a dense NumPy reference (float64), on fresh random adapters.

Tolerances: the factors are float32, so a product scale·B·A carries a relative rounding error
of ~1e-7 per entry; the aggregation (QR, small SVD in float64, refactoring to float32) is
checked to a relative Frobenius error of 1e-5 against the float64 dense sum."""

import math

import numpy as np
import pytest

import tailor
import tailor.federated as fed

# Arbitrary widths (no model is involved): [out, in] per projection.
SHAPES = {"q_proj": (48, 40), "v_proj": (24, 40)}
LAYERS = (0, 3)
FP = "test-base"
TOL = 1e-5


def module(layer, proj):
    return f"base_model.model.model.layers.{layer}.self_attn.{proj}"


def random_adapter(rng, rank, alpha, fp=FP):
    f = {}
    for layer in LAYERS:
        for proj, (d_out, d_in) in SHAPES.items():
            f[module(layer, proj)] = (
                rng.normal(size=(rank, d_in)).astype(np.float32),
                rng.normal(size=(d_out, rank)).astype(np.float32),
            )
    return tailor.Adapter.from_factors(f, rank=rank, alpha=alpha, base_fingerprint=fp)


def dense(adapter):
    """{module: scale·B·A} in float64."""
    return {m: adapter.scale * (b.astype(np.float64) @ a.astype(np.float64)) for m, (a, b) in adapter.factors().items()}


def weighted_sum(updates):
    total = sum(n for _, _, n in updates)
    out = {}
    for _, ad, n in updates:
        for m, d in dense(ad).items():
            out[m] = out.get(m, 0.0) + (n / total) * d
    return out


def rel_err(got, want):
    num = math.sqrt(sum(np.sum((got[m] - want[m]) ** 2) for m in want))
    den = math.sqrt(sum(np.sum(want[m] ** 2) for m in want))
    return num / den


def test_exact_aggregation_equals_the_dense_weighted_sum(rng):
    # Heterogeneous ranks and alphas; weights = sample counts.
    updates = [
        ("alice", random_adapter(rng, 2, 4.0), int(rng.integers(1, 100))),
        ("bob", random_adapter(rng, 3, 3.0), int(rng.integers(1, 100))),
        ("carol", random_adapter(rng, 4, 16.0), int(rng.integers(1, 100))),
    ]
    agg, report = fed.aggregate(updates, expected_fingerprint=FP)
    assert report["accepted"] == ["alice", "bob", "carol"] and report["refused"] == []
    assert report["method"] == "exact" and report["rank"] == report["stacked_rank"] == 9
    assert agg.rank == 9 and agg.base_fingerprint == FP
    want = weighted_sum(updates)
    assert set(agg.factors()) == set(want)
    assert rel_err(dense(agg), want) < TOL
    assert report["relative_error_vs_exact"] < TOL
    total = sum(n for *_, n in updates)
    for row, (name, ad, n) in zip(report["clients"], updates):
        assert row["client"] == name and row["samples"] == n
        assert row["weight"] == pytest.approx(n / total)
        assert row["norm"] == pytest.approx(fed.update_norm(ad), rel=1e-9)
    # Below Σ rᵢ: the best rank-R approximation of each pair (Eckart-Young), which numpy's SVD
    # gives too.
    low, rep = fed.aggregate(updates, rank=5)
    assert low.rank == 5 and rep["rank"] == 5
    got = dense(low)
    for m, w in want.items():
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        best = (u[:, :5] * s[:5]) @ vt[:5]
        assert np.linalg.norm(got[m] - best) <= TOL * np.linalg.norm(w)


def test_fedit_differs_from_the_exact_sum(rng):
    updates = [(f"c{i}", random_adapter(rng, 4, 8.0), 10 * (i + 1)) for i in range(3)]
    want = weighted_sum(updates)
    fedit, rep = fed.aggregate(updates, method="fedit")
    assert rep["method"] == "fedit" and fedit.rank == 4
    # FedIT: mean(B)·mean(A) (weighted), not mean(B·A).
    total = sum(n for *_, n in updates)
    for m in want:
        a = sum((n / total) * ad.factors()[m][0].astype(np.float64) for _, ad, n in updates)
        b = sum((n / total) * ad.factors()[m][1].astype(np.float64) for _, ad, n in updates)
        np.testing.assert_allclose(dense(fedit)[m], 2.0 * b @ a, rtol=1e-4, atol=1e-4)
    e = rel_err(dense(fedit), want)
    assert e > 0.1, e  # independent random clients: far from the exact sum
    assert rep["relative_error_vs_exact"] == pytest.approx(e, rel=1e-3)
    exact, _ = fed.aggregate(updates, method="exact")
    assert rel_err(dense(exact), want) < TOL


def test_a_nan_client_is_refused_by_name_and_the_round_goes_on(rng):
    good = [(f"client{i}", random_adapter(rng, 2, 2.0), int(rng.integers(1, 50))) for i in range(3)]
    f = random_adapter(rng, 2, 2.0).factors()
    m = module(3, "v_proj")
    f[m][1][5, 1] = np.nan
    bad = tailor.Adapter.from_factors(f, rank=2, alpha=2.0, base_fingerprint=FP, check_finite=False)
    updates = good[:2] + [("mallory", bad, 40)] + good[2:]
    agg, report = fed.aggregate(updates, rank=6)
    assert report["accepted"] == ["client0", "client1", "client2"]
    assert len(report["refused"]) == 1
    r = report["refused"][0]
    assert r["client"] == "mallory" and "NaN" in r["reason"] and "layers.3.self_attn.v_proj" in r["reason"]
    assert r["detail"]["kind"] == "non_finite"
    assert rel_err(dense(agg), weighted_sum(good)) < TOL


def test_other_refusals_and_when_nothing_is_left(rng):
    ok = ("ok", random_adapter(rng, 2, 2.0), 10)
    other_base = ("elsewhere", random_adapter(rng, 2, 2.0, fp="another-base"), 10)
    empty = ("nobody", random_adapter(rng, 2, 2.0), 0)
    _, rep = fed.aggregate([ok, other_base, empty], expected_fingerprint=FP)
    assert rep["accepted"] == ["ok"]
    kinds = {r["client"]: r["detail"]["kind"] for r in rep["refused"]}
    assert kinds == {"elsewhere": "fingerprint", "nobody": "no_samples"}
    with pytest.raises(tailor.InvalidArgumentError, match="nothing to aggregate") as e:
        fed.aggregate([other_base, empty], expected_fingerprint=FP)
    assert {r["client"] for r in e.value.refused} == {"elsewhere", "nobody"}
    with pytest.raises(tailor.InvalidArgumentError, match="method"):
        fed.aggregate([ok], method="mean")
    with pytest.raises(tailor.InvalidArgumentError, match="clip"):
        fed.aggregate([ok], noise_multiplier=1.0)
    with pytest.raises(TypeError):
        fed.aggregate([("x", "not an adapter", 1)])


def test_update_norm_is_numpys_frobenius_norm(rng):
    for rank in (1, 3, 8):
        ad = random_adapter(rng, rank, float(rng.uniform(0.5, 16)))
        want = math.sqrt(sum(np.linalg.norm(d) ** 2 for d in dense(ad).values()))
        assert fed.update_norm(ad) == pytest.approx(want, rel=1e-6)


def test_clip_update(rng):
    ad = random_adapter(rng, 3, 6.0)
    n = fed.update_norm(ad)
    clipped, factor = fed.clip_update(ad, n / 4)
    assert factor == pytest.approx(0.25)
    assert fed.update_norm(clipped) == pytest.approx(n / 4, rel=1e-6)
    assert fed.update_norm(ad) == pytest.approx(n), "the argument is not changed"
    same, factor = fed.clip_update(ad, 2 * n)
    assert factor == 1.0 and fed.update_norm(same) == pytest.approx(n)


def test_clipping_and_central_noise_in_a_round(rng):
    updates = [(f"c{i}", random_adapter(rng, 2, 2.0), 1) for i in range(4)]
    clip = 0.5 * min(fed.update_norm(a) for _, a, _ in updates)
    agg, rep = fed.aggregate(updates, clip=clip)
    assert all(c["clipped_norm"] == pytest.approx(clip, rel=1e-6) for c in rep["clients"])
    # The exact sum of the clipped updates.
    want = {}
    for _, ad, _ in updates:
        f = clip / fed.update_norm(ad)
        for m, d in dense(ad).items():
            want[m] = want.get(m, 0.0) + 0.25 * f * d
    assert rel_err(dense(agg), want) < TOL
    noisy, rep = fed.aggregate(updates, clip=clip, noise_multiplier=1.0, seed=11)
    assert rep["noise_std"] == pytest.approx(1.0 * clip * 0.25)
    again, _ = fed.aggregate(updates, clip=clip, noise_multiplier=1.0, seed=11)
    other, _ = fed.aggregate(updates, clip=clip, noise_multiplier=1.0, seed=12)
    d1, d2, d3 = dense(noisy), dense(again), dense(other)
    assert all(np.array_equal(d1[m], d2[m]) for m in d1), "seeded: the same noise"
    assert not all(np.array_equal(d1[m], d3[m]) for m in d1)


def test_privatize_local(rng):
    ad = random_adapter(rng, 3, 3.0)
    n = fed.update_norm(ad)
    # No noise: the update clipped (truncated SVD at its own rank is exact).
    clean = fed.privatize_local(ad, clip=n / 2, noise_multiplier=0.0, seed=1)
    assert clean.rank == 3
    want = {m: 0.5 * d for m, d in dense(ad).items()}
    assert rel_err(dense(clean), want) < TOL
    a = fed.privatize_local(ad, clip=n / 2, noise_multiplier=0.5, seed=1)
    b = fed.privatize_local(ad, clip=n / 2, noise_multiplier=0.5, seed=1)
    c = fed.privatize_local(ad, clip=n / 2, noise_multiplier=0.5, seed=2)
    assert all(np.array_equal(a.factors()[m][1], b.factors()[m][1]) for m in want)
    assert rel_err(dense(a), want) > 1e-3
    assert not all(np.array_equal(a.factors()[m][1], c.factors()[m][1]) for m in want)
    with pytest.raises(tailor.InvalidArgumentError):
        fed.privatize_local(ad, clip=-1.0, noise_multiplier=1.0)


def test_epsilon_is_positive_and_grows_with_rounds():
    eps = [fed.epsilon(1.1, 0.1, t, 1e-5) for t in (1, 10, 100, 1000)]
    assert all(isinstance(e, float) and e > 0 for e in eps)
    assert all(b > a for a, b in zip(eps, eps[1:])), eps
    assert fed.epsilon(2.0, 0.1, 100, 1e-5) < eps[2], "more noise, less ε"
    assert fed.epsilon(1.1, 0.01, 100, 1e-5) < eps[2], "less sampling, less ε"
    assert fed.epsilon(0.0, 0.1, 10) == math.inf
    e, order = fed.epsilon(1.1, 0.1, 100, 1e-5, return_order=True)
    assert e == eps[2] and order > 1
    with pytest.raises(tailor.InvalidArgumentError):
        fed.epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(tailor.InvalidArgumentError):
        fed.epsilon(1.0, 1.5, 10)


def test_the_module_is_reachable_as_tailor_federated():
    assert tailor.federated.aggregate is fed.aggregate
    assert set(fed.__all__) == {"aggregate", "privatize_local", "update_norm", "clip_update", "epsilon"}
