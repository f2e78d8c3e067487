"""`make deploy-local` for real: SuperLink + SuperNodes on 127.0.0.1, TLS, node auth.

Skipped only with FEDEQUITY_SKIP_DEPLOY=1. About 1.5-2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import assert_no_processes, skip_deploy

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.deploy, pytest.mark.slow, skip_deploy]
# The default experiment, on less synthetic data so that two deployed rounds stay short.
SMALL = "synthetic.num-examples=1200"


def _deploy_local_cmd(tmp_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "deploy.local", "--supernodes", "2", "--rounds", "2",
        "--output-dir", str(tmp_path / "outputs"), "--work-dir", str(tmp_path / "work"),
        "--certs-dir", str(tmp_path / "certs"), "--keys-dir", str(tmp_path / "keys"),
        "--run-config", SMALL, *extra,
    ]  # fmt: skip


@pytest.mark.timeout(400)
def test_deploy_local_runs_two_rounds_on_two_authenticated_supernodes(tmp_path: Path) -> None:
    result = subprocess.run(
        _deploy_local_cmd(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=380
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])  # the last line is the run dir
    assert run_dir.parent == tmp_path / "outputs"
    assert (run_dir / "config.json").is_file() and (run_dir / "rounds.csv").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["num-server-rounds"] == 2
    assert results["config"]["output-dir"] == str(tmp_path / "outputs")
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["num_clients"] == 2 and record["failures"] == 0
        assert len(record["weights"]) == 2
        assert 0.0 <= record["global"]["accuracy"] <= 1.0
    assert set(results["rounds"][0]["weights"]) == set(results["rounds"][1]["weights"])
    privacy = results["privacy"]  # each deployed node drew its DP noise from OS entropy
    assert len(privacy) == 2 and all(p["secure_rng"] is True for p in privacy.values())
    logs = tmp_path / "work" / "logs"
    superlink = (logs / "superlink.log").read_text()
    assert "SuperNode authentication is disabled" not in superlink
    assert "TLS disabled" not in superlink
    for i in range(2):
        assert "insecure" not in (logs / f"supernode-{i}.log").read_text().lower()
    assert_no_processes(tmp_path / "work")


@pytest.mark.timeout(120)
def test_sigterm_during_a_run_stops_every_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        _deploy_local_cmd(tmp_path), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "Successfully started run" in line:
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen)[-2000:]  # as a shell reports it
    assert "deploy-local interrupted; all processes stopped" in rest
    assert_no_processes(tmp_path / "work")


@pytest.mark.timeout(120)
def test_a_failing_serverapp_fails_deploy_local_and_stops_everything(tmp_path: Path) -> None:
    # a valid config that only the running ServerApp finds wrong: no run to resume there
    missing_run = tmp_path / "no-such-run"
    result = subprocess.run(
        _deploy_local_cmd(tmp_path, "--run-config", f"resume-from='{missing_run}'"),
        cwd=REPO, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert result.returncode == 1
    assert "ended as finished:failed" in result.stderr, result.stderr[-2000:]
    assert_no_processes(tmp_path / "work")
