"""Recipes for the public grouped datasets: UCI Adult (tabular as text) and HateCheck.

Both return the common shape of :mod:`task.sources`: a ``DatasetDict`` with ``"train"`` and
``"test"``, each with ``text``, ``label`` (``ClassLabel``) and ``group`` columns. Label id 1 is the
outcome whose rate fairness metrics compare across groups (``>50K``, ``hateful``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
from datasets import DatasetDict

from task.sources import GROUP, LABEL, SET_COLUMN, TEXT, check_test_fraction, to_dataset

ADULT_FEATURES = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education-num",
    "marital-status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital-gain",
    "capital-loss",
    "hours-per-week",
    "native-country",
)
ADULT_LABELS = ("<=50K", ">50K")
ADULT_GROUP_COLUMNS = ("sex", "race")
ADULT_FILES = {"train": "adult.data", "test": "adult.test"}
ADULT_MISSING = "unknown"
HATECHECK_FILE = "test_suite_cases.csv"
HATECHECK_LABELS = ("non-hateful", "hateful")
HATECHECK_NO_GROUP = "none"
_HATECHECK_COLUMNS = ("test_case", "label_gold", "target_ident", "templ_id")
#: HateCheck's identity placeholders and the form of task/lexicons/hatecheck.json each takes
HATECHECK_PLACEHOLDER_FORMS = {
    "[IDENTITY_S]": "singular",
    "[IDENTITY_P]": "plural",
    "[IDENTITY_A]": "adjective",
    "[IDENTITY_S_char_del]": "singular-char-del",
    "[IDENTITY_P_char_del]": "plural-char-del",
    "[IDENTITY_S_space_add]": "singular-space-add",
    "[IDENTITY_P_space_add]": "plural-space-add",
    "[IDENTITY_S_leet]": "singular-leet",
    "[IDENTITY_P_leet]": "plural-leet",
}


def _read_adult(path: Path) -> pd.DataFrame:
    with path.open() as handle:
        first = handle.readline()
    try:
        frame = pd.read_csv(
            path,
            header=None,
            names=[*ADULT_FEATURES, "income"],
            sep=",",
            skipinitialspace=True,  # the files separate values by ", "
            skiprows=1 if first.startswith("|") else 0,  # adult.test's "|1x3 Cross validator"
            dtype=str,
            na_values=["?"],
            keep_default_na=False,
        )
    except pd.errors.ParserError as error:
        raise ValueError(f"data.path: {path} is not a UCI Adult file ({error})") from error
    labels = frame["income"].str.rstrip(".")  # adult.test writes "<=50K."
    unexpected = sorted(set(labels.dropna()) - set(ADULT_LABELS))
    if unexpected or labels.isna().any():
        raise ValueError(
            f"data.path: {path} has income values {unexpected or ['(missing)']}; "
            f"expected one of {list(ADULT_LABELS)} (optionally ending in '.')"
        )
    frame["income"] = labels
    return frame


# fnlwgt is the census sampling weight (how many people a row stands for), not an
# attribute of the person, so it is not part of the text.
ADULT_TEXT_FEATURES = tuple(name for name in ADULT_FEATURES if name != "fnlwgt")


def _adult_text(frame: pd.DataFrame) -> pd.Series:
    # Values only, in a fixed column order: the column names would more than double the
    # tokens per row (84 → 37 median) and so the cost of every DP-SGD step, while a model
    # reads the column from the position as well. Column-wise concatenation: 0.05 s for
    # adult.data here, a per-row DataFrame.apply join 2.5 s.
    parts = [frame[name].fillna(ADULT_MISSING) for name in ADULT_TEXT_FEATURES]
    text = parts[0]
    for part in parts[1:]:
        text = text + ", " + part
    return text


def load_adult(directory: str | Path, *, group_column: str = "sex") -> DatasetDict:
    """Load the official UCI Adult files as text classification grouped by sex or race.

    Each row becomes ``"39, State-gov, Bachelors, 13, ..., 40, United-States"``: the values of
    the 13 feature columns other than ``fnlwgt`` in ``adult.names`` order (37 tokens median,
    45 at the 99th percentile with the default tokenizer); missing values (``?``) are written
    as ``unknown`` so every row is kept (32,561 train, 16,281 test rows).

    Parameters
    ----------
    directory : str or pathlib.Path
        Folder holding ``adult.data`` (train split) and ``adult.test`` (test split).
    group_column : {"sex", "race"}
        Column whose value becomes ``group``.

    Returns
    -------
    datasets.DatasetDict
        ``"train"``/``"test"``; labels ``("<=50K", ">50K")``.

    Raises
    ------
    ValueError
        If ``group_column`` is not ``sex`` or ``race`` (key ``data.group-column``), or a file
        is malformed.
    FileNotFoundError
        If the folder or one of the files is missing (key ``data.path``).
    """
    if group_column not in ADULT_GROUP_COLUMNS:
        raise ValueError(
            f"data.group-column={group_column!r} is not an Adult group column; "
            f"valid: {', '.join(ADULT_GROUP_COLUMNS)}"
        )
    directory = Path(directory)
    paths = {split: directory / file for split, file in ADULT_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data.path={directory} must be a folder with the UCI files "
            f"{' and '.join(ADULT_FILES.values())}; missing: {', '.join(missing)}"
        )
    splits = {}
    for split, path in paths.items():
        frame = _read_adult(path)
        clean = pd.DataFrame(
            {
                TEXT: _adult_text(frame),
                LABEL: (frame["income"] == ADULT_LABELS[1]).astype("int64"),
                GROUP: frame[group_column].fillna(ADULT_MISSING),
            }
        )
        splits[split] = to_dataset(clean, list(ADULT_LABELS))
    return DatasetDict(splits)


def template_split(
    template_ids: npt.ArrayLike, *, test_fraction: float, seed: int
) -> npt.NDArray[np.bool_]:
    """Choose whole templates for the test split so that about ``test_fraction`` of rows land there.

    Templates are visited in an order shuffled by ``numpy.random.default_rng(seed)``; each one
    joins the test split if that brings its row count nearer to ``test_fraction`` of all rows
    and leaves at least one template for training. If every template alone overshoots, the
    smallest one becomes the test split.

    Parameters
    ----------
    template_ids : array_like
        Template id of every row.
    test_fraction : float
        Target share of rows in the test split, in (0, 1).
    seed : int
        Seed of the template shuffle.

    Returns
    -------
    numpy.ndarray of bool
        ``True`` for rows in the test split.

    Raises
    ------
    ValueError
        If ``test_fraction`` is outside (0, 1) or there are fewer than two templates.
    """
    check_test_fraction(test_fraction)
    ids = np.asarray(template_ids)
    templates, counts = np.unique(ids, return_counts=True)
    if len(templates) < 2:
        raise ValueError(f"a template split needs at least 2 templates, got {len(templates)}")
    target, taken = test_fraction * len(ids), 0
    chosen = np.zeros(len(templates), dtype=bool)
    # Greedy over a shuffled order rather than a prefix: a prefix overshoots whenever a large
    # template comes early, which matters for data sets with few, uneven templates.
    for index in np.random.default_rng(seed).permutation(len(templates)):
        grown = taken + counts[index]
        if abs(grown - target) < abs(taken - target) and grown < len(ids):
            chosen[index], taken = True, grown
    if not chosen.any():
        chosen[np.argmin(counts)] = True
    return np.isin(ids, templates[chosen])


def _read_hatecheck(directory: str | Path, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    path = Path(directory) / HATECHECK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"data.path={directory} must be a folder with {HATECHECK_FILE}")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    needed = (*_HATECHECK_COLUMNS, *extra)
    missing = [column for column in needed if column not in frame.columns]
    unexpected = sorted(set(frame.get("label_gold", [])) - set(HATECHECK_LABELS))
    if missing or unexpected:
        raise ValueError(
            f"data.path: {path} needs columns {list(needed)} (missing: {missing}) "
            f"and label_gold in {list(HATECHECK_LABELS)} (found also: {unexpected})"
        )
    return frame


def hatecheck_training_templates(
    directory: str | Path, *, test_fraction: float, seed: int
) -> list[tuple[str, int]]:
    """(``case_templ``, label id) of every template of the *training* split, in file order.

    The public material of synthesis: HateCheck is a published suite, its templates are
    public; those of the test split (the same :func:`template_split`) are never returned.
    """
    frame = _read_hatecheck(directory, ("case_templ",))
    in_test = template_split(frame["templ_id"], test_fraction=test_fraction, seed=seed)
    train = frame[~in_test].drop_duplicates("templ_id")
    labels = (train["label_gold"] == HATECHECK_LABELS[1]).astype("int64")
    return list(zip(train["case_templ"].astype(str), labels.tolist(), strict=True))


def load_hatecheck(directory: str | Path, *, test_fraction: float, seed: int) -> DatasetDict:
    """Load HateCheck's ``test_suite_cases.csv`` with a template-disjoint train/test split.

    Text is ``test_case`` stripped; labels are ``("non-hateful", "hateful")``, so id 1 is
    hateful; group is ``target_ident``, or ``"none"`` for cases without a target (all
    non-hateful). Whole templates (``templ_id``) go to the test split, see
    :func:`template_split`; rows keep their file order within each split.

    Parameters
    ----------
    directory : str or pathlib.Path
        Folder holding ``test_suite_cases.csv``.
    test_fraction : float
        Target share of rows in the test split, in (0, 1).
    seed : int
        Seed of the template choice.

    Returns
    -------
    datasets.DatasetDict
        ``"train"`` and ``"test"`` with columns ``text``, ``label``, ``group``.

    Raises
    ------
    FileNotFoundError
        If the CSV is missing (key ``data.path``).
    ValueError
        If ``test_fraction`` is outside (0, 1), or the file lacks a needed column or holds
        another label.
    """
    check_test_fraction(test_fraction)
    frame = _read_hatecheck(directory)
    clean = pd.DataFrame(
        {
            TEXT: frame["test_case"].str.strip(),
            LABEL: (frame["label_gold"] == HATECHECK_LABELS[1]).astype("int64"),
            GROUP: frame["target_ident"].fillna(HATECHECK_NO_GROUP),
        }
    )
    in_test = template_split(frame["templ_id"], test_fraction=test_fraction, seed=seed)
    names = list(HATECHECK_LABELS)
    # Rows of one template differ only in the identity: the counterfactual sets of the metric.
    test = to_dataset(clean[in_test], names).add_column(
        SET_COLUMN, frame.loc[in_test, "templ_id"].astype("int64").tolist()
    )
    return DatasetDict({"train": to_dataset(clean[~in_test], names), "test": test})
