"""Tests for the real-data loaders in task.sources and task.recipes."""

from __future__ import annotations

import math
import re
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from task.recipes import load_adult, load_hatecheck, template_split
from task.sources import GROUP, LABEL, TEXT, load_hf, load_table

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"shared datasets not found at {DATA} (see shared/data/README.md)"
)
COLUMNS = {"text_column": "sentence", "label_column": "y", "group_column": "who"}
RACES = {"White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"}
IDENTITIES = {
    "women", "trans people", "gay people", "black people", "disabled people", "Muslims",
    "immigrants", "none",
}  # fmt: skip


def _table() -> pd.DataFrame:
    """30 rows: groups a/b/c with 12/12/6 rows; label pos on every third row."""
    groups = ["a"] * 12 + ["b"] * 12 + ["c"] * 6
    labels = ["pos" if i % 3 == 0 else "neg" for i in range(30)]
    return pd.DataFrame(
        {"sentence": [f"row {i}" for i in range(30)], "y": labels, "who": groups, "x": 1.0}
    )


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def _expected_rows() -> dict[str, tuple[str, str]]:
    table = _table()
    return dict(zip(table["sentence"], zip(table["y"], table["who"], strict=True), strict=True))


def _rows(split: Dataset) -> dict[str, tuple[str, str]]:
    names = split.features[LABEL].names
    return {r[TEXT]: (names[r[LABEL]], r[GROUP]) for r in split}


@pytest.fixture(scope="module")
def adult_by_sex() -> DatasetDict:
    return load_adult(DATA / "adult")


@needs_data
def test_adult_rows_labels_and_text(adult_by_sex: DatasetDict) -> None:
    assert {k: v.num_rows for k, v in adult_by_sex.items()} == {"train": 32561, "test": 16281}
    for split in adult_by_sex.values():
        assert split.column_names == [TEXT, LABEL, GROUP]
        assert split.features[LABEL].names == ["<=50K", ">50K"]
    first = adult_by_sex["train"][0]
    assert first[TEXT] == (
        "39, State-gov, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, "
        "2174, 0, 40, United-States"
    )
    assert (first[LABEL], first[GROUP]) == (0, "Male")
    # Line 28 of adult.data has '?' for workclass and occupation.
    assert adult_by_sex["train"][27][TEXT].startswith("54, unknown, Some-college")
    assert sum(adult_by_sex["test"][LABEL]) == 3846  # ">50K." lines in adult.test


@needs_data
def test_adult_positive_rate_by_sex(adult_by_sex: DatasetDict) -> None:
    train = adult_by_sex["train"].to_pandas()
    rates = train.groupby(GROUP)[LABEL].mean()
    assert set(rates.index) == {"Female", "Male"}
    assert rates["Female"] == pytest.approx(0.11, abs=0.02)
    assert rates["Male"] == pytest.approx(0.31, abs=0.02)


@needs_data
def test_adult_groups_by_race() -> None:
    adult = load_adult(DATA / "adult", group_column="race")
    assert set(adult["train"][GROUP]) == RACES
    assert set(adult["test"][GROUP]) == RACES


@needs_data
def test_adult_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.group-column.*sex, race"):
        load_adult(DATA / "adult", group_column="age")
    with pytest.raises(FileNotFoundError, match=r"data\.path.*adult\.data and adult\.test"):
        load_adult(tmp_path / "absent")
    (tmp_path / "adult.data").write_bytes((DATA / "adult" / "adult.data").read_bytes())
    with pytest.raises(FileNotFoundError, match=r"missing: .*adult\.test$"):
        load_adult(tmp_path)
    (tmp_path / "adult.test").write_text("|1x3 Cross validator\n" + "1, " * 14 + "maybe.\n")
    with pytest.raises(ValueError, match=r"data\.path.*\['maybe'\]"):
        load_adult(tmp_path)


