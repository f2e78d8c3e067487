"""Flower's q-FedAvg with reply screening and a round trace."""

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import QFedAvg

from strategies.base import ReplyScreening
from strategies.screening import MAX_LOSS, count_problem, finite_number, number
from strategies.weighting import qfedavg_coefficients
from task.wire import TRAIN_LOSS


class TracedQFedAvg(ReplyScreening, QFedAvg):
    """q-FedAvg (Li et al., "Fair Resource Allocation in Federated Learning", ICLR 2020).

    Flower's :class:`~flwr.serverapp.strategy.QFedAvg` does the math; this subclass
    first screens the replies like :class:`~strategies.base.TracedFedAvg` (skips
    ``budget-exhausted`` clients, whose zero update would still add L·F^q to Σh and
    shrink the step; rejects non-finite or mismatched arrays and a missing/negative
    ``train-loss``) and records a :class:`~strategies.screening.RoundTrace` in ``last_round``.

    Trace weights: q-FedAvg's step is w ← w + Σ_k c_k (w_k - w) with
    c_k = L F_k^q / Σ_i h_i (:func:`~strategies.weighting.qfedavg_coefficients`). The
    trace reports each client's relative influence c_k / Σ c = F_k^q / Σ F^q (sums to 1,
    comparable with the other strategies) and ``extras["qfedavg-step-scale"]`` = Σ c_k,
    the fraction of the average move actually taken. Note that q-FedAvg ignores
    ``num-examples`` when weighting updates (the paper samples clients by p_k instead).

    Parameters
    ----------
    client_learning_rate : float
        The step size q-FFL assumes the clients took (`qfedavg.learning-rate`, not the
        clients' own `train.learning-rate`); L = 1 / client_learning_rate. Flower derives
        it from the clients' rate, which presumes plain SGD on clean gradients: under
        AdamW or DP-SGD the update is not lr × gradient, the ||Δw||² term of h dominates
        and the step shrank to 0.2 % (AdamW) / 16 % (DP-SGD) of the average move
        (``qfedavg-step-scale`` shows it).
    q : float
        Fairness exponent q >= 0 (`qfedavg.q`); 0 averages client models uniformly.
    train_loss_key : str (default: "train-loss")
        Metric carrying the client's training loss F_k. The paper's F_k is the loss of
        the *received* global model on the client's data; clients send the mean loss over
        their local steps (what Flower's examples send), which is lower after progress.
    **fedavg_kwargs
        Passed to Flower's ``QFedAvg`` / ``FedAvg``.
    """

    def __init__(
        self,
        *,
        client_learning_rate: float,
        q: float,
        train_loss_key: str = TRAIN_LOSS,
        **fedavg_kwargs: Any,
    ) -> None:
        if not np.isfinite(q) or q < 0:
            raise ValueError(f"qfedavg.q must be a finite number >= 0, got {q}")
        if not np.isfinite(client_learning_rate) or client_learning_rate <= 0:
            raise ValueError(
                f"qfedavg.learning-rate must be a finite number > 0, got {client_learning_rate}"
            )
        super().__init__(
            client_learning_rate=client_learning_rate,
            q=q,
            train_loss_key=train_loss_key,
            **fedavg_kwargs,
        )

    def metric_problem(self, metrics: MetricRecord) -> str | None:
        """Require a finite, non-negative loss and positive example count."""
        loss = finite_number(metrics, self.train_loss_key, minimum=0.0, maximum=MAX_LOSS)
        return loss or count_problem(metrics, self.weighted_by_key)

    def aggregate_accepted(
        self, server_round: int, accepted: list[Message], reference: ArrayRecord
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record q-FedAvg's weights in the trace, then run Flower's q-FedAvg step."""
        self._record_weights(accepted, reference)
        dtypes = {k: np.dtype(reference[k].dtype) for k in reference}
        # Flower's own aggregate_train: ours (ReplyScreening's) comes first in the MRO.
        arrays, metrics = QFedAvg.aggregate_train(self, server_round, accepted)
        if arrays is not None:
            # Flower's step divides by a Python float, which makes every array float64; the
            # global model keeps its dtypes, so next round's replies still match it.
            arrays = ArrayRecord(
                {k: Array(arrays[k].numpy().astype(dtypes[k], copy=False)) for k in dtypes}
            )
        return arrays, metrics

    def _record_weights(self, accepted: list[Message], reference: ArrayRecord) -> None:
        """Put relative influence and step scale of q-FedAvg in the trace."""
        keys = list(reference.keys())
        global_arrays = [reference[k].numpy() for k in keys]
        sq_norms = []
        for msg in accepted:
            record = next(iter(msg.content.array_records.values()))
            sq_norms.append(
                sum(
                    float(np.sum(np.square(record[k].numpy() - g)))
                    for k, g in zip(keys, global_arrays, strict=True)
                )
            )
        losses = [number(msg.content, self.train_loss_key) for msg in accepted]
        coeffs = qfedavg_coefficients(
            losses, sq_norms, q=self.q, lipschitz=1.0 / self.client_learning_rate
        )
        nodes = [msg.metadata.src_node_id for msg in accepted]
        self.last_round.weights = {
            n: float(c) for n, c in zip(nodes, coeffs / coeffs.sum(), strict=True)
        }
        self.last_round.extras["qfedavg-step-scale"] = float(coeffs.sum())
