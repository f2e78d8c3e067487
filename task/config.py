"""Run configuration: parsed once from Flower's run-config into frozen dataclasses.

Every key and its default lives in ``[tool.flwr.app.config]`` of ``pyproject.toml``;
:mod:`task.config_schema` checks types, ranges and combinations, so defaults are never
repeated in code.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from task.config_schema import (  # re-exported: the valid values live with the schema
    TINY_MODEL,
    check_combinations,
    parse_group_shares,
    validate_keys,
)

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: run-config keys that say where a run writes and what it continues, not what it computes
LOCATION_KEYS = frozenset({"output-dir", "resume-from"})


def config_differences(recorded: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """``"key: run X, given Y; ..."`` for every key but :data:`LOCATION_KEYS` on which a
    run's recorded config and a resume's differ; ``""`` if none (a resume must train the
    same run, or it would be neither run)."""
    keys = (set(given) | set(recorded)) - LOCATION_KEYS
    differ = sorted(k for k in keys if given.get(k) != recorded.get(k))
    return "; ".join(f"{k}: run {recorded.get(k)!r}, given {given.get(k)!r}" for k in differ)


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
    #: whose group shares set the local weights: "population" (the server's estimate, sent
    #: from round 2 by the representation strategy) or "client" (the client's own release)
    local_shares: str
    #: the least share of the plain expected batch that group-balanced sampling keeps
    #: (0: no floor), see :func:`clients.group_sampling.with_batch_floor`
    min_batch_share: float
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
    #: a record's objective over itself and its variants: the "worst" row's loss or the "mean"
    variant_loss: str

    @property
    def counterfactual(self) -> bool:
        return self.method == "counterfactual"

    @property
    def synthesize(self) -> bool:
        return self.method == "synthesize"


@dataclass(frozen=True)
class RobustConfig:
    method: str
    trim: float  # share of the clients cut from each tail, by count (trimmed-mean)
    norm_bound: float  # largest L2 norm of an update (norm-bound)
    norm_factor: float = 3.0  # bound = factor × the round's median update norm (relative-)
    trim_gate: float = 0.0  # trim only updates above gate × the median norm (0: all)


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults (``faults.*``), off by default: for testing a federation's defences."""

    crash_rate: float
    timeout_rate: float
    nan_rate: float
    garbage_rate: float
    adversaries: int  # how many clients lie about counts / scale their update
    lie_counts: bool
    scale_update: float

    @property
    def any_adversary(self) -> bool:
        return self.adversaries > 0 and (self.lie_counts or self.scale_update != 1.0)


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
    robust: RobustConfig
    faults: FaultConfig
    resume_from: str = ""  # a run directory to continue (``fedequity run --resume``)
    min_clients: int = 1  # fewer accepted replies than this: the round is skipped
    round_timeout: float = 3600.0  # seconds the server waits for a round's replies
    ema_decay: float = 0.5  # the reported model: EMA of the aggregates (0: the latest)


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


def parse_run_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate Flower's flat run-config and build the frozen :class:`RunConfig`."""
    v = validate_keys(raw)
    check_combinations(v)
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
            local_shares=v["fair.local-shares"],
            min_batch_share=v["fair.min-batch-share"],
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
            variant_loss=v["augment.variant-loss"],
        ),
        robust=RobustConfig(
            method=v["robust.method"],
            trim=v["robust.trim"],
            trim_gate=v["robust.trim-gate"],
            norm_bound=v["robust.norm-bound"],
            norm_factor=v["robust.norm-factor"],
        ),
        faults=FaultConfig(
            crash_rate=v["faults.crash-rate"],
            timeout_rate=v["faults.timeout-rate"],
            nan_rate=v["faults.nan-rate"],
            garbage_rate=v["faults.garbage-rate"],
            adversaries=v["faults.adversaries"],
            lie_counts=v["faults.lie-counts"],
            scale_update=v["faults.scale-update"],
        ),
        resume_from=v["resume-from"],
        min_clients=v["min-clients"],
        round_timeout=v["round-timeout"],
        ema_decay=v["ema-decay"],
    )
