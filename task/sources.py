"""Real-data loaders that turn tables and Hugging Face datasets into grouped text classification.

Every loader returns a :class:`datasets.DatasetDict` with exactly the splits ``"train"`` and
``"test"``, each with exactly the columns ``text`` (string), ``label`` (``ClassLabel``, the same
names in both splits) and ``group`` (string). Recipes for specific public datasets (UCI Adult,
HateCheck) live in :mod:`task.recipes`.

Policies shared by all generic loaders:

- Text is stripped of surrounding whitespace; rows whose text is empty or whose label is missing
  are dropped (logged as a warning). Zero rows left, or fewer than two label values, is an error.
- Labels map to class ids in sorted order of their unique values (numerically for integer labels,
  else as strings); the class names are the values as strings. A label column that already is a
  ``ClassLabel`` keeps its names and ids.
- Groups are cast to string; a missing or empty group becomes ``"unknown"``.
- When a loader has to split, it stratifies by group; where that is impossible (a group with a
  single row, or fewer test rows than groups) by label; else it splits unstratified.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

logger = logging.getLogger(__name__)

TEXT, LABEL, GROUP = "text", "label", "group"
SET_COLUMN = "counterfactual_set"  # optional: one id per set of identity-swapped rows
UNKNOWN_GROUP = "unknown"
SUPPORTED_EXTENSIONS = (".csv", ".jsonl", ".json", ".parquet")
_COLUMN_KEYS = {
    TEXT: "data.text-column",
    LABEL: "data.label-column",
    GROUP: "data.group-column",
}


def check_test_fraction(test_fraction: float) -> None:
    """Raise ``ValueError`` (key ``data.test-fraction``) unless ``0 < test_fraction < 1``."""
    if isinstance(test_fraction, bool) or not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"data.test-fraction must be a number strictly between 0 and 1, got {test_fraction!r}"
        )


def _check_columns(available: list[str], columns: dict[str, str], source: str) -> None:
    for role, column in columns.items():
        if column not in available:
            raise ValueError(
                f"{_COLUMN_KEYS[role]}: column {column!r} not found in {source}; "
                f"available columns: {sorted(available)}"
            )


def _as_strings(values: pd.Series) -> pd.Series:
    """Cast to ``str``, writing integer-valued floats (ints read next to NaN) without ``.0``."""
    if pd.api.types.is_float_dtype(values.dtype):
        present = values.dropna()
        if (present == present.round()).all():
            return values.astype("Int64").astype("string").astype(object)
    return values.astype("string").astype(object)


#: A class this rare among the labels (or of one row) is reported: likely a typo ("Pos",
#: a stray "NA", which a class such as "none" keeps us from reading as missing)
RARE_LABEL_SHARE = 0.005


def _stripped(labels: pd.Series) -> pd.Series:
    """Text labels without surrounding blanks (``" pos"`` is ``"pos"``); an empty one is
    missing."""
    if not (pd.api.types.is_object_dtype(labels.dtype) or pd.api.types.is_string_dtype(labels)):
        return labels
    stripped = labels.map(lambda v: v.strip() if isinstance(v, str) else v)
    return stripped.mask(stripped.map(lambda v: v == "").astype(bool))


def _warn_rare_labels(labels: pd.Series, column: str, source: str) -> None:
    counts = labels.value_counts()
    rare = counts[counts < max(2.0, RARE_LABEL_SHARE * len(labels))]
    if len(rare):
        logger.warning(
            "%s: label column %r has classes with few rows, a typo? %s (of %d rows; every "
            "distinct value is a class)", source, column, {k: int(v) for k, v in rare.items()},
            len(labels),
        )  # fmt: skip


def _sorted_label_names(labels: pd.Series) -> list[str]:
    unique = labels.drop_duplicates()
    numeric = pd.api.types.is_numeric_dtype(unique.dtype) and not pd.api.types.is_bool_dtype(
        unique.dtype
    )
    if numeric and (unique == unique.round()).all():
        return [str(value) for value in sorted(unique.astype("int64"))]
    return sorted(set(_as_strings(unique)))  # set: 1 and "1" in one JSON column are one label


def _standardise(
    frame: pd.DataFrame,
    columns: dict[str, str],
    *,
    source: str,
    label_names: list[str] | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Keep the non-empty rows of ``columns`` (role -> source column) as text/label ids/group.

    ``label_names`` fixes the class order (default: sorted label values); ``source`` names the
    key and file in errors. The result keeps the input index of the kept rows.
    """
    _check_columns(list(frame.columns), columns, source)
    text = _as_strings(frame[columns[TEXT]]).str.strip()
    labels = frame[columns[LABEL]]
    labels = labels if label_names is not None else _stripped(labels)  # names: the dataset's
    keep = text.notna() & (text != "") & labels.notna()
    if not keep.all():
        logger.warning("Dropped %d rows with empty text or label from %s", (~keep).sum(), source)
    text, labels = text[keep], labels[keep]
    names = label_names if label_names is not None else _sorted_label_names(labels)
    label_text = _as_strings(labels)
    if len(text) == 0 or label_text.nunique() < 2:
        raise ValueError(
            f"{source} needs rows with non-empty text and at least 2 distinct values in label "
            f"column {columns[LABEL]!r}; found {len(text)} such rows with labels {names}"
        )
    _warn_rare_labels(label_text, columns[LABEL], source)
    ids = label_text.map({name: index for index, name in enumerate(names)})
    groups = _as_strings(frame.loc[keep, columns[GROUP]]).str.strip()
    groups = groups.mask(groups.isna() | (groups == ""), UNKNOWN_GROUP)
    return pd.DataFrame({TEXT: text, LABEL: ids.astype("int64"), GROUP: groups}), names


