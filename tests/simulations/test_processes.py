from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from deploy.procs import MARKER_ENV
from simulations.processes import flower_env, running, stop_marked


def test_flower_env_is_offline_project_local_and_marked(tmp_path: Path) -> None:
    env = flower_env(tmp_path / "home", "abc")
    assert env["FLWR_HOME"] == str(tmp_path / "home")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env[MARKER_ENV] == "abc"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_running_stops_the_whole_tree_even_detached_children(tmp_path: Path) -> None:
    # The child starts a grandchild in a new session, as Flower does with its SuperExec.
    script = "import subprocess,time; subprocess.Popen(['sleep','60'], start_new_session=True); time.sleep(60)"
    with running([sys.executable, "-c", script], env=dict(os.environ), log_file=tmp_path / "log",
                 cwd=tmp_path) as process:  # fmt: skip
        root = psutil.Process(process.pid)
        deadline = time.monotonic() + 10
        while not root.children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.01)
        tree = [root, *root.children(recursive=True)]
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert alive == []


def test_stop_marked_reaches_orphans() -> None:
    marker = uuid.uuid4().hex
    orphan = subprocess.Popen(["sleep", "60"], env=dict(os.environ) | {MARKER_ENV: marker},
                              start_new_session=True)  # fmt: skip
    try:
        stop_marked(marker, grace_s=5)
        # Exited (poll is None only while it runs); not psutil.pid_exists, which a busy
        # machine can make true again by reusing the pid.
        assert orphan.poll() is not None
    finally:
        orphan.kill()
