"""Group-fairness and client-spread metrics for the results contract.

`group_report` returns the contract's ``"global"`` dict and `client_spread` its
``"clients"`` dict (see ARCHITECTURE.md, "Results"); ``server/records.flat_row`` turns a
round record into ``rounds.csv`` columns.

Demographic parity and equalized odds follow fairlearn's definitions
(``fairlearn.metrics.demographic_parity_difference`` / ``equalized_odds_difference`` with
``method="between_groups"``) but are computed here in numpy: the server calls this every
round, and fairlearn would pull pandas + scikit-learn into the server path while its
``MetricFrame`` costs milliseconds per call. fairlearn is a test-only dependency, used to
check that the numbers agree.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["client_spread", "group_report"]

# Fraction of clients in `worst10_accuracy`.
_WORST_FRACTION_DENOMINATOR = 10


def _as_labels(name: str, values: npt.ArrayLike) -> np.ndarray:
    """Return `values` as a non-empty 1-D int64 array, or raise ValueError naming `name`."""
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D array of class ids, got shape {arr.shape}"
        )
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _encode_groups(
    groups: Sequence[str] | npt.NDArray[np.str_], n_rows: int
) -> tuple[list[str], np.ndarray]:
    """Return sorted unique group names and each row's index into them."""
    if isinstance(groups, str | bytes):
        raise ValueError("groups must be a sequence of group names (str), not a single string")
    names = list(groups)
    if len(names) != n_rows:
        raise ValueError(
            f"groups has {len(names)} entries but y_true has {n_rows}: lengths must match"
        )
    bad = next((g for g in names if not isinstance(g, str)), None)
    if bad is not None:
        raise ValueError(
            f"groups must contain only str group names, got {bad!r} ({type(bad).__name__})"
        )
    uniques, inverse = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return [str(u) for u in uniques], inverse.reshape(-1)


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Per-group rate, 0.0 where the denominator is 0.

    0.0 (not NaN) mirrors fairlearn, whose TPR/FPR come from scikit-learn's
    ``confusion_matrix(normalize="true")``, which maps 0/0 to 0.
    """
    out = np.zeros_like(numerator, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _spread(values: np.ndarray) -> float:
    """Max minus min; 0.0 for a single group."""
    return float(values.max() - values.min())


def _one_vs_rest_gaps(
    true_pos: np.ndarray, pred_pos: np.ndarray, inverse: np.ndarray, counts: np.ndarray
) -> tuple[float, float]:
    """Demographic-parity and equalized-odds differences for one positive class.

    Parameters
    ----------
    true_pos, pred_pos : numpy.ndarray
        Boolean per-row indicators ``y_true == c`` and ``y_pred == c``.
    inverse : numpy.ndarray
        Group index of each row.
    counts : numpy.ndarray
        Rows per group.

    Returns
    -------
    tuple of float
        ``(max - min selection rate, max(TPR gap, FPR gap))`` across groups.
    """
    n_groups = counts.size
    selected = np.bincount(inverse, weights=pred_pos, minlength=n_groups)
    positives = np.bincount(inverse, weights=true_pos, minlength=n_groups)
    true_hits = np.bincount(inverse, weights=true_pos & pred_pos, minlength=n_groups)
    false_hits = np.bincount(inverse, weights=~true_pos & pred_pos, minlength=n_groups)
    tpr = _rate(true_hits, positives)
    fpr = _rate(false_hits, counts - positives)
    return _spread(selected / counts), max(_spread(tpr), _spread(fpr))


def _parity_gaps(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    inverse: np.ndarray,
    counts: np.ndarray,
    positive_label: int,
) -> tuple[float, float]:
    """Binary or multiclass DP/EO differences (see `group_report` for the rule)."""
    classes = np.union1d(y_true, y_pred)
    if np.union1d(classes, [positive_label]).size <= 2:
        candidates: Sequence[int] = [positive_label]
    else:
        candidates = [int(c) for c in classes]
    dp, eo = 0.0, 0.0
    for c in candidates:
        dp_c, eo_c = _one_vs_rest_gaps(y_true == c, y_pred == c, inverse, counts)
        dp, eo = max(dp, dp_c), max(eo, eo_c)
    return dp, eo


def _check_loss(loss: float | None) -> float | None:
    """Return `loss` as a plain float (None stays None), or raise ValueError."""
    if loss is None:
        return None
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
        raise ValueError(f"loss must be a real number or None, got {loss!r}")
    return float(loss)


def group_report(
    y_true: npt.ArrayLike,
    y_pred: npt.ArrayLike,
    groups: Sequence[str] | npt.NDArray[np.str_],
    *,
    positive_label: int = 1,
    loss: float | None = None,
) -> dict[str, Any]:
    """Evaluate predictions per group: the results contract's ``"global"`` dict.

    Parameters
    ----------
    y_true, y_pred : array_like of int
        True and predicted class ids, one per row (bool is accepted as 0/1).
    groups : sequence of str or numpy.ndarray of str
        Group name of each row; same length as `y_true` and `y_pred`.
    positive_label : int, default 1
        The favourable class for demographic parity / equalized odds when the labels are
        binary. Ignored for multiclass labels (see Notes).
    loss : float or None, default None
        Test loss to record. Not computed here; ``None`` is stored as ``None`` (JSON
        ``null``) so the key set is the same whether or not a loss is given.

    Returns
    -------
    dict
        ``accuracy`` (population accuracy over all rows); ``balanced_accuracy`` (mean of the
        per-group accuracies -- the project's definition, *not* scikit-learn's
        ``balanced_accuracy_score``, which averages per-class recall); ``loss``;
        ``per_group`` ``{name: {"accuracy": float, "n": int}}`` for every group present,
        sorted by name; ``worst_group_accuracy``; ``group_accuracy_gap`` (max - min
        per-group accuracy); ``demographic_parity_difference``;
        ``equalized_odds_difference``. Values are plain Python ``float``/``int``.

    Raises
    ------
    ValueError
        If the arrays are empty, not 1-D, not integer, or of different lengths; if a group
        name is not a str; if `positive_label` is not an int or `loss` not a real number.

    Notes
    -----
    Labels count as binary when the observed classes of `y_true` and `y_pred` together
    with `positive_label` number at most two. Then
    ``demographic_parity_difference`` = max - min over groups of P(y_pred = positive) and
    ``equalized_odds_difference`` = max(TPR gap, FPR gap), exactly fairlearn's
    ``method="between_groups"`` values (with labels in {0, 1} and ``positive_label=1``).
    As in fairlearn, a group with no true positives has TPR 0 (and one with no true
    negatives FPR 0) rather than NaN, so such a group can inflate the equalized-odds
    difference. With more classes (fairlearn raises there), each metric is the maximum
    over the observed classes of the same one-vs-rest difference. On binary data in which
    every group has both true classes this equals the binary value, as the class-0 and
    class-1 differences coincide. A single group gives 0.0 for every gap.
    """
    if isinstance(positive_label, bool) or not isinstance(positive_label, numbers.Integral):
        raise ValueError(f"positive_label must be an int class id, got {positive_label!r}")
    loss_value = _check_loss(loss)
    yt, yp = _as_labels("y_true", y_true), _as_labels("y_pred", y_pred)
    if yt.size != yp.size:
        raise ValueError(f"y_true has {yt.size} rows but y_pred has {yp.size}: lengths must match")
    names, inverse = _encode_groups(groups, yt.size)

    correct = yt == yp
    counts = np.bincount(inverse, minlength=len(names))
    group_acc = np.bincount(inverse, weights=correct, minlength=len(names)) / counts
    dp, eo = _parity_gaps(yt, yp, inverse, counts, int(positive_label))
    return {
        "accuracy": float(np.count_nonzero(correct) / yt.size),
        "balanced_accuracy": float(group_acc.mean()),
        "loss": loss_value,
        "per_group": {
            name: {"accuracy": float(acc), "n": int(n)}
            for name, acc, n in zip(names, group_acc, counts, strict=True)
        },
        "worst_group_accuracy": float(group_acc.min()),
        "group_accuracy_gap": _spread(group_acc),
        "demographic_parity_difference": dp,
        "equalized_odds_difference": eo,
    }


def client_spread(accuracies: Sequence[float]) -> dict[str, float]:
    """Summarise per-client accuracies: the results contract's ``"clients"`` dict.

    Parameters
    ----------
    accuracies : sequence of float
        One accuracy in [0, 1] per client.

    Returns
    -------
    dict of str to float
        ``mean_accuracy``; ``std_accuracy``, the population standard deviation
        (``ddof=0``: the clients evaluated are the whole population of interest, and one
        client gives 0.0 rather than NaN); ``worst10_accuracy``, the mean of the lowest
        ``max(1, n // 10)`` accuracies (10 clients -> the lowest one, 25 -> lowest two).

    Raises
    ------
    ValueError
        If `accuracies` is empty, not 1-D, or holds a value that is not finite or
        outside [0, 1].
    """
    arr = np.asarray(accuracies, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(
            f"accuracies must be a non-empty 1-D sequence of floats, got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any((arr < 0.0) | (arr > 1.0)):
        raise ValueError(f"accuracies must be finite values in [0, 1], got {arr.tolist()}")
    k = max(1, arr.size // _WORST_FRACTION_DENOMINATOR)
    worst = np.sort(arr)[:k]
    return {
        "mean_accuracy": float(arr.mean()),
        "std_accuracy": float(arr.std(ddof=0)),
        "worst10_accuracy": float(worst.mean()),
    }


def counterfactual_flip_rate(y_pred: npt.ArrayLike, sets: npt.ArrayLike) -> float | None:
    """Share of counterfactual sets whose predictions are not all equal.

    A set holds the rows of one template with the identity term swapped (HateCheck's
    ``templ_id``); a model that is counterfactually fair on tokens predicts the same class
    for all of them (Garg et al., AIES 2019, counterfactual token fairness). Rows with a
    negative set id, and sets of one row, are ignored; ``None`` when no set remains.
    """
    yp = _as_labels("y_pred", y_pred)
    ids = np.asarray(sets, dtype=np.int64).reshape(-1)
    if ids.size != yp.size:
        raise ValueError(f"sets has {ids.size} rows but y_pred has {yp.size}: lengths must match")
    keep = ids >= 0
    _, inverse, sizes = np.unique(ids[keep], return_inverse=True, return_counts=True)
    if not (sizes > 1).any():
        return None
    lowest = np.full(sizes.size, np.iinfo(np.int64).max)
    highest = np.full(sizes.size, np.iinfo(np.int64).min)
    np.minimum.at(lowest, inverse, yp[keep])
    np.maximum.at(highest, inverse, yp[keep])
    flipped = (lowest != highest) & (sizes > 1)
    return float(flipped.sum() / (sizes > 1).sum())
