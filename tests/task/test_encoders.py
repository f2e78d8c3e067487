"""The offline MiniLM, its checksum, and the frozen/trained split of head/top-layers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers.masking_utils import create_bidirectional_mask

from task import encoders
from task.config import load_defaults, parse_run_config
from task.encoders import (
    MINILM_SHA256,
    load_encoder,
    mean_pool,
    minilm_folder,
    resolve_model_name,
    split_encoder,
    verify_checksum,
)
from task.model import build_model, check_model_source, load_tokenizer

CFG = parse_run_config(load_defaults()).model
TEXTS = ["yall reckon the food was great", "hella bad dude", "the movie was quite nice indeed"]


def batch(texts: list[str] = TEXTS) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(CFG, [])
    return dict(tokenizer(texts, padding="max_length", max_length=16, return_tensors="pt"))


def test_minilm_resolves_offline_to_the_installed_package() -> None:
    folder = minilm_folder()
    assert "site-packages" in str(folder) or "dist-packages" in str(folder)
    assert resolve_model_name("minilm") == str(folder)
    assert resolve_model_name("some/hub-model") == "some/hub-model"
    encoder = load_encoder(str(folder))
    assert encoder.config.hidden_size == 384 and encoder.config.num_hidden_layers == 6
    assert len(load_tokenizer(CFG, [])) == 30522
    check_model_source(CFG, online=False)  # offline, no hub


def test_checksum_mismatch_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match=r"model.name='minilm'.*sha256.*expected " + MINILM_SHA256):
        verify_checksum(fake, MINILM_SHA256)


def test_a_tampered_package_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "MINILM_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="not the pinned all-MiniLM-L6-v2"):
        minilm_folder()


@pytest.mark.parametrize("train_layers", [0, 1, 2])
def test_bottom_then_top_layers_equal_the_whole_encoder(train_layers: int) -> None:
    encoder = load_encoder(resolve_model_name("minilm"))
    inputs = batch()
    with torch.no_grad():
        whole = mean_pool(encoder(**inputs).last_hidden_state, inputs["attention_mask"])
    bottom, top = split_encoder(encoder, train_layers=train_layers, head_hidden=8, num_labels=2)
    features = bottom(inputs["input_ids"], inputs["attention_mask"])
    top.eval()
    with torch.no_grad():
        hidden = features
        if train_layers:
            mask = create_bidirectional_mask(
                config=top.config, inputs_embeds=features, attention_mask=inputs["attention_mask"]
            )
            for layer in top.layers:
                hidden = layer(hidden, mask)
            hidden = mean_pool(hidden, inputs["attention_mask"])
    torch.testing.assert_close(hidden, whole, atol=1e-5, rtol=1e-5)
    assert len(top.layers) == train_layers
    assert not any(p.requires_grad for p in bottom.parameters())


def test_head_model_is_seeded_and_only_the_top_trains() -> None:
    tokenizer = load_tokenizer(CFG, [])
    first = build_model(CFG, tokenizer, num_labels=2, seed=3)
    second = build_model(CFG, tokenizer, num_labels=2, seed=3)
    for (name, a), (_, b) in zip(
        first.state_dict().items(), second.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert sum(p.numel() for p in first.parameters()) == 384 * 64 + 64 + 64 * 2 + 2
    top = build_model(replace(CFG, finetune="top-layers", train_layers=2), tokenizer, 2, seed=3)
    assert len(top.layers) == 2  # type: ignore[arg-type]


def test_head_model_from_the_config_equals_the_split_encoders_head() -> None:
    """``head`` mode builds its MLP without loading the encoder: the same seeded weights."""
    built = build_model(CFG, load_tokenizer(CFG, []), num_labels=2, seed=5)
    encoder = load_encoder(resolve_model_name("minilm"))
    torch.manual_seed(5)
    _, split = split_encoder(encoder, train_layers=0, head_hidden=CFG.head_hidden, num_labels=2)
    for (name, a), (_, b) in zip(
        built.state_dict().items(), split.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_head_training_never_imports_transformers_modeling_code() -> None:
    """A head-mode process whose features are cached builds, featurises and trains without
    transformers' modeling code (~1 s of start-up in every Ray actor)."""
    script = textwrap.dedent(f"""
        import sys
        from task.config import load_defaults, parse_run_config
        from task.data import encode
        from task.feature_cache import with_features
        from task.model import build_model, load_tokenizer
        cfg = parse_run_config(load_defaults()).model
        tokenizer = load_tokenizer(cfg, [])
        model = build_model(cfg, tokenizer, num_labels=2, seed=0)
        import datasets
        rows = datasets.Dataset.from_dict({{"text": {TEXTS!r}, "label": [0, 1, 1],
                                           "group": ["a", "b", "a"]}})
        data = with_features(encode(rows, tokenizer, ["a", "b"], cfg.max_length), cfg)
        model(data.features, data.attention_mask).sum().backward()
        print(sorted(m for m in sys.modules if m.startswith(("transformers.models.bert.modeling",
              "transformers.modeling_utils", "peft"))))
    """)
    warm = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)  # fmt: skip
    assert warm.stdout  # the first run may compute (and store) the features
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert again.stdout.strip() == "[]", again.stdout


def test_too_many_train_layers_name_the_key() -> None:
    encoder = load_encoder(resolve_model_name("minilm"))
    with pytest.raises(ValueError, match=r"model.train-layers=7.*0..6"):
        split_encoder(encoder, train_layers=7, head_hidden=8, num_labels=2)
