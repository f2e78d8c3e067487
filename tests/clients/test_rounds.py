"""A client's rounds under its whole-run budget, as Flower would drive them."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clients.dp_sgd import make_private
from clients.local import ClientRuntime, client_runtime
from clients.rounds import population_shares, train_round
from clients.training import (
    make_loader,
    per_example_loss,
    poisson_loader,
    weights_from_released,
)
from task import wire
from task.accounting import PrivacyLedger, release_event
from task.config import RunConfig, load_defaults, parse_run_config
from task.data import Encoded, load_splits
from task.model import build_model, exchanged_state, load_tokenizer
from task.privacy_plan import (
    calibrate_noise_multiplier,
    check_release_budget,
    plan_for,
    poisson_rate,
)

# The tiny from-scratch model: these tests exercise rounds, not the pretrained encoder.
TINY = {"model.name": "tiny-bert", "model.finetune": "full"}
SMALL = {"synthetic.num-examples": 1000, "num-server-rounds": 2, "train.batch-size": 32} | TINY


def runtime_for(cfg: RunConfig) -> ClientRuntime:
    client_runtime.cache_clear()
    return client_runtime(cfg, 0, 4)


def test_budget_holds_and_a_participation_beyond_the_plan_is_refused() -> None:
    cfg = parse_run_config(load_defaults() | SMALL | {"dp.target-epsilon": 4.0})
    runtime = runtime_for(cfg)
    weights, epsilons = exchanged_state(runtime.model), []
    state: dict[str, Any] = {}
    for server_round in (1, 2, 3):  # the plan has 2 participations; the 3rd must not fit
        outcome = train_round(cfg, runtime, weights, {wire.SERVER_ROUND: server_round},
                              node_id=7, partition_id=0, ledger_state=state)  # fmt: skip
        state = outcome.ledger_state or {}
        epsilons.append(outcome.metrics[wire.EPSILON])
        assert outcome.metrics[wire.EPSILON] <= 4.0
        assert outcome.client_record[wire.EPSILON] == outcome.metrics[wire.EPSILON]
    assert epsilons[0] < epsilons[1] == epsilons[2]
    assert epsilons[1] == pytest.approx(4.0, abs=0.05)  # calibrated to spend the budget
    assert outcome.metrics[wire.BUDGET_EXHAUSTED] == 1
    assert outcome.client_record[wire.BUDGET_EXHAUSTED] is True
    assert outcome.metrics[wire.GROUP_COUNTS] == [0.0] * len(runtime.groups)  # nothing released
    assert len(outcome.client_record[wire.HISTORY_STEPS]) == 4  # 2 × (release + training)


def test_recorded_history_recomputes_to_the_reported_epsilon_with_dp_accounting() -> None:
    from dp_accounting import GaussianDpEvent, PoissonSampledDpEvent, SelfComposedDpEvent
    from dp_accounting.rdp import RdpAccountant

    cfg = parse_run_config(load_defaults() | SMALL | {"num-server-rounds": 1})
    runtime = runtime_for(cfg)
    outcome = train_round(cfg, runtime, exchanged_state(runtime.model), {wire.SERVER_ROUND: 1},
                          node_id=1, partition_id=0, ledger_state={})  # fmt: skip
    record = outcome.client_record
    accountant = RdpAccountant()
    for sigma, q, steps in zip(record[wire.HISTORY_SIGMA], record[wire.HISTORY_Q],
                               record[wire.HISTORY_STEPS], strict=True):  # fmt: skip
        event = (
            GaussianDpEvent(sigma) if q == 1.0 else PoissonSampledDpEvent(q, GaussianDpEvent(sigma))
        )
        accountant.compose(SelfComposedDpEvent(event, steps))
    independent = accountant.get_epsilon(record[wire.DELTA])
    assert record[wire.EPSILON] == pytest.approx(independent, rel=0.03)
    assert record[wire.DELTA] == pytest.approx(1 / (10 * len(runtime.train)))


def test_released_counts_are_noised_and_weights_use_only_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counts sent are noised, and post-clip weights are computed from exactly those."""
    import clients.training as training

    seen: list[np.ndarray] = []

    def spy(released: np.ndarray, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, float]:
        seen.append(np.array(released))
        return weights_from_released(released, *args, **kwargs)

    monkeypatch.setattr(training, "weights_from_released", spy)
    cfg = parse_run_config(load_defaults() | SMALL | {
        "num-server-rounds": 1, "fair.local-weighting": "post-clip"})  # fmt: skip
    runtime = runtime_for(cfg)
    outcome = train_round(cfg, runtime, exchanged_state(runtime.model), {wire.SERVER_ROUND: 1},
                          node_id=3, partition_id=0, ledger_state={})  # fmt: skip
    true_counts = np.bincount(runtime.train.groups.numpy(), minlength=len(runtime.groups))
    sent = np.array(outcome.metrics[wire.GROUP_COUNTS])
    assert not np.allclose(sent, true_counts)
    assert np.abs(sent - true_counts).max() < 10 * cfg.dp.stats_noise
    [released] = seen  # one weighting per round, from the release and nothing else
    np.testing.assert_array_equal(released, sent)


