"""The ClientApp: one device. It holds its own local data (a slice of the fact set no other
client has), trains its LoRA adapter from the global one with Tailor's on-device trainer on the
real quantized model, and sends back only the adapter's factors and its sample count. With the
exact method the global adapter carries the server's exact residual as frozen components
(FedEx-LoRA), which the client keeps frozen while it trains the rest as a FedIT client does.

Fault injection (run config, for the robustness test): ``fault-die-partition`` dies after it
received the round's global adapter (``fault-die-mode``: ``raise`` or ``exit``), ``fault-nan-partition`` sends an
update with a NaN in it; both in round ``fault-round``.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import tailor

from .common import (
    adapter_to_records,
    config_value,
    engine,
    load_client_data,
    optional_float,
    records_to_adapter,
    split,
    targets_of,
)

app = ClientApp()


def _partition(context: Context) -> int:
    nc = context.node_config
    if "partition-id" not in nc:
        raise RuntimeError("node config has no partition-id (give --node-config 'partition-id=N')")
    return int(nc["partition-id"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    t0 = time.time()
    rc = context.run_config
    cfg = msg.content["config"]
    server_round = int(cfg["server-round"])
    pid = _partition(context)
    data = load_client_data(pid, context.node_config.get("data-dir") or rc.get("data-dir") or None)
    eng = engine()
    t_loaded = time.time()

    fault_round = int(config_value(rc, "fault-round", 1))
    if server_round == fault_round and pid == int(config_value(rc, "fault-die-partition", -1)):
        # "raise": the ClientApp crashes (what a bug or a killed job looks like to Flower; in the
        # Simulation Runtime the Ray actor survives for the other clients). "exit": the process
        # itself dies (os._exit), as a device that drops off mid-round (Deployment Runtime).
        mode = str(config_value(rc, "fault-die-mode", "raise"))
        print(f"[client p{pid}] FAULT: dying in round {server_round} ({mode})", file=sys.stderr, flush=True)
        if mode == "exit":
            os._exit(17)
        raise RuntimeError(f"client p{pid} died mid-round {server_round} (injected fault)")

    glob = records_to_adapter(msg.content["arrays"], msg.content["adapter"])
    method = str(cfg["method"])
    seed = int(cfg["seed"]) + 1000 * pid + server_round
    rank = int(config_value(rc, "rank", 4))
    alpha = float(config_value(rc, "alpha", 8.0))
    common = dict(
        steps=int(config_value(rc, "local-steps", 4)),
        learning_rate=float(config_value(rc, "learning-rate", 6e-3)),
        targets=targets_of(rc),
        seed=seed,
        batch_size=int(config_value(rc, "batch-size", 2)),
        chat_template=True,
    )
    frozen_rank = int(msg.content["adapter"].get("frozen-rank", 0))
    t_train0 = time.time()
    if method == "exact":
        # The global adapter's first `frozen-rank` components are the server's exact residual
        # (FedEx-LoRA): frozen here; the rest are the trainable factors, trained as FedIT's
        # clients train theirs. Only the trainable factors go back.
        trained, metrics = tailor.train_lora(eng, data["train"], rank=int(glob.rank), alpha=float(glob.alpha),
                                             init=glob, frozen_rank=frozen_rank, **common)
        _, adapter = split(trained, frozen_rank, rank=rank, alpha=alpha, fingerprint=eng.fingerprint)
    else:
        # FedIT / FFA-LoRA: the global factors themselves are trained on (FFA: B only).
        adapter, metrics = tailor.train_lora(eng, data["train"], rank=int(glob.rank), alpha=float(glob.alpha),
                                             init=glob, freeze_a=(method == "ffa"), **common)
    t_train1 = time.time()

    if str(cfg.get("dp", "central")) == "local" and optional_float(rc, "noise-multiplier"):
        adapter = tailor.federated.privatize_local(
            adapter,
            clip=float(optional_float(rc, "clip") or 1.0),
            noise_multiplier=float(optional_float(rc, "noise-multiplier")),
            seed=seed,
        )

    arrays, meta = adapter_to_records(adapter, eng.fingerprint)
    if server_round == fault_round and pid == int(config_value(rc, "fault-nan-partition", -1)):
        key = next(iter(arrays.keys()))
        bad = arrays[key].numpy().copy()
        bad.flat[0] = np.nan
        arrays[key] = type(arrays[key])(bad)
        print(f"[client p{pid}] FAULT: sending a NaN in {key} in round {server_round}", file=sys.stderr, flush=True)

    m = {
        "num-examples": len(data["train"]),
        "partition-id": pid,
        "bytes-up": int(arrays.count_bytes()),
        "t-start": t0,
        "t-train-start": t_train0,
        "t-train-end": t_train1,
        "train-s": t_train1 - t_train0,
        "load-s": t_loaded - t0,
    }
    for k, v in (metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            m["train-" + str(k).replace("_", "-")] = float(v)
    print(
        f"[client p{pid}] round {server_round}: {len(data['train'])} examples, "
        f"{m['train-s']:.1f} s training, {m['bytes-up']} bytes up",
        flush=True,
    )
    return Message(
        content=RecordDict({"arrays": arrays, "adapter": meta, "metrics": MetricRecord(m)}),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Held-out NLL of the global adapter on this client's own held-out split (federated
    evaluation; the harness's main figure is the server-side union NLL)."""
    pid = _partition(context)
    data = load_client_data(pid, context.node_config.get("data-dir") or context.run_config.get("data-dir") or None)
    adapter = records_to_adapter(msg.content["arrays"], msg.content["adapter"])
    nll = tailor.mean_nll(engine(), data["heldout"], adapter=adapter)
    return Message(
        content=RecordDict(
            {"metrics": MetricRecord({"heldout-nll": float(nll), "num-examples": len(data["heldout"])})}
        ),
        reply_to=msg,
    )
