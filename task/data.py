"""Datasets, partitions and tensors: the one entry point server and clients share.

Every dataset arrives as a ``DatasetDict`` with ``train``/``test`` splits and the columns
``text``, ``label`` (ClassLabel) and ``group`` (str). Clients partition ``train`` with
``flwr-datasets`` partitioners; the server evaluates on ``test``, which keeps the
population's group shares.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase

from task import recipes, sources
from task.config import DataConfig, PartitionConfig
from task.imports import skipping_submodule
from task.sources import SET_COLUMN
from task.synthetic import load_synthetic

# flwr_datasets' __init__ imports its plotting helpers (seaborn, scipy.stats, matplotlib).
# That costs ~1 s in every process that partitions, Ray actors included, and the
# partitioners never use them.
with skipping_submodule("flwr_datasets.visualization"):
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

MIN_PARTITION_SIZE = 10


@lru_cache(maxsize=2)
def load_splits(cfg: DataConfig, seed: int) -> DatasetDict:
    """Load ``cfg.dataset`` as train/test splits (cached per process).

    With ``data.group-shares`` the training split is subsampled (seeded) to those group
    shares; the test split is untouched.
    """
    splits = _load_raw_splits(cfg, seed)
    if cfg.group_shares:
        splits["train"] = subsample_to_shares(splits["train"], dict(cfg.group_shares), seed)
    return splits


def subsample_to_shares(train: Dataset, shares: dict[str, float], seed: int) -> Dataset:
    """The largest seeded subsample of ``train`` whose group shares are ``shares``."""
    groups = np.asarray(train["group"])
    present = set(groups.tolist())
    if set(shares) != present:
        raise ValueError(
            f"run-config key 'data.group-shares' must name every training group exactly: "
            f"missing {sorted(present - set(shares))}, unknown {sorted(set(shares) - present)}"
        )
    available = {g: int((groups == g).sum()) for g in shares}
    total = min(available[g] / share for g, share in shares.items())
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for group, share in shares.items():
        rows = np.flatnonzero(groups == group)
        take = max(1, min(len(rows), round(share * total)))
        keep.extend(rng.choice(rows, size=take, replace=False).tolist())
    return train.select(sorted(keep))


def _load_raw_splits(cfg: DataConfig, seed: int) -> DatasetDict:
    columns = {
        "text_column": cfg.text_column,
        "label_column": cfg.label_column,
        "group_column": cfg.group_column,
    }
    if cfg.dataset == "synthetic":
        return load_synthetic(cfg.synthetic_examples, test_fraction=cfg.test_fraction, seed=seed)
    if cfg.dataset in ("csv", "jsonl", "parquet"):
        return sources.load_table(cfg.path, **columns, test_fraction=cfg.test_fraction, seed=seed)
    if cfg.dataset == "adult":
        return recipes.load_adult(cfg.path, group_column=cfg.group_column)
    if cfg.dataset == "hatecheck":
        return recipes.load_hatecheck(cfg.path, test_fraction=cfg.test_fraction, seed=seed)
    return sources.load_hf(cfg.name, **columns, test_fraction=cfg.test_fraction, seed=seed)


def group_names(splits: DatasetDict) -> list[str]:
    """Sorted group names over both splits: the order of group-count vectors on the wire."""
    return sorted(set(splits["train"].unique("group")) | set(splits["test"].unique("group")))


def label_names(splits: DatasetDict) -> list[str]:
    return list(splits["train"].features["label"].names)


def make_partitioner(cfg: PartitionConfig, num_partitions: int, seed: int) -> Partitioner:
    """``dirichlet`` skews group shares across clients; ``label`` skews labels; ``iid``."""
    if cfg.method == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="group" if cfg.method == "dirichlet" else "label",
        alpha=cfg.alpha,
        min_partition_size=MIN_PARTITION_SIZE,
        self_balancing=False,
        seed=seed,
    )


@lru_cache(maxsize=4)
def _partitioner(
    data: DataConfig, cfg: PartitionConfig, num_partitions: int, seed: int
) -> Partitioner:
    """The partitioner with its partition map drawn, or a ValueError naming the keys.

    The map is drawn here, eagerly: the Dirichlet draw gives up after 10 tries for some
    (α, seed), and a lazy draw that failed would go on from its advanced RNG at the next
    call, giving this process a different map than the other clients'. A failure here is
    not cached, so it repeats identically.
    """
    partitioner = make_partitioner(cfg, num_partitions, seed)
    train = load_splits(data, seed)["train"]
    # IidPartitioner takes contiguous shards; FederatedDataset shuffles first, and so do we,
    # or a dataset stored sorted (by label, by source) gives one-label clients.
    partitioner.dataset = train.shuffle(seed=seed) if cfg.method == "iid" else train
    try:
        # the Dirichlet draw checks its sizes; IID shards of a few rows would fail in the clients
        if cfg.method == "iid" and len(train) // num_partitions < MIN_PARTITION_SIZE:
            raise ValueError(
                f"{len(train)} training rows give shards of {len(train) // num_partitions}"
            )
        partitioner.load_partition(0)
    except ValueError as error:
        raise ValueError(
            f"cannot split the training data into {num_partitions} partitions of >= "
            f"{MIN_PARTITION_SIZE} examples with partition.method={cfg.method!r}, "
            f"partition.alpha={cfg.alpha}, seed={seed} ({error}): raise partition.alpha, "
            "use fewer clients or another seed"
        ) from error
    return partitioner


def check_partitions(
    data: DataConfig, cfg: PartitionConfig, num_partitions: int, seed: int
) -> list[int]:
    """Raise the ValueError a client would, before any run starts; return the training
    sizes of the clients' local splits (of a seeded sample of 200 clients beyond that)."""
    check_groups(load_splits(data, seed), data)
    partitioner = _partitioner(data, cfg, num_partitions, seed)
    ids = list(range(num_partitions))
    if num_partitions > _SIZE_SAMPLE:
        rng = np.random.default_rng(seed)
        ids = sorted(int(i) for i in rng.choice(num_partitions, _SIZE_SAMPLE, replace=False))
    # train_test_split(test_size=0.2) puts ceil(0.2 · n) rows in the test split
    return [n - math.ceil(0.2 * n) for n in (partitioner.load_partition(i).num_rows for i in ids)]


