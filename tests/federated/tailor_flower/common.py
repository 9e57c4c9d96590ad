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


def add(a, b, *, rank: int, fingerprint: str | None):
    """``a + b`` at ``rank`` (Tailor's exact aggregation of the two, each weighted 1/2 and
    doubled: exact when rank ≥ rank(a) + rank(b), else the best rank-``rank`` approximation)."""
    def doubled(x):
        return tailor.Adapter.from_factors({m: (p, 2.0 * q) for m, (p, q) in x.factors().items()},
                                           rank=int(x.rank), alpha=float(x.alpha), base_fingerprint=fingerprint)
    out, _ = tailor.federated.aggregate([("a", doubled(a), 1), ("b", doubled(b), 1)], method="exact", rank=rank,
                                        max_norm_ratio=None, expected_fingerprint=fingerprint)
    return out


def fresh_a(global_adapter, rank: int, seed: int) -> dict[str, np.ndarray]:
    """A fresh LoRA A for every module of ``global_adapter``, drawn as PEFT draws it
    (U(±1/sqrt(in))) from a numpy RNG seeded with ``seed``: the server's seed of the round, so
    that every client of a round starts its update from the same A."""
    rng = np.random.default_rng(seed)
    out = {}
    for m, (a, _) in sorted(global_adapter.factors().items()):
        d_in = int(np.shape(a)[1])
        bound = 1.0 / math.sqrt(d_in)
        out[m] = rng.uniform(-bound, bound, size=(rank, d_in)).astype(np.float32)
    return out


def stacked(global_adapter, a_fresh: dict[str, np.ndarray], *, rank: int, alpha: float, fingerprint: str | None):
    """One adapter of rank ``R + rank`` whose first ``R`` components are ``global_adapter`` (rank
    R) and the rest a fresh LoRA (``a_fresh``, ``B = 0``), at the scale ``alpha / rank`` of the
    fresh part: trained with ``frozen_rank = R`` (FLoRA's stacking) the fresh part learns as a
    fresh rank-``rank`` LoRA would, on top of the global model, which stays frozen."""
    R = int(global_adapter.rank)
    s = float(alpha) / rank
    g = float(global_adapter.scale) / s
    factors = {}
    for m, (a, b) in global_adapter.factors().items():
        af = a_fresh[m]
        factors[m] = (
            np.vstack([a, af]).astype(np.float32),
            np.hstack([g * b.astype(np.float64), np.zeros((b.shape[0], rank))]).astype(np.float32),
        )
    return tailor.Adapter.from_factors(factors, rank=R + rank, alpha=s * (R + rank), base_fingerprint=fingerprint)


def fresh_part(trained, global_rank: int, *, rank: int, alpha: float, fingerprint: str | None):
    """The update a stacked run learned: its components after the first ``global_rank``, as a
    rank-``rank`` adapter at ``alpha`` (the same scale, so the same ΔW)."""
    factors = {m: (a[global_rank:], b[:, global_rank:]) for m, (a, b) in trained.factors().items()}
    return tailor.Adapter.from_factors(factors, rank=rank, alpha=float(alpha), base_fingerprint=fingerprint,
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
