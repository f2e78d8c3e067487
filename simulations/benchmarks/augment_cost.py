"""What K counterfactual variants per record cost a DP-SGD step: median step time with K
variants / without, side by side in one run (augmentation multiplicity, task/augment.py).

    python simulations/benchmarks/augment_cost.py [--k 1,3,6] [--modes head,top-layers]
                                                  [--steps 10] [--set key=value …]

Each record of a batch of ``train.batch-size`` gets K real variants (the record's own
features repeated: the cost depends on the rows, not on their text); the K variants
alternate step by step with K = 0 so that machine noise hits all alike. Writes
``outputs/bench/augment_cost.json``.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from clients.dp_sgd import make_private
from clients.local import client_runtime
from clients.training import batch_loss, make_loader
from simulations.benchmarks.harness import check_assignments, interleaved_medians, write_result
from simulations.cli_types import comma_separated, positive_int
from task.config import RunConfig


def _with_variants(batch: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    if k == 0:
        return batch
    inputs, mask = batch[0], batch[1]
    repeat = (1, k) + (1,) * (inputs.dim() - 1)
    return [*batch, inputs[:, None].repeat(repeat), mask[:, None].repeat(1, k, 1),
            torch.ones(len(inputs), k, dtype=torch.bool)]  # fmt: skip


def _stepper(cfg: RunConfig, k: int) -> Callable[[], float]:
    client_runtime.cache_clear()
    runtime = client_runtime(cfg, 0, 1)
    data = runtime.train
    batch = next(iter(make_loader(data, torch.ones(len(data)), cfg.train.batch_size, seed=0)))
    batch = _with_variants(batch, k)
    model = copy.deepcopy(runtime.model)  # one process-wide model; Opacus hooks it once
    model.train()
    optimizer = cfg.train.make_optimizer([p for p in model.parameters() if p.requires_grad])
    loader = make_loader(data, torch.ones(len(data)), cfg.train.batch_size, seed=0)
    module, dp_optimizer, _ = make_private(
        model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=cfg.dp.max_grad_norm,
        grad_sample_mode=cfg.dp.grad_sample_mode,
    )  # fmt: skip

    def step() -> float:
        start = time.perf_counter()
        dp_optimizer.zero_grad()
        loss, _, _ = batch_loss(module, dp_optimizer, batch, "off", cfg.augment.variant_loss)
        loss.backward()
        dp_optimizer.step()
        return time.perf_counter() - start

    return step


def measure(cfg: RunConfig, ks: list[int], steps: int) -> dict[str, float]:
    steppers = {k: _stepper(cfg, k) for k in [0, *ks]}
    medians = interleaved_medians(steppers, steps=steps, warmup=2)
    base = medians[0]
    return {"k0_ms": base * 1e3} | {f"k{k}_ratio": medians[k] / base for k in ks}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--k", type=comma_separated(positive_int, "whole numbers >= 1"), default="1,3,6"
    )
    parser.add_argument("--modes", default="head,top-layers")
    parser.add_argument("--steps", type=positive_int, default=10)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args(argv)
    base = check_assignments(parser, args.assignments, {"synthetic.num-examples": 2000})
    torch.set_num_threads(1)
    ks = [int(k) for k in args.k.split(",")]
    print(f"batch={base.train.batch_size} records, K real variants each: "
          "DP step time with K / without")  # fmt: skip
    results = {}
    for mode in args.modes.split(","):
        cfg = replace(base, model=replace(base.model, finetune=mode))
        results[mode] = measure(cfg, ks, args.steps)
        ratios = "  ".join(f"K={k} {results[mode][f'k{k}_ratio']:.2f}x" for k in ks)
        print(f"{mode:11s} K=0 {results[mode]['k0_ms']:7.2f} ms  {ratios}")
    write_result("augment_cost", results)


if __name__ == "__main__":
    main()
