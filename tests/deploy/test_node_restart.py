"""A deployed SuperNode killed with SIGKILL and restarted never starts again from ε = 0.

Real processes as ``make deploy-local`` starts them (TLS, SuperNode authentication, one
SuperExec per node). As soon as node 0 has written its ledger for round 1 (the ClientApp
writes it, fsync'd, before the reply leaves), the test kills node 0 — SuperNode and
SuperExec — with SIGKILL and starts both again (as soon as the SuperLink takes the node
back: up to two missed heartbeats, about a minute). The run goes on; at the end node 0's
ledger is exactly three rounds' events, as for a node never interrupted, and the ε the
server recorded for it is the ε of that ledger. About 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import ledger_store
from deploy.local import (
    CONNECTION,
    Deployment,
    Options,
    client_threads,
    ledger_dir,
    prepare_deployment,
    run_config_args,
    start_superlink,
    start_supernodes,
    superexec_cmd,
    supernode_cmd,
)
from launch.flwr import check_completed
from launch.stream import run_app
from task.accounting import PrivacyLedger
from tests.deploy.conftest import assert_no_processes, skip_deploy

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.deploy, pytest.mark.slow, skip_deploy]
ROUNDS = 3
NODES = 2


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    opts = Options(supernodes=NODES, certs_dir=tmp_path / "certs", keys_dir=tmp_path / "keys")
    dep = prepare_deployment(opts, tmp_path, topology=None)
    try:
        yield dep
    finally:
        dep.sup.stop_all()
        assert_no_processes(tmp_path)


def _kill_and_restart_node_0(
    dep: Deployment, ledger: Path, done: threading.Event, restarted: threading.Event
) -> None:
    """Once node 0's round-1 ledger is on disk: SIGKILL its SuperNode and SuperExec (taken
    off the supervisor's watch list first, so the run is not failed for their death), then
    start both again with the same key, partition and ledger-dir."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not done.is_set():
        stored = ledger_store.load(ledger) if ledger.exists() else None
        if stored is not None and stored.round >= 1:
            break
        time.sleep(0.05)
    else:
        return
    node = [p for p in dep.sup.procs if p.name in ("supernode-0", "superexec-clientapp-0")]
    for managed in node:
        dep.sup.procs.remove(managed)
        os.kill(managed.popen.pid, signal.SIGKILL)
        managed.popen.wait(timeout=10)
        managed.log_file.close()
    if _restart_supernode_0(dep, done):
        cmd = superexec_cmd(dep, dep.supernode_ports[0], dep.tls.supernodes[0].superexec_secret)
        dep.sup.start("superexec-clientapp-0", cmd, dep.work_dir, client_threads(NODES))
        restarted.set()


def _restart_supernode_0(dep: Deployment, done: threading.Event) -> bool:
    """Start SuperNode 0 until the SuperLink takes it back: it refuses (exit 305) while the
    killed instance still counts as online, up to two heartbeats (Flower's 2 × 30 s), as
    compose's restart policy would retry. Unwatched until it has stayed up."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not done.is_set():
        managed = dep.sup.start("supernode-0", supernode_cmd(dep, 0, NODES), dep.work_dir)
        dep.sup.procs.remove(managed)
        try:
            managed.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dep.sup.procs.append(managed)  # stayed up: activated
            return True
        managed.log_file.close()
        time.sleep(2.0)
    return False


@pytest.mark.timeout(600)
def test_a_supernode_killed_and_restarted_keeps_its_whole_privacy_ledger(
    deployment: Deployment,
) -> None:
    dep, outputs = deployment, deployment.work_dir / "outputs"
    opts = Options(
        supernodes=NODES, rounds=ROUNDS, output_dir=outputs,
        # a reply lost with the killed node costs one round-timeout, not the default hour
        run_config=("synthetic.num-examples=1200", "round-timeout=90.0"),
    )  # fmt: skip
    start_superlink(dep, timeout=60)
    start_supernodes(dep, NODES, timeout=60)
    ledger = ledger_store.ledger_path(ledger_dir(dep, 0), 0)
    done, restarted = threading.Event(), threading.Event()
    killer = threading.Thread(target=_kill_and_restart_node_0, args=(dep, ledger, done, restarted))
    killer.start()
    try:
        run_id = run_app(dep.sup, REPO, CONNECTION, run_config_args(opts), dep.work_dir, 540)
        check_completed(dep.sup, CONNECTION, run_id, dep.work_dir, 60)
    finally:
        done.set()
        killer.join(timeout=30)
    assert restarted.is_set(), "node 0 was never killed and restarted"

    stored = ledger_store.load(ledger)
    assert stored is not None and stored.round == ROUNDS
    history = PrivacyLedger.from_state(stored.after).history
    per_round = len(history) // ROUNDS
    assert per_round > 0 and history == history[:per_round] * ROUNDS  # three whole rounds

    results = json.loads((outputs / run_id / "results.json").read_text())
    report = next(p for p in results["privacy"].values() if p["partition"] == 0)
    uninterrupted = PrivacyLedger(history=history[:per_round] * ROUNDS).epsilon(report["delta"])
    assert report["epsilon"] == pytest.approx(uninterrupted, rel=1e-9)
    assert [tuple(e) for e in report["history"]] == history
    assert report["epsilon"] > 0
