"""The reported global model: an exponential moving average of the rounds' aggregates.

Under DP every aggregate carries fresh noise, and the last one alone would decide the final
model; averaging the iterates cancels part of that noise (an exponential variant of
Polyak–Ruppert averaging, as De et al., 2022, use for DP-SGD). It is computed from the
released aggregates (after central DP's noise, where that is on), so it is post-processing
and costs no ε. Clients keep training from the latest aggregate: the average is what is
evaluated, checkpointed and reported. Written here rather than taken from
``torch.optim.swa_utils.AveragedModel`` because the server holds NumPy arrays of the
exchanged weights, not a module.
"""

from __future__ import annotations

import numpy as np


class ModelAverage:
    """``current ← decay · current + (1 − decay) · aggregate``, starting at the first
    aggregate; ``decay = 0`` reports the latest aggregate. Non-float arrays (counters,
    ids) are not averaged: they follow the latest aggregate."""

    def __init__(self, decay: float) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"ema-decay: got {decay!r}; valid: a number in [0, 1)")
        self.decay = decay
        self.current: dict[str, np.ndarray] | None = None

    def update(self, aggregate: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Fold in this round's ``aggregate``; return the average."""
        previous = self.current
        if previous is None or self.decay == 0:
            self.current = {name: np.array(value) for name, value in aggregate.items()}
        else:
            _check_like(previous, aggregate)
            self.current = {
                name: self._blend(previous[name], value) for name, value in aggregate.items()
            }
        return self.current

    def restore(self, average: dict[str, np.ndarray] | None, like: dict[str, np.ndarray]) -> None:
        """Continue from a checkpoint's ``average`` of arrays shaped ``like`` (its
        aggregate); None: start again at the next aggregate."""
        if average is not None:
            _check_like(average, like)
        self.current = average

    def _blend(self, previous: np.ndarray, latest: np.ndarray) -> np.ndarray:
        if not np.issubdtype(latest.dtype, np.floating):
            return np.array(latest)
        blended = self.decay * previous.astype(np.float64) + (1 - self.decay) * latest
        return blended.astype(latest.dtype)


def _check_like(average: dict[str, np.ndarray], aggregate: dict[str, np.ndarray]) -> None:
    """An average and an aggregate of one model have the same arrays: anything else is a
    bug or a checkpoint of another model, never something to average over."""
    if average.keys() != aggregate.keys():
        raise ValueError(
            f"the model average has arrays {sorted(average)}, the aggregate {sorted(aggregate)}"
        )
    for name, value in aggregate.items():
        if average[name].shape != value.shape:
            raise ValueError(
                f"array {name!r}: the model average has shape {average[name].shape}, the "
                f"aggregate {value.shape}"
            )
