"""launch.flwr: a ``flwr`` CLI call that hangs is a FlowerError, which the waits retry."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

import launch.flwr
from launch.flwr import flwr, wait_answering, wait_online
from launch.supervisor import FlowerError, ProcessSupervisor

HANGING = "import time; time.sleep(60)"


@pytest.fixture
def hanging_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ProcessSupervisor:
    script = tmp_path / "flwr"
    script.write_text(f"#!{sys.executable}\n{HANGING}\n")
    script.chmod(0o755)
    monkeypatch.setattr(launch.flwr, "tool", lambda _name: str(script))
    monkeypatch.setattr(launch.flwr, "CLI_TIMEOUT", 0.5)
    return ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path / "logs")


def test_a_hanging_cli_call_is_a_flower_error_naming_the_call(
    hanging_cli: ProcessSupervisor, tmp_path: Path
) -> None:
    with pytest.raises(FlowerError, match=r"flwr supernode list .* did not answer within 0.5 s"):
        flwr(hanging_cli, tmp_path, "supernode", "list", "127.0.0.1:1")


def test_waiting_for_the_superlink_retries_a_hanging_call_until_its_deadline(
    hanging_cli: ProcessSupervisor, tmp_path: Path
) -> None:
    superlink = hanging_cli.start("superlink", [sys.executable, "-c", HANGING], cwd=tmp_path)
    start = time.monotonic()
    try:
        with pytest.raises(FlowerError, match="did not answer"):
            wait_answering(hanging_cli, "127.0.0.1:1", tmp_path, superlink, timeout=1.0)
        assert time.monotonic() - start >= 1.0  # retried, not ended by the first hang
    finally:
        hanging_cli.stop_all(grace=1.0)


def test_waiting_for_nodes_retries_a_hanging_call_and_names_it(
    hanging_cli: ProcessSupervisor, tmp_path: Path
) -> None:
    with pytest.raises(FlowerError, match=r"not online after 1 s: \{\}; the last call: .*answer"):
        wait_online(hanging_cli, "127.0.0.1:1", ["1"], tmp_path, timeout=1.0)
