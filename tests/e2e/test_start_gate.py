"""The slow checks run while Flower starts: a real SuperLink and simulation behind the gate.

The ServerApp must write nothing before the launcher's validation passes, and a bad input
found meanwhile must end as it would have before any process started: one clear error,
nothing written, nothing left running.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from server.handshake import WAITING
from simulations.__main__ import main
from simulations.experiment import build_experiment
from simulations.runner import run_experiment
from tests.e2e.test_flwr_run import processes_started_under
from tests.simulations.test_bad_inputs import output_dir_with_a_previous_run, snapshot

pytestmark = pytest.mark.slow

SMALL = ["num-server-rounds=1", "synthetic.num-examples=2000", "dp.target-epsilon=4"]


def test_the_server_app_writes_nothing_before_the_launchers_go(tmp_path: Path) -> None:
    seen_before_go: list[str] = []

    def slow_validation() -> None:
        """Pass only once the ServerApp is waiting at the gate; note what exists then."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            logs = [p.read_text() for p in tmp_path.glob("fedequity-*/logs/flwr-run.log")]
            if any(WAITING in text for text in logs):
                seen_before_go.extend(sorted(p.name for p in tmp_path.iterdir()))
                return
            time.sleep(0.1)
        raise AssertionError("the ServerApp never reached the start gate")

    experiment = build_experiment(None, SMALL, supernodes=3, output_dir=str(tmp_path))
    run_dir = run_experiment(experiment, validate=slow_validation)

    assert len(seen_before_go) == 1 and seen_before_go[0].startswith("fedequity-")  # work dir
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete" and len(results["rounds"]) == 1
    assert processes_started_under(tmp_path) == []


def test_a_bad_input_found_while_flower_starts_writes_nothing_and_stops_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, before = output_dir_with_a_previous_run(tmp_path)

    # Only the slow budget check can tell: every key and value is valid on its own.
    code = main(["run", "--set", "dp.target-epsilon=0.01", "--output-dir", str(out)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("error:") == 1 and "'dp.target-epsilon': no client can train" in err, err
    assert snapshot(out) == before  # no run directory, no work directory, latest unmoved
    assert processes_started_under(tmp_path) == []
