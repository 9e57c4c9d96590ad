"""Federated aggregation of LoRA adapters (the ``tailor-federated`` crate): one round over the
clients' adapters (exact weighted aggregation in factor form, FedIT / FFA-LoRA baselines),
refusal of bad updates by client name, per-client clipping, Gaussian noise at the server or at
the client, and the RDP privacy accountant.

    import tailor
    adapter, report = tailor.federated.aggregate(
        [("alice", a1, 120), ("bob", a2, 80)], rank=8, clip=1.0, noise_multiplier=1.1, seed=7)
    print(report["accepted"], report["refused"])
    eps = tailor.federated.epsilon(1.1, sample_rate=0.1, rounds=100, delta=1e-5)
"""

from tailor._native import federated as _native_federated

aggregate = _native_federated.aggregate
privatize_local = _native_federated.privatize_local
update_norm = _native_federated.update_norm
clip_update = _native_federated.clip_update
epsilon = _native_federated.epsilon

__all__ = ["aggregate", "privatize_local", "update_norm", "clip_update", "epsilon"]
