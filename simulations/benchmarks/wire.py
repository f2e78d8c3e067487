"""Bytes a client sends per round, per fine-tuning mode of the same pretrained model.

    python simulations/benchmarks/wire.py [--set key=value …]

What travels is what :func:`task.model.exchanged_state` returns (the trained parameters:
the whole model, the LoRA adapters and head, or the head and top layers), exactly what a
reply's ArrayRecord carries. Written to ``outputs/bench/wire.json`` with the ratio of
``full`` to each mode.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from simulations.benchmarks.harness import check_assignments, write_result
from task.data import label_names, load_splits
from task.model import build_model, exchanged_state, load_tokenizer

MODES = ("full", "lora", "top-layers", "head")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", dest="assignments", action="append", default=[])
    args = parser.parse_args(argv)
    cfg = check_assignments(parser, args.assignments)
    splits = load_splits(cfg.data, cfg.seed)
    tokenizer = load_tokenizer(cfg.model, splits["train"][:]["text"])
    sent: dict[str, float] = {}
    for mode in MODES:
        model = build_model(replace(cfg.model, finetune=mode), tokenizer,
                            len(label_names(splits)), seed=cfg.seed)  # fmt: skip
        state = exchanged_state(model)
        sent[mode] = float(sum(t.numel() * t.element_size() for t in state.values()))
    ratios = {f"full_over_{mode}": sent["full"] / sent[mode] for mode in MODES}
    for mode in MODES:
        print(f"{mode:11s} {sent[mode] / 1e6:10.3f} MB per client per round "
              f"(full / this = {ratios[f'full_over_{mode}']:7.1f}x)")  # fmt: skip
    result = {"model": cfg.model.name, "bytes": sent, **ratios,
              "wire_ratio_min": sent["full"] / min(sent.values())}  # fmt: skip
    write_result("wire", result)
    return result


if __name__ == "__main__":
    main()
