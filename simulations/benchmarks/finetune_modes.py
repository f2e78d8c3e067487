"""What one private client round costs per fine-tuning mode, and what the cache saves.

    python simulations/benchmarks/finetune_modes.py [--examples 2000] [--modes head,top-layers,lora]

On one client of ``--examples`` synthetic rows, with the pretrained default model: the
time to build the frozen-feature cache (``head``/``top-layers``), a cache hit, and one
DP-SGD round (one local epoch, every default) per mode, measured side by side in one run.
``full`` and ``lora`` run the whole encoder at every step, so they have no cache.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import numpy as np
import torch

from clients.private_round import DPRandomness, run_private_round
from simulations.benchmarks.harness import check_assignments
from simulations.cli_types import positive_int
from task.config import RunConfig
from task.data import encode, group_counts, group_names, label_names, load_splits
from task.feature_cache import with_features
from task.model import build_model, load_tokenizer

T = TypeVar("T")
MODES = ("head", "top-layers", "lora", "full")


def _seconds(action: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    value = action()
    return time.perf_counter() - start, value


def measure_mode(cfg: RunConfig, mode: str, examples: int) -> dict[str, float]:
    model_cfg = replace(cfg.model, finetune=mode)
    splits = load_splits(cfg.data, cfg.seed)
    rows = splits["train"].select(range(min(examples, len(splits["train"]))))
    groups = group_names(splits)
    tokenizer = load_tokenizer(model_cfg, rows[:]["text"])
    data = encode(rows, tokenizer, groups, model_cfg.max_length)
    cold, data = _seconds(lambda: with_features(data, model_cfg))
    warm, _ = _seconds(
        lambda: with_features(encode(rows, tokenizer, groups, model_cfg.max_length), model_cfg)
    )
    model = build_model(model_cfg, tokenizer, len(label_names(splits)), seed=cfg.seed)
    run_cfg = replace(cfg, model=model_cfg)
    counts = group_counts(data, len(groups))
    round_s, _ = _seconds(
        lambda: run_private_round(
            run_cfg, model, data, counts, ledger_state={},
            randomness=DPRandomness(cfg.seed),
        )
    )  # fmt: skip
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    cached = model_cfg.uses_feature_cache
    return {"cache_build_s": cold if cached else np.nan, "cache_hit_s": warm if cached else np.nan,
            "round_s": round_s, "trained_params": float(trained)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--examples", type=positive_int, default=2000)
    parser.add_argument("--modes", default="head,top-layers,lora")
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args()
    cfg = check_assignments(parser, args.assignments)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := sorted(set(modes) - set(MODES)):
        parser.error(f"--modes: unknown {unknown}; valid: {', '.join(MODES)}")
    print(f"model={cfg.model.name} examples={args.examples} batch={cfg.train.batch_size} "
          f"train-layers={cfg.model.train_layers} threads={torch.get_num_threads()}")  # fmt: skip
    # A cache of its own, so the cold build is measured and the user's cache is not touched.
    with tempfile.TemporaryDirectory(prefix="fedequity-bench-") as cache:
        os.environ["FEDEQUITY_CACHE"] = cache
        results = {mode: measure_mode(cfg, mode, args.examples) for mode in modes}
    slowest = max(r["round_s"] for r in results.values())
    for mode, r in results.items():
        print(f"{mode:11s} trained {r['trained_params']:>10,.0f} params  "
              f"cache build {r['cache_build_s']:6.1f} s  hit {r['cache_hit_s']:5.2f} s  "
              f"round {r['round_s']:7.2f} s  "
              f"({slowest / r['round_s']:5.1f}× faster than the slowest)")  # fmt: skip


if __name__ == "__main__":
    main()
