from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from task.cache import cache_root
from task.config import load_defaults, parse_run_config
from task.inference import model_inputs
from task.model import (
    build_model,
    exchanged_state,
    load_exchanged,
    load_tokenizer,
    texts_fingerprint,
)

CFG = parse_run_config(
    load_defaults() | {"model.name": "tiny-bert", "model.finetune": "full"}
).model
TEXTS = [f"yall reckon the food was great {i}" for i in range(50)] + ["hella bad dude"] * 10


def logits(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    batch = tokenizer(
        texts, padding="max_length", truncation=True, max_length=16, return_tensors="pt"
    )
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(model, batch["input_ids"], batch["attention_mask"])).logits


def test_tiny_tokenizer_is_trained_once_and_cached() -> None:
    tokenizer = load_tokenizer(CFG, TEXTS)
    cached = cache_root() / "tokenizers" / texts_fingerprint(TEXTS, CFG.vocab_size)
    assert (cached / "tokenizer.json").is_file()
    stamp = (cached / "tokenizer.json").stat().st_mtime_ns
    again = load_tokenizer(CFG, TEXTS)
    assert (cached / "tokenizer.json").stat().st_mtime_ns == stamp
    assert tokenizer("yall reckon")["input_ids"] == again("yall reckon")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("yall")["input_ids"]) == [
        "[CLS]",
        "yall",
        "[SEP]",
    ]


def test_tiny_model_is_seeded_and_small() -> None:
    tokenizer = load_tokenizer(CFG, TEXTS)
    first = build_model(CFG, tokenizer, num_labels=2, seed=1)
    again = build_model(CFG, tokenizer, num_labels=2, seed=1)
    assert torch.equal(logits(first, tokenizer, TEXTS[:4]), logits(again, tokenizer, TEXTS[:4]))
    config: Any = first.config  # build_model returns nn.Module; the config is a BertConfig
    assert config.hidden_size == CFG.hidden_size
    assert config.num_hidden_layers == CFG.num_layers
    assert sum(p.numel() for p in first.parameters()) < 500_000


def test_save_pretrained_folder_loads_by_name(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(CFG, TEXTS)
    model: Any = build_model(CFG, tokenizer, num_labels=2, seed=0)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    by_path = replace(CFG, name=str(tmp_path))
    loaded_tokenizer = load_tokenizer(by_path, [])
    loaded = build_model(by_path, loaded_tokenizer, num_labels=2, seed=99)
    assert torch.allclose(
        logits(model, tokenizer, TEXTS[:4]), logits(loaded, loaded_tokenizer, TEXTS[:4])
    )


def test_lora_exchanges_only_adapters_and_classifier() -> None:
    tokenizer = load_tokenizer(CFG, TEXTS)
    lora = build_model(replace(CFG, finetune="lora", lora_r=4), tokenizer, num_labels=2, seed=0)
    keys = set(exchanged_state(lora))
    assert keys and all("lora_" in k or "classifier" in k for k in keys)
    full = exchanged_state(build_model(CFG, tokenizer, num_labels=2, seed=0))
    sent = sum(t.numel() for t in exchanged_state(lora).values())
    assert sent < sum(t.numel() for t in full.values()) / 5


def test_load_exchanged_rejects_weights_of_another_model() -> None:
    tokenizer = load_tokenizer(CFG, TEXTS)
    model = build_model(CFG, tokenizer, num_labels=2, seed=0)
    state = exchanged_state(model)
    state.pop(next(iter(state)))
    with pytest.raises(ValueError, match="weights do not fit the model: missing"):
        load_exchanged(model, state)