def _templates_by_text() -> dict[str, int]:
    cases = pd.read_csv(DATA / "hatecheck" / "test_suite_cases.csv")
    return dict(zip(cases["test_case"].str.strip(), cases["templ_id"], strict=True))


@needs_data
def test_hatecheck_split_is_template_disjoint() -> None:
    hatecheck = load_hatecheck(DATA / "hatecheck", test_fraction=0.25, seed=3)
    templates = _templates_by_text()
    train = {templates[text] for text in hatecheck["train"][TEXT]}
    test = {templates[text] for text in hatecheck["test"][TEXT]}
    assert train and test and not train & test
    assert hatecheck["train"].num_rows + hatecheck["test"].num_rows == 3728
    assert hatecheck["test"].num_rows / 3728 == pytest.approx(0.25, abs=0.02)


@needs_data
def test_hatecheck_labels_and_groups() -> None:
    hatecheck = load_hatecheck(DATA / "hatecheck", test_fraction=0.2, seed=0)
    frames = [split.to_pandas() for split in hatecheck.values()]
    rows = pd.concat(frames)
    assert hatecheck["test"].features[LABEL].names == ["non-hateful", "hateful"]
    assert set(rows[GROUP]) == IDENTITIES
    assert (rows[GROUP] == "none").sum() == 292
    assert rows.loc[rows[GROUP] == "none", LABEL].eq(0).all()
    assert rows[LABEL].sum() == 2563  # hateful cases in test_suite_cases.csv
    assert "I hate women." in set(rows[TEXT])  # stripped of the trailing space


@needs_data
def test_hatecheck_split_depends_only_on_seed() -> None:
    def test_texts(seed: int) -> list[str]:
        loaded = load_hatecheck(DATA / "hatecheck", test_fraction=0.2, seed=seed)
        return list(loaded["test"][TEXT])

    assert test_texts(7) == test_texts(7)
    assert test_texts(7) != test_texts(8)


def test_hatecheck_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.path.*test_suite_cases\.csv"):
        load_hatecheck(tmp_path, test_fraction=0.2, seed=0)
    pd.DataFrame({"test_case": ["x"], "label_gold": ["hateful"]}).to_csv(
        tmp_path / "test_suite_cases.csv", index=False
    )
    with pytest.raises(ValueError, match=r"data\.path.*missing: \['target_ident', 'templ_id'\]"):
        load_hatecheck(tmp_path, test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match=r"data\.test-fraction"):
        load_hatecheck(tmp_path, test_fraction=1.0, seed=0)


def test_template_split_keeps_templates_whole() -> None:
    ids = np.array([1, 1, 2, 3, 3, 3, 4, 4])
    for seed in range(20):
        in_test = template_split(ids, test_fraction=0.5, seed=seed)
        for template in (1, 2, 3, 4):
            assert len(set(in_test[ids == template])) == 1
        assert 0 < in_test.sum() < len(ids)
    # 20 rows, target 2: only template 2 (2 rows) gets nearer, whatever the order.
    uneven = np.array([1] * 8 + [2] * 2 + [3] * 10)
    for seed in range(6):
        assert (template_split(uneven, test_fraction=0.1, seed=seed) == (uneven == 2)).all()
    # Every template alone overshoots 2 * target: the smallest one is the test split.
    assert template_split([7, 7, 7, 8, 8], test_fraction=0.1, seed=0).tolist() == [0, 0, 0, 1, 1]
    # Never all rows: with a fraction near 1 one template stays for training.
    sizes = {int(template_split([5, 9, 9, 9], test_fraction=0.99, seed=s).sum()) for s in range(9)}
    assert sizes == {1, 3}  # template 5 or template 9 in test, never both
    with pytest.raises(ValueError, match=r"at least 2 templates"):
        template_split([4, 4], test_fraction=0.5, seed=0)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_load_table_formats(tmp_path: Path, suffix: str) -> None:
    path = _write(_table(), tmp_path / f"table{suffix}")
    loaded = load_table(path, **COLUMNS, test_fraction=0.2, seed=0)
    assert list(loaded) == ["train", "test"]
    assert loaded["test"].num_rows == 6 and loaded["train"].num_rows == 24
    for split in loaded.values():
        assert split.column_names == [TEXT, LABEL, GROUP]
        assert split.features[LABEL] == ClassLabel(names=["neg", "pos"])
    assert _rows(loaded["train"]) | _rows(loaded["test"]) == _expected_rows()
    assert set(loaded["test"][GROUP]) == {"a", "b", "c"}  # stratified: every group in test


