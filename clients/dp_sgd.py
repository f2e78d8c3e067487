"""Private local training: Opacus DP-SGD with post-clip per-example weights.

``make_private`` wraps a model, optimizer and data loader like
``opacus.PrivacyEngine.make_private`` but returns a :class:`WeightedDPOptimizer` and
attaches no accountant: the caller records ``optimizer.pop_privacy_events()`` in its
``task.accounting.PrivacyLedger``.
"""

from __future__ import annotations

import logging
import math
from itertools import chain

import torch
from opacus.data_loader import DPDataLoader
from opacus.grad_sample import AbstractGradSampleModule, prepare_module
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import (
    _check_processed_flag,
    _generate_noise,
    _mark_as_processed,
)
from opacus.validators import ModuleValidator
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from task.accounting import Event

logger = logging.getLogger(__name__)

# Opacus modes that materialise per-sample gradients (p.grad_sample), which post-clip
# weighting needs. "ghost"/"ghost_fsdp" only compute per-sample norms (and ghost clipping
# fails on BERT embeddings and tied GPT-2 weights anyway); "no_op" computes none.
VALID_GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")


class WeightedDPOptimizer(DPOptimizer):
    """DP-SGD optimizer that weights each clipped per-sample gradient by ``w_i``.

    Per step it releases ``Σ_i w_i · clip_C(g_i) + N(0, (σ·C·w_max)² I)`` (then Opacus
    divides by the expected batch size for ``loss_reduction="mean"``).

    Sensitivity: with ``0 <= w_i <= w_max`` and ``‖clip_C(g_i)‖ <= C``, adding or
    removing one example changes the weighted sum by ``w_i · clip_C(g_i)``, of norm at
    most ``C·w_max``. Gaussian noise of std ``σ·C·w_max`` is therefore exactly the
    Gaussian mechanism with noise multiplier σ on sensitivity ``C·w_max`` (equivalently:
    divide the sum by ``w_max`` to get sensitivity ``C`` and std ``σ·C``), so under
    Poisson sampling each step has the (ε, δ) the accountant gives for ``(σ, q)``. With
    all weights 1 and ``w_max = 1`` this is plain Opacus DP-SGD.

    Augmentation multiplicity (De et al. 2022): with :meth:`set_variant_mask`, a batch of
    ``b`` records holds ``b·m`` rows, record-major (a record, then its ``m - 1`` variants);
    the per-sample gradients of the rows the mask selects (its real rows, or only its worst
    one) are averaged *before* clipping, so record ``i`` still contributes
    ``w_i · clip_C(mean_j g_ij)``, norm at most ``C·w_max``, and nothing above changes: the
    same (σ, q, steps) hold however many variants it has.

    The argument needs each ``w_i`` to depend only on example ``i`` itself and on public
    or already-DP-released information (e.g. server weights computed from noised group
    counts). Weights computed from this client's raw data (local group frequencies,
    batch composition) change other examples' weights when one example is added or
    removed, and void the bound.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Wrapped optimizer.
    noise_multiplier : float
        σ, as recorded in the privacy ledger.
    max_grad_norm : float
        Per-sample clipping norm C.
    expected_batch_size : float or None
        Denominator for ``loss_reduction="mean"`` (data-independent, as in Opacus).
    max_sample_weight : float
        ``w_max >= 1``; fixed for the optimizer's lifetime.
    sample_rate : float or None
        Poisson rate q, reported by :meth:`pop_privacy_events`.
    loss_reduction, generator, secure_mode
        As in ``opacus.optimizers.DPOptimizer``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float | None,
        max_sample_weight: float = 1.0,
        sample_rate: float | None = None,
        loss_reduction: str = "mean",
        generator: torch.Generator | None = None,
        secure_mode: bool = False,
    ) -> None:
        _check_dp_args(noise_multiplier, max_grad_norm, max_sample_weight)
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction=loss_reduction,
            generator=generator,
            secure_mode=secure_mode,
        )
        self.max_sample_weight = float(max_sample_weight)
        self.sample_rate = sample_rate
        self._sample_weights: torch.Tensor | None = None
        self._variant_mask: torch.Tensor | None = None
        self._noised_steps: dict[float, int] = {}

    def set_sample_weights(self, weights: torch.Tensor | None) -> None:
        """Set per-sample weights for the next step's batch (None: all ones).

        Weights are consumed by the next ``clip_and_accumulate`` (one physical batch)
        and must be 1-D, finite and in ``[0, max_sample_weight]``.
        """
        if weights is not None:
            weights = torch.as_tensor(weights).detach()
            if weights.dim() != 1 or not bool(torch.isfinite(weights).all()):
                raise ValueError("sample weights must be a finite 1-D tensor (one per example)")
            if weights.numel() and float(weights.min()) < 0.0:
                raise ValueError(f"sample weights must be >= 0, got min {float(weights.min())}")
            if weights.numel() and float(weights.max()) > self.max_sample_weight:
                raise ValueError(
                    f"sample weight {float(weights.max())} exceeds max_sample_weight="
                    f"{self.max_sample_weight}; cap the weights or raise max_sample_weight "
                    "(noise grows with it)"
                )
        self._sample_weights = weights

    def set_variant_mask(self, mask: torch.Tensor | None) -> None:
        """For the next step: ``(records, m)`` bool, which of each record's ``m`` rows its
        gradient averages (at least one per record); None: one row per record."""
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool).detach()
            if mask.dim() != 2 or (mask.numel() and not bool(mask.any(dim=1).all())):
                raise ValueError("variant mask must be (records, rows per record) with at least "
                                 "one row of every record set")  # fmt: skip
        self._variant_mask = mask

    def _per_record(self, grad_samples: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each record's mean per-sample gradient over its masked rows (multiplicity)."""
        mask, self._variant_mask = self._variant_mask, None
        if mask is None:
            return grad_samples
        records, rows = mask.shape
        if self._batch_size(grad_samples) != records * rows:
            raise ValueError(f"variant mask of {records}x{rows} rows for a batch of "
                             f"{self._batch_size(grad_samples)} per-sample gradients")  # fmt: skip
        share = mask.to(grad_samples[0].dtype)
        share = share / share.sum(dim=1, keepdim=True).clamp(min=1.0)
        return [
            torch.einsum("rm,rm...->r...", share.to(g.device, g.dtype), g.view(records, rows,
                         *g.shape[1:]))
            for g in grad_samples
        ]  # fmt: skip

    def _take_weights(self, batch_size: int, device: torch.device) -> torch.Tensor:
        weights, self._sample_weights = self._sample_weights, None
        if weights is None:
            return torch.ones(batch_size, device=device)
        if weights.numel() != batch_size:
            raise ValueError(
                f"got {weights.numel()} sample weights for a batch of {batch_size} examples"
            )
        return weights.to(device)

    def _batch_size(self, grad_samples: list[torch.Tensor]) -> int:
        sizes = {len(g) for g in grad_samples}
        if len(sizes) != 1:
            names = sorted(str(tuple(g.shape)) for g in grad_samples if len(g) == min(sizes))
            raise ValueError(
                f"per-sample gradients disagree on batch size {sorted(sizes)} (e.g. shapes "
                f"{names[:3]}): a buffer with batch 1 was broadcast; for Hugging Face models "
                "pass per-sample position_ids and token_type_ids of shape (batch, seq_len)"
            )
        return sizes.pop()

    def clip_and_accumulate(self) -> None:
        """Clip per-sample gradients to C, multiply by ``w_i`` and add into ``summed_grad``.

        Same as ``DPOptimizer.clip_and_accumulate`` except for the weight factor and the
        per-record mean over variants.
        """
        grad_samples = self._per_record(self.grad_samples)
        batch_size = self._batch_size(grad_samples)
        device = grad_samples[0].device
        weights = self._take_weights(batch_size, device)
        if batch_size == 0:  # empty Poisson batch: contributes nothing, noise still added
            clip_factor = torch.zeros((0,), device=device)
        else:
            norms = [g.reshape(len(g), -1).norm(2, dim=-1).to(device) for g in grad_samples]
            per_sample_norms = torch.stack(norms, dim=1).norm(2, dim=1)
            clip_factor = (self.max_grad_norm / (per_sample_norms + 1e-6)).clamp(max=1.0)
        factor = clip_factor * weights.to(clip_factor.dtype)
        for p, grad_sample in zip(self.params, grad_samples, strict=True):
            _check_processed_flag(p.grad_sample)
            grad_sample = grad_sample.to(p.dtype)
            grad = torch.einsum("i,i...", factor.to(grad_sample.device, p.dtype), grad_sample)
            if p.summed_grad is not None:
                p.summed_grad += grad
            else:
                p.summed_grad = grad
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        """Add N(0, (σ·C·w_max)²) to ``summed_grad`` into ``p.grad``; count the step."""
        std = self.noise_multiplier * self.max_grad_norm * self.max_sample_weight
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = _generate_noise(
                std=std,
                reference=p.summed_grad,
                generator=self.generator,
                secure_mode=self.secure_mode,
            )
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)
        sigma = float(self.noise_multiplier)
        self._noised_steps[sigma] = self._noised_steps.get(sigma, 0) + 1

    def step_on_empty_batch(self) -> None:
        """Take the DP step for an empty Poisson batch without a forward pass.

        Poisson sampling can draw no example; the step must still release pure noise
        (skipping it would reveal the empty draw). Hugging Face models cannot run a
        forward pass on a zero-length batch, so this sets zero-length per-sample
        gradients and steps. Call ``zero_grad()`` afterwards as usual.
        """
        for p in self.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        self.set_sample_weights(None)
        self.set_variant_mask(None)
        self.step()

    def pop_privacy_events(self) -> list[Event]:
        """Return ``(σ, q, steps)`` for the noised steps since the last call, and reset."""
        if self.sample_rate is None:
            raise ValueError("sample_rate is unknown: construct the optimizer via make_private")
        events = [(sigma, float(self.sample_rate), n) for sigma, n in self._noised_steps.items()]
        self._noised_steps = {}
        return events