def to_dataset(frame: pd.DataFrame, label_names: list[str]) -> Dataset:
    """Wrap a standardised frame as a ``Dataset`` with typed ``text``/``label``/``group``."""
    features = Features(
        {TEXT: Value("string"), LABEL: ClassLabel(names=label_names), GROUP: Value("string")}
    )
    return Dataset.from_pandas(frame[[TEXT, LABEL, GROUP]], features=features, preserve_index=False)


def split_dataset(dataset: Dataset, *, test_fraction: float, seed: int) -> DatasetDict:
    """Split into train/test, stratified by group, else by label, else not at all.

    Parameters
    ----------
    dataset : datasets.Dataset
        Standardised rows (``text``, ``label``, ``group``).
    test_fraction : float
        Share of rows for the test split, in (0, 1).
    seed : int
        Seed of the shuffle.

    Returns
    -------
    datasets.DatasetDict
        Splits ``"train"`` and ``"test"``.

    Raises
    ------
    ValueError
        If ``test_fraction`` is outside (0, 1) or leaves one split empty (``data.test-fraction``).
    """
    check_test_fraction(test_fraction)
    strata = dataset.add_column("_stratum", dataset[GROUP]).class_encode_column("_stratum")
    for stratum in ("_stratum", LABEL, None):
        try:
            parts = strata.train_test_split(
                test_size=test_fraction, seed=seed, stratify_by_column=stratum
            )
        except ValueError as error:  # too few rows per stratum: try the next, coarser one
            reason = error
            continue
        if stratum != "_stratum":
            logger.info("Could not stratify by group; stratified by %s instead", stratum)
        return DatasetDict({name: part.remove_columns("_stratum") for name, part in parts.items()})
    raise ValueError(
        f"data.test-fraction={test_fraction} leaves no rows for one split of "
        f"{len(dataset)} rows ({reason}); choose a fraction nearer 0.5 or provide more rows"
    )


def _read_table(path: Path) -> pd.DataFrame:
    # pandas' readers are what datasets' csv/json/parquet builders call internally; reading them
    # directly avoids an Arrow cache under ~/.cache per file and run (every simulated client and
    # test would write one) for tables that fit in memory anyway.
    suffix = path.suffix.lower()
    if suffix != ".parquet":
        _check_text_file(path)
    try:
        if suffix == ".csv":
            # Only empty fields are missing: "NA" or "null" can be legitimate text.
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=True, dtype=False)
            if not all(isinstance(column, str) for column in frame.columns):  # lists, not objects
                raise ValueError("not one JSON object per line")
            return frame
        return pd.read_parquet(path)
    except (ValueError, pd.errors.ParserError, OSError) as error:
        hint = {
            ".csv": "a CSV file with a header row",
            ".jsonl": "one JSON object per line",
            ".json": "one JSON object per line",
            ".parquet": "an Apache Parquet file (is it another format renamed?)",
        }[suffix]
        detail = _first_bad_json_line(path) if suffix in (".jsonl", ".json") else error
        raise ValueError(
            f"data.path: could not read {path} as {suffix[1:]} (expected {hint}): {detail}"
        ) from error


def _check_text_file(path: Path) -> None:
    """A CSV/JSONL must be UTF-8: name the first line that is not (pandas gives an offset)."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"data.path: {path} line {number} is not UTF-8 ({error.reason} at byte "
                    f"{error.start} of the line); save the file as UTF-8"
                ) from None


def _first_bad_json_line(path: Path) -> str:
    """Which line of a JSON-lines file is not one JSON object, and why."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                return f"line {number} is not valid JSON ({error.msg}, column {error.colno})"
            if not isinstance(value, dict):
                return f"line {number} is a JSON {type(value).__name__}, not an object"
    return "no line holds a JSON object"


