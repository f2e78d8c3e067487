"""Injected faults end to end: runs survive crashes, NaN and garbage, report every failure
with its reason, and skip (never aggregate) rounds below ``min-clients``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clients import faults
from simulations.experiment import build_experiment
from simulations.inprocess import run_in_process
from simulations.runner import run_experiment

pytestmark = pytest.mark.slow

# The default run on a fifth of its data, at 8 rounds (the counts below assume 8).
SMALL = ["synthetic.num-examples=4000", "num-server-rounds=8"]
NODE_BASE = 1_000  # the in-process engine's node id of partition 0


def run(tmp_path: Path, name: str, settings: list[str], supernodes: int = 10) -> dict[str, Any]:
    experiment = build_experiment(None, settings, supernodes=supernodes,
                                  output_dir=str(tmp_path / name))  # fmt: skip
    run_dir, _ = run_in_process(experiment)
    return json.loads((run_dir / "results.json").read_text())


def drawn(settings: list[str], kinds: set[str], rounds: int, partitions: int) -> dict[int, set]:
    """Per round, the partitions whose seeded draw is one of ``kinds``."""
    cfg = build_experiment(None, settings).run_config
    return {
        r: {p for p in range(partitions)
            if faults.drawn_fault(cfg.faults, seed=cfg.seed, server_round=r, partition_id=p)
            in kinds}
        for r in range(1, rounds + 1)
    }  # fmt: skip


def test_a_third_of_clients_crashing_every_round_costs_under_3_points(tmp_path: Path) -> None:
    crashing = [*SMALL, "faults.crash-rate=0.3"]
    clean = run(tmp_path, "clean", SMALL)
    faulty = run(tmp_path, "crash", crashing)
    crashed = drawn(crashing, {faults.CRASH}, 8, 10)
    assert len(faulty["rounds"]) == 8
    for record in faulty["rounds"]:
        nodes = {str(NODE_BASE + p) for p in crashed[record["round"]]}
        assert set(record["failure_reasons"]) == nodes
        assert all("injected crash" in why for why in record["failure_reasons"].values())
        assert record["failures"] == len(nodes)
        assert record["num_clients"] == 10 - len(nodes)
    assert sum(len(c) for c in crashed.values()) >= 16  # about 0.3 · 80 did crash
    assert abs(faulty["final"]["accuracy"] - clean["final"]["accuracy"]) <= 0.03


def test_rounds_below_min_clients_are_skipped_and_reported(tmp_path: Path) -> None:
    results = run(tmp_path, "skip", [*SMALL, "faults.crash-rate=0.6", "min-clients=5"])
    skipped = [r for r in results["rounds"] if "skipped" in r]
    assert skipped and len(skipped) < 8
    previous = {0: results["initial"]} | {r["round"]: r["global"] for r in results["rounds"]}
    for record in results["rounds"]:
        if "skipped" in record:
            assert "fewer than min-clients = 5" in record["skipped"]
            assert record["weights"] == {} and record["num_clients"] == 0
            assert record["global"] == previous[record["round"] - 1]  # nothing was aggregated
        else:
            assert len(record["weights"]) >= 5


def test_a_node_answering_after_the_round_timeout_is_reported_and_left_out(
    tmp_path: Path,
) -> None:
    settings = ["model.name=tiny-bert", "model.finetune=full", "synthetic.num-examples=1500",
                "num-server-rounds=2", "faults.timeout-rate=0.3", "round-timeout=10.0"]  # fmt: skip
    late = drawn(settings, {faults.TIMEOUT}, 2, 4)
    assert any(late.values()), "the seed must draw at least one timeout for this test"
    results = run(tmp_path, "timeout", settings, supernodes=4)
    for record in results["rounds"]:
        nodes = {str(NODE_BASE + p) for p in late[record["round"]]}
        assert record["failure_reasons"] == dict.fromkeys(
            nodes, "no reply within round-timeout = 10 s"
        )
        assert set(record["weights"]).isdisjoint(nodes)


def test_faults_in_a_real_flwr_run(tmp_path: Path) -> None:
    settings = ["num-server-rounds=2", "synthetic.num-examples=2000", "faults.crash-rate=0.25",
                "faults.nan-rate=0.25", "faults.garbage-rate=0.25"]  # fmt: skip
    experiment = build_experiment(None, settings, supernodes=4, output_dir=str(tmp_path))
    results = json.loads((run_experiment(experiment) / "results.json").read_text())
    crashed = drawn(settings, {faults.CRASH}, 2, 4)
    malformed = drawn(settings, {faults.NAN, faults.GARBAGE}, 2, 4)
    for record in results["rounds"]:
        reasons = list(record["failure_reasons"].values())
        assert len(reasons) == len(crashed[record["round"]])
        assert all("injected crash" in why for why in reasons)
        assert len(record.get("rejected", {})) == len(malformed[record["round"]])
