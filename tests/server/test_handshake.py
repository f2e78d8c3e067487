"""The start gate and the completion line between the ServerApp and the local launcher."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from server.handshake import (
    GATE_ENV,
    GateClosed,
    complete_line,
    open_gate,
    says_complete,
    wait_at_gate,
)


def test_without_a_gate_the_server_app_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(GATE_ENV, raising=False)
    wait_at_gate(timeout=0)  # returns: no launcher asked it to wait


def test_the_server_app_waits_until_the_launcher_says_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = tmp_path / "start-gate"
    monkeypatch.setenv(GATE_ENV, str(gate))
    passed = threading.Event()

    def server_app() -> None:
        wait_at_gate(timeout=30)
        passed.set()

    waiter = threading.Thread(target=server_app)
    waiter.start()
    assert not passed.wait(0.3)  # no verdict yet: still waiting
    open_gate(gate, go=True)
    waiter.join(timeout=10)
    assert passed.is_set()


def test_a_stop_verdict_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = tmp_path / "start-gate"
    monkeypatch.setenv(GATE_ENV, str(gate))
    open_gate(gate, go=False)
    with pytest.raises(GateClosed, match="refused the experiment"):
        wait_at_gate(timeout=30)


def test_no_verdict_within_the_timeout_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GATE_ENV, str(tmp_path / "never-written"))
    start = time.monotonic()
    with pytest.raises(GateClosed, match="no verdict"):
        wait_at_gate(timeout=0.1)
    assert time.monotonic() - start < 10


def test_the_verdict_is_written_whole(tmp_path: Path) -> None:
    gate = tmp_path / "start-gate"
    open_gate(gate, go=True)
    open_gate(gate, go=False)  # a second verdict replaces the first
    assert gate.read_text() == "stop"
    assert [p.name for p in tmp_path.iterdir()] == ["start-gate"]  # no staging file left


def test_the_completion_line_is_recognised_in_flowers_log_format(tmp_path: Path) -> None:
    line = complete_line(tmp_path / "123")
    assert says_complete(f"\x1b[92mINFO \x1b[0m:      {line}\n")
    assert says_complete(f"12/06/2026 20:01:31:INFO:{line}\n")
    assert not says_complete("INFO :      round 8/8 acc=0.889\n")