def test_load_table_labels_groups_and_dropped_rows(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "sentence": ["a", "b", "c", "d", "  ", "f", "g", "h", None],
            "y": [10, 2, 0, 1, 1, None, 2, 0, 1],
            "who": ["x", None, 7, 7, "x", "x", "x", "x", "x"],
        }
    )
    loaded = load_table(_write(frame, tmp_path / "t.csv"), **COLUMNS, test_fraction=0.3, seed=1)
    assert loaded["train"].features[LABEL].names == ["0", "1", "2", "10"]  # numeric order
    rows = _rows(loaded["train"]) | _rows(loaded["test"])
    assert rows == {
        "a": ("10", "x"), "b": ("2", "unknown"), "c": ("0", "7"), "d": ("1", "7"),
        "g": ("2", "x"), "h": ("0", "x"),
    }  # fmt: skip


def test_load_table_is_seeded_and_falls_back_when_a_group_is_tiny(tmp_path: Path) -> None:
    frame = _table()
    frame.loc[0, "who"] = "solo"  # one row: stratifying by group is impossible
    path = _write(frame, tmp_path / "t.parquet")
    first = load_table(path, **COLUMNS, test_fraction=0.3, seed=5)
    again = load_table(path, **COLUMNS, test_fraction=0.3, seed=5)
    other = load_table(path, **COLUMNS, test_fraction=0.3, seed=6)
    assert first["test"][TEXT] == again["test"][TEXT] != other["test"][TEXT]
    assert first["test"].num_rows == 9 and first["train"].num_rows == 21
    assert sum(first["test"][LABEL]) == 3  # stratified by label: 10 pos * 0.3


