"""Where a group's rows lie over the clients (simulations/benchmarks/group_placement.py)."""

from __future__ import annotations

import pytest

from simulations.benchmarks.group_placement import main, placement
from task.config import RunConfig, load_defaults, parse_run_config


def config(method: str, seed: int) -> RunConfig:
    return parse_run_config(
        load_defaults() | {"synthetic.num-examples": 4000, "partition.method": method, "seed": seed}
    )


def test_an_iid_partition_gives_every_client_about_the_population_share() -> None:
    found = placement(config("iid", 1), 10, "west", concentrated=0.3)
    assert found.concentrated_share == 0.0
    assert found.mean_local_share == pytest.approx(0.05, abs=0.02)  # west is 5 % of the rows
    assert found.rows == sum(held for _, held, _ in found.holders)


def test_a_group_skewed_partition_puts_a_group_on_few_clients() -> None:
    found = placement(config("dirichlet", 5), 10, "west", concentrated=0.3)
    assert found.mean_local_share > 0.2
    assert [held for _, held, _ in found.holders] == sorted(
        (held for _, held, _ in found.holders), reverse=True
    )
    assert 0.0 < found.concentrated_share <= 1.0


def test_a_group_no_client_holds_is_named() -> None:
    with pytest.raises(ValueError, match="--group 'nowhere'"):
        placement(config("iid", 1), 10, "nowhere", concentrated=0.3)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--seeds", "1,x"], "--seeds: expected comma-separated whole numbers, got '1,x'"),
        (["--concentrated", "0"], "--concentrated 0.0"),
        (["missing.toml"], "missing.toml"),
        (["--set", "partition.alpha=0", "--seeds", "1"], "partition.alpha"),
    ],
)
def test_bad_arguments_get_one_error_naming_them(
    argv: list[str], named: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["group_placement.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
