from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from task.config import load_defaults, parse_run_config
from task.data import check_groups, encode, group_names, load_partition, load_splits
from task.model import load_tokenizer

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
CFG = parse_run_config(load_defaults() | {"synthetic.num-examples": 2000})


def shares(partition_id: int, method: str, num_partitions: int = 5) -> np.ndarray:
    cfg = parse_run_config(
        load_defaults() | {"synthetic.num-examples": 2000, "partition.method": method}
    )
    local = load_partition(cfg.data, cfg.partition, partition_id=partition_id,
                           num_partitions=num_partitions, seed=cfg.seed)  # fmt: skip
    groups = list(local["train"]["group"]) + list(local["eval"]["group"])
    names = group_names(load_splits(cfg.data, cfg.seed))
    return np.array([groups.count(g) for g in names], dtype=float) / len(groups)


def test_partitions_are_seeded() -> None:
    first = load_partition(CFG.data, CFG.partition, partition_id=1, num_partitions=5, seed=3)
    again = load_partition(CFG.data, CFG.partition, partition_id=1, num_partitions=5, seed=3)
    assert list(first["train"]["text"]) == list(again["train"]["text"])


def test_dirichlet_partitions_are_group_skewed_and_iid_are_not() -> None:
    dirichlet = np.stack([shares(i, "dirichlet") for i in range(5)])
    iid = np.stack([shares(i, "iid") for i in range(5)])
    # Spread of each group's share across clients: Dirichlet(0.3) is far wider than IID.
    assert dirichlet.std(axis=0).mean() > 3 * iid.std(axis=0).mean()
    assert dirichlet.max() > 0.5


def test_partitions_cover_the_training_set_once() -> None:
    sizes = [
        sum(ds.num_rows for ds in load_partition(
            CFG.data, CFG.partition, partition_id=i, num_partitions=4, seed=CFG.seed).values())
        for i in range(4)
    ]  # fmt: skip
    assert sum(sizes) == load_splits(CFG.data, CFG.seed)["train"].num_rows


def test_partition_id_out_of_range_is_named() -> None:
    with pytest.raises(ValueError, match="'partition-id' must be in \\[0, 4\\)"):
        load_partition(CFG.data, CFG.partition, partition_id=4, num_partitions=4, seed=0)


def test_encode_maps_groups_in_sorted_order() -> None:
    splits = load_splits(CFG.data, CFG.seed)
    names = group_names(splits)
    assert names == ["east", "north", "south", "west"]
    tokenizer = load_tokenizer(CFG.model, list(splits["train"]["text"]))
    encoded = encode(splits["test"].select(range(20)), tokenizer, names, max_length=16)
    assert encoded.input_ids.shape == (20, 16)
    assert [names[i] for i in encoded.groups.tolist()] == list(splits["test"]["group"][:20])


@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared datasets not found at {DATA}")
def test_iid_partitions_mix_a_training_split_stored_in_order() -> None:
    """HateCheck's training split keeps the file's order (hateful cases first): contiguous
    IID shards gave clients 100 % and 0 % hateful; shuffled first, as FederatedDataset does."""
    cfg = parse_run_config(load_defaults() | {
        "dataset": "hatecheck", "data.path": str(DATA / "hatecheck"), "partition.method": "iid",
    })  # fmt: skip
    train = load_splits(cfg.data, cfg.seed)["train"]
    overall = float(np.mean(train["label"]))
    for partition_id in (0, 5, 9):
        local = load_partition(cfg.data, cfg.partition, partition_id=partition_id,
                               num_partitions=10, seed=cfg.seed)  # fmt: skip
        labels = list(local["train"]["label"]) + list(local["eval"]["label"])
        assert abs(float(np.mean(labels)) - overall) < 0.1


def test_a_partition_that_cannot_be_drawn_names_the_keys_and_fails_the_same_way_twice() -> None:
    cfg = parse_run_config(load_defaults() | {"synthetic.num-examples": 200})
    for _ in range(2):  # a failed draw is not cached, so no process continues its RNG
        with pytest.raises(ValueError, match=r"partition.alpha=0.3, seed=42 \(The max number"):
            load_partition(cfg.data, cfg.partition, partition_id=0, num_partitions=30,
                           seed=cfg.seed)  # fmt: skip


def test_a_test_split_without_two_groups_names_the_test_fraction() -> None:
    tiny = parse_run_config(load_defaults() | {"synthetic.num-examples": 200,
                                               "data.test-fraction": 0.004})  # fmt: skip
    with pytest.raises(ValueError, match=r"test split has 1 row.*data\.test-fraction, now 0\.004"):
        check_groups(load_splits(tiny.data, tiny.seed), tiny.data)
    check_groups(load_splits(CFG.data, CFG.seed), CFG.data)  # the default's: fine
