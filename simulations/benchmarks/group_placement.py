"""Where a group's training rows live across the clients of a run's partition.

    python simulations/benchmarks/group_placement.py [EXPERIMENT.toml] [--seeds 1,2,3]
                                                     [--group west] [--set key=value …]

Why ask: the fair default weights *clients* by the rare-group records they hold, which can
single out a client the rare group dominates but not the rare rows of a mixed client. Per
seed this prints the group's training rows, the share of them on clients where the group
makes up at least ``--concentrated`` of the rows, the row-weighted mean of the group's local
share, and the largest holders (client: group rows of client rows). docs/fairness.md tests
whether that placement explains the fair default's gap change (on unseen seeds it did not).
No training: it only draws the partitions, as every client of a run does.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from simulations.cli_types import comma_separated
from simulations.experiment import build_experiment
from task.config import RunConfig, load_defaults, parse_run_config
from task.data import load_partition

DEFAULT_EXPERIMENT = Path("simulations/experiments/default.toml")


@dataclass(frozen=True)
class Placement:
    """One group's training rows over the clients of one partition."""

    rows: int
    concentrated_share: float
    mean_local_share: float
    #: (client, the group's rows, all its rows), the largest holders first
    holders: list[tuple[int, int, int]]


def placement(cfg: RunConfig, num_clients: int, group: str, concentrated: float) -> Placement:
    """Where ``group``'s rows of the clients' local training splits lie."""
    clients = []
    for client in range(num_clients):
        train = load_partition(
            cfg.data, cfg.partition, partition_id=client, num_partitions=num_clients,
            seed=cfg.seed,
        )["train"]  # fmt: skip
        clients.append((client, Counter(train[cfg.data.group_column])[group], len(train)))
    rows = sum(held for _, held, _ in clients)
    if rows == 0:
        raise ValueError(f"--group {group!r}: no training row of it on any client")
    on_concentrated = sum(held for _, held, size in clients if held >= concentrated * size)
    local_share = sum(held * held / size for _, held, size in clients) / rows
    holders = sorted((c for c in clients if c[1]), key=lambda c: -c[1])
    return Placement(rows, on_concentrated / rows, local_share, holders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", type=Path, default=DEFAULT_EXPERIMENT)
    parser.add_argument("--seeds", type=comma_separated(int, "whole numbers"), default="1,2,3")
    parser.add_argument("--group", default="west")
    parser.add_argument("--concentrated", type=float, default=0.3)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args()
    if not 0 < args.concentrated <= 1:
        parser.error(f"--concentrated {args.concentrated}: valid: a share in (0, 1]")
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        experiment = build_experiment(args.experiment, args.assignments, check_slow=False)
        cfgs = [parse_run_config(load_defaults() | experiment.overrides | {"seed": seed})
                for seed in seeds]  # fmt: skip
    except (OSError, ValueError) as error:
        parser.error(str(error))
    num_clients = experiment.federation["num-supernodes"]
    for seed, cfg in zip(seeds, cfgs, strict=True):
        try:
            found = placement(cfg, num_clients, args.group, args.concentrated)
        except ValueError as error:
            parser.error(str(error))
        largest = ", ".join(f"{c}: {held} of {size}" for c, held, size in found.holders[:3])
        print(
            f"seed {seed}: {args.group} {found.rows} rows, {found.concentrated_share:.2f} on "
            f"clients >= {args.concentrated:.0%} {args.group}, mean local share "
            f"{found.mean_local_share:.2f}; largest holders {largest}"
        )


if __name__ == "__main__":
    main()
