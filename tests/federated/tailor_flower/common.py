"""Pieces shared by the ServerApp and the ClientApp: the adapter <-> Flower record conversion,
the local data, and one Engine per process.

Only LoRA factors travel: an adapter becomes an ``ArrayRecord`` with one entry per PEFT tensor
(``<module>.lora_A.weight`` ``[r, in]``, ``<module>.lora_B.weight`` ``[out, r]``, float32) and a
``ConfigRecord`` with its rank, alpha and base fingerprint. No text is ever put in a message.
"""

from __future__ import annotations

import json
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


def adapter_to_records(adapter, fingerprint: str | None, *, frozen_rank: int = 0) -> tuple[ArrayRecord, ConfigRecord]:
    """The adapter's factors as arrays, its rank/alpha/fingerprint as config; ``frozen_rank``:
    how many of its first components the clients keep frozen (the exact method's residual)."""
    arrays = {}
    for module, (a, b) in sorted(adapter.factors().items()):
        arrays[module + A_SUFFIX] = Array(np.ascontiguousarray(a, dtype=np.float32))
        arrays[module + B_SUFFIX] = Array(np.ascontiguousarray(b, dtype=np.float32))
    meta = ConfigRecord(
        {
            "rank": int(adapter.rank),
            "alpha": float(adapter.alpha),
            "frozen-rank": int(frozen_rank),
            "base-fingerprint": "" if fingerprint is None else str(fingerprint),
        }
    )
    return ArrayRecord(arrays), meta


def add(a, b, *, rank: int, fingerprint: str | None):
    """``a + b`` at ``rank`` (Tailor's exact aggregation of the two, each weighted 1/2 and
    doubled: exact when rank ≥ rank(a) + rank(b), else the best rank-``rank`` approximation).
    Either may be None (nothing): the other is refactored to ``rank``."""
    items = [x for x in (a, b) if x is not None]
    k = float(len(items))

    def scaled(x):
        return tailor.Adapter.from_factors({m: (p, k * q) for m, (p, q) in x.factors().items()},
                                           rank=int(x.rank), alpha=float(x.alpha), base_fingerprint=fingerprint,
                                           check_finite=False)
    out, _ = tailor.federated.aggregate([(f"t{i}", scaled(x), 1) for i, x in enumerate(items)], method="exact",
                                        rank=rank, max_norm_ratio=None, expected_fingerprint=fingerprint)
    return out


def stacked(frozen, trainable, *, fingerprint: str | None):
    """One adapter whose first components are ``frozen`` (rank F; None: none) and the rest
    ``trainable`` (rank r), at ``trainable``'s scale: trained with ``frozen_rank = F`` only the
    trainable part moves, and it learns exactly as ``trainable`` alone would on top of a base
    that includes ``frozen`` (FLoRA's stacking, FedEx-LoRA's residual)."""
    if frozen is None:
        return trainable
    F, r = int(frozen.rank), int(trainable.rank)
    s = float(trainable.scale)
    g = float(frozen.scale) / s
    ft = trainable.factors()
    factors = {}
    for m, (a, b) in frozen.factors().items():
        at, bt = ft[m]
        factors[m] = (
            np.vstack([a, at]).astype(np.float32),
            np.hstack([g * b.astype(np.float64), bt.astype(np.float64)]).astype(np.float32),
        )
    return tailor.Adapter.from_factors(factors, rank=F + r, alpha=s * (F + r), base_fingerprint=fingerprint)


def split(adapter, frozen_rank: int, *, rank: int, alpha: float, fingerprint: str | None):
    """``(frozen, trainable)`` of an adapter made by :func:`stacked`: its first ``frozen_rank``
    components (None when 0) and the rest as a rank-``rank`` adapter at ``alpha``."""
    fa = adapter.factors()
    s = float(adapter.scale)
    trainable = tailor.Adapter.from_factors(
        {m: (a[frozen_rank:], b[:, frozen_rank:] * (s / (float(alpha) / rank))) for m, (a, b) in fa.items()},
        rank=rank, alpha=float(alpha), base_fingerprint=fingerprint, check_finite=False)
    if frozen_rank == 0:
        return None, trainable
    frozen = tailor.Adapter.from_factors(
        {m: (a[:frozen_rank], b[:, :frozen_rank]) for m, (a, b) in fa.items()},
        rank=frozen_rank, alpha=s * frozen_rank, base_fingerprint=fingerprint, check_finite=False)
    return frozen, trainable


def difference(adapter, base, fingerprint: str | None):
    """``adapter − base`` as an adapter (``ΔW`` per pair, in factor form: A stacked, B side by
    side with the scales folded in and base's negated; rank ``r₁ + r₂``, scale 1). NaN/Inf
    values are kept (Tailor's aggregation refuses them by name)."""
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
