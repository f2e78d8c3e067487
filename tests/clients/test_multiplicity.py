"""Augmentation multiplicity: a record and its variants are one privacy unit under DP-SGD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clients.dp_sgd import WeightedDPOptimizer, make_private
from clients.local import ClientRuntime, client_runtime
from clients.private_round import DPRandomness, run_private_round
from clients.training import record_losses, train, worst_rows
from task.config import RunConfig, load_defaults, parse_run_config
from task.data import group_counts
from task.model import exchanged_state, load_exchanged

C = 1.0


def _optimizer(model: nn.Module, max_sample_weight: float = 1.0) -> WeightedDPOptimizer:
    return WeightedDPOptimizer(
        torch.optim.SGD(model.parameters(), lr=1.0), noise_multiplier=0.0, max_grad_norm=C,
        expected_batch_size=1, max_sample_weight=max_sample_weight,
    )  # fmt: skip


def _clipped_sum(model: nn.Module, grads: list[torch.Tensor], mask: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    optimizer = _optimizer(model, 3.0)
    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad_sample = g.clone()  # type: ignore[attr-defined]
    optimizer.set_variant_mask(mask)
    optimizer.set_sample_weights(weights)
    optimizer.clip_and_accumulate()
    return torch.cat([p.summed_grad.reshape(-1) for p in model.parameters()])  # type: ignore[attr-defined]


@pytest.mark.parametrize("k", range(1, 9))
def test_a_record_with_k_variants_contributes_at_most_c(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    model = nn.Linear(5, 3)
    for trial in range(20):
        scale = 10.0 ** (trial % 4)  # from inside the clip to far beyond it
        grads = [scale * torch.randn(1 + k, *p.shape, generator=generator)
                 for p in model.parameters()]  # fmt: skip
        mask = torch.ones(1, 1 + k, dtype=torch.bool)
        mask[0, 1:] = torch.rand(k, generator=generator) < 0.7
        summed = _clipped_sum(model, grads, mask)
        assert float(summed.norm()) <= C * (1 + 1e-5)
        # and it is the clipped mean over the record's real rows
        real = mask[0]
        mean = torch.cat([g[real].mean(0).reshape(-1) for g in grads])
        torch.testing.assert_close(summed, mean * min(1.0, C / (float(mean.norm()) + 1e-6)))


def test_each_record_of_a_batch_is_bounded_by_its_weight_times_c() -> None:
    generator = torch.Generator().manual_seed(0)
    model, records, k = nn.Linear(4, 2), 6, 3
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.0, 1.5])
    mask = torch.rand(records, 1 + k, generator=generator) < 0.5
    mask[:, 0] = True
    grads = [100 * torch.randn(records * (1 + k), *p.shape, generator=generator)
             for p in model.parameters()]  # fmt: skip
    total = _clipped_sum(model, grads, mask, weights)
    parts = []
    for i in range(records):  # record i alone: its own rows, its own weight
        rows = slice(i * (1 + k), (i + 1) * (1 + k))
        part = _clipped_sum(model, [g[rows] for g in grads], mask[i : i + 1], weights[i : i + 1])
        assert float(part.norm()) <= float(weights[i]) * C * (1 + 1e-5)
        parts.append(part)
    torch.testing.assert_close(total, torch.stack(parts).sum(0))


@pytest.mark.parametrize("k", range(1, 9))
def test_a_record_trained_on_its_worst_row_contributes_that_row_clipped(k: int) -> None:
    generator = torch.Generator().manual_seed(100 + k)
    model = nn.Linear(5, 3)
    for trial in range(20):
        grads = [10.0 ** (trial % 4) * torch.randn(1 + k, *p.shape, generator=generator)
                 for p in model.parameters()]  # fmt: skip
        real = torch.ones(1, 1 + k, dtype=torch.bool)
        real[0, 1:] = torch.rand(k, generator=generator) < 0.7
        losses = torch.rand(1 + k, generator=generator)
        mask = worst_rows(losses, real)
        worst = int(mask[0].nonzero())
        assert bool(real[0, worst]) and float(losses[worst]) == float(losses[real[0]].max())
        summed = _clipped_sum(model, grads, mask)
        assert float(summed.norm()) <= C * (1 + 1e-5)
        row = torch.cat([g[worst].reshape(-1) for g in grads])
        torch.testing.assert_close(summed, row * min(1.0, C / (float(row.norm()) + 1e-6)))


def test_the_worst_row_is_never_a_masked_out_repeat() -> None:
    losses = torch.tensor([0.1, 9.0, 0.3, 5.0, 0.2, 0.4])  # two records of three rows
    real = torch.tensor([[True, False, True], [True, True, True]])
    assert worst_rows(losses, real).tolist() == [[False, False, True], [True, False, False]]
    torch.testing.assert_close(record_losses(losses, real, "worst"), torch.tensor([0.3, 5.0]))
    torch.testing.assert_close(record_losses(losses, real, "mean"), torch.tensor([0.2, 5.6 / 3]))


def test_a_mask_with_a_record_of_no_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        _optimizer(nn.Linear(2, 2)).set_variant_mask(torch.tensor([[True, False], [False, False]]))


class _FeatureHead(nn.Module):
    takes_features = True

    def __init__(self, takes_row_axis: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 2)
        self.takes_row_axis = takes_row_axis

    def forward(self, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.linear(inputs)


@pytest.mark.parametrize("variant_loss", ["mean", "worst"])
@pytest.mark.parametrize("row_axis", [False, True], ids=["regrouped-rows", "row-axis"])
@pytest.mark.parametrize("weighting", ["off", "pre-clip", "post-clip"])
def test_dp_sgd_with_variants_steps_along_the_per_record_objective(
    weighting: str, row_axis: bool, variant_loss: str
) -> None:
    """No noise, a huge clip: DP-SGD with multiplicity = SGD on the mean over records of
    w_i · (mean or worst loss over the record's real rows), whether Opacus' per-sample
    gradients of the flattened rows are regrouped per record or come out per record (a
    row axis)."""
    generator = torch.Generator().manual_seed(3)
    n, k = 8, 3
    x, vx = torch.randn(n, 4, generator=generator), torch.randn(n, k, 4, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    valid = torch.rand(n, k, generator=generator) < 0.6
    mask, vmask = torch.ones(n, 2), torch.ones(n, k, 2)
    w = torch.rand(n, generator=generator) * 2 if weighting != "off" else torch.ones(n)
    dataset = TensorDataset(x, mask, y, w, vx, vmask, valid)
    private, plain = _FeatureHead(row_axis), _FeatureHead()
    sgd = torch.optim.SGD(private.parameters(), lr=0.5)
    module, optimizer, loader = make_private(
        private, sgd, DataLoader(dataset, batch_size=n), noise_multiplier=0.0,
        max_grad_norm=1e6, poisson_sampling=False, max_sample_weight=2.0,
    )  # fmt: skip
    train(module, optimizer, loader, epochs=1, weighting=weighting, variant_loss=variant_loss)
    rows = torch.cat([x[:, None], vx], 1).flatten(0, 1)
    real = torch.cat([torch.ones(n, 1, dtype=torch.bool), valid], 1)
    logits = plain(rows, None)
    losses = nn.functional.cross_entropy(logits, y.repeat_interleave(1 + k), reduction="none")
    reference = torch.optim.SGD(plain.parameters(), lr=0.5)
    (record_losses(losses, real, variant_loss) * w).mean().backward()
    reference.step()
    for a, b in zip(private.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def test_without_dp_the_worst_row_objective_is_plain_sgd_on_it() -> None:
    generator = torch.Generator().manual_seed(4)
    n, k = 8, 3
    x, vx = torch.randn(n, 4, generator=generator), torch.randn(n, k, 4, generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)
    valid = torch.rand(n, k, generator=generator) < 0.6
    dataset = TensorDataset(x, torch.ones(n, 2), y, torch.ones(n), vx, torch.ones(n, k, 2), valid)
    trained, plain = _FeatureHead(), _FeatureHead()
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    train(trained, optimizer, DataLoader(dataset, batch_size=n), epochs=1, variant_loss="worst")
    logits = plain(torch.cat([x[:, None], vx], 1).flatten(0, 1), None)
    losses = nn.functional.cross_entropy(logits, y.repeat_interleave(1 + k), reduction="none")
    real = torch.cat([torch.ones(n, 1, dtype=torch.bool), valid], 1)
    record_losses(losses, real, "worst").mean().backward()
    torch.optim.SGD(plain.parameters(), lr=0.5).step()
    for a, b in zip(trained.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b)


AUGMENTED = {
    "synthetic.num-examples": 1000, "num-server-rounds": 2, "train.batch-size": 32,
    "augment.k": 3,
}  # fmt: skip


def _runtime(cfg: RunConfig) -> ClientRuntime:
    client_runtime.cache_clear()
    return client_runtime(cfg, 0, 4)


@pytest.mark.parametrize("variant_loss", ["mean", "worst"])
@pytest.mark.parametrize("weighting", ["sampling", "post-clip"])
def test_epsilon_and_history_are_identical_with_and_without_counterfactuals(
    weighting: str, variant_loss: str
) -> None:
    runs = {}
    for method in ("none", "counterfactual"):
        cfg = parse_run_config(load_defaults() | AUGMENTED | {
            "augment.method": method, "fair.local-weighting": weighting,
            "augment.variant-loss": variant_loss})  # fmt: skip
        runtime = _runtime(cfg)
        start = exchanged_state(runtime.model)
        counts = group_counts(runtime.train, len(runtime.groups))
        private = run_private_round(cfg, runtime.model, runtime.train, counts,
                                    ledger_state={}, randomness=DPRandomness(5))  # fmt: skip
        runs[method] = (private, runtime, exchanged_state(runtime.model))
        load_exchanged(runtime.model, start)
    (plain, plain_runtime, plain_weights), (augmented, runtime, weights) = runs.values()
    assert runtime.train.variant_valid is not None and bool(runtime.train.variant_valid.any())
    assert plain_runtime.train.variants is None
    assert augmented.result is not None and plain.result is not None
    assert augmented.ledger.history == plain.ledger.history
    assert augmented.ledger.epsilon(augmented.delta) == plain.ledger.epsilon(plain.delta)
    assert augmented.result.steps == plain.result.steps
    assert any(not torch.equal(weights[key], plain_weights[key]) for key in weights)


def test_synthesized_public_rows_leave_q_steps_and_epsilon_as_planned() -> None:
    runs = {}
    for method in ("none", "synthesize"):
        cfg = parse_run_config(load_defaults() | AUGMENTED | {
            "augment.method": method, "augment.min-share": 0.3, "synthetic.num-examples": 4000,
            "fair.count-threshold": 0.0})  # fmt: skip
        runtime = _runtime(cfg)
        counts = group_counts(runtime.train, len(runtime.groups))
        runs[method] = run_private_round(
            cfg, runtime.model, runtime.train, counts, ledger_state={},
            randomness=DPRandomness(5), public_pool=runtime.public,
        )  # fmt: skip
        assert (runtime.public is not None) == (method == "synthesize")
    trained = {method: run.result.num_examples for method, run in runs.items() if run.result}
    assert trained["synthesize"] > trained["none"]  # the public rows were in the draw
    assert runs["synthesize"].ledger.history == runs["none"].ledger.history
    released = [runs[method].released_counts for method in ("synthesize", "none")]
    assert released[0] is not None and released[1] is not None
    assert np.array_equal(released[0], released[1])
