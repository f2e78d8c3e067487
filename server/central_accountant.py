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

A round is charged when its noise is added, before the aggregate goes anywhere, and the
charge is appended to a journal in the run directory and fsync'd first. The checkpoint
comes only after the round's evaluation, and a run killed in between is resumed from the
round before: it releases that round again, with fresh noise. The journal, not the
checkpoint, is what a resumed run continues from, so both releases are charged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from strategies.weighting import effective_noise_multiplier
from task.accounting import epsilon_of
from task.cache import write_durably, write_synced

CENTRAL_JOURNAL = "central-releases.jsonl"


class CentralAccountant:
    """The run's central-DP history, one event per aggregated round."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        num_sampled: int,
        delta: float,
        journal: Path | None = None,
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.num_sampled = num_sampled
        self.delta = delta
        #: one line per release, written durably before the release (None: memory only)
        self.journal = journal
        self.history: list[tuple[float, float, int]] = []

    def record_round(self, weights: Mapping[Any, float]) -> None:
        """Charge one aggregated round with these weights (nothing for an empty round)."""
        if not weights:
            return
        sigma = effective_noise_multiplier(
            self.noise_multiplier, np.array(list(weights.values())), self.num_sampled
        )
        if self.journal is not None:
            write_synced(self.journal, _line((sigma, 1.0, 1)), append=True)
        self.history.append((sigma, 1.0, 1))

    def resume(self, checkpointed: list[list[float]]) -> None:
        """Continue a run: every release its journal holds, those after its checkpoint
        included; the ``checkpointed`` history where the run kept no journal (which then
        starts the journal, or the next resume would lose it)."""
        text = self.journal.read_text() if self.journal and self.journal.is_file() else None
        if text is None:
            self.history = _events(checkpointed)
            complete = "".join(map(_line, self.history))
        else:
            # a last line without its newline was cut by a kill: that release never
            # happened, and the next line must not be appended to it
            complete = text[: text.rfind("\n") + 1]
            self.history = _events(json.loads(line) for line in complete.splitlines())
        if self.journal is not None and complete != text:
            write_durably(self.journal, complete)

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


def _line(event: tuple[float, float, int]) -> str:
    return json.dumps(list(event)) + "\n"


def _events(rows: Iterable[Sequence[float]]) -> list[tuple[float, float, int]]:
    return [(float(s), float(q), int(n)) for s, q, n in rows]
