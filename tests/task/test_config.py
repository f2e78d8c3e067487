from __future__ import annotations

import math
from typing import Any

import pytest

from task.config import load_defaults, parse_run_config
from task.config_schema import SCHEMA


def test_defaults_parse_and_cover_every_key() -> None:
    raw = load_defaults()
    assert set(raw) == set(SCHEMA)
    cfg = parse_run_config(raw)
    assert cfg.strategy == raw["strategy"]
    assert cfg.dp.target_epsilon == raw["dp.target-epsilon"]
    assert cfg.data.dataset == "synthetic"


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("strategy", "fedprox", "'fedavg', 'representation', 'qfedavg', 'fairfed'"),
        ("dataset", "mnist", "'synthetic'"),
        ("num-server-rounds", 0, ">= 1"),
        ("seed", -1, ">= 0"),
        ("fraction-train", 1.5, "(0, 1]"),
        ("data.test-fraction", 1.0, "strictly between 0 and 1"),
        ("partition.method", "shards", "'dirichlet', 'iid', 'label'"),
        ("partition.alpha", 0.0, "> 0"),
        ("model.hidden-size", 8, "[16, 31] or a multiple of 32"),
        ("model.hidden-size", 100, "[16, 31] or a multiple of 32"),  # 3 heads do not divide 100
        ("model.lora.dropout", 1.0, "[0, 1)"),
        ("train.batch-size", 0, ">= 1"),
        ("train.learning-rate", -0.1, "> 0"),
        ("dp.mode", "global", "'off', 'local', 'central', 'both'"),
        ("dp.target-epsilon", 0.0, "> 0"),
        ("dp.delta", 1.0, "(0, 1)"),
        ("dp.accountant", "gdp", "'rdp', 'prv'"),
        ("dp.grad-sample-mode", "ghost", "'hooks'"),
        ("fair.cap", 0.5, ">= 1"),
        ("fair.local-weighting", "both", "'post-clip', 'pre-clip', 'sampling', 'off'"),
        ("fair.alpha", -1.0, "[0, 10]"),
        ("fair.alpha", 120.0, "[0, 10]"),  # (1/p)^α would overflow
        ("fair.min-batch-share", 1.5, "[0, 1]"),
        ("qfedavg.learning-rate", 0.0, "> 0"),
    ],
)
def test_invalid_value_names_key_and_valid_values(key: str, value: Any, valid: str) -> None:
    raw = load_defaults() | {key: value}
    with pytest.raises(ValueError, match=f"'{key}'") as error:
        parse_run_config(raw)
    assert valid in str(error.value)


def test_wrong_type_is_named() -> None:
    with pytest.raises(ValueError, match="'num-server-rounds': expected int, got 'five'"):
        parse_run_config(load_defaults() | {"num-server-rounds": "five"})


def test_bool_is_not_an_int() -> None:
    with pytest.raises(ValueError, match="'seed'"):
        parse_run_config(load_defaults() | {"seed": True})


def test_int_is_accepted_for_float_keys() -> None:
    assert parse_run_config(load_defaults() | {"dp.target-epsilon": 4}).dp.target_epsilon == 4.0


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match="unknown run-config key.*'dp.epsilon'.*valid keys"):
        parse_run_config(load_defaults() | {"dp.epsilon": 4.0})


def test_missing_key_is_named() -> None:
    raw = load_defaults()
    del raw["fair.cap"]
    with pytest.raises(ValueError, match="missing run-config key.*'fair.cap'"):
        parse_run_config(raw)


@pytest.mark.parametrize("dataset", ["csv", "jsonl", "parquet", "adult", "hatecheck"])
def test_file_datasets_need_a_path(dataset: str) -> None:
    with pytest.raises(ValueError, match="'data.path' is required"):
        parse_run_config(load_defaults() | {"dataset": dataset})


def test_hf_dataset_needs_a_name() -> None:
    with pytest.raises(ValueError, match="'data.name' is required"):
        parse_run_config(load_defaults() | {"dataset": "hf"})


@pytest.mark.parametrize("mode", ["central", "both"])
def test_qfedavg_refuses_central_dp(mode: str) -> None:
    with pytest.raises(ValueError, match=r"'dp.mode'.*qfedavg"):
        parse_run_config(load_defaults() | {"strategy": "qfedavg", "dp.mode": mode})
    assert parse_run_config(load_defaults() | {"strategy": "qfedavg"}).dp.local


@pytest.mark.parametrize(
    "key", ["train.learning-rate", "dp.central-clip", "fair.local-max-weight", "fair.cap"]
)
def test_infinity_is_refused_where_every_lower_bound_would_pass_it(key: str) -> None:
    with pytest.raises(ValueError, match=rf"'{key}': got inf; valid: a finite number"):
        parse_run_config(load_defaults() | {key: math.inf})


@pytest.mark.parametrize("method", ["median", "trimmed-mean", "relative-norm-bound"])
@pytest.mark.parametrize("mode", ["central", "both"])
def test_central_dp_refuses_robust_rules_it_cannot_account(mode: str, method: str) -> None:
    with pytest.raises(ValueError, match=rf"'robust.method'.*{method}.*C · max weight"):
        parse_run_config(load_defaults() | {"dp.mode": mode, "robust.method": method})
    for safe in ("none", "norm-bound"):
        assert parse_run_config(load_defaults() | {"dp.mode": mode, "robust.method": safe})
    assert parse_run_config(load_defaults() | {"robust.method": method}).robust.method == method


def test_config_is_frozen_and_hashable() -> None:
    cfg = parse_run_config(load_defaults())
    assert hash(cfg) == hash(parse_run_config(load_defaults()))
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]
