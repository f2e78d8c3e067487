"""How far a fine-tuning mode can take each group without DP or federation: its ceiling.

    python simulations/benchmarks/mode_ceiling.py [--seeds 1,2,3] [--modes head,top-layers]
                                                  [--set key=value …]

For each seed, the mode's trained part (on the cached frozen features, as in a run) is fit
centrally to the whole training split of `make run`'s data (10,000 synthetic rows) with Adam,
no DP and no clients; it prints test accuracy, population and per group, as the mean over
the seeds. No aggregation weighting under DP can lift a group above what the model can
learn of it here, so this tells which mode leaves a fair strategy room to work.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from statistics import mean

import torch
from torch import nn

from simulations.benchmarks.harness import check_assignments
from simulations.cli_types import comma_separated
from task.config import RunConfig
from task.data import Encoded, encode, group_names, label_names, load_splits
from task.feature_cache import with_features
from task.inference import logits_of, predict
from task.model import build_model, load_tokenizer

#: (epochs, Adam learning rate) per mode; a trained layer fits the rows in far fewer epochs
#: than the head (not tuned further: a ceiling that is low by a little still bounds)
SCHEDULE = {"head": (60, 1e-3), "top-layers": (8, 3e-4)}
BATCH = 128


def fit(model: nn.Module, data: Encoded, epochs: int, lr: float, seed: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    if data.features is None:
        raise ValueError("mode_ceiling needs a cached-feature mode (head or top-layers)")
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.labels), generator=generator)
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            optimizer.zero_grad()
            logits = logits_of(model, data.features[rows], data.attention_mask[rows])
            nn.functional.cross_entropy(logits, data.labels[rows]).backward()
            optimizer.step()


def ceiling(cfg: RunConfig, mode: str) -> dict[str, float]:
    """Test accuracy, population (``all``) and per group, of ``mode`` fit centrally."""
    model_cfg = replace(cfg.model, finetune=mode)
    splits = load_splits(cfg.data, cfg.seed)
    groups = group_names(splits)
    tokenizer = load_tokenizer(model_cfg, splits["train"][:]["text"])
    train, test = (
        with_features(encode(splits[s], tokenizer, groups, model_cfg.max_length), model_cfg)
        for s in ("train", "test")
    )
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tokenizer, len(label_names(splits)), seed=cfg.seed)
    epochs, lr = SCHEDULE[mode]
    fit(model, train, epochs, lr, cfg.seed)
    predictions, _ = predict(model, test)
    correct = (predictions == test.labels).double()
    per_group = {name: float(correct[test.groups == i].mean()) for i, name in enumerate(groups)}
    return {"all": float(correct.mean()), **per_group}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=comma_separated(int, "whole numbers"), default="1,2,3")
    parser.add_argument("--modes", default="head,top-layers")
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args()
    cfg = check_assignments(parser, args.assignments, {"synthetic.num-examples": 10_000})
    seeds = [int(s) for s in args.seeds.split(",")]
    for mode in args.modes.split(","):
        if mode not in SCHEDULE:
            parser.error(f"--modes: {mode!r}; valid: {', '.join(SCHEDULE)}")
        start = time.perf_counter()
        runs = [ceiling(replace(cfg, seed=seed), mode) for seed in seeds]
        means = {key: mean(run[key] for run in runs) for key in runs[0]}
        shown = "  ".join(f"{key} {value:.3f}" for key, value in means.items())
        print(f"{mode:11s} seeds {args.seeds}: {shown}  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
