"""One DP-SGD round under the client's whole-run (ε, δ) budget (no Flower).

Order within a participation, each step accounted in the same ledger:

1. refuse the round if its planned events (training steps + one count release) would
   take the ledger above the budget — then nothing is trained and nothing released;
2. release the group counts with Gaussian noise (L2 sensitivity 1 under add/remove-one);
3. derive per-example group weights from the *released* counts only (post-processing,
   so the weights add no privacy cost and w_max is data-independent given the release);
4. DP-SGD with Opacus (Poisson sampling), post-clip weights with noise σ·C·w_max, or a
   pre-clip loss weight, or none; the optimizer reports the steps it actually took.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from clients.dp_optim import make_private, poisson_steps_per_epoch
from clients.training import TrainResult, make_loader, train
from task.config import RunConfig
from task.data import Encoded
from task.privacy import (
    PrivacyLedger,
    PrivacyPlan,
    calibrate_noise_multiplier,
    noise_group_counts,
    release_event,
    resolve_delta,
)


@dataclass(frozen=True)
class PrivateRound:
    """What a private participation produced (``result`` is None when the budget refused)."""

    result: TrainResult | None
    released_counts: np.ndarray | None
    ledger: PrivacyLedger
    delta: float
    noise_multiplier: float


@dataclass(frozen=True)
class DPRandomness:
    """Where a participation's DP randomness comes from: count noise, batches, DP-SGD noise.

    ``secure`` (a SuperNode's ``secure-rng`` node-config): fresh OS entropy, so nobody who
    knows the public run seed can replay the noise and subtract it. Otherwise the run seed,
    so a simulation is reproducible; its operator holds every partition anyway. torch has
    no CSPRNG (Opacus' ``secure_mode`` needs torchcsprng, not built for this torch): the
    noise comes from a Mersenne Twister with a 63-bit OS-entropy seed, summed the
    floating-point-attack-resistant way of Opacus' ``secure_mode``.
    """

    seed: int
    secure: bool = False

    def counts_rng(self) -> np.random.Generator:
        return np.random.default_rng(None if self.secure else self.seed)

    def batch_seed(self) -> int:
        return secrets.randbits(63) if self.secure else self.seed

    def noise_generator(self) -> torch.Generator | None:
        """None: torch's global RNG, which the round seeds with the run seed."""
        return torch.Generator().manual_seed(secrets.randbits(63)) if self.secure else None


def plan_for(cfg: RunConfig, num_examples: int) -> PrivacyPlan:
    """The whole-run plan: expected participations × local steps at the Poisson rate."""
    sample_rate = 1 / max(1, math.ceil(num_examples / cfg.train.batch_size))
    return PrivacyPlan(
        target_epsilon=cfg.dp.target_epsilon,
        delta=resolve_delta(cfg.dp.delta, num_examples=num_examples),
        sample_rate=sample_rate,
        steps_per_round=cfg.train.local_epochs * poisson_steps_per_epoch(sample_rate),
        planned_rounds=max(1, math.ceil(cfg.num_server_rounds * cfg.fraction_train)),
        accountant=cfg.dp.accountant,
        stats_noise=cfg.dp.stats_noise,
    )


def check_release_budget(cfg: RunConfig) -> None:
    """Raise before any training if the count releases alone cannot fit ``dp.target-epsilon``.

    Each client checks its own plan (δ = 1/(10·n) by default) when it first trains; the
    server does not know n, so it checks at the largest δ a client can get (``dp.delta``,
    or 0.1 at n = 1), where the releases cost least: what fails here fails on every client.
    """
    calibrate_noise_multiplier(plan_for(cfg, num_examples=1))


def weights_from_released(
    released: np.ndarray, groups: torch.Tensor, *, alpha: float, max_weight: float
) -> tuple[torch.Tensor, float]:
    """Per-example weights ∝ (1/released share of the group)^α, capped at ``max_weight``.

    Normalised so the expected weight under the released shares is 1; only released
    numbers enter, so this is post-processing of the release.
    """
    clipped = np.clip(released, 1.0, None)  # a group never shows below one example
    shares = clipped / clipped.sum()
    raw = shares ** (-alpha)
    per_group = np.minimum(raw / float((shares * raw).sum()), max_weight)
    # w_max from the float32 values actually used, so no weight rounds up above it.
    per_group_t = torch.tensor(np.maximum(per_group, 0.0), dtype=torch.float32)
    return per_group_t[groups], max(1.0, float(per_group_t.max()))


def run_private_round(
    cfg: RunConfig,
    model: nn.Module,
    data: Encoded,
    counts: np.ndarray,
    *,
    ledger_state: dict[str, Any],
    randomness: DPRandomness,
) -> PrivateRound:
    """Train ``model`` in place with DP-SGD if the budget allows this participation."""
    plan = plan_for(cfg, len(data))
    sigma = calibrate_noise_multiplier(plan)
    ledger = PrivacyLedger.from_state(ledger_state, accountant=cfg.dp.accountant)
    budget = cfg.dp.target_epsilon
    if ledger.would_exceed(plan.round_events(sigma), budget=budget, delta=plan.delta):
        return PrivateRound(None, None, ledger, plan.delta, sigma)
    released = noise_group_counts(counts, sigma=plan.stats_noise, rng=randomness.counts_rng())
    ledger.record([release_event(plan.stats_noise)])
    weighting = cfg.fair.local_weighting if cfg.fair.local_alpha > 0 else "off"
    weights, w_max = torch.ones(len(data)), 1.0
    if weighting != "off":
        weights, w_max = weights_from_released(
            released, data.groups, alpha=cfg.fair.local_alpha, max_weight=cfg.fair.local_max_weight
        )
    loader = make_loader(data, weights, cfg.train.batch_size, seed=randomness.batch_seed())
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()  # Opacus refuses a model left in eval mode by the last evaluation
    module, optimizer, dp_loader = make_private(
        model,
        cfg.train.make_optimizer(params),
        loader,
        noise_multiplier=sigma,
        max_grad_norm=cfg.dp.max_grad_norm,
        grad_sample_mode=cfg.dp.grad_sample_mode,
        max_sample_weight=w_max if weighting == "post-clip" else 1.0,
        noise_generator=randomness.noise_generator(),
        secure_mode=randomness.secure,
    )
    try:
        result = train(
            module,
            optimizer,
            dp_loader,
            epochs=cfg.train.local_epochs,
            weighting=weighting,
        )
    finally:
        module.cleanup()  # the cached model is wrapped again next round
    ledger.record(optimizer.pop_privacy_events())
    return PrivateRound(result, released, ledger, plan.delta, sigma)
