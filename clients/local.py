"""A client's local state for one process: its partition, tokenizer and model, built once.

In simulation one Ray actor serves many nodes in turn, so the (small) encoded partitions
are cached per partition while the (possibly large) model is built once per process and
shared: every round starts by loading the global weights into it anyway.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from torch import nn
from transformers import PreTrainedTokenizerBase

from task.augment import public_pool, with_counterfactuals
from task.config import DataConfig, RunConfig
from task.data import Encoded, encode, group_names, load_partition, load_splits
from task.feature_cache import with_features
from task.model import build_for_run


@dataclass
class ClientRuntime:
    """What a client keeps between rounds in one process (rebuilt if the process restarts)."""

    model: nn.Module
    train: Encoded  # with its counterfactual variants under augment.method = counterfactual
    eval: Encoded
    groups: list[str]
    #: ``augment.method = synthesize``: the recipe's public examples to draw from
    public: Encoded | None = None
    #: index of the population's rarest training group (what a lying client claims)
    rarest_group: int = 0


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
    train = encode(local["train"], tokenizer, groups, max_length)
    if cfg.augment.counterfactual:
        train = with_counterfactuals(
            local["train"], train, cfg.augment, cfg.data.dataset, tokenizer=tokenizer,
            groups=groups, max_length=max_length, seed=cfg.seed + partition_id,
        )  # fmt: skip
    return ClientRuntime(
        model=model,
        train=with_features(train, cfg.model),
        eval=with_features(encode(local["eval"], tokenizer, groups, max_length), cfg.model),
        groups=groups,
        public=_public_examples(cfg, tuple(groups)) if cfg.augment.synthesize else None,
        rarest_group=_rarest_group(cfg.data, cfg.seed),
    )


@lru_cache(maxsize=2)
def _rarest_group(data: DataConfig, seed: int) -> int:
    """Index of the group with the fewest training rows in the whole set: once per process,
    not per client (a pass over every row: 2 s a call at 10,000 clients of 200,000 rows)."""
    splits = load_splits(data, seed)
    sizes = Counter(splits["train"]["group"])
    return group_names(splits).index(min(sizes, key=sizes.__getitem__))


@lru_cache(maxsize=1)
def _public_examples(cfg: RunConfig, groups: tuple[str, ...]) -> Encoded:
    """The recipe's public pool, encoded once per process (the same for every client)."""
    tokenizer, _ = _tokenizer_and_model(cfg)
    pool = public_pool(cfg.augment, cfg.data, cfg.seed, list(groups))
    return with_features(encode(pool, tokenizer, list(groups), cfg.model.max_length), cfg.model)
