"""DP-SGD on other Hugging Face architectures, loaded by path as a user would name them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from clients.dp_sgd import make_private
from clients.training import make_loader, per_example_loss
from task.config import load_defaults, parse_run_config
from task.data import Encoded
from task.model import build_model, exchanged_state, load_tokenizer, train_wordpiece

TEXTS = [f"yall reckon the food was great {i}" for i in range(64)]


def checkpoint(arch: str, path: Path) -> Path:
    tokenizer = train_wordpiece(TEXTS, 200)
    vocab = len(tokenizer)
    config: PretrainedConfig
    model: PreTrainedModel
    if arch == "distilbert":
        config = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=32, pad_token_id=0)  # fmt: skip
        model = DistilBertForSequenceClassification(config)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=32,
                            pad_token_id=0)  # fmt: skip
        model = GPT2ForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("arch", ["distilbert", "gpt2"])
@pytest.mark.parametrize("lora_r", [0, 4])
def test_one_private_step_runs_and_moves_only_trainable_weights(
    arch: str, lora_r: int, tmp_path: Path
) -> None:
    defaults = parse_run_config(load_defaults()).model
    finetune = "lora" if lora_r else "full"
    cfg = replace(defaults, name=str(checkpoint(arch, tmp_path)), finetune=finetune, lora_r=lora_r)
    tokenizer = load_tokenizer(cfg, [])
    model = build_model(cfg, tokenizer, num_labels=2, seed=0)
    batch = tokenizer(TEXTS[:16], padding="max_length", truncation=True, max_length=16,
                      return_tensors="pt")  # fmt: skip
    data = Encoded(batch["input_ids"], batch["attention_mask"], torch.randint(0, 2, (16,)),
                   torch.zeros(16, dtype=torch.long))  # fmt: skip
    before = {k: v.clone() for k, v in exchanged_state(model).items()}
    whole_before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    module, optimizer, _ = make_private(
        model, torch.optim.SGD(params, lr=0.1), make_loader(data, torch.ones(16), 16, seed=0),
        noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
    )  # fmt: skip
    optimizer.zero_grad()
    losses, _ = per_example_loss(module, [data.input_ids, data.attention_mask, data.labels])
    losses.mean().backward()
    optimizer.step()
    after = exchanged_state(model)
    assert after.keys() == before.keys()
    assert all(not torch.equal(after[k], before[k]) for k in after if after[k].is_floating_point())
    if lora_r:
        assert all("lora_" in k or "score" in k or "classifier" in k for k in after)
    # Every weight that is not exchanged (the frozen base under LoRA) is untouched.
    frozen = [k for k in whole_before if k not in before]
    assert bool(frozen) == bool(lora_r)
    whole_after = model.state_dict()
    assert all(torch.equal(whole_after[k], whole_before[k]) for k in frozen)
