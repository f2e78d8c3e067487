from __future__ import annotations

from pathlib import Path

import pytest

from deploy.run_config import run_config_flag, toml_value
from simulations.experiment import build_experiment, parse_value


@pytest.mark.parametrize(
    ("text", "value"),
    [("fedavg", "fedavg"), ("3", 3), ("0.5", 0.5), ("true", True), ('"a b"', "a b"),
     ("1e-5", 1e-5), ("../shared/data/adult", "../shared/data/adult")],
)  # fmt: skip
def test_set_values_are_typed_as_in_toml(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_experiment_file_then_set_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text(
        'strategy = "fairfed"\nseed = 2\n[dp]\nmode = "off"\n[federation]\nnum-supernodes = 6\n'
    )
    experiment = build_experiment(path, ["seed=5"], supernodes=4, output_dir="out")
    assert experiment.overrides == {
        "strategy": "fairfed",
        "seed": 5,
        "dp.mode": "off",
        "output-dir": "out",
    }
    assert experiment.federation["num-supernodes"] == 4
    assert experiment.run_config.seed == 5


def test_bad_key_fails_before_anything_runs() -> None:
    with pytest.raises(ValueError, match="unknown run-config key.*'strategey'"):
        build_experiment(None, ["strategey=fedavg"])
    with pytest.raises(ValueError, match="'strategy'.*valid: one of"):
        build_experiment(None, ["strategy=fedsgd"])
    with pytest.raises(ValueError, match="--set expects key=value"):
        build_experiment(None, ["strategy"])
    with pytest.raises(ValueError, match="dp.stats-noise=0.5 alone costs"):  # no budget fits
        build_experiment(None, ["dp.stats-noise=0.5"])
    build_experiment(None, ["dp.stats-noise=0.5", "dp.mode=off"])  # nothing is released


def test_missing_experiment_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        build_experiment(tmp_path / "nope.toml", [])


def test_bad_federation_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("[federation]\nnodes = 3\n")
    with pytest.raises(ValueError, match="unknown \\[federation\\] key.*nodes"):
        build_experiment(path, [])


def test_run_config_args_round_trip_through_flower_parser() -> None:
    from flwr.common.config import parse_config_args

    overrides = {"strategy": "fedavg", "seed": 3, "dp.target-epsilon": 1e-5, "data.path": "/a b/c",
                 "dp.mode": "both", "dp.delta": 0.0, "fair.alpha": 1.0, "train.optimizer": "adamw",
                 "train.learning-rate": 0.001, "train.batch-size": 32}  # fmt: skip
    args = run_config_flag(overrides)
    assert args[0] == "--run-config" and len(args) == 2
    assert parse_config_args(args[1:]) == overrides  # keys sharing a prefix all survive
    assert toml_value(True) == "true"


def test_a_value_flowers_parser_cannot_keep_is_refused_by_name_before_anything_runs() -> None:
    assert run_config_flag({"data.path": 'a"b'}) == ["--run-config", "data.path='a\"b'"]
    with pytest.raises(ValueError, match="run-config key 'data.path'"):
        build_experiment(None, ['data.path="a\\"b\'c"'])  # both quote kinds: a"b'c


def test_a_hub_model_that_is_not_cached_fails_offline_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FEDEQUITY_ONLINE", raising=False)
    with pytest.raises(ValueError, match="model.name='nobody/no-model' is neither"):
        build_experiment(None, ["model.name=nobody/no-model"])
    monkeypatch.setenv("FEDEQUITY_ONLINE", "1")  # the user named the hub: clients download
    build_experiment(None, ["model.name=nobody/no-model"])
