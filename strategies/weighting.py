"""Pure aggregation-weight math for FedEquity strategies (NumPy only, no Flower imports).

References
----------
McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017 (FedAvg).
Ezzeldin et al., "FairFed: Enabling Group Fairness in Federated Learning", AAAI 2023.
Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020 (q-FedAvg).
"""

from collections.abc import Sequence

import numpy as np

#: Smallest prevalence a group can get. A group that no client reports (after clipping
#: the DP noise at 0) would have p = 0 and 1/p = inf; no client has mass in it (a client
#: that reports nothing takes the mix of the reported groups, see :func:`group_shares`),
#: so for it the floor only keeps the arithmetic finite. It changes weights only where a
#: reported group's share is below the floor.
PREVALENCE_FLOOR = 1e-6

_TOL = 1e-12


def fedavg_weights(num_examples: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return FedAvg weights n_k / Σ n (McMahan et al., 2017).

    Raises
    ------
    ValueError
        If a count is negative or non-finite, or all counts are zero.
    """
    n = np.asarray(num_examples, dtype=np.float64)
    if n.ndim != 1 or n.size == 0 or not np.all(np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"num-examples must be finite and >= 0 for every client, got {n}")
    total = n.sum()
    if total <= 0:
        raise ValueError("num-examples sums to 0: no client reported any example")
    return n / total


def estimate_prevalence(counts: np.ndarray) -> np.ndarray:
    """Estimate population group shares p_g from DP-noised per-client counts.

    Negative noisy counts are clipped to 0 (post-processing, so DP is kept), summed over
    clients and normalised. Groups with zero mass get :data:`PREVALENCE_FLOOR` and the
    vector is renormalised; if nothing at all is reported, p is uniform.

    Parameters
    ----------
    counts : np.ndarray
        Shape (K clients, G groups); noised, may be negative or non-integer.

    Returns
    -------
    np.ndarray
        Shape (G,), sums to 1, every entry > 0.
    """
    raw = np.asarray(counts, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] == 0 or not np.all(np.isfinite(raw)):  # before clipping
        raise ValueError(f"group-counts must be a finite (clients, groups) matrix, got {raw}")
    c = np.clip(raw, 0.0, None)
    mass = c.sum(axis=0)
    if mass.sum() <= 0:
        return np.full(c.shape[1], 1.0 / c.shape[1])
    p = np.maximum(mass / mass.sum(), PREVALENCE_FLOOR)
    return p / p.sum()


def group_shares(counts: np.ndarray, prevalence: np.ndarray) -> np.ndarray:
    """Return each client's group shares s_kg (rows sum to 1).

    Noisy counts are clipped at 0 and each row normalised. A client whose clipped counts
    are all zero carries no information, so it is given the population mix: ``prevalence``
    over the groups some client reported (which keeps α = 0 equal to FedAvg for it too).
    Groups nobody reported are left out of that mix: their floored prevalence would give
    the client a weight (1/floor)^α from a group it may not hold.
    """
    c = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    totals = c.sum(axis=1, keepdims=True)
    empty = totals[:, 0] <= 0
    shares = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)
    reported = c.sum(axis=0) > 0
    mix = np.where(reported, prevalence, 0.0) if reported.any() else np.asarray(prevalence)
    shares[empty] = mix / mix.sum()
    return shares


def representation_weights(
    counts: np.ndarray,
    num_examples: Sequence[float] | np.ndarray,
    *,
    alpha: float,
    cap: float,
) -> np.ndarray:
    """Representation-aware weights, capped relative to FedAvg.

    raw_k = Σ_g n_kg (1/p_g)^α with n_kg = num_examples_k · s_kg: the noisy counts only
    decide a client's group *shares* s_kg, its size is its reported ``num-examples``.
    Hence α = 0 gives raw_k = num_examples_k, i.e. FedAvg exactly, and DP noise on the
    counts cannot inflate a client's size. The weights are then capped with
    :func:`cap_weights` at ``cap`` × the client's FedAvg weight. Inverse-prevalence
    reweighting follows importance weighting for group shift (Shimodaira, 2000;
    Sagawa et al., ICLR 2020 use the same 1/p_g group weights in the loss).

    Parameters
    ----------
    counts : np.ndarray
        Shape (K, G) noised per-group counts.
    num_examples : array-like
        Shape (K,) reported example counts.
    alpha : float
        Strength, >= 0 (`fair.alpha`); 0 is FedAvg, 1 is full inverse prevalence.
    cap : float
        Maximum ratio to the FedAvg weight, >= 1 (`fair.cap`).

    Returns
    -------
    np.ndarray
        Shape (K,), non-negative, sums to 1.
    """
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"fair.alpha must be a finite number >= 0, got {alpha}")
    reference = fedavg_weights(num_examples)
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != reference.size:
        raise ValueError(f"group-counts needs one row per client, got shape {c.shape}")
    p = estimate_prevalence(c)
    n = np.asarray(num_examples, dtype=np.float64)
    shares = group_shares(c, p)
    # Dividing by the row sums (1 up to rounding), computed by the same matmul, makes
    # α = 0 give raw = n bit for bit, hence FedAvg exactly.
    raw = n * ((shares @ np.power(1.0 / p, alpha)) / (shares @ np.ones(p.size)))
    return cap_weights(raw, reference, cap)


def cap_weights(weights: np.ndarray, reference: np.ndarray, cap: float) -> np.ndarray:
    """Cap w_k <= cap · reference_k and redistribute the excess (water-filling).

    Clients over their limit are pinned at it; the remaining mass is shared among the
    others in proportion to their input weights; repeated until nobody exceeds.

    Feasibility (why the loop always ends with a valid vector when cap >= 1): let C be
    the pinned set and F the free rest, R_F = Σ_F reference (reference sums to 1). The
    free clients share m = 1 - cap·(1 - R_F). If *every* free client exceeded its limit,
    m > cap·R_F, i.e. 1 > cap, contradicting cap >= 1. So each pass pins at least one
    client and leaves at least one free client within bounds (F never empties while
    m > 0); at most K passes. Σ cap·reference = cap >= 1, so the limits can always hold
    a total of 1. If the free clients have zero input weight, m is spread by reference,
    which fits since m / R_F <= cap by the same inequality.

    Parameters
    ----------
    weights, reference : np.ndarray
        Shape (K,), non-negative; both are normalised here.
    cap : float
        >= 1 (`fair.cap`).

    Returns
    -------
    np.ndarray
        Shape (K,), sums to 1, w_k <= cap · reference_k (up to rounding).
    """
    if not np.isfinite(cap) or cap < 1.0:
        raise ValueError(f"fair.cap must be a finite number >= 1, got {cap}")
    w = _normalised(weights, "weights")
    ref = _normalised(reference, "reference")
    if w.shape != ref.shape:
        raise ValueError(f"weights {w.shape} and reference {ref.shape} differ in shape")
    limit = cap * ref
    pinned = np.zeros(w.shape, dtype=bool)
    out = w.copy()
    while np.any(over := ~pinned & (out > limit + _TOL)):
        pinned |= over
        free = ~pinned
        remaining = max(1.0 - limit[pinned].sum(), 0.0)
        basis = w[free] if w[free].sum() > 0 else ref[free]
        out[pinned] = limit[pinned]
        # divide first: remaining · basis loses precision when basis is subnormal
        out[free] = remaining * (basis / basis.sum()) if basis.sum() > 0 else 0.0
    return out if not pinned.any() else out / out.sum()


def fairfed_weights(
    previous: np.ndarray | None,
    local_metrics: Sequence[float] | np.ndarray,
    global_metric: float,
    *,
    beta: float,
    num_examples: Sequence[float] | np.ndarray,
) -> np.ndarray:
    """One FairFed weight update (Ezzeldin et al., AAAI 2023, Algorithm 1).

    Δ_k = |F_k - F_global|;  w_k ← w_k - β (Δ_k - mean_i Δ_i);  w ← w / Σ w.
    Clients whose local fairness metric deviates more than average from the global one
    lose weight. Simplifications: (1) ``F`` is whatever fairness metric the clients
    send (here their local group-accuracy gap; the paper uses EOD/SPD and falls back
    to the accuracy gap when the metric is undefined); (2) weights are clipped at 0
    before normalising (the paper leaves negative weights undiscussed; the adjustments
    sum to 0, so the clipped weights still sum to at least 1); (3) F_global is the
    n-weighted mean of the clients' reported local gaps, computed in the clear on the
    server (the paper aggregates the global metric's components by secure aggregation);
    it is not the global model's gap.

    Parameters
    ----------
    previous : np.ndarray or None
        Shape (K,) last weights of these clients; None (or all zero) starts from
        FedAvg (the paper's w_k^0 = n_k / n). Renormalised here.
    local_metrics : array-like
        Shape (K,) local fairness metric F_k.
    global_metric : float
        F_global.
    beta : float
        Fairness budget β >= 0 (`fair.fairfed-beta`).
    num_examples : array-like
        Shape (K,) used for the start and the all-zero fallback.
    """
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"fair.fairfed-beta must be a finite number >= 0, got {beta}")
    start = fedavg_weights(num_examples)
    use_start = previous is None or float(np.sum(previous)) <= 0
    w = start if use_start else _normalised(np.asarray(previous), "previous")
    f = np.asarray(local_metrics, dtype=np.float64)
    if f.shape != w.shape or not np.all(np.isfinite(f)) or not np.isfinite(global_metric):
        raise ValueError(f"fair-metric must be finite, one per client, got {f}")
    delta = np.abs(f - global_metric)
    updated = np.clip(w - beta * (delta - delta.mean()), 0.0, None)
    return updated / updated.sum()


def qfedavg_coefficients(
    losses: Sequence[float] | np.ndarray,
    sq_update_norms: Sequence[float] | np.ndarray,
    *,
    q: float,
    lipschitz: float,
) -> np.ndarray:
    """Per-client step coefficients c_k of q-FedAvg (Li et al., ICLR 2020, Algorithm 2).

    With Δw_k = L(w - w_k), h_k = q F_k^{q-1} ||Δw_k||² + L F_k^q, the update
    w ← w - Σ F_k^q Δw_k / Σ h equals w + Σ_k c_k (w_k - w) with
    c_k = L F_k^q / Σ_i h_i. ``sq_update_norms`` are ||w - w_k||² (not scaled by L).
    F gets +1e-10 exactly as Flower's implementation does.
    """
    f = np.asarray(losses, dtype=np.float64) + 1e-10
    norms = np.asarray(sq_update_norms, dtype=np.float64) * lipschitz**2
    fq = np.float_power(f, q)
    h = q * np.float_power(f, q - 1) * norms + lipschitz * fq
    return np.asarray(lipschitz * fq / h.sum())


def effective_noise_multiplier(
    noise_multiplier: float, weights: np.ndarray, num_sampled_clients: int
) -> float:
    """Noise multiplier that a weighted average actually gets under central DP.

    Flower's fixed-clipping wrappers add N(0, (σ C / m)²) to the aggregate, which is
    σ times the sensitivity C/m of a *uniform* mean of m clipped updates. A weighted
    mean Σ w_k Δ_k has sensitivity C · max_k w_k, so the guarantee is that of
    σ_eff = σ / (m · max_k w_k) (McMahan et al., ICLR 2018, weighted estimator).
    That holds under zero-out adjacency (a client's update replaced by zeros) with the
    weights fixed; under add/remove adjacency, renormalised weights move by up to
    2 · w_k · C (docs/privacy.md, central DP).
    """
    w = np.asarray(weights, dtype=np.float64)
    return float(noise_multiplier / (num_sampled_clients * w.max()))


def reject_reason(
    arrays: list[np.ndarray],
    reference: list[np.ndarray],
    *,
    names: Sequence[str] | None = None,
) -> str | None:
    """Say why a client's arrays must not be aggregated, or None if they are fine.

    Checks the number of arrays, each shape and dtype against the global model sent this
    round, and finiteness. A dtype mismatch is rejected rather than cast: an integer or
    non-numeric array in place of a float one is a malformed reply, and the average would
    otherwise take the first reply's dtype. ``names`` label the arrays in messages
    (default: their index).
    """
    if len(arrays) != len(reference):
        return f"wrong number of arrays: expected {len(reference)} got {len(arrays)}"
    labels = list(names) if names is not None else [str(i) for i in range(len(reference))]
    for label, arr, ref in zip(labels, arrays, reference, strict=True):
        if arr.shape != ref.shape:
            return f"shape mismatch for '{label}': expected {ref.shape} got {arr.shape}"
        if arr.dtype != ref.dtype:
            return f"dtype mismatch for '{label}': expected {ref.dtype} got {arr.dtype}"
        if np.issubdtype(arr.dtype, np.number) and not np.all(np.isfinite(arr)):
            return f"non-finite values in '{label}'"
    return None


def weighted_average(
    arrays_per_client: list[list[np.ndarray]], weights: Sequence[float] | np.ndarray
) -> list[np.ndarray]:
    """Return Σ_k w_k · arrays_k per array (weights normalised here).

    Accumulates in float64; floating arrays keep the first client's dtype, integer arrays
    (e.g. buffers) are rounded back to their dtype.
    """
    w = _normalised(weights, "weights")
    if len(arrays_per_client) != w.size:
        raise ValueError(f"{len(arrays_per_client)} clients but {w.size} weights")
    out: list[np.ndarray] = []
    for layer in zip(*arrays_per_client, strict=True):
        acc = sum(
            (wk * a.astype(np.float64) for wk, a in zip(w, layer, strict=True)),
            np.zeros(layer[0].shape),
        )
        dtype = layer[0].dtype
        out.append(
            acc.astype(dtype) if np.issubdtype(dtype, np.floating) else np.rint(acc).astype(dtype)
        )
    return out


def _normalised(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(v < 0) or v.sum() <= 0:
        raise ValueError(f"{name} must be finite, >= 0 and not all 0, got {v}")
    return v / v.sum()
