"""Augmentation of scarce groups: counterfactual variants and public synthesized examples.

``augment.method = "counterfactual"``: every training record gets up to ``augment.k``
variants with its group's identity terms swapped for another group's
(:mod:`task.lexicon`). Under DP a record and its variants are one privacy unit: the
per-sample gradients of its rows (all of them, or its worst one under
``augment.variant-loss = "worst"``) are averaged before clipping (``WeightedDPOptimizer``,
augmentation multiplicity, De et al. 2022), so the accountant's (σ, q, steps) are those
without augmentation. Without DP the variants are plain extra rows under ``"mean"``.

``augment.method = "synthesize"``: groups whose (released) local share is below
``augment.min-share`` get examples made from the recipe's *public* material only, so they
cost no ε: for ``hatecheck`` the templates (``case_templ``) of the training split, with the
identity placeholders filled by the group's lexicon terms (test templates never enter);
for ``synthetic`` the generator itself, run with a fixed public seed, never the run's
data. How many a client adds depends only on its released counts (post-processing).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from task import recipes
from task.config import AugmentConfig, DataConfig
from task.data import Encoded, encode
from task.lexicon import Lexicon, load_lexicon

LEXICONS = Path(__file__).with_name("lexicons")
#: the public seed of synthesized examples: fixed, unrelated to any run's data seed
PUBLIC_SEED = 20_231_130
POOL_PER_GROUP = 400


def lexicon_path(augment: AugmentConfig, dataset: str) -> Path:
    """``augment.lexicon``, else the lexicon the dataset's recipe ships."""
    if augment.lexicon:
        return Path(augment.lexicon)
    return LEXICONS / f"{dataset}.json"


@lru_cache(maxsize=4)
def lexicon_for(augment: AugmentConfig, dataset: str) -> Lexicon:
    return load_lexicon(lexicon_path(augment, dataset))


def check_augmentation(
    augment: AugmentConfig, data: DataConfig, groups: list[str] | None = None
) -> None:
    """Raise the error a client would (a malformed lexicon names its file and line); with
    the data's ``groups``, also where the lexicon's groups are not the data's."""
    if augment.method == "none":
        return
    lexicon = lexicon_for(augment, data.dataset)
    path = lexicon_path(augment, data.dataset)
    if augment.counterfactual and not lexicon.label_preserving:
        raise ValueError(
            f"augment.method='counterfactual': the lexicon {path} declares label_preserving "
            "= false (swapping its groups changes labels); valid: augment.method='none' or a "
            "label-preserving lexicon"
        )
    shared = [g for g in lexicon.groups if g in (groups or [])]
    if augment.counterfactual and groups is not None and len(shared) < 2:
        # a record is swapped only into groups the data has: fewer than two, no variant
        raise ValueError(
            f"augment.lexicon: {path} names the groups {lexicon.groups}, of which the data "
            f"has {shared}; counterfactuals need at least 2 of the data's groups {groups} "
            "(group names are case-sensitive)"
        )
    if augment.synthesize and data.dataset == "hatecheck":  # its templates must be readable
        recipes.hatecheck_training_templates(data.path, test_fraction=data.test_fraction, seed=0)


def target_order(group: str, groups: list[str], rng: np.random.Generator) -> list[str]:
    others = [g for g in groups if g != group]
    return [others[i] for i in rng.permutation(len(others))]


def counterfactual_variants(
    texts: list[str], groups: list[str], lexicon: Lexicon, *, k: int, seed: int
) -> list[list[tuple[str, str]]]:
    """Per record, up to ``k`` (text, target group) counterfactuals, targets in a seeded
    order so a record's variants spread over the other groups.

    Each record's order is seeded by ``seed`` and the record itself, never by a stream
    shared with the other records: a record's variants (and so its gradient) must not
    change when another record is added or removed, or the per-record bound breaks."""
    return [
        lexicon.counterfactuals(text, group, k, target_order(group, lexicon.groups,
                                                             _record_rng(seed, text, group)))
        for text, group in zip(texts, groups, strict=True)
    ]  # fmt: skip


