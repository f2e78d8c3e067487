"""launch.env: the offline environment, defined once, and everything that repeats it agrees."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from deploy import compose_policy
from launch.env import OFFLINE_ENV, deployment_env, flower_env, simulation_env, tool
from launch.supervisor import MARKER_ENV, ProcessSupervisor

REPO = Path(__file__).resolve().parents[2]


def test_flower_env_is_offline_project_local_and_marked(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=simulation_env(tmp_path / "home"), log_dir=tmp_path, marker="abc")
    env = sup.child_env()
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env[MARKER_ENV] == "abc"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_environment_is_offline_and_finds_flower_helpers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDEQUITY_ONLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    env = deployment_env(tmp_path / "home")
    assert env["HF_HUB_OFFLINE"] == env["HF_DATASETS_OFFLINE"] == "1"  # also without make
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert (Path(env["PATH"].split(":")[0]) / "flower-superexec").exists()
    assert "RAY_ADDRESS" not in env
    assert env["PYTHONUNBUFFERED"] == "1" and env["TOKENIZERS_PARALLELISM"] == "false"


def test_simulation_keeps_the_ray_cluster_and_dedups_no_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FEDEQUITY_ONLINE", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # docs/deployment.md: Ray clusters
    env = simulation_env(tmp_path)
    assert env["RAY_ADDRESS"] == "10.0.0.1:6379" and env["RAY_DEDUP_LOGS"] == "0"
    assert env.items() >= OFFLINE_ENV.items()


@pytest.mark.parametrize("make_env", [simulation_env, deployment_env])
def test_fedequity_online_lets_hugging_face_download(
    make_env: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEQUITY_ONLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as `make` exports it
    env = make_env(tmp_path)  # type: ignore[operator]
    assert "HF_HUB_OFFLINE" not in env and "HF_DATASETS_OFFLINE" not in env
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"


def test_flower_env_drops_and_adds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDEQUITY_X", "1")
    env = flower_env(tmp_path, extra={"FEDEQUITY_Y": "2"}, drop=("FEDEQUITY_X",))
    assert "FEDEQUITY_X" not in env and env["FEDEQUITY_Y"] == "2"


def test_tool_prefers_the_venv_and_falls_back_to_the_bare_name() -> None:
    assert tool("flwr") == str(Path(sys.executable).parent / "flwr")
    assert tool("no-such-flower-tool") == "no-such-flower-tool"


def test_the_makefile_exports_the_offline_environment() -> None:
    text = (REPO / "Makefile").read_text()
    exported = dict(re.findall(r"^export (\w+) :?= (\S+)$", text, re.M))
    assert exported.items() >= OFFLINE_ENV.items(), "Makefile and launch/env.py disagree"


def test_the_image_sets_the_offline_environment() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", text, re.M)
    assert block is not None
    values = dict(re.findall(r"(\w+)=(\S+)", block.group(1)))
    assert values.items() >= OFFLINE_ENV.items(), "docker/Dockerfile and launch/env.py disagree"


def test_the_test_session_runs_offline() -> None:
    conftest = (REPO / "tests" / "conftest.py").read_text()
    assert "from launch.env import OFFLINE_ENV" in conftest
    assert not any(key in conftest for key in OFFLINE_ENV)  # not spelled a second time
    assert all(key in os.environ for key in OFFLINE_ENV)


def test_compose_services_run_flower_offline() -> None:
    assert compose_policy.OFFLINE_ENV.items() <= OFFLINE_ENV.items()
    assert set(compose_policy.OFFLINE_ENV) == {k for k in OFFLINE_ENV if k.startswith("FLWR_")}
    environment = yaml.safe_load((REPO / "docker-compose.yml").read_text())["x-environment"]
    assert {k: str(v) for k, v in environment.items()}.items() >= compose_policy.OFFLINE_ENV.items()
