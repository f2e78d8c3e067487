"""Run configuration: parsed once from Flower's run-config into frozen dataclasses.

Every key and its default lives in ``[tool.flwr.app.config]`` of ``pyproject.toml``;
this module only checks types and ranges, so defaults are never repeated in code.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

STRATEGIES = ("fedavg", "representation", "qfedavg", "fairfed")
DATASETS = ("synthetic", "csv", "jsonl", "parquet", "hf", "adult", "hatecheck")
PARTITION_METHODS = ("dirichlet", "iid", "label")
DP_MODES = ("off", "local", "central", "both")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
OPTIMIZERS = ("adamw", "sgd")
LOCAL_WEIGHTINGS = ("post-clip", "pre-clip", "sampling", "off")
FINETUNE_MODES = ("head", "top-layers", "lora", "full")
AUGMENT_METHODS = ("none", "counterfactual", "synthesize")
#: datasets whose recipe ships a lexicon (task/lexicons/) and public synthesis material
AUGMENT_RECIPES = ("synthetic", "hatecheck")
TINY_MODEL = "tiny-bert"


@dataclass(frozen=True)
class DataConfig:
    dataset: str
    path: str
    name: str
    text_column: str
    label_column: str
    group_column: str
    test_fraction: float
    synthetic_examples: int
    group_shares: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PartitionConfig:
    method: str
    alpha: float


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden_size: int
    num_layers: int
    max_length: int
    vocab_size: int
    init_range: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    finetune: str
    train_layers: int
    head_hidden: int

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY_MODEL

    @property
    def uses_feature_cache(self) -> bool:
        """``head``/``top-layers``: a frozen bottom computed once, a small top trained."""
        return self.finetune in ("head", "top-layers")

    @property
    def trained_layers(self) -> int:
        """Encoder layers above the cached features (0 in ``head`` mode)."""
        return self.train_layers if self.finetune == "top-layers" else 0


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str

    def make_optimizer(self, params: Any) -> Any:
        """AdamW, or SGD with momentum 0.9 (the usual choice for DP-SGD from scratch)."""
        import torch  # local: task/config.py is read by processes that never train

        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.learning_rate, momentum=0.9)
        return torch.optim.AdamW(params, lr=self.learning_rate)


@dataclass(frozen=True)
class DPConfig:
    mode: str
    target_epsilon: float
    delta: float  # 0 means "1/(10·n) of the client's data"
    max_grad_norm: float
    accountant: str
    grad_sample_mode: str
    stats_noise: float
    central_noise: float
    central_clip: float
    central_delta: float
    plan_quantile: float = 0.999  # plan for this quantile of Binomial(rounds, fraction-train)
    planned_participations: int = 0  # > 0: plan for exactly this many instead

    @property
    def local(self) -> bool:
        return self.mode in ("local", "both")

    @property
    def central(self) -> bool:
        return self.mode in ("central", "both")


@dataclass(frozen=True)
class FairConfig:
    alpha: float
    cap: float
    local_weighting: str
    local_alpha: float
    local_max_weight: float
    fairfed_beta: float
    count_threshold: float
    qfedavg_q: float
    qfedavg_learning_rate: float


@dataclass(frozen=True)
class AugmentConfig:
    method: str
    k: int
    lexicon: str  # "" = the dataset recipe's own
    min_share: float

    @property
    def counterfactual(self) -> bool:
        return self.method == "counterfactual"

    @property
    def synthesize(self) -> bool:
        return self.method == "synthesize"


@dataclass(frozen=True)
class RunConfig:
    seed: int
    num_server_rounds: int
    strategy: str
    fraction_train: float
    fraction_evaluate: float
    output_dir: str
    data: DataConfig
    partition: PartitionConfig
    model: ModelConfig
    train: TrainConfig
    dp: DPConfig
    fair: FairConfig
    augment: AugmentConfig


def _one_of(*valid: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in valid else f"one of {', '.join(repr(x) for x in valid)}"


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"a number >= {low}"


def _above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"a number > {low}"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "a number strictly between 0 and 1"


def _fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else "a number in (0, 1]"


def _any(_: Any) -> str | None:
    return None


# key -> (python type, check returning "what would be valid" or None)
SCHEMA: dict[str, tuple[type, Callable[[Any], str | None]]] = {
    "seed": (int, _at_least(0)),
    "num-server-rounds": (int, _at_least(1)),
    "strategy": (str, _one_of(*STRATEGIES)),
    "fraction-train": (float, _fraction),
    # Flower's fraction_evaluate: 0 = no federated evaluation (the server's test set stays)
    "fraction-evaluate": (float, lambda v: None if 0 <= v <= 1 else "a number in [0, 1]"),
    "output-dir": (str, lambda v: None if v else "a non-empty path"),
    "dataset": (str, _one_of(*DATASETS)),
    "data.path": (str, _any),
    "data.name": (str, _any),
    "data.text-column": (str, lambda v: None if v else "a column name"),
    "data.label-column": (str, lambda v: None if v else "a column name"),
    "data.group-column": (str, lambda v: None if v else "a column name"),
    "data.test-fraction": (float, _open_unit),
    "data.group-shares": (str, lambda v: _group_shares_error(v)),
    "synthetic.num-examples": (int, _at_least(200)),
    "partition.method": (str, _one_of(*PARTITION_METHODS)),
    "partition.alpha": (float, _above(0)),
    "model.name": (str, lambda v: None if v else f"{TINY_MODEL!r}, a local path or a hub name"),
    # tiny-bert has one attention head per 32 dims, and the heads must divide the width
    "model.hidden-size": (
        int,
        lambda v: (
            None
            if 16 <= v < 32 or (32 <= v <= 1024 and v % 32 == 0)
            else "an int in [16, 31] or a multiple of 32 up to 1024"
        ),
    ),
    "model.num-layers": (int, lambda v: None if 1 <= v <= 24 else "an int in [1, 24]"),
    "model.max-length": (int, lambda v: None if 8 <= v <= 512 else "an int in [8, 512]"),
    "model.vocab-size": (int, _at_least(100)),
    "model.init-range": (float, _above(0)),
    "model.finetune": (str, _one_of(*FINETUNE_MODES)),
    "model.train-layers": (int, lambda v: None if 1 <= v <= 48 else "an int in [1, 48]"),
    "model.head-hidden": (int, lambda v: None if 1 <= v <= 4096 else "an int in [1, 4096]"),
    "model.lora.r": (int, _at_least(1)),
    "model.lora.alpha": (int, _at_least(1)),
    "model.lora.dropout": (float, lambda v: None if 0 <= v < 1 else "a number in [0, 1)"),
    "train.local-epochs": (int, _at_least(1)),
    "train.batch-size": (int, _at_least(1)),
    "train.learning-rate": (float, _above(0)),
    "train.optimizer": (str, _one_of(*OPTIMIZERS)),
    "dp.mode": (str, _one_of(*DP_MODES)),
    "dp.target-epsilon": (float, _above(0)),
    "dp.delta": (
        float,
        lambda v: None if 0 <= v < 1 else "0 (auto: 1/(10·n)) or a number in (0, 1)",
    ),
    "dp.max-grad-norm": (float, _above(0)),
    "dp.accountant": (str, _one_of(*ACCOUNTANTS)),
    "dp.grad-sample-mode": (str, _one_of(*GRAD_SAMPLE_MODES)),
    "dp.stats-noise": (float, _above(0)),
    "dp.central-noise": (float, _at_least(0)),
    "dp.central-clip": (float, _above(0)),
    "dp.central-delta": (float, _open_unit),
    "dp.plan-quantile": (float, lambda v: None if 0.5 <= v < 1 else "a number in [0.5, 1)"),
    "dp.planned-participations": (int, _at_least(0)),
    # (1/p)^α with p floored at 1e-6 overflows float64 for α above ~51; 10 is far past 1
    "fair.alpha": (float, lambda v: None if 0 <= v <= 10 else "a number in [0, 10]"),
    "fair.cap": (float, _at_least(1)),
    "fair.local-weighting": (str, _one_of(*LOCAL_WEIGHTINGS)),
    "fair.local-alpha": (float, _at_least(0)),
    "fair.local-max-weight": (float, _at_least(1)),
    "fair.fairfed-beta": (float, _at_least(0)),
    "fair.count-threshold": (float, lambda v: None if 0 <= v <= 10 else "a number in [0, 10]"),
    "augment.method": (str, _one_of(*AUGMENT_METHODS)),
    "augment.k": (int, lambda v: None if 1 <= v <= 16 else "an int in [1, 16]"),
    "augment.lexicon": (str, _any),
    "augment.min-share": (float, _open_unit),
    "qfedavg.q": (float, _at_least(0)),
    "qfedavg.learning-rate": (float, _above(0)),
}


def parse_group_shares(text: str) -> tuple[tuple[str, float], ...]:
    """``"women=0.35, gay people=0.2"`` → ``(("women", 0.35), ("gay people", 0.2))``."""
    if not text.strip():
        return ()
    pairs = []
    for item in text.split(","):
        name, sep, share = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected 'group=share', got {item.strip()!r}")
        pairs.append((name.strip(), float(share)))
    return tuple(pairs)


def _group_shares_error(text: str) -> str | None:
    valid = "'' (keep the data as it is) or 'group=share, ...' with shares in (0, 1] summing to 1"
    try:
        pairs = parse_group_shares(text)
    except ValueError as error:
        return f"{valid} ({error})"
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names) or any(not 0 < s <= 1 for _, s in pairs):
        return valid
    if pairs and abs(sum(s for _, s in pairs) - 1) > 1e-6:
        return valid
    return None


def load_defaults(pyproject: Path = PYPROJECT) -> dict[str, Any]:
    """Return ``[tool.flwr.app.config]`` of ``pyproject.toml`` as flat dotted keys."""
    with pyproject.open("rb") as handle:
        table = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    return flatten(table)


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested TOML tables into dotted keys, as Flower does for run-config."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _typed(key: str, value: Any) -> Any:
    expected, check = SCHEMA[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ValueError(
            f"run-config key {key!r}: expected {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    if (valid := check(value)) is not None:
        raise ValueError(f"run-config key {key!r}: got {value!r}; valid: {valid}")
    return value


def validate_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key is known, present and valid; return the typed values."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        raise ValueError(
            f"unknown run-config key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(SCHEMA))}"
        )
    missing = sorted(set(SCHEMA) - set(raw))
    if missing:
        raise ValueError(f"missing run-config key(s): {', '.join(map(repr, missing))}")
    return {key: _typed(key, value) for key, value in raw.items()}


def _check_combinations(v: Mapping[str, Any]) -> None:
    table_like = ("csv", "jsonl", "parquet", "adult", "hatecheck")
    if v["dataset"] in table_like and not v["data.path"]:
        raise ValueError(
            f"run-config key 'data.path' is required for dataset={v['dataset']!r} "
            "(a file for csv/jsonl/parquet, a folder for adult/hatecheck)"
        )
    if v["dataset"] == "hf" and not v["data.name"]:
        raise ValueError("run-config key 'data.name' is required for dataset='hf'")
    if v["model.name"] == TINY_MODEL and v["model.finetune"] in ("head", "top-layers"):
        raise ValueError(
            f"run-config key 'model.finetune': {v['model.finetune']!r} freezes a pretrained "
            f"encoder, but {TINY_MODEL!r} is trained from scratch; valid: 'full' or 'lora', or "
            "a pretrained model.name such as 'minilm'"
        )
    _check_augment(v)
    if v["dp.planned-participations"] > v["num-server-rounds"]:
        raise ValueError(
            f"run-config key 'dp.planned-participations': {v['dp.planned-participations']} "
            f"exceeds num-server-rounds={v['num-server-rounds']}; valid: 0 (plan for "
            "dp.plan-quantile) or 1..num-server-rounds"
        )
    if v["strategy"] == "qfedavg" and v["dp.mode"] in ("central", "both"):
        # q-FedAvg divides every update by Σ_i h_i, which depends on all clients' update
        # norms: one client changes everyone's coefficient, so C·max w does not bound its
        # effect and the central accountant's ε would not hold.
        raise ValueError(
            "run-config key 'dp.mode': central DP is not available with strategy='qfedavg' "
            "(its step depends on every client's update norm, so one client's influence is "
            "not bounded by the clip); valid: 'off' or 'local', or another strategy"
        )


def _check_augment(v: Mapping[str, Any]) -> None:
    method, dataset = v["augment.method"], v["dataset"]
    if method == "synthesize" and dataset not in AUGMENT_RECIPES:
        raise ValueError(
            f"run-config key 'augment.method': 'synthesize' needs public material of the "
            f"dataset's recipe, which only {', '.join(map(repr, AUGMENT_RECIPES))} ship; "
            f"dataset={dataset!r} has none; valid: 'none' or 'counterfactual' with augment.lexicon"
        )
    if method == "counterfactual" and dataset not in AUGMENT_RECIPES and not v["augment.lexicon"]:
        raise ValueError(
            f"run-config key 'augment.lexicon' is required for augment.method='counterfactual' "
            f"with dataset={dataset!r} (only {', '.join(map(repr, AUGMENT_RECIPES))} ship one): "
            "a JSON or CSV file of group -> terms"
        )


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's flat run-config and build the frozen :class:`RunConfig`."""
    v = validate_keys(raw)
    _check_combinations(v)
    return RunConfig(
        seed=v["seed"],
        num_server_rounds=v["num-server-rounds"],
        strategy=v["strategy"],
        fraction_train=v["fraction-train"],
        fraction_evaluate=v["fraction-evaluate"],
        output_dir=v["output-dir"],
        data=DataConfig(
            dataset=v["dataset"],
            path=v["data.path"],
            name=v["data.name"],
            text_column=v["data.text-column"],
            label_column=v["data.label-column"],
            group_column=v["data.group-column"],
            test_fraction=v["data.test-fraction"],
            synthetic_examples=v["synthetic.num-examples"],
            group_shares=parse_group_shares(v["data.group-shares"]),
        ),
        partition=PartitionConfig(method=v["partition.method"], alpha=v["partition.alpha"]),
        model=ModelConfig(
            name=v["model.name"],
            hidden_size=v["model.hidden-size"],
            num_layers=v["model.num-layers"],
            max_length=v["model.max-length"],
            vocab_size=v["model.vocab-size"],
            init_range=v["model.init-range"],
            lora_r=v["model.lora.r"],
            lora_alpha=v["model.lora.alpha"],
            lora_dropout=v["model.lora.dropout"],
            finetune=v["model.finetune"],
            train_layers=v["model.train-layers"],
            head_hidden=v["model.head-hidden"],
        ),
        train=TrainConfig(
            local_epochs=v["train.local-epochs"],
            batch_size=v["train.batch-size"],
            learning_rate=v["train.learning-rate"],
            optimizer=v["train.optimizer"],
        ),
        dp=DPConfig(
            mode=v["dp.mode"],
            target_epsilon=v["dp.target-epsilon"],
            delta=v["dp.delta"],
            max_grad_norm=v["dp.max-grad-norm"],
            accountant=v["dp.accountant"],
            grad_sample_mode=v["dp.grad-sample-mode"],
            stats_noise=v["dp.stats-noise"],
            central_noise=v["dp.central-noise"],
            central_clip=v["dp.central-clip"],
            central_delta=v["dp.central-delta"],
            plan_quantile=v["dp.plan-quantile"],
            planned_participations=v["dp.planned-participations"],
        ),
        fair=FairConfig(
            alpha=v["fair.alpha"],
            cap=v["fair.cap"],
            local_weighting=v["fair.local-weighting"],
            local_alpha=v["fair.local-alpha"],
            local_max_weight=v["fair.local-max-weight"],
            fairfed_beta=v["fair.fairfed-beta"],
            count_threshold=v["fair.count-threshold"],
            qfedavg_q=v["qfedavg.q"],
            qfedavg_learning_rate=v["qfedavg.learning-rate"],
        ),
        augment=AugmentConfig(
            method=v["augment.method"],
            k=v["augment.k"],
            lexicon=v["augment.lexicon"],
            min_share=v["augment.min-share"],
        ),
    )
