"""A client's local state for one process: its partition, tokenizer and model, built once.

In simulation one Ray actor serves many nodes in turn, so the (small) encoded partitions
are cached per partition while the (possibly large) model is built once per process and
shared: every round starts by loading the global weights into it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from torch import nn
from transformers import PreTrainedTokenizerBase

from task.config import RunConfig
from task.data import Encoded, encode, group_names, load_partition, load_splits
from task.feature_cache import with_features
from task.model import build_for_run


@dataclass
class ClientRuntime:
    """What a client keeps between rounds in one process (rebuilt if the process restarts)."""

    model: nn.Module
    train: Encoded
    eval: Encoded
    groups: list[str]


@lru_cache(maxsize=1)
def _tokenizer_and_model(cfg: RunConfig) -> tuple[PreTrainedTokenizerBase, nn.Module]:
    return build_for_run(cfg, load_splits(cfg.data, cfg.seed))


@lru_cache(maxsize=64)
def client_runtime(cfg: RunConfig, partition_id: int, num_partitions: int) -> ClientRuntime:
    """This client's encoded partition and the process's model (cached per process)."""
    splits = load_splits(cfg.data, cfg.seed)
    groups = group_names(splits)
    local = load_partition(
        cfg.data,
        cfg.partition,
        partition_id=partition_id,
        num_partitions=num_partitions,
        seed=cfg.seed,
    )
    tokenizer, model = _tokenizer_and_model(cfg)
    max_length = cfg.model.max_length
    return ClientRuntime(
        model=model,
        train=with_features(encode(local["train"], tokenizer, groups, max_length), cfg.model),
        eval=with_features(encode(local["eval"], tokenizer, groups, max_length), cfg.model),
        groups=groups,
    )
