"""Outputs of the frozen encoder part, computed once and cached in memory and on disk.

A round of ``head``/``top-layers`` fine-tuning then costs only the trained part: on two
cores a MiniLM forward is ~10 ms a sentence, more than the DP step of a small head. The
disk key hashes everything the features depend on — the model's weights, the split point
and the token ids and attention mask themselves (so the texts, the tokenizer and
``model.max-length``) — so any change of input is a miss, never a stale hit. The files sit
under ``FEDEQUITY_CACHE`` on the machine that computed them; nothing here is sent. Each
write trims the folder to ``FEDEQUITY_FEATURE_CACHE_GB``, least recently used first.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from task.cache import cache_root, feature_cache_limit, touch, trim, write_atomically
from task.config import ModelConfig
from task.data import Encoded
from task.encoders import FrozenBottom, encoder_config, model_digest, resolve_model_name
from task.model import frozen_bottom

BATCH = 512
# Part of every key: bump it when what the frozen part computes changes (pooling, masking),
# so no file of the old code is read as the new one's.
FEATURE_FORMAT = 1


def cache_dir() -> Path:
    return cache_root() / "features"


def feature_key(
    model_digest: str, frozen_layers: int, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> str:
    prefix = f"v{FEATURE_FORMAT}:{model_digest}:{frozen_layers}:{tuple(input_ids.shape)}"
    digest = hashlib.sha256(prefix.encode())
    digest.update(input_ids.to(torch.int64).contiguous().numpy().tobytes())
    digest.update(attention_mask.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def compute_features(
    bottom: FrozenBottom, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The frozen part's outputs for every row, in batches, without gradients.

    Every batch keeps the full padded length, so a cached row equals a fresh forward
    exactly (cutting batches to their longest row saved only ~10 % and moved values ~1e-6).
    """
    width = bottom.config.hidden_size
    shape = (0, width) if bottom.pooled else (0, input_ids.shape[1], width)
    parts = [
        bottom(input_ids[start : start + BATCH], attention_mask[start : start + BATCH])
        for start in range(0, len(input_ids), BATCH)
    ]
    # clone: outside inference mode, so autograd may save the features for backward
    return torch.cat(parts).clone() if parts else torch.zeros(shape)


def cached_features(
    bottom: Callable[[], FrozenBottom],
    frozen_layers: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    model_digest: str,
) -> torch.Tensor:
    """Features of the rows from disk, else computed by ``bottom()`` (and then stored).

    ``bottom`` is called only on a miss: the key needs just the weights' hash and the
    number of frozen layers, so a hit never loads the encoder. The memory layer is the
    caller's: the client runtime and the server's evaluator keep the featurised data for
    the life of their process.
    """
    key = feature_key(model_digest, frozen_layers, input_ids, attention_mask)
    path = cache_dir() / f"{key}.pt"
    features: torch.Tensor | None = None
    if path.exists():
        try:
            features = torch.load(path, weights_only=True)
        except Exception:  # a truncated or corrupt file is recomputed, never trusted
            features = None
    if features is not None and features.shape[0] == input_ids.shape[0]:
        touch(path)
        return features
    features = compute_features(bottom(), input_ids, attention_mask)
    write_atomically(path, lambda staging: torch.save(features, staging))
    trim(path.parent, feature_cache_limit(), keep=path)
    return features


def with_features(encoded: Encoded, cfg: ModelConfig) -> Encoded:
    """``encoded`` (and its variants) with the frozen part's outputs attached
    (``head``/``top-layers`` only)."""
    if not cfg.uses_feature_cache:
        return encoded
    # A hit needs only the config and the weights' hash: a process that only trains the
    # head then never imports transformers' modeling code.
    source = resolve_model_name(cfg.name)
    digest = model_digest(source)
    features = cached_features(
        lambda: frozen_bottom(cfg, digest)[0],
        encoder_config(source).num_hidden_layers - cfg.trained_layers,
        encoded.input_ids,
        encoded.attention_mask,
        model_digest=digest,
    )
    variants = None if encoded.variants is None else with_features(encoded.variants, cfg)
    return dataclasses.replace(encoded, features=features, variants=variants)
