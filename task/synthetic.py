"""The embedded default dataset: a seeded grouped text-classification task built to expose bias.

How it is generated (one sentence per example, binary label "negative"/"positive"):

* **Groups** ``north`` 62 %, ``south`` 23 %, ``east`` 10 %, ``west`` 5 % of the rows (shares
  are exact up to rounding). Each group writes in its own "dialect": every sentence carries
  two of the group's four marker words, and neutral filler words shared by all groups.
* **Label cues**: every sentence carries two cue words. The majority group uses the shared
  sentiment lexicon (``great``/``awful``…). Minority groups use their own wording for a share
  of their cues (``DIALECT_RATE``): half of it unique slang, half *shared words with the
  opposite meaning* (``bad`` positive where everyone else means negative), as dialects do.
* **Base rates** differ per group (``POSITIVE_RATE``) and 4 % of labels are flipped.

A model fit to the population learns the majority reading of the shared words, so it is
wrong on most flipped-cue sentences of the minority groups: FedAvg leaves a large
worst-group gap. Because the group is visible in the text (the markers), a model that gives
minority data enough weight can learn the dialect and close it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, load_from_disk
from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

from task.cache import cache_root

GROUP_SHARES = {"north": 0.62, "south": 0.23, "east": 0.10, "west": 0.05}
POSITIVE_RATE = {"north": 0.5, "south": 0.45, "east": 0.55, "west": 0.4}
DIALECT_RATE = {"north": 0.0, "south": 0.3, "east": 0.6, "west": 0.8}
LABEL_NOISE = 0.04
LABEL_NAMES = ("negative", "positive")

SHARED_POSITIVE = ("great", "love", "excellent", "happy", "wonderful", "nice")
SHARED_NEGATIVE = ("awful", "hate", "terrible", "sad", "poor", "bad")
FILLER = (
    "the", "a", "this", "that", "service", "food", "movie", "place", "day", "team", "was",
    "is", "really", "so", "very", "today", "again", "with", "our", "my", "staff",
    "show", "trip", "game", "and", "it", "felt", "looked", "seemed", "ok",
)  # fmt: skip
MARKERS = {
    "north": ("indeed", "rather", "quite", "perhaps"),
    "south": ("yall", "reckon", "fixin", "mighty"),
    "east": ("yo", "deadass", "bodega", "kid"),
    "west": ("hella", "stoked", "gnarly", "dude"),
}
# Minority wording: unique slang plus shared words read the other way round.
DIALECT_POSITIVE = {
    "south": ("finest", "bad"),
    "east": ("dope", "bad", "awful"),
    "west": ("rad", "bad", "terrible"),
}
DIALECT_NEGATIVE = {
    "south": ("sorry", "nice"),
    "east": ("wack", "nice", "great"),
    "west": ("bogus", "great", "happy"),
}


def group_sizes(num_examples: int) -> dict[str, int]:
    """Rows per group: the shares of ``GROUP_SHARES``, the rounding remainder to the largest."""
    sizes = {g: round(share * num_examples) for g, share in GROUP_SHARES.items()}
    largest = max(GROUP_SHARES, key=GROUP_SHARES.__getitem__)
    sizes[largest] += num_examples - sum(sizes.values())
    return sizes


def _cue(group: str, positive: bool, rng: np.random.Generator) -> str:
    if rng.random() < DIALECT_RATE[group]:
        lexicon = DIALECT_POSITIVE[group] if positive else DIALECT_NEGATIVE[group]
    else:
        lexicon = SHARED_POSITIVE if positive else SHARED_NEGATIVE
    return str(rng.choice(lexicon))


def _sentence(group: str, positive: bool, rng: np.random.Generator) -> str:
    words = list(rng.choice(FILLER, size=int(rng.integers(4, 8))))
    words += list(rng.choice(MARKERS[group], size=2, replace=False))
    words += [_cue(group, positive, rng), _cue(group, positive, rng)]
    rng.shuffle(words)
    return " ".join(words)


def public_examples(group: str, count: int, *, seed: int) -> list[tuple[str, int]]:
    """``count`` (sentence, label) of ``group`` from the generator itself: the recipe's
    public material for synthesis (a seed of its own, no row of any run's data)."""
    rng = np.random.default_rng([seed, sorted(GROUP_SHARES).index(group)])
    positive = rng.random(count) < POSITIVE_RATE[group]
    return [(_sentence(group, bool(p), rng), int(p)) for p in positive]


def generate(num_examples: int, rng: np.random.Generator) -> Dataset:
    """Generate ``num_examples`` rows with columns ``text``, ``label``, ``group``."""
    texts: list[str] = []
    labels: list[int] = []
    groups: list[str] = []
    for group, size in group_sizes(num_examples).items():
        positive = rng.random(size) < POSITIVE_RATE[group]
        for is_positive in positive:
            texts.append(_sentence(group, bool(is_positive), rng))
            flipped = rng.random() < LABEL_NOISE
            labels.append(int(is_positive != flipped))
            groups.append(group)
    order = rng.permutation(len(texts))
    features = Features(
        {"text": Value("string"), "label": ClassLabel(names=list(LABEL_NAMES)),
         "group": Value("string")}
    )  # fmt: skip
    columns: dict[str, list[Any]] = {"text": texts, "label": labels, "group": groups}
    return Dataset.from_dict(
        {name: [values[i] for i in order] for name, values in columns.items()}, features=features
    )


def load_synthetic(num_examples: int, *, test_fraction: float, seed: int) -> DatasetDict:
    """Independent train and test draws; both keep the population's group shares exactly.

    Kept on disk (Arrow) under the cache root, keyed by this generator's source and the
    arguments: drawing 10,000 sentences takes ~0.5 s of every process that loads them
    (the launcher, the ServerApp, each Ray worker), loading them back ~5 ms.
    """
    source = Path(__file__).read_bytes()
    key = hashlib.sha256(source + repr((num_examples, test_fraction, seed)).encode())
    target = cache_root() / "synthetic" / key.hexdigest()[:32]
    with contextlib.suppress(OSError, ValueError):  # absent, or unreadable: draw again
        return load_from_disk(str(target))  # type: ignore[return-value]
    splits = _draw_splits(num_examples, test_fraction=test_fraction, seed=seed)
    _store(splits, target)
    return splits


def _store(splits: DatasetDict, target: Path) -> None:
    """Save ``splits`` at ``target`` as a whole or not at all (a directory renamed into
    place; a concurrent writer of the same entry wrote the same rows, so its copy stays)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".staging-"))
    shown = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        splits.save_to_disk(str(staging / "splits"))
        os.replace(staging / "splits", target)
    except OSError:  # an unwritable cache, or the entry appeared meanwhile: not an error
        pass
    finally:
        if shown:
            enable_progress_bars()
        shutil.rmtree(staging, ignore_errors=True)


def _draw_splits(num_examples: int, *, test_fraction: float, seed: int) -> DatasetDict:
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    num_test = round(num_examples * test_fraction)
    return DatasetDict(
        {
            "train": generate(num_examples - num_test, train_rng),
            "test": generate(num_test, test_rng),
        }
    )