def _check_dp_args(noise_multiplier: float, max_grad_norm: float, max_sample_weight: float) -> None:
    if not math.isfinite(noise_multiplier) or noise_multiplier < 0:
        raise ValueError(
            f"noise_multiplier (calibrated from dp.target-epsilon) must be finite and >= 0, "
            f"got {noise_multiplier!r}"
        )
    if not math.isfinite(max_grad_norm) or max_grad_norm <= 0:
        raise ValueError(f"dp.max-grad-norm must be a finite number > 0, got {max_grad_norm!r}")
    if not math.isfinite(max_sample_weight) or max_sample_weight < 1:
        raise ValueError(f"max_sample_weight must be finite and >= 1, got {max_sample_weight!r}")


def _check_make_private_args(model: nn.Module, optimizer: Optimizer, mode: str) -> None:
    if mode not in VALID_GRAD_SAMPLE_MODES:
        raise ValueError(
            f"dp.grad-sample-mode must be one of {VALID_GRAD_SAMPLE_MODES} (post-clip "
            f"weights need per-sample gradients), got {mode!r}"
        )
    model_params = set(model.parameters())
    groups = optimizer.param_groups
    if any(p not in model_params for p in chain.from_iterable(g["params"] for g in groups)):
        raise ValueError("optimizer parameters must belong to the model being made private")