def test_weights_from_released_counts_by_hand() -> None:
    groups = torch.tensor([0, 0, 0, 1])
    weights, w_max = weights_from_released(np.array([75.0, 25.0]), groups, alpha=1.0, max_weight=10)
    # shares (0.75, 0.25) → raw (4/3, 4); E[raw] = 0.75·4/3 + 0.25·4 = 2 → (2/3, 2)
    assert weights.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w_max == pytest.approx(2.0)
    capped, capped_max = weights_from_released(
        np.array([75.0, 25.0]), groups, alpha=1.0, max_weight=1.5
    )
    assert capped.tolist() == pytest.approx([2 / 3] * 3 + [1.5])
    assert capped_max == 1.5


def test_a_tiny_share_or_a_large_alpha_gives_the_capped_weights_not_nan() -> None:
    groups = torch.tensor([0, 1, 2])
    for population, alpha in (
        (np.array([1e-320, 0.5, 0.5]), 1.0),
        (np.array([1e-6, 0.5, 0.5]), 60.0),
    ):
        weights, w_max = weights_from_released(
            np.array([50.0, 50.0, 50.0]), groups, alpha=alpha, max_weight=4, population=population
        )
        # the rare group's raw weight dwarfs the others': 3 under the local (1/3)s, capped at 4
        assert weights.tolist() == pytest.approx([3.0, 0.0, 0.0]) and w_max == pytest.approx(3.0)


def test_population_shares_set_the_weights_normalised_under_the_local_release() -> None:
    groups = torch.tensor([0, 0, 0, 1])
    weights, w_max = weights_from_released(
        np.array([75.0, 25.0]), groups, alpha=1.0, max_weight=10, population=np.array([0.9, 0.1])
    )
    # raw (1/0.9, 10); E[raw] under the client's (0.75, 0.25) = 5/6 + 5/2 = 10/3 → (1/3, 3)
    assert weights.tolist() == pytest.approx([1 / 3] * 3 + [3.0])
    assert w_max == pytest.approx(3.0)
    # a client whose own data is mostly of the rare group still weights it up
    mostly_rare, _ = weights_from_released(
        np.array([25.0, 75.0]), groups, alpha=1.0, max_weight=10, population=np.array([0.9, 0.1])
    )
    assert float(mostly_rare[3]) > float(mostly_rare[0])


