"""Pieces shared by the ServerApp and the ClientApp: the adapter <-> Flower record conversion,
the local data, and one Engine per process.

Only LoRA factors travel: an adapter becomes an ``ArrayRecord`` with one entry per PEFT tensor
(``<module>.lora_A.weight`` ``[r, in]``, ``<module>.lora_B.weight`` ``[out, r]``, float32) and a
``ConfigRecord`` with its rank, alpha and base fingerprint. No text is ever put in a message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

import tailor

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

_ENGINE = None


def engine(threads: int | None = None):
    """The process's Engine on the real quantized model (loaded once per process: a Ray actor,
    a ClientApp subprocess, the ServerApp)."""
    global _ENGINE
    if _ENGINE is None:
        if threads is None and os.environ.get("TAILOR_FED_THREADS"):
            threads = int(os.environ["TAILOR_FED_THREADS"])
        _ENGINE = tailor.Engine(model_path=tailor.default_model_path(), threads=threads)
    return _ENGINE


def adapter_to_records(adapter, fingerprint: str | None) -> tuple[ArrayRecord, ConfigRecord]:
    arrays = {}
    for module, (a, b) in sorted(adapter.factors().items()):
        arrays[module + A_SUFFIX] = Array(np.ascontiguousarray(a, dtype=np.float32))
        arrays[module + B_SUFFIX] = Array(np.ascontiguousarray(b, dtype=np.float32))
    meta = ConfigRecord(
        {
            "rank": int(adapter.rank),
            "alpha": float(adapter.alpha),
            "base-fingerprint": "" if fingerprint is None else str(fingerprint),
        }
    )
    return ArrayRecord(arrays), meta


# Row norm of a LoRA A drawn as PEFT draws it, U(±1/sqrt(in)): sqrt(in · 1/(3·in)).
INIT_A_ROW_NORM = 1.0 / math.sqrt(3.0)


def mean_a(updates, weights: dict[str, float]) -> dict[str, np.ndarray]:
    """{module: Σ wᵢ·Aᵢ} over the accepted clients (`updates`: (name, Adapter, n); `weights`:
    name -> normalised weight, as the aggregation report gives them)."""
    out: dict[str, np.ndarray] = {}
    for name, ad, _ in updates:
        w = weights.get(name)
        if w is None:
            continue
        for m, (a, _) in ad.factors().items():
            out[m] = out.get(m, 0.0) + w * a.astype(np.float64)
    return out


def for_clients(adapter, alpha: float, fingerprint: str | None, a_ref: dict[str, np.ndarray]):
    """The same delta ``ΔW = scale·B·A`` at the run's ``alpha``, factored with the A closest to
    ``a_ref`` (the clients' weighted mean A) among the factorizations of ΔW: ``A`` = ``a_ref``
    projected on the row space of ΔW, ``B`` = what makes ``scale·B·A = ΔW``.

    Tailor's exact aggregation returns ``alpha = rank`` and splits the singular values evenly
    (``B = U·√S``, ``A = √S·Vᵀ``); FedIT's result is ``(Σ wᵢBᵢ)(Σ wᵢAᵢ)``, whose A is the clients'
    mean. The next round's clients continue training from the global factors, and LoRA's
    training speed depends on how ΔW is split (``∂L/∂B ∝ A``), so an exact run continued from
    an evenly split ΔW would differ from FedIT's by its parametrization, not by its aggregation.
    Factored this way both continue from the clients' A; only the aggregation differs.

    When the mean A has little in ΔW's row space (central DP noise turns that space to random
    directions; the projection keeps under half of its norm) or the projection is singular,
    each row of A is scaled to the norm of a PEFT-initialised A's row instead, B carrying the
    magnitude (an even split would make A tiny when ΔW is small, a projection that lost most
    of A would make B huge: either way the next round's training would run at another speed)."""
    r = int(adapter.rank)
    s_old, s_new = float(adapter.scale), float(alpha) / r
    factors = {}
    for m, (a_e, b_e) in adapter.factors().items():
        a_e64, b_e64 = a_e.astype(np.float64), b_e.astype(np.float64)
        ref = a_ref.get(m)
        a = None
        if ref is not None and ref.shape == a_e.shape:
            q, _ = np.linalg.qr(a_e64.T)  # [in, r]: an orthonormal basis of A_e's row space
            cand = (ref @ q) @ q.T  # [r, in]
            gram = cand @ cand.T
            if np.linalg.norm(cand) >= 0.5 * np.linalg.norm(ref) and np.linalg.cond(gram) < 1e6:
                a = cand
                b = (s_old / s_new) * b_e64 @ (a_e64 @ cand.T) @ np.linalg.inv(gram)
        if a is None:
            norms = np.linalg.norm(a_e64, axis=1)
            c = np.where(norms > 0, INIT_A_ROW_NORM / np.where(norms > 0, norms, 1.0), 1.0)
            a, b = a_e64 * c[:, None], b_e64 * ((s_old / s_new) / c)[None, :]
        factors[m] = (a.astype(np.float32), b.astype(np.float32))
    return tailor.Adapter.from_factors(factors, rank=r, alpha=float(alpha), base_fingerprint=fingerprint)


def difference(adapter, base, fingerprint: str | None):
    """``adapter − base`` as an adapter (``ΔW`` per pair, in factor form: A stacked, B side by
    side with the scales folded in and base's negated; rank ``r₁ + r₂``, scale 1). What DP
    federated averaging clips and noises is a client's change of the global model, not the
    model. NaN/Inf values are kept (Tailor's aggregation refuses them by name)."""
    fa, fb = adapter.factors(), base.factors()
    r = int(adapter.rank) + int(base.rank)
    factors = {}
    for m, (a1, b1) in fa.items():
        a2, b2 = fb[m]
        factors[m] = (
            np.vstack([a1, a2]).astype(np.float32),
            np.hstack([float(adapter.scale) * b1, -float(base.scale) * b2]).astype(np.float32),
        )
    return tailor.Adapter.from_factors(factors, rank=r, alpha=float(r), base_fingerprint=fingerprint,
                                       check_finite=False)


def add(a, b, *, rank: int, fingerprint: str | None):
    """``a + b`` at ``rank`` (Tailor's exact aggregation of the two, each weighted 1/2 and
    doubled: exact when rank ≥ rank(a) + rank(b), else the best rank-``rank`` approximation)."""
    def doubled(x):
        return tailor.Adapter.from_factors({m: (p, 2.0 * q) for m, (p, q) in x.factors().items()},
                                           rank=int(x.rank), alpha=float(x.alpha), base_fingerprint=fingerprint)
    out, _ = tailor.federated.aggregate([("a", doubled(a), 1), ("b", doubled(b), 1)], method="exact", rank=rank,
                                        max_norm_ratio=None, expected_fingerprint=fingerprint)
    return out


def records_to_factors(arrays: ArrayRecord) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{module: (A, B)}; raises ValueError on a record that is not a set of LoRA pairs."""
    a_parts, b_parts = {}, {}
    for key, arr in arrays.items():
        if key.endswith(A_SUFFIX):
            a_parts[key[: -len(A_SUFFIX)]] = arr.numpy()
        elif key.endswith(B_SUFFIX):
            b_parts[key[: -len(B_SUFFIX)]] = arr.numpy()
        else:
            raise ValueError(f"unexpected array {key!r} (only LoRA factors are accepted)")
    if set(a_parts) != set(b_parts):
        missing = sorted(set(a_parts) ^ set(b_parts))
        raise ValueError(f"lora_A/lora_B not paired for {missing[:3]}")
    return {m: (a_parts[m], b_parts[m]) for m in sorted(a_parts)}


def records_to_adapter(arrays: ArrayRecord, meta: ConfigRecord, *, check_finite: bool = True):
    """The adapter in a message. ``check_finite=False`` (the server, reading client updates)
    keeps NaN/Inf values so that Tailor's aggregation refuses the update by name."""
    fp = str(meta.get("base-fingerprint", "")) or None
    return tailor.Adapter.from_factors(
        records_to_factors(arrays),
        rank=int(meta["rank"]),
        alpha=float(meta["alpha"]),
        base_fingerprint=fp,
        check_finite=check_finite,
    )


def load_client_data(partition_id: int, data_dir: str | os.PathLike | None = None) -> dict:
    """One client's own data: {"train": [(prompt, answer)], "heldout": [(prompt, answer)]}."""
    d = Path(data_dir) if data_dir else DATA_DIR
    with open(d / f"client_{int(partition_id)}.json", encoding="utf-8") as f:
        raw = json.load(f)
    return {
        "topic": raw["topic"],
        "train": [tuple(x) for x in raw["train"]],
        "heldout": [tuple(x) for x in raw["heldout"]],
    }


def union_heldout(num_clients: int, data_dir=None) -> list[tuple[str, str]]:
    out = []
    for i in range(num_clients):
        out.extend(load_client_data(i, data_dir)["heldout"])
    return out


def config_value(run_config, key, default):
    """A run-config value, with '' / missing meaning the default (Flower's config has no None)."""
    v = run_config.get(key, default)
    if isinstance(v, str) and v == "" and not isinstance(default, str):
        return default
    return v


def optional_float(run_config, key) -> float | None:
    v = run_config.get(key, 0.0)
    if v in ("", None):
        return None
    v = float(v)
    return v if v > 0 else None


def targets_of(run_config) -> list[str]:
    return [t.strip() for t in str(run_config.get("targets", "q_proj,v_proj")).split(",") if t.strip()]
