"""Injected faults (``faults.*``): seeded draws at the configured rates, and what each
fault does to a reply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients import faults
from task import wire
from task.config import FaultConfig, load_defaults, parse_run_config


def fault_config(**values: object) -> FaultConfig:
    overrides = {f"faults.{k.replace('_', '-')}": v for k, v in values.items()}
    return parse_run_config(load_defaults() | overrides | {"round-timeout": 10.0}).faults


def test_faults_are_off_by_default() -> None:
    cfg = parse_run_config(load_defaults()).faults
    assert all(
        faults.drawn_fault(cfg, seed=1, server_round=r, partition_id=p) is None
        for r in range(1, 20) for p in range(20)
    )  # fmt: skip
    assert faults.adversaries(cfg, seed=1, num_partitions=10) == frozenset()


def test_fault_draws_follow_the_rates_and_are_seeded() -> None:
    cfg = fault_config(crash_rate=0.2, timeout_rate=0.1, nan_rate=0.15, garbage_rate=0.05)
    draws = [
        faults.drawn_fault(cfg, seed=3, server_round=r, partition_id=p)
        for r in range(1, 101) for p in range(200)
    ]  # fmt: skip
    shares = {
        kind: draws.count(kind) / len(draws) for kind in ("crash", "timeout", "nan", "garbage")
    }
    # 20,000 draws: a share's standard error is at most 0.0029, so 0.012 is > 4 of them
    assert shares == pytest.approx({"crash": 0.2, "timeout": 0.1, "nan": 0.15, "garbage": 0.05},
                                   abs=0.012)  # fmt: skip
    again = [faults.drawn_fault(cfg, seed=3, server_round=r, partition_id=p)
             for r in range(1, 101) for p in range(200)]  # fmt: skip
    assert again == draws


def test_rates_summing_above_one_are_refused() -> None:
    with pytest.raises(ValueError, match="sum must be <= 1"):
        fault_config(crash_rate=0.6, nan_rate=0.5)


def test_a_timeout_fault_needs_a_short_round_timeout() -> None:
    with pytest.raises(ValueError, match="'round-timeout'.*at most 600 s"):
        parse_run_config(load_defaults() | {"faults.timeout-rate": 0.1})


def test_adversaries_are_a_seeded_subset_of_the_asked_size() -> None:
    cfg = fault_config(adversaries=2, lie_counts=True)
    chosen = faults.adversaries(cfg, seed=5, num_partitions=10)
    assert len(chosen) == 2 and chosen <= set(range(10))
    assert faults.adversaries(cfg, seed=5, num_partitions=10) == chosen
    assert faults.adversaries(fault_config(adversaries=2), seed=5, num_partitions=10) == set()


def test_lying_counts_claim_everything_for_the_rarest_group() -> None:
    assert faults.lying_counts([30.0, 5.5, 4.5], rarest=2) == [0.0, 0.0, 40.0]


def test_scaled_update_multiplies_the_step_from_the_global_model() -> None:
    global_weights = {"w": torch.tensor([1.0, 1.0])}
    sent = faults.scaled_update({"w": torch.tensor([2.0, 0.0])}, global_weights, 100.0)
    torch.testing.assert_close(sent["w"], torch.tensor([101.0, -99.0]))


def test_nan_and_garbage_replies_are_malformed() -> None:
    weights = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    poisoned = faults.with_nan(weights)["a"]
    assert torch.isnan(poisoned).any() and torch.isinf(poisoned).any()
    assert torch.equal(weights["a"], torch.ones(2, 3))  # the original is untouched
    kinds = set()
    for i in range(40):
        out, metrics, kind = faults.garbled(
            weights, {wire.NUM_EXAMPLES: 10}, np.random.default_rng(i)
        )
        kinds.add(kind)
        changed = set(out) != set(weights) or any(
            out[k].shape != weights[k].shape or out[k].dtype != weights[k].dtype for k in weights
        ) or metrics[wire.NUM_EXAMPLES] != 10  # fmt: skip
        assert changed, kind
    assert kinds == set(faults.GARBAGE_KINDS)