def test_a_group_the_release_does_not_show_neither_shrinks_the_weights_nor_sets_w_max() -> None:
    groups = torch.tensor([0] * 9 + [1])
    released = np.array([900.0, 100.0, 0.0])
    # a group no client reported: the server's floor, whose 1/share would dominate
    weights, w_max = weights_from_released(
        released, groups, alpha=1.0, max_weight=5, population=np.array([0.9, 0.1, 1e-6])
    )
    # as if the third group did not exist: raw (1/0.9, 10), E[raw] = 2 → (5/9, 5)
    assert weights.tolist() == pytest.approx([5 / 9] * 9 + [5.0], rel=1e-6)
    assert w_max == pytest.approx(5.0)
    # own shares: the absent group's cap (10) does not size the post-clip noise
    _, own_max = weights_from_released(released, groups, alpha=1.0, max_weight=10)
    assert own_max == pytest.approx(5.0, rel=1e-6)
    # a record of a group whose count was denoised to 0 gets w_max, never more
    stray, stray_max = weights_from_released(released, torch.tensor([2]), alpha=1.0, max_weight=10)
    assert float(stray[0]) == stray_max


def test_population_shares_are_read_only_when_asked_and_sent() -> None:
    cfg = parse_run_config(load_defaults())
    sent = {wire.POPULATION_SHARES: [3.0, 1.0]}
    assert cfg.fair.local_shares == "population"
    assert population_shares(cfg, sent, 2) == pytest.approx([0.75, 0.25])
    assert population_shares(cfg, {}, 2) is None  # round 1: nothing estimated yet
    own = parse_run_config(load_defaults() | {"fair.local-shares": "client"})
    assert population_shares(own, sent, 2) is None
    for bad in ([1.0], [1.0, 0.0], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="population-shares"):
            population_shares(cfg, {wire.POPULATION_SHARES: bad}, 2)


def test_population_shares_never_raise_a_rate_above_the_plans_q() -> None:
    cfg = parse_run_config(load_defaults() | {"fair.local-max-weight": 1000.0})
    data = Encoded(
        input_ids=torch.zeros(100, 4, dtype=torch.long),
        attention_mask=torch.ones(100, 4, dtype=torch.long),
        labels=torch.zeros(100, dtype=torch.long),
        groups=torch.tensor([0] * 90 + [1] * 10),
    )
    released = np.array([90.0, 10.0])
    q = poisson_rate(len(data), cfg.train.batch_size)
    for population in (np.array([1e-9, 1.0]), np.array([1.0, 1e-9]), np.array([0.5, 0.5])):
        loader, (q_max, _) = poisson_loader(
            cfg, data, torch.ones(len(data)), released, private_records=len(data),
            balanced=True, seed=0, population=population,
        )  # fmt: skip
        rates = loader.batch_sampler.rates  # type: ignore[union-attr]
        assert q_max == q  # the accountant's rate, whatever the server sent
        assert float(rates.max()) == pytest.approx(q) and bool((rates <= q).all())


