"""Tests for clients.dp_sgd: weighted DP-SGD against hand-computed updates and noise."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from clients.dp_sgd import VALID_GRAD_SAMPLE_MODES, WeightedDPOptimizer, make_private


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def _private(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, **dp: float | str
) -> tuple[nn.Module, WeightedDPOptimizer, DataLoader]:
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    args: dict = {"noise_multiplier": 0.0, "max_grad_norm": 1e6, **dp}
    module, opt, loader = make_private(model, sgd, loader, poisson_sampling=False, **args)
    return module, opt, loader


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params])


@pytest.mark.parametrize("mode", VALID_GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 3.0, 1.0, 0.0, 2.5, 1.0]])
def test_no_noise_huge_clip_equals_plain_sgd_on_weighted_mean(
    weights: list | None, mode: str
) -> None:
    x, y = _data()
    plain = _mlp()
    module, opt, _ = _private(
        _mlp(), x, y, batch_size=8, max_sample_weight=3.0, grad_sample_mode=mode
    )
    assert opt.expected_batch_size == 8
    w = torch.ones(8) if weights is None else torch.tensor(weights)
    # plain torch: gradient of Σ w_i ℓ_i / B, one SGD step with the same lr
    ref_opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    (F.cross_entropy(plain(x), y, reduction="none") * w).mean().backward()
    ref_opt.step()
    opt.set_sample_weights(None if weights is None else w)
    F.cross_entropy(module(x), y).backward()
    opt.step()
    torch.testing.assert_close(_flat(list(module.parameters())), _flat(list(plain.parameters())))
    assert opt.pop_privacy_events() == [(0.0, 1.0, 1)]  # one batch per epoch: q = 1
    assert opt.pop_privacy_events() == []


def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append(_flat([p.grad for p in model.parameters()]).clone())  # type: ignore[misc]
    return grads


def test_single_example_contributes_exactly_clip_times_weight() -> None:
    x, y = _data(1)
    module, opt, _ = _private(_mlp(), x, y, batch_size=1, max_grad_norm=0.01, max_sample_weight=3.0)
    raw_norm = _per_sample_grads(_mlp(), x, y)[0].norm()
    assert raw_norm > 0.01  # so the clip is active
    opt.set_sample_weights(torch.tensor([2.5]))
    F.cross_entropy(module(x), y).backward()
    opt.step()
    summed = _flat([p.summed_grad for p in opt.params])
    assert float(summed.norm()) == pytest.approx(0.01 * 2.5, rel=1e-4)


def test_weight_is_applied_after_the_clip() -> None:
    x, y = _data(3)
    grads = _per_sample_grads(_mlp(), x, y)
    clip = 0.5 * min(float(g.norm()) for g in grads)  # every example gets clipped
    weights = torch.tensor([1.0, 3.0, 0.5])
    module, opt, _ = _private(_mlp(), x, y, batch_size=3, max_grad_norm=clip, max_sample_weight=3.0)
    opt.set_sample_weights(weights)
    F.cross_entropy(module(x), y).backward()
    opt.step()
    expected = sum(w * clip * g / (g.norm() + 1e-6) for w, g in zip(weights, grads, strict=True))
    summed = _flat([p.summed_grad for p in opt.params])
    torch.testing.assert_close(summed, expected)  # a pre-clip weight would be clipped away


def test_noise_std_is_sigma_clip_max_weight_over_expected_batch() -> None:
    torch.manual_seed(3)
    model = nn.Linear(500, 200)  # 100 200 parameters
    x, y = torch.randn(40, 500), torch.zeros(40, dtype=torch.long)
    sigma, clip, w_max = 0.7, 1.5, 2.0
    module, opt, loader = _private(
        model,
        x,
        y,
        batch_size=10,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        max_sample_weight=w_max,
    )
    assert opt.expected_batch_size == 10 and opt.sample_rate == 0.25
    xb, _ = next(iter(loader))
    (0.0 * module(xb).sum()).backward()  # zero per-sample gradients: p.grad is pure noise
    opt.step()
    noise = _flat([p.grad for p in opt.params])
    # loss_reduction="mean": Opacus divides (sum + noise) by expected_batch_size
    assert float(noise.std()) == pytest.approx(sigma * clip * w_max / 10, rel=0.02)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.003)
    assert opt.pop_privacy_events() == [(sigma, 0.25, 1)]


def test_weight_and_argument_validation() -> None:
    x, y = _data()
    _, opt, _ = _private(_mlp(), x, y, batch_size=8, max_sample_weight=2.0)
    with pytest.raises(ValueError, match="max_sample_weight"):
        opt.set_sample_weights(torch.tensor([1.0, 2.5]))
    with pytest.raises(ValueError, match=">= 0"):
        opt.set_sample_weights(torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="1-D"):
        opt.set_sample_weights(torch.ones(2, 2))
    cases: list[tuple[dict[str, float | str], str]] = [
        ({"max_sample_weight": 0.5}, "max_sample_weight"),
        ({"max_grad_norm": 0.0}, "dp.max-grad-norm"),
        ({"grad_sample_mode": "ghost"}, "dp.grad-sample-mode"),
    ]
    for bad, key in cases:
        with pytest.raises(ValueError, match=re.escape(key)) as info:
            _private(_mlp(), x, y, batch_size=8, **bad)
    assert all(mode in str(info.value) for mode in VALID_GRAD_SAMPLE_MODES)


def test_weights_must_match_the_batch() -> None:
    x, y = _data()
    module, opt, _ = _private(_mlp(), x, y, batch_size=8, max_sample_weight=2.0)
    opt.set_sample_weights(torch.ones(3))
    F.cross_entropy(module(x), y).backward()
    with pytest.raises(ValueError, match="3 sample weights for a batch of 8"):
        opt.step()


def test_empty_poisson_batch_takes_a_noise_only_step() -> None:
    torch.manual_seed(0)
    x, y = _data(8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    model = _mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    module, opt, dp_loader = make_private(
        model, sgd, loader, noise_multiplier=1.0, max_grad_norm=1.0, max_sample_weight=2.0
    )
    assert opt.sample_rate == 0.5 and opt.expected_batch_size == 4
    next(iter(dp_loader))  # Opacus learns the batch structure from a first batch
    xb, yb = dp_loader.collate_fn([])  # what DPDataLoader yields for an empty draw
    assert xb.shape == (0, 4)
    before = _flat(list(module.parameters())).clone()
    opt.set_sample_weights(torch.ones(0))
    F.cross_entropy(module(xb), yb).backward()  # NaN mean loss, zero-length grads
    opt.step()
    opt.zero_grad()
    after = _flat(list(module.parameters()))
    assert torch.isfinite(after).all() and not torch.equal(after, before)  # pure noise
    opt.step_on_empty_batch()  # same step without a forward pass (HF models need this)
    opt.zero_grad()
    assert opt.pop_privacy_events() == [(1.0, 0.5, 2)]


def test_state_dict_prefix_and_shared_parameters() -> None:
    x, y = _data()
    model = _mlp()
    module, opt, _ = _private(model, x, y, batch_size=8)
    assert set(module.state_dict()) == {f"_module.{k}" for k in model.state_dict()}
    with pytest.raises(RuntimeError, match="Missing key"):
        _mlp().load_state_dict(module.state_dict())  # the `_module.` trap
    F.cross_entropy(module(x), y).backward()
    opt.step()  # the wrapper trains the caller's model in place: exchange model.state_dict()
    fresh = _mlp()
    assert not torch.equal(model.state_dict()["0.weight"], fresh.state_dict()["0.weight"])
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), module(x))


def test_hugging_face_bert_with_per_sample_position_ids() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    bert = transformers.BertForSequenceClassification(config)
    n, length = 6, 8
    ids, labels = torch.randint(0, 100, (n, length)), torch.randint(0, 2, (n,))
    loader = DataLoader(TensorDataset(ids, labels), batch_size=3)
    sgd = torch.optim.SGD(bert.parameters(), lr=0.1)
    module, opt, loader = make_private(bert, sgd, loader, noise_multiplier=0.8, max_grad_norm=1.0)
    xb, yb = ids[:3], labels[:3]  # a fixed non-empty batch
    before = [p.detach().clone() for p in bert.parameters()]

    def forward(per_sample_ids: bool) -> torch.Tensor:
        extra = {}
        if per_sample_ids:
            extra = {
                "position_ids": torch.arange(length).expand(len(xb), length),
                "token_type_ids": torch.zeros(len(xb), length, dtype=torch.long),
            }
        return module(input_ids=xb, attention_mask=torch.ones_like(xb), labels=yb, **extra).loss

    forward(per_sample_ids=False).backward()
    with pytest.raises(ValueError, match="position_ids"):  # the default-buffer trap, explained
        opt.step()
    opt.zero_grad()
    opt.set_sample_weights(None)
    forward(per_sample_ids=True).backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, bert.parameters(), strict=True)]
    assert all(changed)
    assert opt.pop_privacy_events() == [(0.8, 0.5, 1)]
