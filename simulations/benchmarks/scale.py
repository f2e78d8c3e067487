"""Cross-device scale: many virtual clients, a few sampled per round, side by side.

    python simulations/benchmarks/scale.py [--clients 10,1000,10000] [--per-round 100]
        [--rounds 3] [--rows-per-client 20] [--set key=value …]

Each size runs as one whole ``python -m simulations run`` (``flwr run`` with Ray) on an
IID split of a synthetic set of ``rows-per-client × clients`` rows (at least the default
10,000), ``per-round`` clients sampled per round for training and as many for federated
evaluation (Flower's default would evaluate every client every round). Measured per
size: the steady round wall (median of rounds 2..), the **per-call overhead** — (round
wall × cores − summed client training time) / client calls, what a call costs beyond its
training — and the peak RSS of the whole process tree (the runner, SuperLink, the
simulation, Ray's workers), sampled every 0.2 s. Written to ``outputs/bench/scale.json``.

The model defaults to the from-scratch ``tiny-bert`` (full fine-tuning): the benchmark
measures the framework's cost per client, and a pretrained encoder's one-off feature
build for 200,000 rows would dominate the run (``--set model.name=minilm …`` to try).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from simulations.benchmarks.harness import (
    REPO,
    check_assignments,
    results_of,
    run_command,
    write_result,
)
from simulations.cli_types import comma_separated, positive_int

MODEL = ["model.name=tiny-bert", "model.finetune=full"]


def tree_rss(root: psutil.Process) -> int:
    """Resident memory of ``root`` and all its descendants, in bytes."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def run_with_peak_rss(command: list[str]) -> tuple[subprocess.CompletedProcess[str], int, float]:
    """Run ``command``; return it, the peak RSS of its process tree and its wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                peak = max(peak, tree_rss(root))
            except psutil.NoSuchProcess:
                return
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - start
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), peak, wall


def per_call_overhead(rounds: list[dict[str, Any]], cores: int) -> float:
    """Median over steady rounds (2..) of (wall × cores − client training) / calls."""
    steady = [r for r in rounds[1:] or rounds if r["num_clients"] > 0]
    if not steady:
        raise RuntimeError("no round had a client: nothing to measure")
    return statistics.median(
        (r["wall_s"] * cores - r["client_train_s"]) / r["num_clients"] for r in steady
    )


def measure(clients: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    rows = max(10_000, clients * args.rows_per_client)
    fraction = min(1.0, args.per_round / clients)
    settings = [*MODEL, "partition.method=iid", f"synthetic.num-examples={rows}",
                f"fraction-train={fraction}", f"fraction-evaluate={fraction}",
                f"num-server-rounds={args.rounds}",
                *args.assignments]  # fmt: skip
    command = run_command("--supernodes", str(clients), "--output-dir", str(tmp / str(clients)),
                          assignments=settings)  # fmt: skip
    done, peak, wall = run_with_peak_rss(command)
    rounds = results_of(done, f"{clients} clients")["rounds"]
    cores = len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    return {
        "clients": clients,
        "per_round": max(r["num_clients"] for r in rounds),
        "wall_s": wall,
        "steady_round_s": statistics.median(r["wall_s"] for r in rounds[1:] or rounds),
        "per_call_overhead_s": per_call_overhead(rounds, cores),
        "peak_rss_gib": peak / 2**30,
        "cores": cores,
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--clients",
        type=comma_separated(positive_int, "whole numbers >= 1"),
        default="10,1000,10000",
    )
    parser.add_argument("--per-round", type=positive_int, default=100)
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--rows-per-client", type=positive_int, default=20)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args(argv)
    check_assignments(parser, args.assignments)
    sizes = [int(c) for c in args.clients.split(",") if c]
    with tempfile.TemporaryDirectory(prefix="fedequity-scale-") as tmp:
        os.environ["FEDEQUITY_CACHE"] = str(Path(tmp) / "cache")
        results = [measure(n, args, Path(tmp)) for n in sizes]
    base = results[0]["per_call_overhead_s"]
    for r in results:
        r["per_call_overhead_ratio"] = r["per_call_overhead_s"] / base if base > 0 else float("nan")
        print(f"{r['clients']:>6} clients, {r['per_round']:>4} per round: steady round "
              f"{r['steady_round_s']:6.1f} s, per-call overhead {r['per_call_overhead_s']:.3f} s "
              f"({r['per_call_overhead_ratio']:.2f}x the {results[0]['clients']}-client figure), "
              f"peak RSS {r['peak_rss_gib']:.2f} GiB")  # fmt: skip
    write_result("scale", results)
    return results


if __name__ == "__main__":
    main()