def test_load_table_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.path"):
        load_table(tmp_path / "absent.csv", **COLUMNS, test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match=r"data\.path.*\.csv, \.jsonl, \.json, \.parquet"):
        load_table(tmp_path / "table.xlsx", **COLUMNS, test_fraction=0.2, seed=0)
    one_label = _table().assign(y="neg")
    with pytest.raises(ValueError, match=r"at least 2 distinct values"):
        load_table(_write(one_label, tmp_path / "one.csv"), **COLUMNS, test_fraction=0.2, seed=0)
    (tmp_path / "empty.csv").write_text("sentence,y,who\n")
    with pytest.raises(ValueError, match=r"found 0 such rows"):
        load_table(tmp_path / "empty.csv", **COLUMNS, test_fraction=0.2, seed=0)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"text_column": "body"}, "data.text-column"),
        ({"label_column": "target"}, "data.label-column"),
        ({"group_column": "region"}, "data.group-column"),
    ],
)
def test_missing_column_names_its_key(tmp_path: Path, override: dict[str, str], key: str) -> None:
    path = _write(_table(), tmp_path / "t.jsonl")
    missing = next(iter(override.values()))
    available = r"available columns: \['sentence', 'who', 'x', 'y'\]"
    pattern = (
        rf"{re.escape(key)}: column '{missing}' not found in data\.path=.*t\.jsonl.*{available}"
    )
    with pytest.raises(ValueError, match=pattern):
        load_table(path, **(COLUMNS | override), test_fraction=0.2, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_bad_test_fraction_names_its_key(tmp_path: Path, fraction: float) -> None:
    path = _write(_table(), tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"data\.test-fraction"):
        load_table(path, **COLUMNS, test_fraction=fraction, seed=0)


@pytest.fixture
def offline_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    return tmp_path


def test_load_hf_save_to_disk_keeps_class_order_and_splits_train(offline_hf: Path) -> None:
    table = _table()
    features = Features(
        {"sentence": Value("string"), "y": ClassLabel(names=["pos", "neg"]), "who": Value("string")}
    )
    table["y"] = (table["y"] == "neg").astype(int)
    train = Dataset.from_pandas(table[["sentence", "y", "who"]], features=features)
    DatasetDict({"train": train}).save_to_disk(offline_hf / "saved")
    loaded = load_hf(str(offline_hf / "saved"), **COLUMNS, test_fraction=0.2, seed=0)
    assert {k: v.num_rows for k, v in loaded.items()} == {"train": 24, "test": 6}
    assert loaded["test"].features[LABEL].names == ["pos", "neg"]
    assert _rows(loaded["train"]) | _rows(loaded["test"]) == _expected_rows()


def test_load_hf_uses_existing_splits(offline_hf: Path) -> None:
    folder = offline_hf / "files"
    folder.mkdir()
    _write(_table().iloc[:20], folder / "train.parquet")
    _write(_table().iloc[20:], folder / "test.parquet")
    loaded = load_hf(str(folder), **COLUMNS, test_fraction=0.5, seed=0)
    assert loaded["train"][TEXT] == [f"row {i}" for i in range(20)]
    assert loaded["test"][TEXT] == [f"row {i}" for i in range(20, 30)]
    assert loaded["test"].features[LABEL].names == ["neg", "pos"]
    assert loaded["test"][GROUP] == ["b"] * 4 + ["c"] * 6


def test_load_hf_errors(offline_hf: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.name"):
        load_hf(str(offline_hf / "absent"), **COLUMNS, test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match=r"data\.name is empty"):
        load_hf("", **COLUMNS, test_fraction=0.2, seed=0)
    DatasetDict({"train": Dataset.from_pandas(_table())}).save_to_disk(offline_hf / "saved")
    bad_label = COLUMNS | {"label_column": "target"}
    with pytest.raises(ValueError, match=r"data\.label-column: column 'target' .*split 'train'"):
        load_hf(str(offline_hf / "saved"), **bad_label, test_fraction=0.2, seed=0)


def test_label_blanks_are_stripped_and_rare_classes_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = _table()
    frame["y"] = frame["y"].astype(object)
    frame.loc[0, "y"], frame.loc[1, "y"], frame.loc[2, "y"] = " pos", "  ", "NA"
    frame.loc[3, "y"] = "Pos"  # a typo is a class of its own, and said so
    loaded = load_table(_write(frame, tmp_path / "t.csv"), **COLUMNS, test_fraction=0.2, seed=0)
    assert loaded["train"].features[LABEL].names == ["NA", "Pos", "neg", "pos"]
    assert loaded["train"].num_rows + loaded["test"].num_rows == 29  # the blank one dropped
    assert "has classes with few rows, a typo? {'NA': 1, 'Pos': 1}" in caplog.text


def test_load_hf_without_a_labelled_training_row_names_the_dataset(offline_hf: Path) -> None:
    features = Features(
        {"sentence": Value("string"), "y": ClassLabel(names=["neg", "pos"]), "who": Value("string")}
    )
    table = _table().assign(y=(_table()["y"] == "pos").astype(int))[["sentence", "y", "who"]]
    unlabelled = Dataset.from_pandas(table.assign(y=-1), features=features, preserve_index=False)
    labelled = Dataset.from_pandas(table, features=features, preserve_index=False)
    DatasetDict({"train": unlabelled, "test": labelled}).save_to_disk(offline_hf / "saved")
    with pytest.raises(ValueError, match=r"data\.name=.*: split 'train' has no labelled rows"):
        load_hf(str(offline_hf / "saved"), **COLUMNS, test_fraction=0.2, seed=0)
