from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union, overload

from tailor import Adapter

def aggregate(
    updates: Sequence[Tuple[str, Adapter, int]],
    *,
    rank: Optional[int] = None,
    method: Literal["exact", "fedit", "ffa"] = "exact",
    clip: Optional[float] = None,
    noise_multiplier: Optional[float] = None,
    dp: Literal["central", "local"] = "central",
    seed: int = 0,
    max_norm_ratio: Optional[float] = 10.0,
    expected_fingerprint: Optional[str] = None,
    robust: str = "mean",
    report_error: bool = True,
) -> Tuple[Adapter, Dict[str, Any]]:
    """One round over `(client, adapter, num_examples)` updates (weights = num_examples,
    normalised). `exact`: Σ wᵢ·sᵢ·Bᵢ·Aᵢ refactored to `rank` (exact at rank ≥ Σ rᵢ, the
    default; the best rank-R approximation below); `fedit`: A and B averaged apart; `ffa`: A
    shared and frozen, B averaged. `clip`: per-client bound on ‖ΔW‖_F; `noise_multiplier` σ:
    Gaussian noise σ·clip·max wᵢ on the aggregate (`dp="central"`) or σ·clip on each update
    (`dp="local"`), seeded by `seed`. Updates with NaN/Inf, a wrong shape, another base than
    `expected_fingerprint`, unknown targets, zero samples or a norm above `max_norm_ratio` ×
    the round's median (None or 0: no such check) are refused by name; the round goes on.
    `robust`: "mean", "median" or "trimmed:FRACTION" (with the exact method).

    Returns the aggregated adapter and a report: `accepted` (names), `refused`
    (`{"client", "reason", "detail"}`), `method`, `rank`, `stacked_rank`, `clients` (weight,
    norm, clip factor per client), `median_norm`, `noise_std`, `exact_norm`,
    `error_vs_exact`, `relative_error_vs_exact`, `layers`. Raises InvalidArgumentError on
    invalid options or when every update was refused (its `refused` attribute says why).
    Releases the GIL."""

def privatize_local(adapter: Adapter, *, clip: float, noise_multiplier: float, seed: int = 0) -> Adapter:
    """Local DP at a client: clipped to ‖ΔW‖_F ≤ clip, N(0, (σ·clip)²) added to each dense ΔW,
    refactored to the adapter's rank (truncated SVD). Seeded (ChaCha20). Releases the GIL."""

def update_norm(adapter: Adapter) -> float:
    """‖scale·B·A‖_F over all pairs, from the factors; NaN if a factor holds NaN."""

def clip_update(adapter: Adapter, max_norm: float) -> Tuple[Adapter, float]:
    """The adapter scaled to ‖ΔW‖_F ≤ max_norm and the factor applied (1.0: within the bound)."""

@overload
def epsilon(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float = 1e-5, *, return_order: Literal[False] = False
) -> float:
    """ε after `rounds` rounds of the Poisson-sampled Gaussian mechanism (noise multiplier σ,
    sampling rate q) at `delta`: RDP accountant, dp_accounting's orders. Infinite at σ = 0.
    With `return_order`: (ε, the best RDP order)."""
@overload
def epsilon(
    noise_multiplier: float, sample_rate: float, rounds: int, delta: float = 1e-5, *, return_order: Literal[True]
) -> Tuple[float, float]: ...
__all__ = ["aggregate", "privatize_local", "update_norm", "clip_update", "epsilon"]
