"""What DP-SGD costs per step: median step time with DP / without, side by side in one run.

    fedequity bench [--steps 30] [--batch-size B] [--set key=value …]
    python simulations/benchmarks/dp_cost.py [same options]

Both variants train the same default model on the same batches, alternating step by step
so that machine noise hits both alike; prints the medians and the ratio for full
fine-tuning and for LoRA.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from clients.dp_sgd import make_private
from clients.training import make_loader, per_example_loss
from simulations.benchmarks.harness import check_assignments, interleaved_medians
from simulations.cli_types import positive_int
from task.config import ModelConfig, RunConfig
from task.data import encode, group_names, label_names, load_splits
from task.model import build_model, load_tokenizer


def _steppers(cfg: RunConfig, model_cfg: ModelConfig, batch_size: int):  # type: ignore[no-untyped-def]
    splits = load_splits(cfg.data, cfg.seed)
    tokenizer = load_tokenizer(cfg.model, splits["train"][:]["text"])
    data = encode(splits["train"], tokenizer, group_names(splits), cfg.model.max_length)
    batch = next(iter(make_loader(data, torch.ones(len(data)), batch_size, seed=0)))
    steppers = {}
    for private in (False, True):
        model = build_model(model_cfg, tokenizer, len(label_names(splits)), seed=cfg.seed)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = cfg.train.make_optimizer(params)
        target = model
        if private:
            loader = make_loader(data, torch.ones(len(data)), batch_size, seed=0)
            target, optimizer, _ = make_private(
                model, optimizer, loader, noise_multiplier=1.0,
                max_grad_norm=cfg.dp.max_grad_norm, grad_sample_mode=cfg.dp.grad_sample_mode,
            )  # fmt: skip

        def step(target=target, optimizer=optimizer) -> float:  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            optimizer.zero_grad()
            losses, _ = per_example_loss(target, batch)
            losses.mean().backward()
            optimizer.step()
            return time.perf_counter() - start

        steppers["dp" if private else "plain"] = step
    return steppers


def measure(cfg: RunConfig, model_cfg: ModelConfig, *, steps: int, batch_size: int) -> dict:
    medians = interleaved_medians(_steppers(cfg, model_cfg, batch_size), steps=steps, warmup=3)
    plain, dp = medians["plain"], medians["dp"]
    return {"plain_ms": plain * 1e3, "dp_ms": dp * 1e3, "ratio": dp / plain}


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse ``argv`` (default: the command line), measure, print the table."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--steps", type=positive_int, default=30)
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lora-r", type=positive_int, default=8)
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = check_assignments(parser, args.assignments)
    torch.set_num_threads(1)
    batch_size = args.batch_size or cfg.train.batch_size
    m = cfg.model
    print(
        f"model={m.name} hidden={m.hidden_size} layers={m.num_layers} batch={batch_size} "
        f"steps={args.steps} grad-sample-mode={cfg.dp.grad_sample_mode}"
    )
    for label, model_cfg in (
        ("full", replace(cfg.model, finetune="full")),
        (f"lora-r{args.lora_r}", replace(cfg.model, finetune="lora", lora_r=args.lora_r)),
    ):
        r = measure(cfg, model_cfg, steps=args.steps, batch_size=batch_size)
        print(f"{label:10s} plain {r['plain_ms']:7.2f} ms  dp {r['dp_ms']:7.2f} ms  "
              f"ratio dp/plain {r['ratio']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