def _one_step(model: torch.nn.Module, data: Encoded, *, private: bool) -> dict[str, torch.Tensor]:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()
    before = {k: v.clone() for k, v in exchanged_state(model).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    loader = make_loader(data, torch.ones(len(data)), len(data), seed=0, shuffle=False)
    target: torch.nn.Module = model
    if private:
        target, optimizer, loader = make_private(
            model, optimizer, loader, noise_multiplier=0.0, max_grad_norm=1e9,
            poisson_sampling=False,
        )  # fmt: skip
    optimizer.zero_grad()
    losses, _ = per_example_loss(target, next(iter(loader)))
    losses.mean().backward()
    optimizer.step()
    return {k: v - before[k] for k, v in exchanged_state(model).items()}


@pytest.mark.parametrize(
    ("model_name", "finetune"),
    [("tiny-bert", "full"), ("tiny-bert", "lora"), ("minilm", "head"), ("minilm", "top-layers")],
)
def test_dp_with_zero_noise_and_huge_clip_reproduces_the_plain_update(
    model_name: str, finetune: str
) -> None:
    """In every fine-tuning mode; guards against the reported silent corruption of LoRA
    updates under Opacus + peft."""
    cfg = parse_run_config(load_defaults() | SMALL | {
        "model.name": model_name, "model.finetune": finetune, "model.lora.r": 4})  # fmt: skip
    runtime = runtime_for(cfg)
    data = runtime.train.select(torch.arange(16))
    tokenizer = load_tokenizer(cfg.model, list(load_splits(cfg.data, cfg.seed)["train"]["text"]))
    base = build_model(cfg.model, tokenizer, 2, seed=0)
    plain = _one_step(copy.deepcopy(base), data, private=False)
    private = _one_step(copy.deepcopy(base), data, private=True)
    assert plain.keys() == private.keys()
    moved = [k for k, v in plain.items() if v.abs().max() > 0]
    assert len(moved) > len(plain) // 2
    for key in plain:
        assert torch.allclose(plain[key], private[key], atol=1e-6, rtol=1e-4), key
    assert not math.isnan(sum(float(v.sum()) for v in private.values()))


def test_a_private_round_after_an_evaluation_trains() -> None:
    """Evaluation leaves the cached model in eval mode; the next DP round must still run."""
    from clients.rounds import evaluate_round

    cfg = parse_run_config(load_defaults() | SMALL)
    runtime = runtime_for(cfg)
    weights = exchanged_state(runtime.model)
    assert set(evaluate_round(runtime, weights)) == wire.EVAL_METRICS  # the server's contract
    assert not runtime.model.training
    outcome = train_round(cfg, runtime, weights, {wire.SERVER_ROUND: 1}, node_id=1, partition_id=0,
                          ledger_state={})  # fmt: skip
    assert outcome.metrics[wire.BUDGET_EXHAUSTED] == 0
    assert set(outcome.metrics) == wire.TRAIN_METRICS


def test_post_clip_weights_never_exceed_the_reported_maximum() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        released = rng.uniform(1, 500, size=4)
        groups = torch.tensor(rng.integers(0, 4, size=50))
        weights, w_max = weights_from_released(released, groups, alpha=1.0, max_weight=1.5)
        assert float(weights.max()) <= w_max <= 1.5
    # a group at 1 % of the release would get weight ≫ 1.5: the cap binds and is reported
    weights, w_max = weights_from_released(
        np.array([99.0, 1.0]), torch.tensor([0, 1]), alpha=1.0, max_weight=1.5
    )
    assert w_max == pytest.approx(1.5) and float(weights[1]) == pytest.approx(1.5)


def test_local_weighting_modes_reach_the_optimizer_and_keep_epsilon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """post-clip hands w_max to the optimizer (noise σ·C·w_max), pre-clip does not; both
    change the update (a repeated run does not), and neither changes the recorded ε."""
    import clients.private_round as private

    real_make_private = private.make_private
    seen: dict[str, float] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        module, optimizer, loader = real_make_private(*args, **kwargs)
        seen["max_sample_weight"] = optimizer.max_sample_weight
        seen["noise_std"] = (
            optimizer.noise_multiplier * optimizer.max_grad_norm * optimizer.max_sample_weight
        )
        return module, optimizer, loader

    monkeypatch.setattr(private, "make_private", spy)

    def config(mode: str) -> RunConfig:
        return parse_run_config(load_defaults() | SMALL | {
            "num-server-rounds": 1, "fair.local-weighting": mode, "fair.local-alpha": 1.0,
            "fair.local-max-weight": 2.0, "fair.count-threshold": 0.0,
        })  # fmt: skip

    model = runtime_for(config("off")).model
    start = {k: v.clone() for k, v in exchanged_state(model).items()}
    outcomes, updates, used = {}, {}, {}
    for mode in ("off", "off", "pre-clip", "post-clip"):
        cfg = config(mode)
        runtime = runtime_for(cfg)
        key = f"{mode}-again" if mode in outcomes else mode
        outcomes[key] = train_round(cfg, runtime, start, {wire.SERVER_ROUND: 1}, node_id=1,
                                    partition_id=0, ledger_state={})  # fmt: skip
        # The weights are views of the (cached) model, which the next round trains: copy.
        updates[key] = {k: v.clone() for k, v in outcomes[key].weights.items()}
        used[key] = dict(seen)
    # The partition's rarest group is far below its share, so the cap w_max = 2 binds.
    assert used["post-clip"]["max_sample_weight"] == pytest.approx(2.0)
    assert used["pre-clip"]["max_sample_weight"] == used["off"]["max_sample_weight"] == 1.0
    assert used["post-clip"]["noise_std"] == pytest.approx(2.0 * used["off"]["noise_std"])

    def same(a: str, b: str) -> bool:
        return all(torch.equal(updates[a][k], updates[b][k]) for k in start)

    assert same("off", "off-again")  # seeded: a difference below is the weighting's doing
    assert not same("off", "pre-clip") and not same("off", "post-clip")
    assert not same("pre-clip", "post-clip")
    epsilons = {key: outcome.metrics[wire.EPSILON] for key, outcome in outcomes.items()}
    assert epsilons["pre-clip"] == epsilons["post-clip"] == epsilons["off"]


@pytest.mark.parametrize("batches", [92, 93, 99, 100])
def test_the_plan_and_the_ledger_count_the_steps_opacus_runs(batches: int) -> None:
    """With 93 or 99 batches Opacus' Poisson loader runs one step fewer (int(1/q)); q stays
    1/b. Plan, recorded events and what runs must agree, or a planned round is refused."""
    cfg = parse_run_config(
        load_defaults() | TINY | {"train.batch-size": 4, "train.local-epochs": 2}
    )
    n = 4 * batches
    plan = plan_for(cfg, n)
    loader = DataLoader(TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,))), batch_size=4)
    model = torch.nn.Linear(4, 2)
    _, optimizer, dp_loader = make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
        noise_multiplier=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    assert optimizer.sample_rate == plan.sample_rate == 1 / batches
    assert plan.steps_per_round == cfg.train.local_epochs * len(dp_loader)
    sigma = calibrate_noise_multiplier(plan)
    ledger = PrivacyLedger(accountant=cfg.dp.accountant)
    ran = [(sigma, optimizer.sample_rate, cfg.train.local_epochs * len(dp_loader))]
    for _ in range(plan.planned_rounds):  # every planned participation fits the budget
        assert not ledger.would_exceed(plan.round_events(sigma), budget=8.0, delta=plan.delta)
        ledger.record([release_event(plan.stats_noise), *ran])
    assert ledger.epsilon(plan.delta) == pytest.approx(8.0, abs=0.05)


