"""Injected client faults (``faults.*``): what a crashing, stalling or lying client does.

Off by default. Every draw is seeded by (run seed, round, partition), so a faulty run is
reproducible and the same client misbehaves in simulation and deployment alike. A client
has at most one *random* fault per round (crash, timeout, NaN, garbage, by their rates);
the *adversaries* (``faults.adversaries`` partitions, drawn once per run) lie about their
group counts and/or scale their update in every round they train.

Faults act on the reply only, after the local round ran as usual, so a faulty client
spends its privacy budget exactly as an honest one (a crash happens before training and
spends none).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from task import wire
from task.config import FaultConfig, RunConfig

CRASH, TIMEOUT, NAN, GARBAGE = "crash", "timeout", "nan", "garbage"
GARBAGE_KINDS = ("shape", "dtype", "extra-key", "missing-key", "metric-type")
# any 64-bit constant: keeps fault draws apart from the training seeds of the same round
_STREAM = 0xFA017


class InjectedCrash(RuntimeError):
    """The ClientApp failing on purpose (``faults.crash-rate``)."""


def drawn_fault(cfg: FaultConfig, *, seed: int, server_round: int, partition_id: int) -> str | None:
    """This client's random fault this round, or None (at most one, by the configured rates)."""
    u = np.random.default_rng([seed, server_round, partition_id, _STREAM]).random()
    for fault, rate in (
        (CRASH, cfg.crash_rate),
        (TIMEOUT, cfg.timeout_rate),
        (NAN, cfg.nan_rate),
        (GARBAGE, cfg.garbage_rate),
    ):
        if u < rate:
            return fault
        u -= rate
    return None


def adversaries(cfg: FaultConfig, *, seed: int, num_partitions: int) -> frozenset[int]:
    """The partitions that lie or poison in this run (none unless a behaviour is on)."""
    if not cfg.any_adversary:
        return frozenset()
    rng = np.random.default_rng([seed, _STREAM])
    chosen = rng.permutation(num_partitions)[: min(cfg.adversaries, num_partitions)]
    return frozenset(int(p) for p in chosen)


def misbehave(
    cfg: RunConfig,
    fault: str | None,
    weights: dict[str, torch.Tensor],
    metrics: dict[str, Any],
    global_weights: dict[str, torch.Tensor],
    *,
    server_round: int,
    partition_id: int,
    num_partitions: int,
    rarest_group: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The reply's weights and metrics after this client's faults (unchanged by default)."""
    sent, sent_metrics = weights, dict(metrics)
    bad = adversaries(cfg.faults, seed=cfg.seed, num_partitions=num_partitions)
    if partition_id in bad:
        if cfg.faults.lie_counts:
            counts = sent_metrics[wire.GROUP_COUNTS]
            sent_metrics[wire.GROUP_COUNTS] = lying_counts(counts, rarest_group)
        if cfg.faults.scale_update != 1.0:
            sent = scaled_update(sent, global_weights, cfg.faults.scale_update)
    if fault == TIMEOUT:
        time.sleep(cfg.round_timeout + 1.0)  # the reply arrives after the server stopped waiting
    elif fault == NAN:
        sent = with_nan(sent)
    elif fault == GARBAGE:
        rng = garbage_rng(cfg.seed, server_round, partition_id)
        sent, sent_metrics, _ = garbled(sent, sent_metrics, rng)
    return sent, sent_metrics


def lying_counts(counts: list[float], rarest: int) -> list[float]:
    """All of the client's examples claimed for the population's rarest group."""
    lie = [0.0] * len(counts)
    lie[rarest] = float(max(sum(counts), 1.0))
    return lie


def scaled_update(
    trained: dict[str, torch.Tensor], global_weights: dict[str, torch.Tensor], scale: float
) -> dict[str, torch.Tensor]:
    """``global + scale · (trained − global)``: a model-poisoning client's reply."""
    return {
        key: (global_weights[key] + scale * (value - global_weights[key])).to(value.dtype)
        for key, value in trained.items()
    }


def with_nan(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with a NaN and an Inf written into the first floating array."""
    out = {k: v.clone() for k, v in weights.items()}
    key = next(k for k, v in out.items() if v.is_floating_point())
    flat = out[key].view(-1)
    flat[0] = float("nan")
    flat[-1] = float("inf")
    return out


def garbled(
    weights: dict[str, torch.Tensor], metrics: dict[str, Any], rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """One malformed reply of a random kind; returns (weights, metrics, the kind)."""
    kind = str(rng.choice(GARBAGE_KINDS))
    out, bad_metrics = {k: v.clone() for k, v in weights.items()}, dict(metrics)
    first = next(iter(out))
    if kind == "shape":
        out[first] = out[first].reshape(-1)[:-1]
    elif kind == "dtype":
        out[first] = out[first].to(torch.float64)
    elif kind == "extra-key":
        out["injected.extra"] = torch.zeros(3)
    elif kind == "missing-key":
        del out[first]
    else:  # a list where the contract has a count (MetricRecord takes it, screening must not)
        bad_metrics[wire.NUM_EXAMPLES] = [1.0, 2.0]
    return out, bad_metrics, kind


def garbage_rng(seed: int, server_round: int, partition_id: int) -> np.random.Generator:
    """The draw of the garbage kind (a stream apart from :func:`drawn_fault`'s)."""
    return np.random.default_rng([seed, server_round, partition_id, _STREAM, 1])
