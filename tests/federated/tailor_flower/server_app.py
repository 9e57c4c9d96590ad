"""The ServerApp: a Flower strategy whose aggregation is Tailor's (``tailor.federated.aggregate``:
exact LoRA aggregation by default, FedIT / FFA-LoRA as baselines), with per-client clipping,
Gaussian noise (central or local DP) and the RDP accountant as run-config options.

The global adapter starts as a fixed seeded init (B = 0, A seeded; for FFA the A every client
keeps frozen) and travels as LoRA factors only. FedIT and FFA-LoRA clients train the global
factors and the server averages them. With the exact method (FedEx-LoRA) the global adapter is
a frozen residual (rank ``global-rank``, default Σ rᵢ of a round) stacked with trainable factors:
the clients train the factors as FedIT's do and send them back; the server keeps FedIT's means
as the next factors and puts the rest of the exact weighted sum, exact sum − FedIT's product,
into the residual, so that the global model is the exact average of the clients' models. After each round the server measures the global
adapter's NLL on the union of the clients' held-out splits (a test oracle: the harness reads the
held-out files; training data never leaves a client) and prints it with the round's wall time
split into train / transfer / aggregate / eval, the bytes per client, and ε at δ when DP is on.
A JSON summary is written to the run-config path ``results``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

import tailor

from .common import (
    adapter_to_records,
    add,
    difference,
    config_value,
    engine,
    optional_float,
    records_to_adapter,
    split,
    stacked,
    targets_of,
    union_heldout,
)

app = ServerApp()


def _say(line: str) -> None:
    """Both in Flower's log and on stdout (the run's log shows the figures)."""
    log(INFO, "%s", line)
    print(line, flush=True)


def initial_adapter(eng, *, rank: int, alpha: float, targets: list[str], seed: int, probe):
    """The fixed seeded starting adapter: B = 0 (the global model starts as the base model) and
    A drawn from a numpy RNG seeded with ``seed`` (PEFT's default range, U(±1/sqrt(in))). One
    trainer step on a probe example tells the module names and shapes; its values are not used."""
    shape_probe, _ = tailor.train_lora(eng, probe, steps=1, rank=rank, alpha=alpha, targets=targets, seed=seed)
    rng = np.random.default_rng(seed)
    factors = {}
    for m, (a, b) in sorted(shape_probe.factors().items()):
        r, d_in = np.shape(a)
        bound = 1.0 / math.sqrt(d_in)
        factors[m] = (
            rng.uniform(-bound, bound, size=(r, d_in)).astype(np.float32),
            np.zeros(np.shape(b), dtype=np.float32),
        )
    return tailor.Adapter.from_factors(factors, rank=rank, alpha=alpha, base_fingerprint=eng.fingerprint)


def _short(reason: str, limit: int = 240) -> str:
    """The telling line of an error reason (Ray's are whole tracebacks)."""
    lines = [l.strip() for l in str(reason).splitlines() if l.strip()]
    tell = [l for l in lines if "Message:" in l or l.startswith(("RuntimeError", "Error", "TailorError"))]
    line = (tell or lines or [""])[-1].replace("\x1b", "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


class TailorLoRA(FedAvg):
    """FedAvg's sampling and reply bookkeeping, Tailor's aggregation."""

    def __init__(self, *, eng, method: str, rank: int, alpha: float, global_rank: int, same_updates_eval: bool, clip, noise_multiplier, dp: str, seed: int,
                 max_norm_ratio: float, delta: float, sample_rate: float, adapter_meta: ConfigRecord,
                 **kw):
        super().__init__(fraction_evaluate=0.0, **kw)
        self.eng = eng
        self.method = method
        self.rank = rank
        self.alpha = alpha
        # The exact method's global adapter rank (the run config's 0: Σ rᵢ of a full round).
        self.global_rank = global_rank
        self.same_updates_eval = same_updates_eval
        self._shadow: dict = {}
        self._global = None
        self.clip = clip
        self.noise_multiplier = noise_multiplier
        self.dp = dp
        self.seed = seed
        self.max_norm_ratio = max_norm_ratio
        self.delta = delta
        self.sample_rate = sample_rate
        self.adapter_meta = adapter_meta
        self.rounds: list[dict] = []
        self._t_send = 0.0
        self._bytes_down = 0
        self._current: dict = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Tailor aggregation: method=%s rank=%d", self.method, self.rank)
        log(INFO, "\t│\t├── clip=%s noise_multiplier=%s dp=%s", self.clip, self.noise_multiplier, self.dp)
        super().summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config["server-round"] = server_round
        config["method"] = self.method
        config["seed"] = self.seed
        config["dp"] = self.dp
        num_nodes = int(len(list(grid.get_node_ids())) * self.fraction_train)
        sample = max(num_nodes, self.min_train_nodes)
        from flwr.serverapp.strategy.strategy_utils import sample_nodes

        node_ids, all_nodes = sample_nodes(grid, self.min_available_nodes, sample)
        log(INFO, "configure_train: sampled %d nodes (out of %d)", len(node_ids), len(all_nodes))
        self._bytes_down = int(arrays.count_bytes())
        self._t_send = time.time()
        self._current = {"round": server_round, "sampled": len(node_ids)}
        self._global = records_to_adapter(arrays, self.adapter_meta)
        record = RecordDict({"arrays": arrays, "adapter": self.adapter_meta, "config": config})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in node_ids]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        t_recv = time.time()
        replies = list(replies)
        failures = []
        for msg in replies:
            if msg.has_error():
                reason = f"node {msg.metadata.src_node_id}: {_short(msg.error.reason)} (code {msg.error.code})"
                failures.append(reason)
                log(WARNING, "round %d: Flower failure: %s", server_round, reason)
        valid = [m for m in replies if not m.has_error()]
        updates, refused, intervals, train_sum, bytes_up = [], [], [], 0.0, []
        for msg in sorted(valid, key=lambda m: int(m.content["metrics"].get("partition-id", 0))):
            mr = msg.content["metrics"]
            name = f"p{int(mr['partition-id'])}@node{msg.metadata.src_node_id}"
            intervals.append((float(mr["t-train-start"]), float(mr["t-train-end"])))
            train_sum += float(mr["train-s"])
            bytes_up.append(int(msg.content["arrays"].count_bytes()))
            try:
                ad = records_to_adapter(msg.content["arrays"], msg.content["adapter"], check_finite=False)
            except Exception as e:  # not even an adapter: refused here, named like tailor's
                refused.append({"client": name, "reason": f"unreadable update: {e}"})
                continue
            updates.append((name, ad, int(mr["num-examples"])))

        t_agg0 = time.time()
        new_arrays, report = None, {"accepted": [], "refused": []}
        if updates:
            try:
                common = dict(
                    clip=self.clip,
                    noise_multiplier=self.noise_multiplier if self.dp == "central" else None,
                    dp=self.dp,
                    seed=self.seed * 7919 + server_round,
                    max_norm_ratio=self.max_norm_ratio,
                    expected_fingerprint=self.eng.fingerprint,
                )
                frozen_rank = 0
                if self.method == "exact":
                    # FedEx-LoRA: the clients trained the trainable factors on top of the frozen
                    # residual, so their models average exactly to residual + Σ wᵢ·sᵢ·Bᵢ·Aᵢ. The
                    # next trainable factors are FedIT's means (what the clients go on from, as
                    # in a FedIT run); the residual takes the rest, exact sum − FedIT's product,
                    # refactored to the global rank (exact while the ranks fit).
                    fp = self.eng.fingerprint
                    residual, trainable = split(self._global, int(self.adapter_meta.get("frozen-rank", 0)),
                                                rank=self.rank, alpha=self.alpha, fingerprint=fp)
                    if self.clip:
                        # DP: only the clipped, noised mean of the clients' changes may reach the
                        # model; it all goes to the residual, the trainable factors stay.
                        updates_in = updates
                        updates = [(n, difference(ad, trainable, fp), k) for n, ad, k in updates]
                        agg, report = tailor.federated.aggregate(updates, rank=self.global_rank, method="exact", **common)
                        updates = updates_in
                        new_trainable = trainable
                    else:
                        agg, report = tailor.federated.aggregate(updates, rank=None, method="exact", **common)
                        new_trainable, _ = tailor.federated.aggregate(updates, rank=self.rank, method="fedit", **common)
                        self._same_updates(updates, report, residual)
                        agg = difference(agg, new_trainable, fp)
                    residual = add(residual, agg, rank=self.global_rank, fingerprint=fp)
                    frozen_rank = int(residual.rank)
                    agg = stacked(residual, new_trainable, fingerprint=fp)
                else:
                    agg, report = tailor.federated.aggregate(updates, rank=self.rank, method=self.method, **common)
                new_arrays, self.adapter_meta = adapter_to_records(agg, self.eng.fingerprint, frozen_rank=frozen_rank)
            except tailor.TailorError as e:
                log(WARNING, "round %d: aggregation failed, global adapter kept: %s", server_round, e)
                report = {"accepted": [], "refused": [{"client": "*", "reason": str(e)}]}
        t_agg1 = time.time()
        refused = refused + list(report.get("refused", []))
        for r in refused:
            log(WARNING, "round %d: tailor refused %s: %s", server_round, r["client"], r["reason"])
        accepted = list(report.get("accepted", []))
        comm_wall = t_recv - self._t_send
        busy = _union_length(intervals)
        self._current.update(
            {
                "replies": len(valid),
                "failures": failures,
                "accepted": accepted,
                "refused": refused,
                "comm_wall_s": comm_wall,
                "train_busy_s": busy,
                "train_sum_s": train_sum,
                "transfer_s": max(0.0, comm_wall - busy),
                "aggregate_s": t_agg1 - t_agg0,
                "bytes_down_per_client": self._bytes_down,
                "bytes_up_per_client": int(np.median(bytes_up)) if bytes_up else 0,
                "median_norm": report.get("median_norm"),
                "noise_std": report.get("noise_std"),
                "rank": report.get("rank"),
                "relative_error_vs_exact": report.get("relative_error_vs_exact"),
            }
        )
        mr = MetricRecord(
            {
                "accepted": len(accepted),
                "refused": len(refused),
                "failures": len(failures),
                "aggregate-s": t_agg1 - t_agg0,
            }
        )
        return new_arrays, mr

    def _same_updates(self, updates, report, residual) -> None:
        """The round's updates aggregated three ways, for comparison only (the run goes on with
        its own global adapter): exactly at rank Σ rᵢ (lossless: what the run's global adapter
        holds), exactly at the clients' rank r (the best rank-r approximation) and by FedIT (mean
        B · mean A, rank r). The relative Frobenius error of the last two against the exact
        weighted sum is recorded; with `same-updates-eval` the held-out NLL of the residual plus
        each of the three too (evaluate_fn)."""
        common = dict(clip=self.clip, max_norm_ratio=self.max_norm_ratio, expected_fingerprint=self.eng.fingerprint)
        lossless, rep_l = tailor.federated.aggregate(updates, method="exact", rank=None, **common)
        exact_r, rep_r = tailor.federated.aggregate(updates, method="exact", rank=self.rank, **common)
        fedit, rep_f = tailor.federated.aggregate(updates, method="fedit", rank=self.rank, **common)
        self._current["same_updates"] = {
            "lossless_rank": rep_l["rank"],
            "exact_rank_R_rel_error": rep_r["relative_error_vs_exact"],
            "fedit_rel_error": rep_f["relative_error_vs_exact"],
        }
        fp = self.eng.fingerprint
        full = (int(residual.rank) if residual is not None else 0) + int(rep_l["rank"])
        self._shadow = {
            "exact_lossless": add(residual, lossless, rank=full, fingerprint=fp),
            "exact_rank_R": add(residual, exact_r, rank=full, fingerprint=fp),
            "fedit": add(residual, fedit, rank=full, fingerprint=fp),
        } if self.same_updates_eval else {}

    def epsilon(self, rounds: int) -> float | None:
        if not self.noise_multiplier:
            return None
        return float(tailor.federated.epsilon(self.noise_multiplier, self.sample_rate, rounds, self.delta))

    def evaluate_fn(self, heldout):
        def fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            t0 = time.time()
            ad = records_to_adapter(arrays, self.adapter_meta)
            nll = float(tailor.mean_nll(self.eng, heldout, adapter=ad))
            t_eval = time.time() - t0
            row = dict(self._current) if server_round > 0 else {"round": 0}
            row["heldout_nll"] = nll
            row["eval_s"] = t_eval
            row["update_norm"] = float(tailor.federated.update_norm(ad))
            if server_round > 0 and self._shadow and "same_updates" in row:
                for k, shadow in self._shadow.items():
                    row["same_updates"][f"{k}_nll"] = float(tailor.mean_nll(self.eng, heldout, adapter=shadow))
                row["same_updates"]["global_nll"] = nll
                self._shadow = {}
            eps = self.epsilon(server_round) if server_round > 0 else None
            row["epsilon"] = eps
            if server_round > 0:
                row["round_wall_s"] = row["comm_wall_s"] + row["aggregate_s"] + t_eval
            self.rounds.append(row)
            self._current = {}
            if server_round == 0:
                _say(f"[tailor] round 0 ({self.method}): held-out NLL {nll:.4f} (the base model)")
            else:
                dp = ""
                if eps is not None:
                    dp = (f" | ε = {eps:.2f} at δ = {self.delta:g} (noise std {row.get('noise_std') or 0:.3g} per "
                          f"entry, median update norm {row.get('median_norm') or 0:.3g} clipped to {self.clip})")
                same = row.get("same_updates") or {}
                if "fedit_nll" in same:
                    dp += (f" | same updates added to the residual: exact rank {same['lossless_rank']} "
                           f"{same['exact_lossless_nll']:.4f}, exact rank {self.rank} {same['exact_rank_R_nll']:.4f}, "
                           f"FedIT {same['fedit_nll']:.4f}")
                if same:
                    dp += (f" | rel. error vs exact sum: rank-{self.rank} exact "
                           f"{same['exact_rank_R_rel_error']:.3g}, FedIT {same['fedit_rel_error']:.3g}")
                _say(
                    f"[tailor] round {server_round} ({self.method}): held-out NLL {nll:.4f}{dp} | "
                    f"accepted {len(row['accepted'])}, refused {len(row['refused'])}, "
                    f"failed {len(row['failures'])} | wall {row['round_wall_s']:.1f} s = train "
                    f"{row['train_busy_s']:.1f} (Σ clients {row['train_sum_s']:.1f}) + transfer/sched "
                    f"{row['transfer_s']:.1f} + aggregate {row['aggregate_s']:.2f} + eval {t_eval:.1f} | "
                    f"bytes/client down {row['bytes_down_per_client']} up {row['bytes_up_per_client']}"
                )
            return MetricRecord({"heldout-nll": nll})

        return fn


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    t0 = time.time()
    method = str(config_value(rc, "method", "exact"))
    if method not in ("exact", "fedit", "ffa"):
        raise ValueError(f"method must be exact, fedit or ffa, not {method!r}")
    rounds = int(config_value(rc, "num-server-rounds", 3))
    rank = int(config_value(rc, "rank", 4))
    alpha = float(config_value(rc, "alpha", 8.0))
    seed = int(config_value(rc, "seed", 0))
    num_clients = int(config_value(rc, "num-clients", 8))
    min_nodes = int(config_value(rc, "min-nodes", num_clients))
    clip = optional_float(rc, "clip")
    noise = optional_float(rc, "noise-multiplier")
    dp = str(config_value(rc, "dp", "central"))
    delta = float(config_value(rc, "delta", 1e-5))
    data_dir = rc.get("data-dir") or None
    heldout_clients = int(config_value(rc, "heldout-clients", num_clients))

    eng = engine()
    heldout = union_heldout(heldout_clients, data_dir)
    probe = [heldout[0]]
    init = initial_adapter(eng, rank=rank, alpha=alpha, targets=targets_of(rc), seed=seed, probe=probe)
    arrays, meta = adapter_to_records(init, eng.fingerprint)
    _say(
        f"[tailor] method={method} rounds={rounds} rank={rank} alpha={alpha} targets={targets_of(rc)} "
        f"clients={num_clients} clip={clip} noise={noise} dp={dp if noise else 'off'} "
        f"adapter {init.num_parameters} params, {arrays.count_bytes()} bytes"
    )
    strategy = TailorLoRA(
        eng=eng,
        method=method,
        rank=rank,
        alpha=alpha,
        global_rank=int(config_value(rc, "global-rank", 0)) or num_clients * rank,
        same_updates_eval=bool(config_value(rc, "same-updates-eval", False)),
        clip=clip,
        noise_multiplier=noise,
        dp=dp,
        seed=seed,
        max_norm_ratio=float(config_value(rc, "max-norm-ratio", 10.0)),
        delta=delta,
        sample_rate=float(config_value(rc, "fraction-train", 1.0)),
        adapter_meta=meta,
        fraction_train=float(config_value(rc, "fraction-train", 1.0)),
        min_train_nodes=min(min_nodes, num_clients),
        min_available_nodes=min_nodes,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=rounds,
        timeout=float(config_value(rc, "round-timeout", 1800.0)),
        evaluate_fn=strategy.evaluate_fn(heldout),
    )
    summary = {
        "method": method,
        "rounds": strategy.rounds,
        "config": {k: v for k, v in rc.items()},
        "num_parameters": int(init.num_parameters),
        "wall_s": time.time() - t0,
        "final_nll": strategy.rounds[-1]["heldout_nll"] if strategy.rounds else None,
        "epsilon": strategy.epsilon(rounds),
        "delta": delta,
    }
    _say(f"[tailor] done: {json.dumps({k: summary[k] for k in ('method', 'final_nll', 'epsilon', 'wall_s')})}")
    out = rc.get("results") or ""
    if out:
        tmp = str(out) + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1, default=str)
        os.replace(tmp, out)
    del result