@pytest.mark.parametrize("secure_rng", [False, True])
def test_secure_rng_makes_dp_noise_unreplayable_from_the_run_seed(secure_rng: bool) -> None:
    """Seeded (simulation): the same seed, round and partition give the same released
    counts and update, so anyone knowing the public seed could replay and subtract the
    noise. secure-rng: two identical participations differ; ε is the same either way.
    (Raw releases: the denoising threshold zeroes every cell of so small a partition.)"""
    cfg = parse_run_config(
        load_defaults() | SMALL | {"num-server-rounds": 1, "fair.count-threshold": 0.0}
    )
    runtime = runtime_for(cfg)
    start = copy.deepcopy(exchanged_state(runtime.model))
    outcomes, updates = [], []
    for _ in range(2):
        outcome = train_round(cfg, runtime, start, {wire.SERVER_ROUND: 1}, node_id=1,
                              partition_id=0, ledger_state={}, secure_rng=secure_rng)  # fmt: skip
        outcomes.append(outcome)
        updates.append({k: v.clone() for k, v in outcome.weights.items()})  # the model's own
    same_counts = outcomes[0].metrics[wire.GROUP_COUNTS] == outcomes[1].metrics[wire.GROUP_COUNTS]
    same_update = all(torch.equal(updates[0][k], updates[1][k]) for k in start)
    assert (same_counts, same_update) == (not secure_rng, not secure_rng)
    assert outcomes[0].metrics[wire.EPSILON] == outcomes[1].metrics[wire.EPSILON] > 0
    assert outcomes[0].client_record[wire.SECURE_RNG] is secure_rng


