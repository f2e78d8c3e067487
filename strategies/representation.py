"""Representation-aware aggregation: up-weight clients holding under-represented groups."""

from collections.abc import Iterable, Sequence
from logging import INFO
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from strategies.base import TracedFedAvg
from strategies.screening import MAX_COUNT, metrics_of, number
from strategies.weighting import estimate_prevalence, fedavg_weights, representation_weights
from task.wire import GROUP_COUNTS, POPULATION_SHARES


class RepresentationAware(TracedFedAvg):
    """FedAvg with aggregation weights that favour clients of rare groups, capped.

    Each client reports DP-noised per-group example counts n_kg (``group-counts``, in
    the order of ``group_names``). The server estimates the population shares p_g from
    their clipped sum and weights client k by

        raw_k = Σ_g n_kg (1 / p_g)^α,   w = cap_weights(raw / Σ raw, FedAvg, cap),

    where n_kg = num_examples_k · (client k's share of group g), so the noisy counts only
    move a client's group mix, never its size, and α = 0 is FedAvg exactly. This is the
    inverse-prevalence (importance) weighting used for group shift (Shimodaira, 2000;
    Sagawa et al., ICLR 2020) applied at the aggregation level, in the spirit of
    fairness-aware reweighting in FL (Ezzeldin et al., AAAI 2023).

    Why the cap: the counts are self-reported. A client claiming that all its examples
    belong to the rarest group would otherwise get a weight of up to 1/p_min times its
    fair share and could steer the global model. :func:`~strategies.weighting.cap_weights`
    bounds every client at ``cap`` × its FedAvg weight (water-filling the excess onto
    the others), so a liar gains at most that factor and the honest clients keep at
    least ``1 - cap · n_liar / n`` of the total weight. The cap is relative to FedAvg,
    so ``num-examples`` is trusted exactly as FedAvg trusts it: a client inflating its
    size takes over FedAvg and this strategy alike. A federation that cannot trust
    sizes needs a bound the server knows (or robust aggregation), not a reweighting.

    From round 2 the train config also carries the last round's prevalence estimate
    (``population-shares``): with ``fair.local-shares = "population"`` a client then
    weights its groups by the population's shares, not its own, so a record of a rare group
    counts the same wherever it sits. With its own shares, a client whose data is mostly
    of a rare group would down-weight that group locally, against what the aggregation
    weights ask for. The estimate is post-processing of the DP releases (no ε).

    The strategy averages whatever arrays the clients send (full models or LoRA
    adapters). Under Flower's ``DifferentialPrivacyServerSideFixedClipping`` (without an
    accountant) it runs as-is, but the noise there is calibrated to a uniform mean: see
    :func:`~strategies.weighting.effective_noise_multiplier`.

    Parameters
    ----------
    alpha : float
        Reweighting strength α >= 0 (`fair.alpha`).
    cap : float
        Maximum weight as a multiple of the FedAvg weight, >= 1 (`fair.cap`).
    group_names : Sequence[str]
        Group order of ``group-counts``; names the estimated prevalence in the trace.
    **fedavg_kwargs
        Passed to :class:`~strategies.base.TracedFedAvg` / Flower's ``FedAvg``.
    """

    def __init__(
        self, *, alpha: float, cap: float, group_names: Sequence[str], **fedavg_kwargs: Any
    ) -> None:
        if not np.isfinite(alpha) or alpha < 0:
            raise ValueError(f"fair.alpha must be a finite number >= 0, got {alpha}")
        if not np.isfinite(cap) or cap < 1:
            raise ValueError(f"fair.cap must be a finite number >= 1, got {cap}")
        names = list(group_names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"group_names must be non-empty and unique, got {names}")
        super().__init__(**fedavg_kwargs)
        self.alpha = alpha
        self.cap = cap
        self.group_names = names
        #: the last round's prevalence estimate, sent with the next round's train config
        self.population: list[float] | None = None

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Representation-aware weighting:")
        log(INFO, "\t│\t├── alpha: %s | cap: %s", self.alpha, self.cap)
        log(INFO, "\t│\t└── groups: %s", self.group_names)
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's sampling; the train config also carries the prevalence estimate."""
        if self.population is not None:
            config[POPULATION_SHARES] = list(self.population)
        return super().configure_train(server_round, arrays, config, grid)

    def checkpoint_state(self) -> dict[str, Any]:
        """Also the prevalence estimate, so a resumed run sends what it would have."""
        return super().checkpoint_state() | {"population": self.population}

    def resume_from(self, round_offset: int, state: dict[str, Any]) -> None:
        super().resume_from(round_offset, state)
        population = state.get("population")
        self.population = None if population is None else [float(p) for p in population]

    def metric_problem(self, metrics: MetricRecord) -> str | None:
        """Also require ``group-counts``: one finite number per group."""
        counts = metrics.get(GROUP_COUNTS)
        if not isinstance(counts, list) or len(counts) != len(self.group_names):
            return f"'{GROUP_COUNTS}' must list {len(self.group_names)} numbers"
        values = np.asarray(counts, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.abs(values) > MAX_COUNT):
            return f"non-finite values, or beyond ±{MAX_COUNT:g}, in '{GROUP_COUNTS}'"
        return super().metric_problem(metrics)

    def client_weights(
        self, server_round: int, node_ids: list[int], contents: list[RecordDict]
    ) -> np.ndarray:
        """Capped representation weights; records prevalence and the largest ratio."""
        counts = np.array(
            [cast(list[float], metrics_of(c)[GROUP_COUNTS]) for c in contents],
            dtype=np.float64,
        )
        n = np.array([number(c, self.weighted_by_key) for c in contents])
        prevalence = estimate_prevalence(counts)
        self.population = [float(p) for p in prevalence]
        self.last_round.prevalence = dict(zip(self.group_names, self.population, strict=True))
        weights = representation_weights(counts, n, alpha=self.alpha, cap=self.cap)
        ratio = float(np.max(weights / fedavg_weights(n)))
        self.last_round.extras["max-weight-ratio"] = ratio
        return weights
