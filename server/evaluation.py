"""Server-side evaluation of the global model on the held-out test set, per group."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from task.config import RunConfig
from task.data import Encoded, encode, group_names, label_names, load_splits
from task.fairness import counterfactual_flip_rate, group_report
from task.feature_cache import with_features
from task.inference import predict
from task.model import build_for_run, exchanged_state, load_exchanged


@dataclass
class GlobalEvaluator:
    """The global model and test set, built once per run."""

    model: nn.Module
    test: Encoded
    groups: list[str]

    def initial_weights(self) -> dict[str, torch.Tensor]:
        return exchanged_state(self.model)

    def evaluate(self, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The contract's ``global`` metrics for ``weights``."""
        load_exchanged(self.model, weights)
        predictions, loss = predict(self.model, self.test)
        names = [self.groups[i] for i in self.test.groups.tolist()]
        report = group_report(self.test.labels.numpy(), predictions.numpy(), names, loss=loss)
        sets = self.test.sets
        flips = None if sets is None else counterfactual_flip_rate(predictions.numpy(), sets)
        return report | {"counterfactual_flip_rate": flips}


def build_evaluator(cfg: RunConfig, test_from: RunConfig | None = None) -> GlobalEvaluator:
    """The run's model and tokenizer (built from ``cfg``'s data, as the clients build
    them) with the test split of ``test_from``'s data (default: ``cfg``'s)."""
    splits = load_splits(cfg.data, cfg.seed)
    tokenizer, model = build_for_run(cfg, splits)
    if test_from is not None:
        labels = label_names(splits)
        splits = load_splits(test_from.data, test_from.seed)
        if label_names(splits) != labels:
            raise ValueError(
                f"the test data's labels {label_names(splits)} are not the run's {labels}"
            )
    groups = group_names(splits)
    test = with_features(encode(splits["test"], tokenizer, groups, cfg.model.max_length), cfg.model)
    return GlobalEvaluator(model=model, test=test, groups=groups)
