"""``fedequity run [EXPERIMENT.toml] [--set key=value …]`` (or ``python -m simulations``),
``evaluate``, ``evidence`` and ``bench``."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launch.signals import Interrupted, signals_raise
from simulations.cli_types import positive_int

if TYPE_CHECKING:  # the modules themselves load on use: --help and config errors stay fast
    from simulations.evidence import Cell, Grid
    from simulations.experiment import Experiment

EVIDENCE_DIR = Path(__file__).parent / "experiments" / "evidence"
# The console script (pyproject's [project.scripts]) or `python -m simulations`.
PROG = "fedequity" if Path(sys.argv[0]).name == "fedequity" else "python -m simulations"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
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
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the stopped run in RUN_DIR from its last checkpoint (an experiment "
        "or --set, if given, must match its config)",
    )
    run.add_argument(
        "--engine",
        choices=("flower", "in-process"),
        default="flower",
        help="flower: `flwr run` on a private SuperLink with Ray (default); in-process: the "
        "same ServerApp and ClientApp called in this one process (the compute floor)",
    )
    evaluate = commands.add_parser(
        "evaluate", help="a finished run's reported model on its test set or another one"
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    evaluate.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="choose other test data: seed, dataset, data.*, synthetic.* "
        "(seed=999 synthetic.num-examples=40000 data.test-fraction=0.5: 20,000 fresh rows)",
    )
    evidence = commands.add_parser("evidence", help="run the evidence sweep and write the report")
    evidence.add_argument("grids", nargs="*", type=Path, help="grid TOMLs (default: all)")
    evidence.add_argument("--variants", help="comma-separated subset of variants")
    evidence.add_argument("--epsilons", help="comma-separated subset of ε (inf = no DP)")
    evidence.add_argument("--seeds", help="comma-separated subset of seeds")
    evidence.add_argument("--no-skew", action="store_true", help="skip the partition-skew cells")
    evidence.add_argument("--output-dir", type=Path, default=Path("outputs/evidence"))
    evidence.add_argument(
        "--docs",
        type=Path,
        help="where the report goes (default: OUTPUT_DIR/report; `--docs docs` publishes it)",
    )
    evidence.add_argument("--report-only", action="store_true", help="only rebuild the report")
    evidence.add_argument(
        "--in-process",
        action="store_true",
        help="run the cells in this process (the in-process engine: same results, no "
        "SuperLink or Ray start per cell)",
    )
    evidence.add_argument(
        "--jobs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="with --in-process: cells run at once, each in its own worker process "
        "(default: the number of cores)",
    )
    # Listed for --help only: main() hands `bench ARGS` to the benchmark's own parser.
    commands.add_parser(
        "bench", add_help=False, help="DP-SGD cost per step (simulations/benchmarks/dp_cost.py)"
    )
    return parser


def _subset(text: str | None, kind: type, valid: set, flag: str) -> set | None:  # type: ignore[type-arg]
    if text is None:
        return None
    try:
        values = {kind(v) for v in text.split(",")}  # float("inf") is inf
    except ValueError:
        what = "numbers" if kind is float else "whole numbers"
        raise ValueError(f"{flag} {text!r}: expected comma-separated {what}") from None
    if unknown := values - valid:
        shown = sorted(str(v) for v in valid)
        raise ValueError(f"{flag}: {sorted(map(str, unknown))} not in any grid; valid: {shown}")
    return values


def _filters(args: argparse.Namespace, grids: list[Grid]) -> dict[str, set | None]:  # type: ignore[type-arg]
    """The command-line filters as ``select`` takes them, checked against every grid."""
    every = [c for g in grids for c in g.cells]
    return {
        "variant": _subset(args.variants, str, {c.variant for c in every}, "--variants"),
        "epsilon": _subset(args.epsilons, float, {c.epsilon for c in every}, "--epsilons"),
        "seed": _subset(args.seeds, int, {c.seed for c in every}, "--seeds"),
    }


def _load_grids(paths: list[Path]) -> list[Grid]:
    from simulations.evidence import load_grid

    grids = [load_grid(path) for path in paths]
    names = [g.name for g in grids]
    if duplicated := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"grid name(s) {duplicated} used by more than one grid file: "
                         "cells are stored by name, so names must be unique")  # fmt: skip
    return grids


def _shown_path(path: Path) -> str:
    """``path`` relative to the repository root when it lies inside it."""
    root = EVIDENCE_DIR.resolve().parents[2]
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _reproduce(path: Path, cells: list[Cell], output_dir: Path) -> str:
    """A command that runs these cells of the grid at ``path`` again: the product of their
    variants, ε and seeds, so a report of a partial product reruns a superset."""
    from simulations.evidence import summary_path

    engines = {json.loads(summary_path(output_dir, c).read_text()).get("engine") for c in cells}
    epsilons = sorted({c.epsilon for c in cells})
    parts = [
        "evidence", _shown_path(path),
        "--variants", ",".join(sorted({c.variant for c in cells})),
        "--epsilons", ",".join("inf" if math.isinf(e) else f"{e:g}" for e in epsilons),
        "--seeds", ",".join(str(s) for s in sorted({c.seed for c in cells})),
    ]  # fmt: skip
    parts += ["--no-skew"] if all(c.skew is None for c in cells) else []
    parts += ["--in-process"] if "in-process" in engines else []
    return " ".join(["fedequity", *map(shlex.quote, parts), "--docs", "docs"])


def evidence_main(args: argparse.Namespace) -> int:
    """Run the selected cells of the named grids (default: all); then rebuild the report
    from every current cell of every grid, so a partial command never shrinks it below
    the cells stored under OUTPUT_DIR/cells."""
    from simulations.evidence import (
        current_and_stale,
        infeasible,
        run_cells,
        select,
        summary_path,
    )
    from simulations.report import load_summaries, write_report

    shipped = sorted(EVIDENCE_DIR.resolve().glob("*.toml"))
    to_run = [p.resolve() for p in args.grids] or shipped
    paths = list(dict.fromkeys([*shipped, *to_run]))
    grids = _load_grids(paths)
    filters = _filters(args, grids)
    selected: dict[Path, list[Cell]] = {}
    for path, grid in zip(paths, grids, strict=True):
        cells = list(select(grid.cells, **filters))
        selected[path] = [c for c in cells if c.skew is None] if args.no_skew else cells
    summaries: list[Path] = []
    commands: list[str] = []
    coverage: dict[str, tuple[int, int, int]] = {}
    for path, grid in zip(paths, grids, strict=True):
        if path in to_run and not args.report_only:
            run_cells(grid, selected[path], args.output_dir, in_process=args.in_process,
                      jobs=args.jobs)  # fmt: skip
        current, stale = current_and_stale(grid, grid.cells, args.output_dir)
        summaries += [summary_path(args.output_dir, c) for c in current]
        if outdated := [c for c in stale if c in selected[path]]:
            print(f"{grid.name}: {len(outdated)} cell(s) ran with another config than today's "
                  f"and are left out; run the sweep again to redo them: "
                  f"{', '.join(c.key for c in outdated)}", file=sys.stderr)  # fmt: skip
        impossible = infeasible(grid, [c for c in grid.cells if c not in current])
        for cell, reason in impossible.items():
            print(f"{cell.key}: cannot run: {reason}", file=sys.stderr)
        coverage[grid.name] = (len(current), len(grid.cells), len(impossible))
        if current:
            commands.append(_reproduce(path, current, args.output_dir))
    # Not docs/ by default: in a fresh clone (no cell summaries yet) a one-grid command
    # would replace the committed report with its few cells.
    docs = args.docs or args.output_dir / "report"
    report = write_report(load_summaries(summaries), docs, coverage, commands)
    print(report)
    return 0


def bench_main(argv: list[str]) -> int:
    """``bench [--steps N] [--set key=value …]``: the DP cost benchmark."""
    from simulations.benchmarks import dp_cost  # imports torch: only when asked

    dp_cost.main(argv, prog=f"{PROG} bench")
    return 0


def _participation_summary(experiment: Experiment) -> str | None:
    """The privacy plan's cost under partial participation, for the mean client size."""
    from task.data import load_splits  # loads datasets: only when a run is asked for
    from task.privacy_plan import participation_summary

    cfg = experiment.run_config
    full = cfg.fraction_train >= 1.0 and cfg.dp.planned_participations == 0
    if full or not cfg.dp.local or cfg.data.dataset == "hf":  # hf: the clients load it
        return None
    rows = len(load_splits(cfg.data, cfg.seed)["train"])
    return participation_summary(cfg, max(1, rows // experiment.federation["num-supernodes"]))


def run_main(args: argparse.Namespace) -> int:
    """Run one experiment; print its run directory."""
    from simulations.experiment import build_experiment, check_experiment
    from simulations.resume import resume_experiment

    try:
        if args.resume is not None:
            if args.output_dir is not None:
                raise ValueError("--output-dir: a resumed run stays in its RUN_DIR; drop it")
            experiment = resume_experiment(
                args.resume, args.experiment, args.assignments, supernodes=args.supernodes
            )
        else:  # the slow checks are run by `validate`: with Flower, while it starts
            experiment = build_experiment(
                args.experiment,
                args.assignments,
                supernodes=args.supernodes,
                output_dir=args.output_dir,
                check_slow=False,
            )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def validate() -> None:
        if args.resume is None:
            check_experiment(experiment)
        if summary := _participation_summary(experiment):
            print(summary)

    from simulations.runner import RunFailed, run_experiment

    try:
        if args.engine == "in-process":
            validate()
            from simulations.inprocess import run_in_process

            run_dir = run_in_process(experiment)[0]
        else:
            run_dir = run_experiment(experiment, verbose=args.verbose, validate=validate)
    except (ValueError, FileNotFoundError) as error:  # `validate` refused the experiment
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (RunFailed, RuntimeError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(run_dir)
    return 0


def evaluate_main(args: argparse.Namespace) -> int:
    """Print the run's reported model's metrics on the chosen test set as JSON."""
    from simulations.reevaluate import evaluate_run

    metrics = evaluate_run(args.run_dir.expanduser().resolve(), args.assignments)
    print(json.dumps(metrics, indent=2))
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["bench"]:
        return bench_main(argv[1:])
    args = _parser().parse_args(argv)
    checked = {"evidence": evidence_main, "evaluate": evaluate_main}.get(args.command)
    if checked is None:
        return run_main(args)
    try:
        return checked(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


INTERRUPTED = (
    "interrupted: every process of the run was stopped; its run directory, if it has one, is "
    "marked 'interrupted' in results.json: continue it with `run --resume RUN_DIR`"
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedequity`` and ``python -m simulations``.

    SIGTERM/SIGHUP unwind the stack (every ``finally`` stops the processes it started) and
    exit with 128 + the signal number, as death by that signal would.
    """
    try:
        with signals_raise():
            return _dispatch(sys.argv[1:] if argv is None else list(argv))
    except Interrupted as interrupted:  # SIGTERM/SIGHUP: the same line as Ctrl-C's
        print(INTERRUPTED, file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:  # every process of the run was stopped on the way out
        print(INTERRUPTED, file=sys.stderr)
        return 130


def cli() -> None:
    """The ``fedequity`` command: :func:`main`, then exit without the final collections.

    At exit, the interpreter's garbage collections walk every object that torch,
    transformers and datasets allocated: ~1 s of each command on two cores, to free memory
    the process is about to return anyway. ``gc.freeze()`` leaves those objects out of
    them; destructors and flushes that run by reference counting run as before.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    cli()
