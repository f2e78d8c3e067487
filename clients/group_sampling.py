"""Group-balanced Poisson sampling: each record drawn at a rate set by its group.

``fair.local-weighting = "sampling"`` gives scarce groups more of the training signal
without scaling any gradient (Boenisch et al., NeurIPS 2023, individualized privacy via
sampling). Record *i* joins each batch independently with probability
``q_i = q_max · w_g(i) / max_g w_g``, where ``w_g`` are the capped weights derived from the
*released* group counts (post-processing). The accountant runs at ``q_max``, the rate of
the most-sampled group, so every record's (ε, δ) is at most what the ledger records; the
noise std stays ``σ·C`` and the noisy sum is divided by the expected batch size under the
released counts (:func:`records_per_group`), a data-independent constant given the release.

Opacus' ``UniformWithReplacementSampler`` draws one rate for all records; this is the same
loop with a rate vector, so the per-record inclusion events stay independent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class GroupPoissonSampler(Sampler[list[int]]):
    """``steps`` Poisson batches; record *i* is in each with probability ``rates[i]``."""

    def __init__(self, rates: torch.Tensor, *, steps: int, generator: torch.Generator) -> None:
        if rates.dim() != 1 or bool(((rates < 0) | (rates > 1)).any()):
            raise ValueError("sampling rates must be a 1-D tensor of probabilities in [0, 1]")
        self.rates = rates.to(torch.float64)
        self.steps = steps
        self.generator = generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            draw = torch.rand(len(self.rates), generator=self.generator, dtype=torch.float64)
            yield torch.nonzero(draw < self.rates).reshape(-1).tolist()


def group_rates(
    group_weights: np.ndarray, released_counts: np.ndarray, *, max_rate: float
) -> np.ndarray:
    """Per-group Poisson rates ∝ the weights, ``max_rate`` for the most-weighted group the
    release shows (count > 0); never above ``max_rate``.

    Groups the release does not show get the cap weight (their count is floored), but the
    client holds (almost) none of them: letting them set the scale would draw every record
    it does hold at a fraction of q while the ledger is charged the full q.
    """
    weights = np.maximum(np.asarray(group_weights, dtype=float), 0.0)
    shown = np.asarray(released_counts, dtype=float) > 0
    top = float(weights[shown].max()) if shown.any() else 0.0
    if top <= 0:
        return np.full(weights.shape, max_rate)
    return max_rate * np.minimum(weights / top, 1.0)


def records_per_group(released_counts: np.ndarray, records: int) -> np.ndarray:
    """The client's ``records`` spread over its groups as the release shows them.

    ``records`` is public (it sets q and is sent as ``num-examples``), so this is
    post-processing. A cell the release does not show (absent, or denoised to 0 below the
    count threshold) gets an equal part of what the shown cells leave of ``records``; then
    every cell is scaled so that they sum to ``records``: count noise on a small client can
    release several times its size, and a denoised cell still holds records that are drawn
    (at the cap rate), which a floor of one record per cell undercounted.
    """
    counts = np.clip(np.asarray(released_counts, dtype=float), 0.0, None)
    hidden = counts <= 0
    left = records - counts.sum()
    if hidden.any() and left > 0:
        counts = np.where(hidden, left / hidden.sum(), counts)
    total = counts.sum()
    if total <= 0:
        return np.full(counts.shape, records / len(counts))
    return counts * (records / total)


def expected_batch(released_counts: np.ndarray, rates: np.ndarray, *, records: int) -> float:
    """Expected batch size of ``records`` records under the released counts
    (:func:`records_per_group`), at least one."""
    return float(max(1.0, (records_per_group(released_counts, records) * rates).sum()))


def with_batch_floor(
    rates: np.ndarray,
    released_counts: np.ndarray,
    *,
    max_rate: float,
    min_batch_share: float,
    records: int,
) -> np.ndarray:
    """``rates`` tempered, if need be, so the expected batch keeps ``min_batch_share`` of
    the plain one (all ``records`` at ``max_rate``; both from :func:`records_per_group`).

    Under DP, drawing the common groups less shrinks the batch that divides the noise σ·C:
    where a client's records are nearly all of a common group (UCI Adult: 86 % White) the
    batch falls to a quarter and the update's noise grows fourfold. Tempering raises each
    relative rate to a power t in [0, 1] (t = 0: plain Poisson, every rate ``max_rate``),
    the largest t that keeps the floor. No rate rises above ``max_rate``, so the plan, σ
    and the accountant hold; only released counts enter (post-processing). The expected
    batch falls as t grows and has no closed form in t, hence the bisection.
    """
    rates = np.asarray(rates, dtype=float)
    relative = np.clip(rates / max_rate, 0.0, 1.0)
    plain = expected_batch(released_counts, np.full(relative.shape, max_rate), records=records)

    def batch_share(exponent: float) -> float:
        batch = expected_batch(released_counts, max_rate * relative**exponent, records=records)
        return batch / plain

    if min_batch_share <= 0 or batch_share(1.0) >= min_batch_share:
        return rates
    low, high = 0.0, 1.0  # batch_share(low) >= min_batch_share > batch_share(high)
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if batch_share(middle) >= min_batch_share else (low, middle)
    return max_rate * relative**low
