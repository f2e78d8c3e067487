"""Robust aggregation that keeps the fair weights (``robust.method``): pure NumPy.

Flower's ``FedTrimmedAvg`` and ``FedMedian`` treat every client alike: they trim a share
of the *clients* and take the plain median. Here the weights come first (representation
or FairFed weights, capped), so each rule keeps them: the trimmed mean drops Flower's
``int(trim · K)`` extreme clients of every coordinate and takes the weighted mean of the
rest; the median is the coordinate where half the weight lies on either side. With equal
weights both reduce to Flower's math (``flwr.serverapp.strategy.fedtrimmedavg.trim_mean``,
``np.median``); ``tests/strategies/test_robust.py`` checks that.

The trimmed mean is gated (``robust.trim-gate`` = g > 0): an extreme value is dropped only
if its client's update norm exceeds g × the round's median update norm. Plain trimming
drops honest clients too, and under DP those are the ones the fair weights count on:
the rare groups' holders are small clients whose updates are the noisiest, so they sit at
the extremes of many coordinates (measured: it cost the fair default its gap reduction
with no attacker at all). Honest norms spread widely as well, since a client's norm grows
with its local steps (n / batch): on the main evidence cell up to 14 × the median. Any
client left untrimmed has a norm of at most g × the median, so it moves the weighted mean
by at most its weight × that (the bound of ``relative-norm-bound`` with factor g);
``g = 0`` is Flower's trimming exactly.

``norm-bound`` clips each client's update (its arrays minus the global ones sent this
round) to L2 norm ``robust.norm-bound`` before the weighted average, so a scaled update
(model poisoning) moves the global model by at most the bound whatever its weight:
Σ w_k clip(Δ_k) has norm ≤ Σ w_k · B = B (Sun et al., 2019, "Can you really backdoor
federated learning?"). A fixed bound must be scaled to the model and the learning rate;
``relative-norm-bound`` takes B = ``robust.norm-factor`` × the median of this round's
update norms instead, which a minority of poisoners cannot move.

References
----------
Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates",
ICML 2018 (coordinate-wise median and trimmed mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from strategies.weighting import weighted_average

_TOL = 1e-12


def robust_aggregate(
    arrays_per_client: list[list[np.ndarray]],
    weights: Sequence[float] | np.ndarray,
    reference: list[np.ndarray],
    *,
    method: str,
    trim: float = 0.1,
    trim_gate: float = 0.0,
    norm_bound: float = 1.0,
    norm_factor: float = 3.0,
) -> list[np.ndarray]:
    """The aggregate of the clients' arrays under ``method`` (``none``: weighted mean)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    if method == "none":
        return weighted_average(arrays_per_client, w)
    if method in ("norm-bound", "relative-norm-bound"):
        if method == "relative-norm-bound":
            norm_bound = norm_factor * float(np.median(update_norms(arrays_per_client, reference)))
        clipped = clip_updates(arrays_per_client, reference, norm_bound)
        return weighted_average(clipped, w)
    if method not in ("trimmed-mean", "median"):
        raise ValueError(
            f"robust.method {method!r}: valid: none, trimmed-mean, median, norm-bound, "
            "relative-norm-bound"
        )
    suspects = None
    if method == "trimmed-mean" and trim_gate > 0:
        suspects = outsized_updates(arrays_per_client, reference, trim_gate)
    out = []
    for layer, ref in zip(zip(*arrays_per_client, strict=True), reference, strict=True):
        stacked = np.stack([a.astype(np.float64).reshape(-1) for a in layer])
        value = weighted_trimmed_mean(stacked, w, trim, only=suspects) if (
            method == "trimmed-mean"
        ) else weighted_median(stacked, w)  # fmt: skip
        out.append(_like(value.reshape(ref.shape), ref.dtype))
    return out


def outsized_updates(
    arrays_per_client: list[list[np.ndarray]], reference: list[np.ndarray], gate: float
) -> np.ndarray:
    """Per client, whether its update's norm exceeds ``gate`` × the round's median norm."""
    norms = update_norms(arrays_per_client, reference)
    return norms > gate * float(np.median(norms))


def update_norms(
    arrays_per_client: list[list[np.ndarray]], reference: list[np.ndarray]
) -> np.ndarray:
    """Each client's :func:`update_norm`."""
    return np.array([update_norm(arrays, reference) for arrays in arrays_per_client])


def clip_updates(
    arrays_per_client: list[list[np.ndarray]], reference: list[np.ndarray], bound: float
) -> list[list[np.ndarray]]:
    """Each client's arrays moved back towards ``reference`` until its update's L2 norm
    (over all arrays together) is at most ``bound``."""
    clipped = []
    for arrays in arrays_per_client:
        deltas = _deltas(arrays, reference)
        norm = _norm(deltas)
        scale = min(1.0, bound / norm) if norm > 0 else 1.0
        clipped.append(
            [
                _like(r + scale * d, a.dtype)
                for a, r, d in zip(arrays, reference, deltas, strict=True)
            ]
        )
    return clipped


def update_norm(arrays: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """The L2 norm of ``arrays − reference`` over all arrays together."""
    return _norm(_deltas(arrays, reference))


def _norm(deltas: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(d * d)) for d in deltas)))


def _deltas(arrays: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
    return [
        a.astype(np.float64) - r.astype(np.float64) for a, r in zip(arrays, reference, strict=True)
    ]


def weighted_trimmed_mean(
    values: np.ndarray, weights: np.ndarray, trim: float, *, only: np.ndarray | None = None
) -> np.ndarray:
    """Per column of ``values`` (clients × coordinates): drop the ``int(trim · K)`` smallest
    and largest values, as Flower's ``FedTrimmedAvg`` does, then take the *weighted* mean of
    the rest. Trimming by count, not by weight: a poisoning client whose (capped) weight
    exceeds ``trim`` would otherwise keep the excess in every coordinate.

    ``only`` (a bool per client): of those extremes, drop only the flagged clients' values
    (:func:`robust_aggregate` flags updates far above the round's median norm,
    ``robust.trim-gate``); ``None`` drops them all.
    """
    if not 0 <= trim < 0.5:
        raise ValueError(f"robust.trim must be in [0, 0.5), got {trim}")
    count = values.shape[0]
    cut = int(trim * count)
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)
    ranks = np.arange(count)[:, None]
    dropped = (ranks < cut) | (ranks >= count - cut)
    if only is not None:
        dropped = dropped & np.asarray(only, dtype=bool)[order]
    kept_weights = np.where(dropped, 0.0, weights[order])
    return np.sum(kept_weights * sorted_values, axis=0) / np.sum(kept_weights, axis=0)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per column: the value with half the weight on either side; where a client boundary
    sits exactly at one half, the mean of the two values there (as ``np.median`` does)."""
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)
    cumulative = np.cumsum(weights[order], axis=0)
    low = np.argmax(cumulative >= 0.5 - _TOL, axis=0)
    high = np.argmax(cumulative > 0.5 + _TOL, axis=0)
    columns = np.arange(values.shape[1])
    return (sorted_values[low, columns] + sorted_values[high, columns]) / 2


def _like(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Back to the global model's dtype (integer buffers rounded)."""
    if np.issubdtype(dtype, np.floating):
        return value.astype(dtype)
    return np.rint(value).astype(dtype)
