"""Accounting for central (user-level) DP: the Gaussian mechanism on the aggregate.

Flower's server-side fixed-clipping wrapper clips each client's update to norm C and
adds N(0, (σ·C/m)²) to the aggregate. For a weighted mean Σ w_k Δ_k one client moves the
aggregate by at most C·max_k w_k, so each round is a Gaussian mechanism with noise
multiplier σ_eff = σ / (m · max_k w_k) (``strategies.weighting.effective_noise_multiplier``).
Flower samples a fixed number of clients without replacement; we take no amplification
from that sampling (sample rate 1), which is conservative.

Neighbouring runs differ by *zeroing out* one client's update, the aggregation weights
being fixed by the clients' reports (treated as public, as Flower's σ·C/m for the uniform
mean does). Under add/remove with renormalised weights the sensitivity is up to twice this
(see docs/privacy.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from strategies.weighting import effective_noise_multiplier
from task.accounting import epsilon_of


class CentralAccountant:
    """The run's central-DP history, one event per aggregated round."""

    def __init__(self, *, noise_multiplier: float, num_sampled: int, delta: float) -> None:
        self.noise_multiplier = noise_multiplier
        self.num_sampled = num_sampled
        self.delta = delta
        self.history: list[tuple[float, float, int]] = []

    def record_round(self, weights: Mapping[Any, float]) -> None:
        """Charge one aggregated round with these weights (nothing for an empty round)."""
        if not weights:
            return
        sigma = effective_noise_multiplier(
            self.noise_multiplier, np.array(list(weights.values())), self.num_sampled
        )
        self.history.append((sigma, 1.0, 1))

    def epsilon(self) -> float:
        """ε spent so far at ``delta`` (RDP)."""
        if not self.history:
            return 0.0
        if any(sigma <= 0 for sigma, _, _ in self.history):
            return math.inf
        return epsilon_of(self.history, delta=self.delta, accountant="rdp")

    def report(self) -> dict[str, Any]:
        """The ``central_privacy`` entry of ``results.json``."""
        return {
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": "rdp",
            "noise_multiplier": self.noise_multiplier,
            "num_sampled_clients": self.num_sampled,
            "history": [[s, q, n] for s, q, n in self.history],
        }
