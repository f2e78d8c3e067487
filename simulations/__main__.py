"""``python -m simulations run [EXPERIMENT.toml] [--set key=value …]`` and friends."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from simulations.evidence import current_and_stale, load_grid, run_cells, select, summary_path
from simulations.experiment import build_experiment
from simulations.report import load_summaries, write_report
from simulations.runner import RunFailed, run_experiment

EVIDENCE_DIR = Path(__file__).parent / "experiments" / "evidence"


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
    evidence = commands.add_parser("evidence", help="run the evidence sweep and write the report")
    evidence.add_argument("grids", nargs="*", type=Path, help="grid TOMLs (default: all)")
    evidence.add_argument("--variants", help="comma-separated subset of variants")
    evidence.add_argument("--epsilons", help="comma-separated subset of ε (inf = no DP)")
    evidence.add_argument("--seeds", help="comma-separated subset of seeds")
    evidence.add_argument("--no-skew", action="store_true", help="skip the partition-skew cells")
    evidence.add_argument("--output-dir", type=Path, default=Path("outputs/evidence"))
    evidence.add_argument("--docs", type=Path, default=Path("docs"))
    evidence.add_argument("--report-only", action="store_true", help="only rebuild the report")
    return parser


def _subset(text: str | None, kind: type) -> set | None:  # type: ignore[type-arg]
    if text is None:
        return None
    return {kind("inf") if kind is float and v == "inf" else kind(v) for v in text.split(",")}


def evidence_main(args: argparse.Namespace) -> int:
    grids = args.grids or sorted(EVIDENCE_DIR.glob("*.toml"))
    summaries: list[Path] = []
    coverage: dict[str, tuple[int, int]] = {}
    for path in grids:
        grid = load_grid(path)
        cells = list(select(
            grid.cells, variant=_subset(args.variants, str), epsilon=_subset(args.epsilons, float),
            seed=_subset(args.seeds, int),
        ))  # fmt: skip
        if args.no_skew:
            cells = [c for c in cells if c.skew is None]
        if not args.report_only:
            run_cells(grid, cells, args.output_dir)
        current, stale = current_and_stale(grid, grid.cells, args.output_dir)
        selected = set(cells)
        summaries += [summary_path(args.output_dir, c) for c in current if c in selected]
        if outdated := [c for c in stale if c in selected]:
            print(f"{grid.name}: {len(outdated)} cell(s) ran with another config than today's "
                  f"and are left out; run the sweep again to redo them: "
                  f"{', '.join(c.key for c in outdated)}", file=sys.stderr)  # fmt: skip
        coverage[grid.name] = (len(current), len(grid.cells))
    report = write_report(load_summaries(summaries), args.docs, coverage)
    print(report)
    return 0


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds the stack, so every `finally` stops the processes it started.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = _parser().parse_args(argv)
    if args.command == "evidence":
        try:
            return evidence_main(args)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
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
