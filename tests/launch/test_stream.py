"""launch.stream and launch.signals without Flower: a fake ``flwr run`` and real signals."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from launch.signals import Interrupted, signals_ignored, signals_raise
from launch.stream import parse_run_id, stream_run
from launch.supervisor import FlowerError, ProcessSupervisor, marked_pids

FAKE_RUN = "print('noise'); print('Successfully started run 12345'); print('round 1/2 acc=0.5')"


def test_parse_run_id() -> None:
    assert parse_run_id("INFO :      Successfully started run 987\n") == "987"
    assert parse_run_id("Successfully started run\n") is None


def test_stream_run_logs_everything_shows_some_and_finds_the_run_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path / "logs")
    streamed = stream_run(
        sup, [sys.executable, "-c", FAKE_RUN], tmp_path, show=lambda line: "acc=" in line
    )
    assert (streamed.returncode, streamed.run_id) == (0, "12345")
    assert streamed.log_path.read_text().splitlines()[0] == "noise"
    assert capsys.readouterr().out == "round 1/2 acc=0.5\n"


def test_stream_run_fails_fast_when_a_supervised_process_dies(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    sup.start("superlink", [sys.executable, "-c", "raise SystemExit(7)"], tmp_path)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    try:
        with pytest.raises(FlowerError, match="superlink exited with 7"):
            stream_run(sup, hang, tmp_path, timeout=30)
        assert marked_pids(sup.marker) == []  # the hanging `flwr run` was stopped
    finally:
        sup.stop_all()


def test_a_finished_line_ends_the_wait_and_stops_the_command(tmp_path: Path) -> None:
    """After the line, ``flwr run`` would still stream Flower's shut-down: not waited for."""
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    linger = FAKE_RUN + "; print('all done', flush=True); import time; time.sleep(60)"
    streamed = stream_run(
        sup, [sys.executable, "-c", linger], tmp_path, timeout=30,
        finished=lambda line: line.startswith("all done"),
    )  # fmt: skip
    assert streamed.finished and streamed.returncode is None
    assert streamed.run_id == "12345"
    assert marked_pids(sup.marker) == []  # the lingering command was stopped


def test_without_a_finished_line_the_command_runs_to_its_end(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    streamed = stream_run(
        sup, [sys.executable, "-c", FAKE_RUN], tmp_path, finished=lambda line: "never" in line
    )
    assert not streamed.finished and streamed.returncode == 0


def test_what_started_raises_stops_the_command(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]

    def refuse() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        stream_run(sup, hang, tmp_path, timeout=30, started=refuse)
    assert marked_pids(sup.marker) == []


def test_stream_run_times_out(tmp_path: Path) -> None:
    sup = ProcessSupervisor(env=dict(os.environ), log_dir=tmp_path)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(FlowerError, match="did not finish within 1 s"):
        stream_run(sup, hang, tmp_path, timeout=1)
    assert marked_pids(sup.marker) == []


def test_sigterm_raises_interrupted_and_the_handler_is_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="received SIGTERM") as caught, signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here
    assert caught.value.exit_code == 128 + signal.SIGTERM
    assert not isinstance(caught.value, Exception)  # `except Exception` lets it pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_signals_are_ignored_during_clean_up() -> None:
    with signals_raise(), signals_ignored():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.1)
    # reaching here: SIGHUP was ignored, not raised (nor the default: death)