def test_the_server_refuses_a_release_noise_that_no_client_budget_can_hold() -> None:
    """8 releases at σ_s = 1 cost ε = 8.44 even at δ = 0.1 (n = 1, the cheapest case)."""
    check_release_budget(parse_run_config(load_defaults()))
    with pytest.raises(ValueError, match=r"dp.stats-noise=1.0 alone costs ε=8.4\d+ over 8"):
        check_release_budget(
            parse_run_config(load_defaults() | {"dp.stats-noise": 1.0, "num-server-rounds": 8})
        )


@pytest.mark.parametrize("finetune", ["head", "top-layers"])
def test_frozen_weights_are_bit_identical_after_dp_training(finetune: str) -> None:
    from task.model import frozen_bottom

    cfg = parse_run_config(load_defaults() | SMALL | {
        "model.name": "minilm", "model.finetune": finetune})  # fmt: skip
    runtime = runtime_for(cfg)
    bottom, _ = frozen_bottom(cfg.model)
    frozen_before = {k: v.clone() for k, v in bottom.state_dict().items()}
    top_before = {k: v.clone() for k, v in runtime.model.state_dict().items()}
    outcome = train_round(cfg, runtime, top_before, {"server-round": 1}, node_id=1,
                          partition_id=0, ledger_state={})  # fmt: skip
    assert outcome.metrics["budget-exhausted"] == 0
    assert all(torch.equal(v, frozen_before[k]) for k, v in bottom.state_dict().items())
    assert set(outcome.weights) == set(top_before)  # only the trained top travels
    assert any(not torch.equal(outcome.weights[k], top_before[k]) for k in top_before)


@pytest.mark.parametrize("min_batch_share", [0.0, 0.9])
def test_group_sampling_is_accounted_at_the_largest_rate(min_batch_share: float) -> None:
    from clients.private_round import DPRandomness, run_private_round
    from task.privacy_plan import plan_for

    cfg = parse_run_config(load_defaults() | SMALL | {
        "model.name": "minilm", "fair.local-weighting": "sampling",
        "fair.local-max-weight": 4.0, "fair.min-batch-share": min_batch_share})  # fmt: skip
    runtime = runtime_for(cfg)
    counts = np.bincount(runtime.train.groups.numpy(), minlength=len(runtime.groups))
    private = run_private_round(cfg, runtime.model, runtime.train, counts.astype(float),
                                ledger_state={}, randomness=DPRandomness(7))  # fmt: skip
    plan = plan_for(cfg, len(runtime.train))
    assert private.result is not None
    sampled = [(s, q, n) for s, q, n in private.ledger.history if n and q < 1]
    sgd_steps = [event for event in sampled if event[0] == private.noise_multiplier]
    assert sgd_steps and all(q == pytest.approx(plan.sample_rate) for _, q, _ in sgd_steps)
    assert sum(n for _, _, n in sgd_steps) == plan.steps_per_round
    assert private.ledger.epsilon(private.delta) <= cfg.dp.target_epsilon + 1e-9


def test_the_loader_keeps_the_batch_floor() -> None:
    cfg = parse_run_config(load_defaults() | SMALL | {
        "fair.local-weighting": "sampling", "fair.local-alpha": 2.0,
        "fair.min-batch-share": 0.9})  # fmt: skip
    unfloored = parse_run_config(load_defaults() | SMALL | {
        "fair.local-weighting": "sampling", "fair.local-alpha": 2.0})  # fmt: skip
    train = runtime_for(cfg).train
    counts = np.bincount(train.groups.numpy(), minlength=int(train.groups.max()) + 1)
    plain = len(train.labels) * poisson_rate(len(train.labels), cfg.train.batch_size)
    batches = [
        poisson_loader(config, train, torch.ones(len(train.labels)), counts.astype(float),
                       private_records=len(train.labels), balanced=True, seed=0)[1][1]
        for config in (unfloored, cfg)
    ]  # fmt: skip
    assert batches[0] < 0.9 * plain <= batches[1] + 1e-6