_SIZE_SAMPLE = 200


def check_groups(splits: DatasetDict, data: DataConfig) -> None:
    """Group fairness needs groups: at least two in the training split, and in the test
    split that the group metrics are computed on."""
    present = sorted(set(splits["train"]["group"]))
    if len(present) < 2:
        raise ValueError(
            f"data.group-column {data.group_column!r}: the training data has "
            f"{len(present)} group(s) {present}; group fairness needs at least 2 (name the "
            "column holding the group attribute)"
        )
    tested = sorted(set(splits["test"]["group"]))
    if len(tested) < 2:
        raise ValueError(
            f"the test split has {splits['test'].num_rows} row(s) of {len(tested)} group(s) "
            f"{tested}; the group metrics need at least 2 (raise data.test-fraction, now "
            f"{data.test_fraction:g}, where the test split is drawn from the data; else use a "
            "dataset whose own test split holds two groups)"
        )


def load_partition(
    data: DataConfig, cfg: PartitionConfig, *, partition_id: int, num_partitions: int, seed: int
) -> DatasetDict:
    """One client's data, split 80/20 into local ``train`` and ``eval``."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"node-config 'partition-id' must be in [0, {num_partitions}), got {partition_id}"
        )
    partition = _partitioner(data, cfg, num_partitions, seed).load_partition(partition_id)
    local = partition.train_test_split(test_size=0.2, seed=seed + partition_id)
    return DatasetDict({"train": local["train"], "eval": local["test"]})


@dataclass(frozen=True)
class Encoded:
    """Tokenised examples as tensors, with group ids in the order of ``group_names``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor
    #: the frozen encoder's outputs for ``head``/``top-layers`` fine-tuning, else None
    features: torch.Tensor | None = None
    #: counterfactual set per row (rows of one template with identities swapped), or -1
    sets: torch.Tensor | None = None
    #: k variants per row (``augment.k`` at most), record-major (``len(self) * k`` rows), which of
    #: them exist (``(len(self), k)`` bool; the others repeat the row and are masked out)
    variants: Encoded | None = None
    variant_valid: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, rows: torch.Tensor) -> Encoded:
        """These rows (and their variants) only."""
        variants = None
        if self.variants is not None and self.variant_valid is not None:
            k = self.variant_valid.shape[1]
            flat = (rows[:, None] * k + torch.arange(k)).reshape(-1)
            variants = self.variants.select(flat)
        return Encoded(
            **{name: _take(getattr(self, name), rows) for name in _ROW_FIELDS},  # type: ignore[arg-type]
            variants=variants,
            variant_valid=_take(self.variant_valid, rows),
        )

    def with_variants_as_rows(self) -> Encoded:
        """Valid variants appended as plain rows (training without DP: no privacy unit)."""
        if self.variants is None or self.variant_valid is None:
            return self
        extra = self.variants.select(torch.nonzero(self.variant_valid.reshape(-1)).reshape(-1))
        return concat(dataclasses.replace(self, variants=None, variant_valid=None), extra)

    @property
    def model_input(self) -> torch.Tensor:
        """What the trained model reads: cached features when present, else token ids."""
        return self.input_ids if self.features is None else self.features


_ROW_FIELDS = ("input_ids", "attention_mask", "labels", "groups", "features", "sets")


def _take(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[rows]


def concat(first: Encoded, second: Encoded) -> Encoded:
    """The rows of both, without variants (sets and features only if both have them)."""

    def joined(name: str) -> torch.Tensor | None:
        a, b = getattr(first, name), getattr(second, name)
        return None if a is None or b is None else torch.cat([a, b])

    return Encoded(**{name: joined(name) for name in _ROW_FIELDS})  # type: ignore[arg-type]


def encode(
    ds: Dataset, tokenizer: PreTrainedTokenizerBase, groups: list[str], max_length: int
) -> Encoded:
    rows = ds[:]  # all columns as lists in one batch: ds["text"] would format row by row
    batch = tokenizer(
        rows["text"],
        padding="max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    index = {name: i for i, name in enumerate(groups)}
    return Encoded(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=torch.tensor(rows["label"], dtype=torch.long),
        groups=torch.tensor([index[g] for g in rows["group"]], dtype=torch.long),
        sets=torch.tensor(rows[SET_COLUMN], dtype=torch.long) if SET_COLUMN in rows else None,
    )


def group_counts(encoded: Encoded, num_groups: int) -> np.ndarray:
    return np.bincount(encoded.groups.numpy(), minlength=num_groups).astype(float)
