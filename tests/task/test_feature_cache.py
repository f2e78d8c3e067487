"""Frozen-encoder features: cached equals fresh, and any changed input misses the cache."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from task.config import load_defaults, parse_run_config
from task.data import Encoded
from task.encoders import file_sha256, model_digest
from task.feature_cache import cache_dir, cached_features, with_features
from task.model import frozen_bottom, load_tokenizer

CFG = parse_run_config(load_defaults()).model
TEXTS = ["yall reckon the food was great", "hella bad dude", "the movie was nice", "ok"] * 3


def encoded(texts: list[str] = TEXTS, max_length: int = 16) -> Encoded:
    tokenizer = load_tokenizer(CFG, [])
    tokens = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                       return_tensors="pt")  # fmt: skip
    n = len(texts)
    return Encoded(tokens["input_ids"], tokens["attention_mask"], torch.zeros(n, dtype=torch.long),
                   torch.zeros(n, dtype=torch.long))  # fmt: skip


@pytest.mark.parametrize("finetune", ["head", "top-layers"])
def test_cached_features_equal_a_fresh_forward(finetune: str) -> None:
    model_cfg = replace(CFG, finetune=finetune, train_layers=1)
    data = encoded()
    bottom, _digest = frozen_bottom(model_cfg)
    fresh = bottom(data.input_ids, data.attention_mask)
    first = with_features(data, model_cfg).features
    files_before = files()
    second = with_features(data, model_cfg).features
    assert first is not None and second is not None
    assert files() == files_before  # the second read came from disk
    mask = data.attention_mask.bool()
    for got in (first, second):
        diff = (got - fresh).abs() if finetune == "head" else (got - fresh)[mask].abs()
        assert float(diff.max()) <= 1e-6


def files() -> set[str]:
    return {p.name for p in cache_dir().glob("*.pt")} if cache_dir().exists() else set()


def test_cache_is_invalidated_when_data_model_or_max_length_change() -> None:
    bottom, digest = frozen_bottom(CFG)
    load, frozen = (lambda: bottom), len(bottom.layers)
    texts = [f"{text} unseen" for text in TEXTS]  # not cached by another test
    data = encoded(texts)
    before = files()
    cached_features(load, frozen, data.input_ids, data.attention_mask, model_digest=digest)
    after_first = files()
    assert len(after_first - before) == 1
    cached_features(load, frozen, data.input_ids, data.attention_mask, model_digest=digest)
    assert files() == after_first  # a hit writes nothing
    changed_text = encoded([*texts[:-1], "something else entirely"])
    cached_features(
        load, frozen, changed_text.input_ids, changed_text.attention_mask, model_digest=digest
    )
    shorter = encoded(texts, max_length=12)
    cached_features(load, frozen, shorter.input_ids, shorter.attention_mask, model_digest=digest)
    cached_features(load, frozen, data.input_ids, data.attention_mask, model_digest="other-model")
    assert len(files() - after_first) == 3


def test_not_cached_for_lora_or_full() -> None:
    data = encoded()
    assert with_features(data, replace(CFG, finetune="lora")).features is None


def _save_bert(folder: Path, seed: int) -> None:
    """A small random BERT under MiniLM's vocabulary, as ``save_pretrained`` writes it."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30_522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64)  # fmt: skip
    staging = folder.with_name(folder.name + f"-{seed}")
    BertModel(config).save_pretrained(staging)
    folder.mkdir(exist_ok=True)
    for path in staging.iterdir():
        os.replace(path, folder / path.name)  # the weights change in place, same path


def test_a_folder_whose_weights_change_is_featurised_by_the_new_weights(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    _save_bert(folder, seed=1)
    model_cfg = replace(CFG, name=str(folder), finetune="head")
    data = encoded()
    before = with_features(data, model_cfg).features
    _save_bert(folder, seed=2)
    after = with_features(data, model_cfg).features
    assert before is not None and after is not None
    assert float((after - before).abs().max()) > 1e-3
    fresh, _ = frozen_bottom(model_cfg)
    expected = fresh(data.input_ids, data.attention_mask)
    assert float((after - expected).abs().max()) <= 1e-6


def test_a_file_replaced_with_its_size_and_mtime_restored_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 64)
    first = file_sha256(path)
    stat = path.stat()
    path.write_bytes(b"b" * 64)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as `cp -p` or `rsync -a` do
    assert file_sha256(path) != first


def test_a_folder_without_weights_has_no_digest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weight file"):
        model_digest(str(tmp_path))


def test_a_write_trims_the_cache_to_its_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDEQUITY_CACHE", str(tmp_path))
    bottom, digest = frozen_bottom(CFG)
    load, frozen = (lambda: bottom), len(bottom.layers)
    first, second = encoded(TEXTS[:4]), encoded(TEXTS[4:7])
    cached_features(load, frozen, first.input_ids, first.attention_mask, model_digest=digest)
    (one,) = files()
    size = (cache_dir() / one).stat().st_size
    monkeypatch.setenv("FEDEQUITY_FEATURE_CACHE_GB", str(size * 1.5 / 1e9))
    cached_features(load, frozen, second.input_ids, second.attention_mask, model_digest=digest)
    (kept,) = files()
    assert kept != one  # the older entry went, the one just written stayed
