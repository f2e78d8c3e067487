"""``flwr <command> --format json`` against a SuperLink: register, list nodes, run status."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from launch.env import tool
from launch.supervisor import FlowerError, Managed, ProcessSupervisor

CLI_TIMEOUT = 60.0
COMPLETED = "finished:completed"


def _json_out(result: subprocess.CompletedProcess[str], what: str) -> dict[str, Any]:
    start = result.stdout.find("{")
    try:
        data: dict[str, Any] = json.loads(result.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    if result.returncode != 0 or not data.get("success"):
        raise FlowerError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}".strip()
        )
    return data


def flwr(sup: ProcessSupervisor, cwd: Path, *args: str) -> dict[str, Any]:
    """Run ``flwr <args> --format json`` and return its JSON answer."""
    what = "flwr " + " ".join(args)
    try:
        result = sup.run([tool("flwr"), *args, "--format", "json"], cwd=cwd, timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise FlowerError(f"{what} did not answer within {CLI_TIMEOUT:g} s") from None
    return _json_out(result, what)


def register(sup: ProcessSupervisor, public_key: Path, conn: str, cwd: Path) -> str:
    """``flwr supernode register KEY.pub CONN``; return the node id."""
    data = flwr(sup, cwd, "supernode", "register", str(public_key), conn)
    return str(data["node-id"])


def wait_answering(
    sup: ProcessSupervisor, conn: str, cwd: Path, proc: Managed, timeout: float
) -> None:
    """Wait until the SuperLink answers the CLI (``flwr supernode list``); fail if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise proc.exited()
        try:
            flwr(sup, cwd, "supernode", "list", conn)
            return
        except FlowerError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def wait_online(
    sup: ProcessSupervisor, conn: str, node_ids: list[str], cwd: Path, timeout: float
) -> None:
    """Wait until every registered node reports ``online``; fail if a process died."""
    deadline = time.monotonic() + timeout
    status: dict[str, str] = {}
    failed = ""
    while time.monotonic() < deadline:
        sup.raise_if_dead()
        try:
            nodes = flwr(sup, cwd, "supernode", "list", conn)["nodes"]
        except FlowerError as error:  # a call that hung or failed: ask again until the deadline
            failed = f"; the last call: {error}"
            time.sleep(0.5)
            continue
        status = {str(n["node-id"]): str(n["status"]) for n in nodes}
        if all(status.get(i) == "online" for i in node_ids):
            return
        time.sleep(0.5)
    raise FlowerError(f"SuperNodes not online after {timeout:.0f} s: {status}{failed}")


def check_completed(
    sup: ProcessSupervisor, conn: str, run_id: str, cwd: Path, timeout: float
) -> None:
    """Raise unless run ``run_id`` is ``finished:completed`` (``flwr run`` exits 0 anyway)."""
    deadline = time.monotonic() + min(timeout, 60.0)
    while True:
        runs = flwr(sup, cwd, "list", "--run-id", run_id, conn)["runs"]
        status = str(runs[0]["status"]) if runs else "unknown"
        if status.startswith("finished") or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if status != COMPLETED:
        details = runs[0].get("status-details", "") if runs else ""
        raise FlowerError(f"run {run_id} ended as {status}: {details}")
