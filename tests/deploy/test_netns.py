"""``deploy-local --netns``: the SuperLink and each SuperNode on a network host of its own.

Three network namespaces made by the test (SuperLink, two SuperNodes), joined by veth
pairs with link-local addresses that exist only inside them; TLS verified against those
addresses (the SuperLink's certificate names them). Mid-run, node 1's link is cut: that
round reports node 1's failure, and the run completes on node 0. Afterwards no namespace,
veth or process of the test is left. Needs root (``ip netns add``); about 2 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from deploy.local import Options, deploy_local
from deploy.netns import NetnsError, Topology, list_namespaces
from tests.deploy.conftest import assert_no_processes, skip_deploy

pytestmark = [pytest.mark.deploy, pytest.mark.slow, skip_deploy]


@pytest.fixture(autouse=True)
def namespaces_allowed() -> None:
    """Skip unless this process may make network namespaces (probed when the test runs,
    not when it is collected)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for `ip netns add`")
    probe = Topology(1, tag=uuid.uuid4().hex[:6])
    try:
        probe.create()
    except NetnsError as error:
        pytest.skip(f"cannot make network namespaces: {error}")
    finally:
        probe.delete()


def _rx_bytes(topology: Topology, i: int) -> int:
    """Bytes the SuperLink's end of node ``i``'s veth has received."""
    shown = subprocess.run(
        ["ip", "-n", topology.link_ns, "-j", "-s", "link", "show", "dev", topology.link_veth(i)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(json.loads(shown.stdout)[0]["stats64"]["rx"]["bytes"])


def _cut_node_1_in_round_2(
    topology: Topology, outputs: Path, done: threading.Event, seen: dict[str, int]
) -> None:
    """When round 1's checkpoint is written (round 2 is about to be sent), cut node 1."""
    while not done.is_set():
        if any(outputs.glob("*/checkpoint.npz")):
            seen.update({f"rx-{i}": _rx_bytes(topology, i) for i in range(topology.nodes)})
            topology.cut(1)
            seen["cut"] = 1
            return
        time.sleep(0.05)


@pytest.mark.timeout(500)
def test_two_rounds_across_three_namespaces_survive_a_cut_link(tmp_path: Path) -> None:
    before = set(list_namespaces())
    topology = Topology(2, tag=uuid.uuid4().hex[:6])
    outputs, work = tmp_path / "outputs", tmp_path / "work"
    opts = Options(
        supernodes=2, rounds=2, output_dir=outputs, work_dir=work, netns=True,
        certs_dir=tmp_path / "certs", keys_dir=tmp_path / "keys",
        run_config=("synthetic.num-examples=1200", "round-timeout=30.0"),
    )  # fmt: skip
    done, seen = threading.Event(), dict[str, int]()
    cutter = threading.Thread(target=_cut_node_1_in_round_2, args=(topology, outputs, done, seen))
    cutter.start()
    try:
        run_dir = deploy_local(opts, topology)
    finally:
        done.set()
        cutter.join(timeout=10)
        leftover = set(list_namespaces()) - before
        topology.delete()  # only if the run's own clean-up failed
    assert leftover == set(), f"namespaces left behind: {leftover}"
    assert_no_processes(work)

    assert seen.get("cut") == 1, "node 1's link was never cut"
    assert seen["rx-0"] > 10_000 and seen["rx-1"] > 10_000  # round 1 crossed both veths
    for i in range(2):  # a node's namespace has only loopback and its veth: TLS across it
        log = (work / "logs" / f"supernode-{i}.log").read_text()
        assert "insecure" not in log.lower()
    results = json.loads((run_dir / "results.json").read_text())
    first, second = results["rounds"]
    assert first["failures"] == 0 and first["num_clients"] == 2
    assert second["failures"] == 1 and second["num_clients"] == 1
    (reason,) = second["failure_reasons"].values()
    assert "no reply within round-timeout" in reason
    assert results["status"] == "complete"
