"""Partitioning imports flwr_datasets without its plotting helpers, which stay importable."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def test_client_and_server_apps_load_without_seaborn() -> None:
    assert (
        run("""
        import sys
        import clients.app, server.app
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("seaborn", "matplotlib")
                     or m == "flwr_datasets.visualization"))
    """)
        == "[]"
    )


def test_the_skipped_submodule_still_imports_for_real() -> None:
    assert (
        run("""
        import task.data
        from flwr_datasets import visualization
        import flwr_datasets.visualization as again
        print(visualization is again, callable(visualization.plot_label_distributions))
    """)
        == "True True"
    )