def load_table(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    group_column: str,
    test_fraction: float,
    seed: int,
) -> DatasetDict:
    """Load a CSV, JSON-lines or Parquet table as a grouped train/test ``DatasetDict``.

    Parameters
    ----------
    path : str or pathlib.Path
        Table file; the format follows the extension (.csv, .jsonl/.json, .parquet).
    text_column, label_column, group_column : str
        Source columns for ``text``, ``label`` and ``group``.
    test_fraction : float
        Share of rows for the test split, in (0, 1).
    seed : int
        Seed of the split.

    Returns
    -------
    datasets.DatasetDict
        ``"train"`` and ``"test"`` with columns ``text``, ``label``, ``group``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist (key ``data.path``).
    ValueError
        For an unsupported extension, a missing column, a bad ``test_fraction``, or a table
        without rows or with fewer than two labels.
    """
    check_test_fraction(test_fraction)
    path = Path(path)
    if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"data.path: unsupported file extension {path.suffix!r} of {path}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"data.path: file {path} does not exist")
    columns = {TEXT: text_column, LABEL: label_column, GROUP: group_column}
    frame, names = _standardise(_read_table(path), columns, source=f"data.path={path}")
    return split_dataset(to_dataset(frame, names), test_fraction=test_fraction, seed=seed)


def _load_any(name: str) -> DatasetDict:
    path = Path(name)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))  # written by save_to_disk
        else:
            loaded = datasets.load_dataset(name)
    except (FileNotFoundError, ConnectionError) as error:  # offline Hub lookups: ConnectionError
        raise FileNotFoundError(
            f"data.name: cannot load {name!r}: expected a reachable Hugging Face Hub id, a "
            f"directory written by save_to_disk, or a directory of data files ({error})"
        ) from error
    if isinstance(loaded, Dataset):
        return DatasetDict({"train": loaded})
    if not isinstance(loaded, DatasetDict):
        raise ValueError(f"data.name: {name!r} did not load as a DatasetDict ({type(loaded)})")
    return loaded


def load_hf(
    name: str,
    *,
    text_column: str,
    label_column: str,
    group_column: str,
    test_fraction: float,
    seed: int,
) -> DatasetDict:
    """Load a Hugging Face dataset (Hub id or local path) as a grouped train/test ``DatasetDict``.

    Uses the dataset's own ``"train"`` and ``"test"`` splits when both exist (other splits are
    ignored); otherwise splits ``"train"`` as :func:`load_table` does.

    Parameters
    ----------
    name : str
        Hub id, a directory written by ``save_to_disk``, or a directory of data files.
    text_column, label_column, group_column : str
        Source columns for ``text``, ``label`` and ``group``.
    test_fraction : float
        Share of rows for the test split when the dataset has no ``"test"`` split, in (0, 1).
    seed : int
        Seed of that split.

    Returns
    -------
    datasets.DatasetDict
        As :func:`load_table`; a ``"test"`` split without labelled rows is replaced by a split.

    Raises
    ------
    FileNotFoundError
        If ``name`` cannot be found (key ``data.name``).
    ValueError
        For an empty name, no ``"train"`` split, a missing column or a bad ``test_fraction``.
    """
    check_test_fraction(test_fraction)
    if not name:
        raise ValueError("data.name is empty; give a Hugging Face Hub id or a local dataset path")
    loaded = _load_any(name)
    if "train" not in loaded:
        raise ValueError(f"data.name: {name!r} has no 'train' split; splits: {sorted(loaded)}")
    splits = ["train", "test"] if "test" in loaded else ["train"]
    columns = {TEXT: text_column, LABEL: label_column, GROUP: group_column}
    for split in splits:
        _check_columns(loaded[split].column_names, columns, f"data.name={name} (split {split!r})")
    feature = loaded["train"].features[label_column]
    names = list(feature.names) if isinstance(feature, ClassLabel) else None
    wanted = list(dict.fromkeys(columns.values()))  # one column may serve two roles
    frames = [loaded[split].select_columns(wanted).to_pandas() for split in splits]
    joined = pd.concat(frames, ignore_index=True)
    in_test = np.repeat([split == "test" for split in splits], [len(f) for f in frames])
    if names is not None:
        # ids -> names so _standardise keeps the dataset's own class order; -1 (unlabelled) -> NaN
        joined[label_column] = joined[label_column].map(dict(enumerate(names)))
    clean, names = _standardise(joined, columns, source=f"data.name={name}", label_names=names)
    in_test = in_test[clean.index]
    if in_test.all():
        raise ValueError(f"data.name={name}: split 'train' has no labelled rows")
    if in_test.any():
        parts = {"train": clean[~in_test], "test": clean[in_test]}
        return DatasetDict({split: to_dataset(part, names) for split, part in parts.items()})
    if "test" in loaded:
        logger.warning("data.name=%s: 'test' has no labelled rows; splitting 'train'", name)
    return split_dataset(to_dataset(clean, names), test_fraction=test_fraction, seed=seed)