def _record_rng(seed: int, text: str, group: str) -> np.random.Generator:
    digest = hashlib.blake2b(f"{group}\x00{text}".encode(), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


def variant_table(
    texts: list[str], labels: list[int], groups: list[str],
    variants: list[list[tuple[str, str]]], *, k: int,
) -> tuple[Dataset, np.ndarray]:  # fmt: skip
    """Variants as ``len(texts) * k`` record-major rows and the (n, k) mask of real ones;
    a missing variant repeats its record (masked out, never trained on)."""
    rows: dict[str, list] = {"text": [], "label": [], "group": []}
    valid = np.zeros((len(texts), k), dtype=bool)
    for i, (text, label, group) in enumerate(zip(texts, labels, groups, strict=True)):
        for j in range(k):
            real = j < len(variants[i])
            variant_text, variant_group = variants[i][j] if real else (text, group)
            rows["text"].append(variant_text)
            rows["label"].append(label)
            rows["group"].append(variant_group)  # a variant belongs to its target group
            valid[i, j] = real
    return Dataset.from_dict(rows), valid


def synthesis_counts(
    counts: np.ndarray, *, min_share: float, available: dict[int, int]
) -> dict[int, int]:
    """How many public examples each scarce group (by index) gets: enough to lift its share
    of ``counts`` (released ones under DP) to ``min_share``, at most ``available``."""
    total = float(np.clip(counts, 0, None).sum())
    wanted = {}
    for group, pool_size in available.items():
        have = max(float(counts[group]), 0.0)
        if total <= 0 or have / total >= min_share:
            continue
        # (have + m) / (total + m) = min_share
        missing = math.ceil((min_share * total - have) / (1 - min_share))
        wanted[group] = min(pool_size, missing)
    return {g: m for g, m in wanted.items() if m > 0}


def _fill(template: str, terms: dict[str, str]) -> str | None:
    """A HateCheck template with its identity placeholders filled; None if it has none
    (not about a group) or needs one the lexicon has no term for (slurs are not listed
    per group)."""
    if not any(placeholder in template for placeholder in recipes.HATECHECK_PLACEHOLDER_FORMS):
        return None
    text = template
    for placeholder, form in recipes.HATECHECK_PLACEHOLDER_FORMS.items():
        if placeholder in text:
            if form not in terms:
                return None
            text = text.replace(placeholder, terms[form])
    return None if "[" in text else " ".join(text.split())


def _hatecheck_pool(data: DataConfig, lexicon: Lexicon, seed: int) -> dict[str, list]:
    templates = recipes.hatecheck_training_templates(
        data.path, test_fraction=data.test_fraction, seed=seed
    )
    pool: dict[str, list[tuple[str, int]]] = {}
    for group in lexicon.groups:
        filled = [(_fill(t, dict(lexicon.terms[group])), label) for t, label in templates]
        pool[group] = [(text, label) for text, label in filled if text]
    return pool


def _synthetic_pool(lexicon: Lexicon) -> dict[str, list]:
    from task.synthetic import public_examples

    return {g: public_examples(g, POOL_PER_GROUP, seed=PUBLIC_SEED) for g in lexicon.groups}


def public_pool(augment: AugmentConfig, data: DataConfig, seed: int, groups: list[str]) -> Dataset:
    """The recipe's public examples per group of ``groups``, shuffled with the public seed,
    at most ``POOL_PER_GROUP`` each: columns text, label, group."""
    lexicon = lexicon_for(augment, data.dataset)
    if data.dataset == "hatecheck":
        # the template split depends on the run seed: only training templates are public
        pool = _hatecheck_pool(data, lexicon, seed)
    else:
        pool = _synthetic_pool(lexicon)
    rng = np.random.default_rng(PUBLIC_SEED)
    rows: dict[str, list] = {"text": [], "label": [], "group": []}
    for group in sorted(set(pool) & set(groups)):
        examples = pool[group]
        for index in rng.permutation(len(examples))[:POOL_PER_GROUP]:
            text, label = examples[index]
            rows["text"].append(text)
            rows["label"].append(int(label))
            rows["group"].append(group)
    return Dataset.from_dict(rows)


def with_counterfactuals(
    ds: Dataset, encoded: Encoded, augment: AugmentConfig, dataset: str, *,
    tokenizer: PreTrainedTokenizerBase, groups: list[str], max_length: int, seed: int,
) -> Encoded:  # fmt: skip
    """``encoded`` (the rows of ``ds``) with up to ``augment.k`` counterfactuals a row
    attached (no more slots than there are other groups)."""
    lexicon = lexicon_for(augment, dataset)
    known = [g for g in lexicon.groups if g in groups]  # targets the data knows
    restricted = dataclasses.replace(lexicon, terms={g: lexicon.terms[g] for g in known})
    rows = ds[:]
    k = max(1, min(augment.k, len(known) - 1))  # a record has at most one variant per other group
    variants = counterfactual_variants(rows["text"], rows["group"], restricted, k=k, seed=seed)
    table, valid = variant_table(rows["text"], rows["label"], rows["group"], variants, k=k)
    return dataclasses.replace(
        encoded,
        variants=encode(table, tokenizer, groups, max_length),
        variant_valid=torch.from_numpy(valid),
    )


def synthesized_rows(pool: Encoded, counts: np.ndarray, *, min_share: float) -> Encoded:
    """The first public examples of each group whose share of ``counts`` is below
    ``min_share`` (:func:`synthesis_counts`); ``pool`` is :func:`public_pool` encoded."""
    pool_groups = pool.groups.numpy()
    available = {int(g): int((pool_groups == g).sum()) for g in np.unique(pool_groups)}
    wanted = synthesis_counts(counts, min_share=min_share, available=available)
    chosen = [np.flatnonzero(pool_groups == g)[:m] for g, m in wanted.items()]
    rows = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return pool.select(torch.from_numpy(rows.astype(np.int64)))
