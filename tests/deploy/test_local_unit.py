"""deploy.local without processes: its commands, its run-config, its parity with compose."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import parse_config_args

from deploy import compose_checks as cc
from deploy.certs import generate
from deploy.local import (
    Deployment,
    Options,
    client_threads,
    parse_args,
    run_config_args,
    superexec_cmd,
    superlink_cmd,
    supernode_cmd,
)
from deploy.run_config import toml_value
from launch.env import deployment_env
from launch.supervisor import ProcessSupervisor

REPO = Path(__file__).resolve().parents[2]
# Flags deploy-local adds or leaves out on purpose, per component (everything else matches).
LOCAL_ONLY = {"supernode": {"--max-retries"}, "superlink": set(), "superexec": set()}
COMPOSE_ONLY = {"supernode": set(), "superlink": set(), "superexec": {"--health-server-address"}}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    tmp = tmp_path_factory.mktemp("local-unit")
    tls = generate(3, tmp / "certs", tmp / "keys")
    sup = ProcessSupervisor(env=deployment_env(tmp / "home"), log_dir=tmp / "logs")
    return Deployment(sup, tls, tmp, 40000, [40001, 40002, 40003])


def _flags(cmd: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in cmd if arg.startswith("--")}


def test_supernode_i_gets_partition_i_of_n_and_its_own_key(dep: Deployment) -> None:
    args = cc.parse_command("supernode", supernode_cmd(dep, 2, 3)[1:])
    assert args.node_config.startswith("partition-id=2 num-partitions=3 secure-rng=true ")
    assert args.auth_supernode_private_key == str(dep.tls.supernodes[2].auth_key)
    assert args.port == 40003 and args.superlink == "127.0.0.1:40000"


def test_commands_are_what_flower_1_42_accepts_and_mirror_compose(dep: Deployment) -> None:
    compose = cc.load(REPO / "docker-compose.yml")
    local = {
        "superlink": superlink_cmd(dep),
        "supernode": supernode_cmd(dep, 0, 3),
        "superexec": superexec_cmd(dep, 40001, dep.tls.supernodes[0].superexec_secret),
    }
    services = {
        "superlink": "superlink",
        "supernode": "supernode-0",
        "superexec": "superexec-clientapp-0",
    }
    for kind, cmd in local.items():
        cc.parse_command(kind, cmd[1:])  # raises ValueError on a flag Flower does not know
        in_compose = _flags([str(c) for c in compose["services"][services[kind]]["command"]])
        assert _flags(cmd[1:]) - LOCAL_ONLY[kind] == in_compose - COMPOSE_ONLY[kind], kind


def test_secure_by_construction(dep: Deployment) -> None:
    link = cc.parse_command("superlink", superlink_cmd(dep)[1:])
    assert link.enable_supernode_auth and not link.insecure and link.ssl_certfile
    assert not link.runtime_dependency_install
    assert link.database.endswith("superlink-state.db")


def test_client_threads_share_the_cores() -> None:
    assert int(client_threads(1)["OMP_NUM_THREADS"]) >= 1
    assert client_threads(10_000)["OMP_NUM_THREADS"] == "1"


def test_run_config_items_later_ones_win(tmp_path: Path) -> None:
    experiment = tmp_path / "e.toml"
    experiment.write_text(
        'num-server-rounds = 9\nstrategy = "fairfed"\n[dp]\nmode = "local"\n'
        "target-epsilon = 4.0\n[federation]\nnum-supernodes = 50\n"
    )
    opts = Options(rounds=2, output_dir=tmp_path / "out", experiment=experiment,
                   run_config=("seed=7",))  # fmt: skip
    args = run_config_args(opts)
    assert args[0] == "--run-config" and len(args) == 2  # one flag: see run_config_args
    assert parse_config_args(args[1:]) == {
        "num-server-rounds": 2, "strategy": "fairfed", "dp.mode": "local",
        "dp.target-epsilon": 4.0, "seed": 7, "output-dir": str(tmp_path / "out"),
    }  # fmt: skip


def test_keys_sharing_a_table_all_reach_flower(tmp_path: Path) -> None:
    """Separate flags would merge by table: the later train.* flag dropped the earlier."""
    opts = Options(output_dir=tmp_path, experiment=REPO / "simulations/experiments/no-dp.toml",
                   run_config=("train.batch-size=16",))  # fmt: skip
    parsed = parse_config_args(run_config_args(opts)[1:])
    assert parsed["train.optimizer"] == "adamw" and parsed["train.learning-rate"] == 0.001
    assert parsed["train.batch-size"] == 16 and parsed["dp.mode"] == "off"


def test_default_experiment_is_the_repositorys() -> None:
    opts = parse_args([])
    assert opts.experiment == REPO / "simulations" / "experiments" / "default.toml"
    assert opts.supernodes == 2 and opts.rounds == 2
    assert opts.output_dir == REPO / "outputs"
    keys = parse_config_args(run_config_args(opts)[1:])  # the experiment's [federation] stays out
    assert not any(key.startswith("federation") for key in keys)


@pytest.mark.parametrize(("value", "literal"), [(True, "true"), (3, "3"), (0.5, "0.5"),
                                                ("a b", "'a b'"), ("it's", '"it\'s"')])  # fmt: skip
def test_toml_values_survive_flwrs_parser(value: object, literal: str) -> None:
    from flwr.common.config import parse_config_args

    assert toml_value(value) == literal
    assert parse_config_args([f"k={literal} j=1"]) == {"k": value, "j": 1}


def test_unsendable_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="only bool, int, float"):
        toml_value([1, 2])


@pytest.mark.parametrize(
    ("item", "output_dir", "expected"),
    [
        ("stratgy='fedavg'", "out", r"'stratgy'; did you mean 'strategy'"),
        ("strategy=fedavg", "out", r"--run-config 'strategy=fedavg': .* a string needs quotes"),
        ("dp.target-epsilon=-1", "out", r"dp\.target-epsilon"),
        ("seed=1", "file/out", r"output-dir .* lies under the file"),
    ],
)
def test_bad_run_config_is_named_before_anything_starts(
    tmp_path: Path, item: str, output_dir: str, expected: str
) -> None:
    (tmp_path / "file").write_text("")
    opts = Options(output_dir=tmp_path / output_dir, run_config=(item,))
    with pytest.raises(ValueError, match=expected):
        run_config_args(opts)
