"""The run-config's keys: their types, valid values and the rules between them.

:mod:`task.config` parses with these; every default lives in ``[tool.flwr.app.config]`` of
``pyproject.toml``, never here.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

STRATEGIES = ("fedavg", "representation", "qfedavg", "fairfed")
DATASETS = ("synthetic", "csv", "jsonl", "parquet", "hf", "adult", "hatecheck")
PARTITION_METHODS = ("dirichlet", "iid", "label")
DP_MODES = ("off", "local", "central", "both")
ACCOUNTANTS = ("rdp", "prv")
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")
OPTIMIZERS = ("adamw", "sgd")
LOCAL_WEIGHTINGS = ("post-clip", "pre-clip", "sampling", "off")
LOCAL_SHARES = ("population", "client")
FINETUNE_MODES = ("head", "top-layers", "lora", "full")
AUGMENT_METHODS = ("none", "counterfactual", "synthesize")
VARIANT_LOSSES = ("worst", "mean")
ROBUST_METHODS = ("none", "trimmed-mean", "median", "norm-bound", "relative-norm-bound")
#: robust rules whose aggregate one client moves by at most its weight × its clipped update
CENTRAL_SAFE_ROBUST = ("none", "norm-bound")
#: strategies whose aggregate is a weighted average that a robust rule can replace
ROBUST_STRATEGIES = ("fedavg", "representation", "fairfed")
#: datasets whose recipe ships a lexicon (task/lexicons/) and public synthesis material
AUGMENT_RECIPES = ("synthetic", "hatecheck")
TINY_MODEL = "tiny-bert"


def _one_of(*valid: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in valid else f"one of {', '.join(repr(x) for x in valid)}"


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"a number >= {low}"


def _above(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"a number > {low}"


def _open_unit(v: float) -> str | None:
    return None if 0 < v < 1 else "a number strictly between 0 and 1"


def _half_open_unit(v: float) -> str | None:
    return None if 0 <= v < 1 else "a number in [0, 1)"


def _fraction(v: float) -> str | None:
    return None if 0 < v <= 1 else "a number in (0, 1]"


def _any(_: Any) -> str | None:
    return None


def _rate(v: float) -> str | None:
    return None if 0 <= v <= 1 else "a number in [0, 1]"


# key -> (python type, check returning "what would be valid" or None)
SCHEMA: dict[str, tuple[type, Callable[[Any], str | None]]] = {
    "seed": (int, _at_least(0)),
    "num-server-rounds": (int, _at_least(1)),
    "strategy": (str, _one_of(*STRATEGIES)),
    "fraction-train": (float, _fraction),
    # Flower's fraction_evaluate: 0 = no federated evaluation (the server's test set stays)
    "fraction-evaluate": (float, _rate),
    "min-clients": (int, _at_least(1)),
    "round-timeout": (float, lambda v: None if 1 <= v <= 86_400 else "seconds in [1, 86400]"),
    "ema-decay": (float, _half_open_unit),
    "output-dir": (str, lambda v: None if v else "a non-empty path"),
    "resume-from": (str, _any),
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
    "model.lora.dropout": (float, _half_open_unit),
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
    "fair.local-shares": (str, _one_of(*LOCAL_SHARES)),
    "fair.min-batch-share": (float, _rate),
    "fair.fairfed-beta": (float, _at_least(0)),
    "fair.count-threshold": (float, lambda v: None if 0 <= v <= 10 else "a number in [0, 10]"),
    "augment.method": (str, _one_of(*AUGMENT_METHODS)),
    "augment.k": (int, lambda v: None if 1 <= v <= 16 else "an int in [1, 16]"),
    "augment.lexicon": (str, _any),
    "augment.variant-loss": (str, _one_of(*VARIANT_LOSSES)),
    "augment.min-share": (float, _open_unit),
    "robust.method": (str, _one_of(*ROBUST_METHODS)),
    "robust.trim": (float, lambda v: None if 0 <= v < 0.5 else "a number in [0, 0.5)"),
    "robust.trim-gate": (float, _at_least(0)),
    "robust.norm-bound": (float, _above(0)),
    "robust.norm-factor": (float, _above(0)),
    "faults.crash-rate": (float, _rate),
    "faults.timeout-rate": (float, _rate),
    "faults.nan-rate": (float, _rate),
    "faults.garbage-rate": (float, _rate),
    "faults.adversaries": (int, _at_least(0)),
    "faults.lie-counts": (bool, _any),
    "faults.scale-update": (float, lambda v: None if math.isfinite(v) else "a finite number"),
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


def _typed(key: str, value: Any) -> Any:
    expected, check = SCHEMA[key]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ValueError(
            f"run-config key {key!r}: expected {expected.__name__}, got {value!r} "
            f"({type(value).__name__})"
        )
    if isinstance(value, float) and not math.isfinite(value):  # inf passes every lower bound
        raise ValueError(f"run-config key {key!r}: got {value!r}; valid: a finite number")
    if (valid := check(value)) is not None:
        raise ValueError(f"run-config key {key!r}: got {value!r}; valid: {valid}")
    return value


def _closest(key: str) -> str | None:
    """The valid key a typo most likely meant (difflib's ratio, as argparse suggests)."""
    matches = difflib.get_close_matches(key, SCHEMA, n=1, cutoff=0.6)
    if not matches:  # a wrong group, right name: "dp.alpha" for "fair.alpha"
        tail = key.rsplit(".", 1)[-1]
        matches = [k for k in SCHEMA if k.rsplit(".", 1)[-1] == tail][:1]
    return matches[0] if matches else None


def validate_keys(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Check every key is known, present and valid; return the typed values."""
    unknown = sorted(set(raw) - set(SCHEMA))
    if unknown:
        hints = [_closest(key) for key in unknown]
        raise ValueError(
            f"unknown run-config key(s) {', '.join(map(repr, unknown))}"
            + "".join(f"; did you mean {hint!r}?" for hint in hints if hint)
            + f" (valid keys: {', '.join(sorted(SCHEMA))})"
        )
    missing = sorted(set(SCHEMA) - set(raw))
    if missing:
        raise ValueError(f"missing run-config key(s): {', '.join(map(repr, missing))}")
    return {key: _typed(key, value) for key, value in raw.items()}


def check_combinations(v: Mapping[str, Any]) -> None:
    table_like = ("csv", "jsonl", "parquet", "adult", "hatecheck")
    if v["dataset"] in table_like and not v["data.path"]:
        raise ValueError(
            f"run-config key 'data.path' is required for dataset={v['dataset']!r} "
            "(a file for csv/jsonl/parquet, a folder for adult/hatecheck)"
        )
    if v["dataset"] == "hf" and not v["data.name"]:
        raise ValueError("run-config key 'data.name' is required for dataset='hf'")
    if v["data.path"] and v["dataset"] not in table_like:
        raise ValueError(
            f"run-config key 'data.path': dataset={v['dataset']!r} does not read a file, so "
            f"{v['data.path']!r} would be ignored; valid: '' or a dataset that reads one "
            f"({', '.join(map(repr, table_like))})"
        )
    _check_columns_differ(v)
    if v["dp.mode"] in ("central", "both") and v["dp.central-noise"] == 0:
        raise ValueError(
            f"run-config key 'dp.central-noise': 0 gives dp.mode={v['dp.mode']!r} no "
            "guarantee at all (ε = ∞); valid: a number > 0, or dp.mode='off'/'local'"
        )
    if v["model.name"] == TINY_MODEL and v["model.finetune"] in ("head", "top-layers"):
        raise ValueError(
            f"run-config key 'model.finetune': {v['model.finetune']!r} freezes a pretrained "
            f"encoder, but {TINY_MODEL!r} is trained from scratch; valid: 'full' or 'lora', or "
            "a pretrained model.name such as 'minilm'"
        )
    _check_augment(v)
    _check_faults_and_robust(v)
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


def _check_columns_differ(v: Mapping[str, Any]) -> None:
    keys = ("data.text-column", "data.label-column", "data.group-column")
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            if v[first] == v[second]:
                raise ValueError(
                    f"run-config keys {first!r} and {second!r} name the same column "
                    f"{v[first]!r}; valid: three different columns"
                )


def _check_faults_and_robust(v: Mapping[str, Any]) -> None:
    rates = ("faults.crash-rate", "faults.timeout-rate", "faults.nan-rate", "faults.garbage-rate")
    if sum(v[k] for k in rates) > 1:
        raise ValueError(
            f"run-config keys {', '.join(map(repr, rates))}: a client has at most one fault "
            f"per round, so their sum must be <= 1; got {sum(v[k] for k in rates):g}"
        )
    if v["faults.timeout-rate"] > 0 and v["round-timeout"] > 600:
        raise ValueError(
            "run-config key 'round-timeout': faults.timeout-rate makes a client sleep past the "
            f"round timeout, so it must be at most 600 s; got {v['round-timeout']:g}"
        )
    if v["robust.method"] != "none" and v["strategy"] not in ROBUST_STRATEGIES:
        raise ValueError(
            f"run-config key 'robust.method': {v['robust.method']!r} replaces a weighted "
            f"average, but strategy={v['strategy']!r} takes a step of its own; valid: 'none', "
            f"or strategy one of {', '.join(map(repr, ROBUST_STRATEGIES))}"
        )
    if v["dp.mode"] in ("central", "both") and v["robust.method"] not in CENTRAL_SAFE_ROBUST:
        # The central accountant charges C·max w, the sensitivity of a weighted mean. A median
        # or trimmed mean lets one client decide a coordinate (up to C whatever its weight),
        # and a relative bound lets it move everyone's clip.
        raise ValueError(
            f"run-config key 'robust.method': {v['robust.method']!r} lets one client move the "
            f"aggregate by more than the central accountant charges (C · max weight) under "
            f"dp.mode={v['dp.mode']!r}; valid: {', '.join(map(repr, CENTRAL_SAFE_ROBUST))}, "
            "or dp.mode='off'/'local'"
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