def make_private(
    model: nn.Module,
    optimizer: Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    grad_sample_mode: str = "hooks",
    max_sample_weight: float = 1.0,
    poisson_sampling: bool = True,
    group_sampling: tuple[float, float] | None = None,
    noise_generator: torch.Generator | None = None,
    secure_mode: bool = False,
) -> tuple[AbstractGradSampleModule, WeightedDPOptimizer, DataLoader]:
    """Wrap model, optimizer and loader for weighted DP-SGD (no accountant attached).

    Mirrors ``PrivacyEngine.make_private`` (flat clipping, ``loss_reduction="mean"``,
    batch-first) with Opacus' public pieces: it hard-codes the optimizer class
    (``get_optimizer_class``) and always attaches its own accountant.

    Parameters
    ----------
    model, optimizer, data_loader
        Model (parameters shared with the returned wrapper, whose ``state_dict`` keys
        gain ``_module.``: exchange ``model.state_dict()``), an optimizer over its
        parameters and a map-style loader whose batch size sets q = 1 / len(loader).
    noise_multiplier, max_grad_norm
        σ (``task.privacy_plan.calibrate_noise_multiplier``) and ``dp.max-grad-norm``.
    grad_sample_mode : str
        ``dp.grad-sample-mode``, one of ``VALID_GRAD_SAMPLE_MODES``.
    max_sample_weight : float
        Largest post-clip weight ``w_max >= 1``; noise std is ``σ·C·w_max``.
    poisson_sampling : bool
        Use Opacus' ``DPDataLoader``; ``False`` (tests only) breaks the accounting.
        Batches are drawn with the given loader's generator.
    group_sampling : (float, float) or None
        ``(q_max, expected_batch_size)`` when ``data_loader`` already draws every record
        by its own Poisson rate <= ``q_max`` (:class:`clients.group_sampling.
        GroupPoissonSampler`): the loader is kept, the privacy events report ``q_max``
        and the noisy sum is divided by ``expected_batch_size``.
    noise_generator, secure_mode
        Source of the Gaussian noise (None: torch's global RNG) and Opacus' noise
        generation that resists floating-point attacks, as in ``DPOptimizer``.

    Returns
    -------
    tuple
        ``(grad_sample_module, optimizer, data_loader)``; ``optimizer.sample_rate`` is q.
    """
    _check_make_private_args(model, optimizer, grad_sample_mode)
    _check_dp_args(noise_multiplier, max_grad_norm, max_sample_weight)
    ModuleValidator.validate(model, strict=True)  # as PrivacyEngine._prepare_model
    module = prepare_module(model, grad_sample_mode, batch_first=True, loss_reduction="mean")
    # q from the loader as given, as Opacus' own make_private does: the Poisson loader's
    # length is int(1/q), one short of it for 93, 99, 105… batches.
    sample_rate = 1 / len(data_loader)
    expected_batch_size: float = int(len(data_loader.dataset) * sample_rate)  # type: ignore[arg-type]
    if group_sampling is not None:
        sample_rate, expected_batch_size = group_sampling
        module.forbid_grad_accumulation()
    elif poisson_sampling:
        module.forbid_grad_accumulation()
        data_loader = DPDataLoader.from_data_loader(data_loader)
    else:
        logger.warning("poisson_sampling=False: the recorded (σ, q) events overstate privacy")
    dp_optimizer = WeightedDPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        max_sample_weight=max_sample_weight,
        sample_rate=sample_rate,
        generator=noise_generator,
        secure_mode=secure_mode,
    )
    return module, dp_optimizer, data_loader
