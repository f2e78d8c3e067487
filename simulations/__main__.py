"""``python -m simulations run [EXPERIMENT.toml] [--set key=value …]`` and friends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from simulations.experiment import build_experiment
from simulations.runner import RunFailed, run_experiment


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one experiment with `flwr run`")
    run.add_argument("experiment", nargs="?", type=Path, help="experiment TOML (overrides)")
    run.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a run-config key; values typed as in TOML (strategy=fedavg, seed=3)",
    )
    run.add_argument("--supernodes", type=int, help="number of simulated clients")
    run.add_argument("--output-dir", help="where run directories go (default: outputs)")
    run.add_argument("--verbose", action="store_true", help="show all Flower output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        experiment = build_experiment(
            args.experiment,
            args.assignments,
            supernodes=args.supernodes,
            output_dir=args.output_dir,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        run_dir = run_experiment(experiment, verbose=args.verbose)
    except (RunFailed, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
