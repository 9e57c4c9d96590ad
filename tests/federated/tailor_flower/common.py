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


def records_to_adapter(arrays: ArrayRecord, meta: ConfigRecord):
    fp = str(meta.get("base-fingerprint", "")) or None
    return tailor.Adapter.from_factors(
        records_to_factors(arrays),
        rank=int(meta["rank"]),
        alpha=float(meta["alpha"]),
        base_fingerprint=fp,
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
