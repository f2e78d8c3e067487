"""The compose stack for N SuperNodes: the rendered file (always), and the stack itself on a
real Docker engine (``make compose-test``: opt-in with ``FEDEQUITY_COMPOSE_TEST=1``, root;
about 3 minutes to build cold, then ~5 minutes per run).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy import compose_checks as cc
from deploy.compose_test import REPO, main, policy_problems, render_compose
from deploy.engine import ensure_installed


@pytest.mark.parametrize("num", [1, 2, 4])
def test_rendered_file_has_n_nodes_and_keeps_the_policy(tmp_path: Path, num: int) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(render_compose(num), sort_keys=False))
    compose = cc.load(path)
    nodes = sorted(n for n, s in compose["services"].items() if cc.component(n, s) == "supernode")
    assert nodes == [f"supernode-{i}" for i in range(num)]
    for i in range(num):
        command = " ".join(compose["services"][f"supernode-{i}"]["command"])
        assert f"partition-id={i} num-partitions={num} " in command
        assert f"supernode-{i}-ledger" in compose["volumes"]
        assert f"supernode-{i}-auth-key" in compose["secrets"]
    assert policy_problems(path) == []


def test_three_nodes_render_the_committed_file() -> None:
    committed = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    rendered = render_compose(3)
    assert set(rendered["services"]) == set(committed["services"])
    assert rendered["secrets"] == committed["secrets"]
    assert rendered["services"]["supernode-2"]["command"] == [
        arg.replace("${FEDEQUITY_NUM_PARTITIONS:-3}", "3")
        for arg in committed["services"]["supernode-2"]["command"]
    ]


def test_no_nodes_is_refused() -> None:
    with pytest.raises(ValueError, match="--supernodes"):
        render_compose(0)


def host_network_state() -> dict[str, str]:
    """What the engine must not change on the host: links, routes, iptables, namespaces."""
    commands = {
        "links": ["ip", "-o", "link", "show"],
        "routes": ["ip", "route", "show", "table", "all"],
        "netns": ["ip", "netns", "list"],
        "iptables": ["iptables-save"],
    }
    state = {}
    for name, cmd in commands.items():
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if not line.startswith("#")]
        state[name] = "\n".join(line.split("[")[0] for line in lines)  # no packet counters
    return state


@pytest.mark.compose
@pytest.mark.skipif(
    os.environ.get("FEDEQUITY_COMPOSE_TEST") != "1" or os.geteuid() != 0,
    reason="the real Docker engine run is opt-in: make compose-test (root)",
)
def test_stack_runs_two_rounds_and_refuses_an_unregistered_node() -> None:
    nodes = os.environ.get("FEDEQUITY_COMPOSE_NODES", "2")
    root = os.environ.get("FEDEQUITY_COMPOSE_ROOT", str(REPO / ".cache" / "compose-engine"))
    ensure_installed()  # first: a bare machine has no iptables-save to take "before" with
    before = host_network_state()
    assert main(["--supernodes", nodes, "--rounds", "2", "--data-root", root]) == 0
    assert host_network_state() == before  # links, routes, firewall rules, namespaces
    data_root = Path(root).resolve()  # as deploy.engine starts dockerd: relative roots too
    assert str(data_root) not in Path("/proc/mounts").read_text(), "a mount of the engine is left"
    dockerd = subprocess.run(
        ["pgrep", "-f", f"dockerd --data-root={data_root}/"], capture_output=True
    )
    assert dockerd.returncode == 1, "a dockerd of the test is still running"
