"""One DP-SGD round under the client's whole-run (ε, δ) budget (no Flower).

Order within a participation, each step accounted in the same ledger:

1. refuse the round if its planned events (training steps + one count release) would
   take the ledger above the budget — then nothing is trained and nothing released;
2. release the group counts with Gaussian noise (L2 sensitivity 1 under add/remove-one);
3. derive per-example group weights from the *released* counts only (post-processing,
   so the weights add no privacy cost and w_max is data-independent given the release);
4. DP-SGD with Opacus (Poisson sampling), post-clip weights with noise σ·C·w_max, or a
   pre-clip loss weight, or none; a record's counterfactuals averaged into its gradient
   before clipping, public synthesized rows drawn beside the records at the same rate;
   the optimizer reports the steps it actually took.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from clients.dp_sgd import make_private
from clients.training import TrainResult, local_training, train
from task.accounting import PrivacyLedger, denoise_counts, noise_group_counts, release_event
from task.augment import synthesized_rows
from task.config import RunConfig
from task.data import Encoded
from task.privacy_plan import calibrate_noise_multiplier, plan_for


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
        """Noise for the released group counts."""
        return np.random.default_rng(None if self.secure else self.seed)

    def batch_seed(self) -> int:
        """Seed of the Poisson batch sampler."""
        return secrets.randbits(63) if self.secure else self.seed

    def noise_generator(self) -> torch.Generator | None:
        """None: torch's global RNG, which the round seeds with the run seed."""
        return torch.Generator().manual_seed(secrets.randbits(63)) if self.secure else None


def run_private_round(
    cfg: RunConfig,
    model: nn.Module,
    data: Encoded,
    counts: np.ndarray,
    *,
    ledger_state: dict[str, Any],
    randomness: DPRandomness,
    public_pool: Encoded | None = None,
    population: np.ndarray | None = None,
) -> PrivateRound:
    """Train ``model`` in place with DP-SGD if the budget allows this participation.

    ``public_pool`` (``augment.method = synthesize``): public examples, of which the
    groups the *released* counts show as scarce get theirs (post-processing, no ε).
    ``population``: the server's group shares, which then set the group weights.
    """
    plan = plan_for(cfg, len(data))
    sigma = calibrate_noise_multiplier(plan)
    ledger = PrivacyLedger.from_state(ledger_state, accountant=cfg.dp.accountant)
    budget = cfg.dp.target_epsilon
    if ledger.would_exceed(plan.round_events(sigma), budget=budget, delta=plan.delta):
        return PrivateRound(None, None, ledger, plan.delta, sigma)
    released = noise_group_counts(counts, sigma=plan.stats_noise, rng=randomness.counts_rng())
    ledger.record([release_event(plan.stats_noise)])
    released = denoise_counts(released, sigma=plan.stats_noise, threshold=cfg.fair.count_threshold)
    public = None
    if public_pool is not None:
        public = synthesized_rows(public_pool, released, min_share=cfg.augment.min_share)
    local = local_training(cfg, model, data, released, seed=randomness.batch_seed(),
                           public=public, population=population)  # fmt: skip
    model.train()  # Opacus refuses a model left in eval mode by the last evaluation
    module, optimizer, dp_loader = make_private(
        model,
        local.optimizer,
        local.loader,
        noise_multiplier=sigma,
        max_grad_norm=cfg.dp.max_grad_norm,
        grad_sample_mode=cfg.dp.grad_sample_mode,
        max_sample_weight=local.max_weight if local.weighting == "post-clip" else 1.0,
        group_sampling=local.group_sampling,
        noise_generator=randomness.noise_generator(),
        secure_mode=randomness.secure,
    )
    try:
        result = train(
            module, optimizer, dp_loader, epochs=cfg.train.local_epochs,
            weighting=local.weighting, variant_loss=cfg.augment.variant_loss,
        )  # fmt: skip
    finally:
        module.cleanup()  # the cached model is wrapped again next round
    ledger.record(optimizer.pop_privacy_events())
    return PrivateRound(result, released, ledger, plan.delta, sigma)
