"""Running the model on encoded examples: its inputs, and predictions with the loss."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from task.data import Encoded


def _innermost(model: nn.Module) -> Any:
    """The model under Opacus' and peft's wrappers."""
    inner: Any = model
    while hasattr(inner, "_module"):  # opacus GradSampleModule
        inner = inner._module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    return inner


def _forward_arguments(model: nn.Module) -> set[str]:
    """Arguments of the innermost model's ``forward``."""
    return set(inspect.signature(_innermost(model).forward).parameters)


def logits_of(model: nn.Module, inputs: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits for a batch: token ids for a whole classifier, cached features for a
    :class:`~task.encoders.TrainedTop` (``head``/``top-layers``)."""
    if getattr(_innermost(model), "takes_features", False):
        return model(inputs, attention_mask)
    return model(**model_inputs(model, inputs, attention_mask)).logits


def takes_row_axis(model: nn.Module) -> bool:
    """Whether the model maps (batch, rows, …) inputs row by row, only through layers whose
    per-sample gradients sum over the extra axis (augmentation multiplicity's fast path)."""
    return bool(getattr(_innermost(model), "takes_row_axis", False))


def model_inputs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Inputs with per-sample ``position_ids``/``token_type_ids`` of shape (batch, seq_len).

    Hugging Face models otherwise broadcast a (1, seq_len) buffer, which Opacus' per-sample
    gradient hooks read as a batch of one.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    accepted = _forward_arguments(model)
    batch, length = input_ids.shape
    if "position_ids" in accepted:
        inputs["position_ids"] = torch.arange(length).expand(batch, length)
    if "token_type_ids" in accepted:
        inputs["token_type_ids"] = torch.zeros_like(input_ids)
    return inputs


@torch.no_grad()
def predict(model: nn.Module, data: Encoded, batch_size: int = 256) -> tuple[torch.Tensor, float]:
    """Predicted class ids and mean cross-entropy loss over ``data``."""
    model.eval()
    predictions, total_loss = [], 0.0
    for start in range(0, len(data), batch_size):
        inputs = data.model_input[start : start + batch_size]
        mask = data.attention_mask[start : start + batch_size]
        logits = logits_of(model, inputs, mask)
        labels = data.labels[start : start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        predictions.append(logits.argmax(-1))
    return torch.cat(predictions), total_loss / max(len(data), 1)
