"""Counterfactual variants and synthesized public examples (task/augment.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest

from task import recipes
from task.augment import (
    check_augmentation,
    counterfactual_variants,
    lexicon_for,
    public_pool,
    synthesis_counts,
    variant_table,
)
from task.config import RunConfig, load_defaults, parse_run_config
from tests.conftest import SHARED_DATA

HATECHECK = SHARED_DATA / "hatecheck"
needs_hatecheck = pytest.mark.skipif(
    not HATECHECK.is_dir(),
    reason=f"shared datasets not found at {HATECHECK} (see shared/data/README.md)",
)


def _config(**keys: object) -> RunConfig:
    return parse_run_config(load_defaults() | {"dataset": "hatecheck", "data.path": str(HATECHECK)}
                            | keys)  # fmt: skip


@needs_hatecheck
@pytest.mark.parametrize("seed", [1, 2, 3, 42])
def test_no_hatecheck_test_template_appears_in_any_synthesized_text(seed: int) -> None:
    cfg = _config(**{"augment.method": "synthesize", "seed": seed})
    splits = recipes.load_hatecheck(HATECHECK, test_fraction=cfg.data.test_fraction, seed=seed)
    groups = sorted(set(splits["train"]["group"]) | set(splits["test"]["group"]))
    pool = public_pool(cfg.augment, cfg.data, seed, groups)
    assert len(pool) > 500
    frame = pd.read_csv(HATECHECK / recipes.HATECHECK_FILE)
    test_templates = set(frame["case_templ"][frame["test_case"].str.strip().isin(
        splits["test"]["text"])])  # fmt: skip
    terms = lexicon_for(cfg.augment, "hatecheck").terms
    # every test template filled with every group's terms: none is a synthesized text
    test_fills = {_fills(t, terms[g]) for t in test_templates for g in terms}
    train_fills = {_fills(t, terms[g]) for t in set(frame["case_templ"]) - test_templates
                   for g in terms}  # fmt: skip
    texts = set(pool["text"])
    folded = {" ".join(t.lower().split()) for t in texts}  # case and spacing aside
    assert not folded & {" ".join(t.lower().split()) for t in splits["test"]["text"]}
    assert not texts & test_fills
    assert texts <= train_fills


@needs_hatecheck
def test_synthesized_hatecheck_examples_keep_their_template_label() -> None:
    cfg = _config(**{"augment.method": "synthesize"})
    templates = recipes.hatecheck_training_templates(HATECHECK, test_fraction=0.2, seed=42)
    labels = dict(templates)
    pool = public_pool(cfg.augment, cfg.data, 42, lexicon_for(cfg.augment, "hatecheck").groups)
    terms = lexicon_for(cfg.augment, "hatecheck").terms
    for text, label, group in zip(pool["text"][:200], pool["label"], pool["group"], strict=False):
        filled = [t for t in labels if "[" in t and _fills(t, terms[group]) == text]
        assert filled and {labels[t] for t in filled} == {label}


def _fills(template: str, terms: Mapping[str, str]) -> str:
    for placeholder, form in recipes.HATECHECK_PLACEHOLDER_FORMS.items():
        template = template.replace(placeholder, terms.get(form, placeholder))
    return " ".join(template.split())


def test_hatecheck_counterfactuals_keep_the_label_and_take_the_target_group() -> None:
    cfg = _config(**{"augment.method": "counterfactual", "augment.k": 3})
    lexicon = lexicon_for(cfg.augment, "hatecheck")
    texts = ["I hate women.", "Muslims are lovely.", "Nothing to see here."]
    groups = ["women", "Muslims", "none"]
    variants = counterfactual_variants(texts, groups, lexicon, k=3, seed=0)
    assert [len(v) for v in variants] == [3, 3, 0]
    assert all(g != "women" and "women" not in t for t, g in variants[0])
    table, valid = variant_table(texts, [1, 0, 0], groups, variants, k=3)
    assert valid.tolist() == [[True] * 3, [True] * 3, [False] * 3]
    assert table["label"] == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert table["group"][:3] == [g for _, g in variants[0]]
    assert table["text"][6:] == ["Nothing to see here."] * 3  # masked repeats


def test_a_records_counterfactuals_do_not_depend_on_the_other_records() -> None:
    lexicon = lexicon_for(_config(**{"augment.method": "counterfactual"}).augment, "hatecheck")
    texts = ["I hate women.", "Nothing here.", "Muslims are lovely.", "I hate women."]
    groups = ["women", "none", "Muslims", "women"]
    every = counterfactual_variants(texts, groups, lexicon, k=2, seed=7)
    for removed in range(len(texts)):
        kept = [i for i in range(len(texts)) if i != removed]
        alone = counterfactual_variants([texts[i] for i in kept], [groups[i] for i in kept],
                                        lexicon, k=2, seed=7)  # fmt: skip
        assert alone == [every[i] for i in kept]
    assert every[0] == every[3]  # the same record, the same variants
    assert every[0] != counterfactual_variants(texts[:1], groups[:1], lexicon, k=2, seed=8)[0]


def test_synthesis_lifts_a_scarce_group_to_the_minimum_share() -> None:
    counts = np.array([90.0, 8.0, 2.0, 0.0])
    wanted = synthesis_counts(counts, min_share=0.1, available={1: 100, 2: 100, 3: 5})
    assert wanted[1] == 3 and wanted[2] == 9 and wanted[3] == 5  # group 3: the pool's all
    for group in (1, 2):
        assert (counts[group] + wanted[group]) / (100 + wanted[group]) >= 0.1
    assert 0 not in wanted
    assert synthesis_counts(np.zeros(3), min_share=0.1, available={0: 9}) == {}


def test_counterfactuals_on_a_lexicon_that_is_not_label_preserving_are_refused(
    tmp_path: object,
) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "lex.json"
    path.write_text('{"label_preserving": false, "groups": {"a": {"x": "c"}, "b": {"x": "d"}}}')
    cfg = _config(**{"augment.method": "counterfactual", "augment.lexicon": str(path)})
    with pytest.raises(ValueError, match="label_preserving = false"):
        check_augmentation(cfg.augment, cfg.data)


def test_a_lexicon_whose_groups_are_not_the_datas_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "lex.json"
    path.write_text('{"groups": {"North": {"x": "c"}, "South": {"x": "d"}}}')
    cfg = _config(**{"augment.method": "counterfactual", "augment.lexicon": str(path)})
    groups = ["east", "north", "south", "west"]
    with pytest.raises(ValueError, match=r"augment.lexicon: .*\['North', 'South'\].* has \[\]"):
        check_augmentation(cfg.augment, cfg.data, groups)
    fixed = path.with_name("fixed.json")
    fixed.write_text('{"groups": {"north": {"x": "c"}, "south": {"x": "d"}}}')
    cfg = _config(**{"augment.method": "counterfactual", "augment.lexicon": str(fixed)})
    check_augmentation(cfg.augment, cfg.data, groups)  # two shared groups are enough


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"dataset": "adult", "augment.method": "synthesize"}, "'augment.method': 'synthesize'"),
        ({"dataset": "adult", "augment.method": "counterfactual"}, "'augment.lexicon' is required"),
        ({"augment.method": "mixup"}, "'augment.method'"),
        ({"augment.k": 0}, "'augment.k'"),
        ({"augment.variant-loss": "max"}, "'augment.variant-loss'"),
        ({"augment.min-share": 1.0}, "'augment.min-share'"),
    ],
)
def test_bad_augment_keys_are_refused_by_name(keys: dict, says: str) -> None:
    base = load_defaults() | {"data.path": str(SHARED_DATA / "adult")}
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_run_config(base | keys)


def test_no_more_variant_slots_than_other_groups() -> None:
    """Synthetic data has four groups: a record has at most three counterfactuals, so
    ``augment.k = 16`` must not encode 16 rows a record, 13 of them masked."""
    from datasets import Dataset

    from task.augment import with_counterfactuals
    from task.data import encode
    from task.model import load_tokenizer

    cfg = parse_run_config(load_defaults() | {"augment.method": "counterfactual",
                                              "augment.k": 16})  # fmt: skip
    groups = ["east", "north", "south", "west"]
    ds = Dataset.from_dict({"text": ["indeed the food was great", "hella stoked dude"],
                            "label": [1, 1], "group": ["north", "west"]})  # fmt: skip
    tokenizer = load_tokenizer(cfg.model, [])
    encoded = with_counterfactuals(ds, encode(ds, tokenizer, groups, 16), cfg.augment,
                                   "synthetic", tokenizer=tokenizer, groups=groups,
                                   max_length=16, seed=0)  # fmt: skip
    assert encoded.variant_valid is not None and encoded.variants is not None
    assert tuple(encoded.variant_valid.shape) == (2, 3)
    assert len(encoded.variants) == 6
