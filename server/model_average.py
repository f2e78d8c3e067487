"""The reported global model: an exponential moving average of the rounds' aggregates.

Under DP every aggregate carries fresh noise, and the last one alone decides the final
model; averaging the iterates (Polyak–Ruppert; the parameter EMA of De et al., 2022, for
DP-SGD) cancels part of that noise. It is computed from the published aggregates (after
central DP's noise, where that is on), so it is post-processing and costs no ε. Clients
keep training from the latest aggregate: the average is what is evaluated, checkpointed
and reported. Written here rather than taken from ``torch.optim.swa_utils.AveragedModel``
because the server holds NumPy arrays of the exchanged weights, not a module.
"""

from __future__ import annotations

import numpy as np


class ModelAverage:
    """``average ← decay · average + (1 − decay) · aggregate``, starting at the first
    aggregate; ``decay = 0`` reports the latest aggregate. Non-float arrays (counters,
    ids) are not averaged: they follow the latest aggregate."""

    def __init__(self, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema-decay: got {decay!r}; valid: a number in [0, 1)")
        self.decay = decay
        self.average: dict[str, np.ndarray] | None = None

    def update(self, aggregate: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fold in this round's ``aggregate``; return the average."""
        previous = self.average
        if previous is None or self.decay == 0 or previous.keys() != aggregate.keys():
            self.average = {name: np.array(value) for name, value in aggregate.items()}
        else:
            self.average = {
                name: self._blend(previous[name], value) for name, value in aggregate.items()
            }
        return self.average

    def _blend(self, previous: np.ndarray, latest: np.ndarray) -> np.ndarray:
        if not np.issubdtype(latest.dtype, np.floating) or previous.shape != latest.shape:
            return np.array(latest)
        blended = self.decay * previous.astype(np.float64) + (1 - self.decay) * latest
        return blended.astype(latest.dtype)
