"""FairFed: fairness-aware aggregation weights (Ezzeldin et al., AAAI 2023)."""

from logging import INFO
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from strategies.base import TracedFedAvg
from strategies.screening import finite_number, number
from strategies.weighting import fairfed_weights, fedavg_weights
from task.wire import FAIR_METRIC


class FairFed(TracedFedAvg):
    """FairFed aggregation (Ezzeldin et al., "FairFed: Enabling Group Fairness in
    Federated Learning", AAAI 2023).

    Every round each client reports ``fair-metric`` F_k, its local fairness metric
    (here: its group-accuracy gap on its own data; the paper evaluates the *received*
    global model locally, so clients should measure it before local training). The
    server forms the global metric F = Σ n_k F_k / Σ n_k and updates persistent
    per-node weights

        Δ_k = |F_k - F|,   w_k ← w_k - β (Δ_k - mean_i Δ_i),   w ← max(w, 0) / Σ,

    so clients whose local fairness departs most from the global one lose influence.
    Weights start at FedAvg (n_k / n). The paper assumes full participation; so that
    changing participants (sampling, failures, exhausted budgets) do not distort the
    weights, each node's adjustment is kept across rounds as a factor w_k / FedAvg_k,
    applied next round to its FedAvg share among that round's participants (1 for a new
    node), then renormalised; the new factors keep the participants' total
    Σ FedAvg_k × factor_k. With a fixed set of participants this is the paper's
    update, and β = 0 is FedAvg exactly, whoever takes part. F is the n-weighted mean of
    the local metrics, computed in the clear (the paper computes the global model's
    metric from securely aggregated local statistics).

    Parameters
    ----------
    beta : float
        Fairness budget β >= 0 (`fair.fairfed-beta`); 0 keeps FedAvg weights.
    **fedavg_kwargs
        Passed to :class:`~strategies.base.TracedFedAvg` / Flower's ``FedAvg``.
    """

    def __init__(self, *, beta: float, **fedavg_kwargs: Any) -> None:
        if not np.isfinite(beta) or beta < 0:
            raise ValueError(f"fair.fairfed-beta must be a finite number >= 0, got {beta}")
        super().__init__(**fedavg_kwargs)
        self.beta = beta
        self.node_factors: dict[int, float] = {}
        self._restored_factors: dict[int, float] = {}

    def checkpoint_state(self) -> dict[str, Any]:
        """Also each participant's weight factor, by partition (restored factors of
        partitions not seen since the resume too, or a second resume would lose them)."""
        factors = {str(p): f for p, f in self._restored_factors.items()}
        factors |= {
            str(self.node_partitions[node]): factor
            for node, factor in self.node_factors.items()
            if node in self.node_partitions
        }
        return super().checkpoint_state() | {"factors": factors}

    def resume_from(self, round_offset: int, state: dict[str, Any]) -> None:
        super().resume_from(round_offset, state)
        self._restored_factors = {int(p): float(f) for p, f in state.get("factors", {}).items()}

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> FairFed: beta = %s, metric key '%s'", self.beta, FAIR_METRIC)
        super().summary()

    def metric_problem(self, metrics: MetricRecord) -> str | None:
        """Also require ``fair-metric``: a gap between accuracies, in [0, 1]."""
        problem = finite_number(metrics, FAIR_METRIC, minimum=0.0, maximum=1.0)
        return problem or super().metric_problem(metrics)

    def client_weights(
        self, server_round: int, node_ids: list[int], contents: list[RecordDict]
    ) -> np.ndarray:
        """One FairFed update of the participants' weights; stored for the next round."""
        n = np.array([number(c, self.weighted_by_key) for c in contents])
        local = np.array([number(c, FAIR_METRIC) for c in contents])
        global_metric = float(n @ local / n.sum())
        fedavg = fedavg_weights(n)
        for node in node_ids:  # a resumed run: its nodes' factors, by partition
            partition = self.node_partitions.get(node, -1)
            if node not in self.node_factors and partition in self._restored_factors:
                self.node_factors[node] = self._restored_factors.pop(partition)
        previous = None
        if any(node in self.node_factors for node in node_ids):
            previous = fedavg * [self.node_factors.get(node, 1.0) for node in node_ids]
        weights = fairfed_weights(previous, local, global_metric, beta=self.beta, num_examples=n)
        # The weights are renormalised over this round's participants; the factors keep the
        # participants' total as it was (Σ FedAvg_k × factor_k), or a node would gain or
        # lose influence for whom it was drawn with
        # (every factor 0: fairfed_weights fell back to FedAvg, and so does the mass)
        mass = 1.0 if previous is None or previous.sum() <= 0 else float(previous.sum())
        self.node_factors.update(zip(node_ids, map(float, weights * mass / fedavg), strict=True))
        self.last_round.extras["fair-global-metric"] = global_metric
        return weights
