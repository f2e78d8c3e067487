"""Flower's server-side fixed clipping, fed only replies that match the global model."""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from strategies.base import ReplyScreening, failure_reasons
from strategies.screening import RoundTrace, array_problem, rekey_like

UNCHANGED = "an unchanged model without a spent budget: server-side clipping cannot scale it"


def unchanged(content: RecordDict, reference: ArrayRecord) -> bool:
    """Whether a reply's (single, well-shaped) ArrayRecord equals the global arrays."""
    record = next(iter(content.array_records.values()))
    return all(np.array_equal(record[k].numpy(), reference[k].numpy()) for k in reference)


class ScreenedFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """``DifferentialPrivacyServerSideFixedClipping`` that screens replies before clipping.

    Flower clips each reply's arrays *by position* against the global arrays before the
    wrapped strategy sees them: a reply with other shapes crashes the round, and one with
    its keys in another order is clipped against the wrong layers; and one equal to the
    global model (a client whose budget is spent sends its weights back unchanged) ends
    the run, as Flower divides by the update's norm. Such replies are set aside and
    screened into the wrapped strategy's ``last_round`` after the round (rejected, or
    skipped for a spent budget); the others are re-keyed in the global order and go
    through Flower's clipping and noise unchanged.
    When Flower skips a round (it aggregates nothing if any reply is an error), the
    wrapped strategy still screens the other replies (:meth:`_skipped_round`), so it learns
    which nodes spent their budget and how long their ledgers are, as in any other round;
    the trace has no weights, so the recorder reports none and the central accountant
    charges nothing for it.
    """

    def __init__(self, strategy: ReplyScreening, *args: Any, **kwargs: Any) -> None:
        super().__init__(strategy, *args, **kwargs)
        self.traced = strategy  # the wrapped strategy, typed: it keeps the round trace
        #: charges a release to the central accountant, with the round's aggregation
        #: weights, once the noise is added and before the aggregate goes anywhere
        self.charge: Callable[[Mapping[int, float]], None] | None = None

    def checkpoint_state(self) -> dict[str, Any]:
        return self.traced.checkpoint_state()

    def resume_from(self, round_offset: int, state: dict[str, Any]) -> None:
        self.traced.resume_from(round_offset, state)

    @property
    def evaluation_model(self) -> Callable[[ArrayRecord], ArrayRecord] | None:
        """The wrapped strategy's (Flower's wrapper hands configure_evaluate to it)."""
        return self.traced.evaluation_model

    @evaluation_model.setter
    def evaluation_model(self, model: Callable[[ArrayRecord], ArrayRecord] | None) -> None:
        self.traced.evaluation_model = model

    @property
    def last_round(self) -> RoundTrace:
        """The wrapped strategy's trace of the latest round (what the server reads)."""
        return self.traced.last_round

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Set aside replies Flower's clipping cannot take, re-key the rest, then Flower's
        clipping and noise; the set-aside replies are screened into the round's trace."""
        received = list(replies)
        kept: list[Message] = []
        aside: list[Message] = []
        for msg in received:
            if not msg.has_error():  # error replies go on: Flower counts and skips them
                if array_problem(msg.content, self.current_arrays) or unchanged(
                    msg.content, self.current_arrays
                ):
                    aside.append(msg)
                    continue
                rekey_like(msg.content, self.current_arrays)
            kept.append(msg)
        result = super().aggregate_train(server_round, kept)
        trace = self.traced.last_round
        run_round = server_round + self.traced.round_offset
        if trace.round != run_round:
            trace = self._skipped_round(run_round, received)
        else:
            if result[0] is not None and self.charge is not None:
                self.charge(trace.weights)
            for msg in self.traced.screen_aside(aside):  # accepted: an unchanged model
                trace.rejected[msg.metadata.src_node_id] = UNCHANGED
        trace.failure_reasons = failure_reasons(
            [m for m in received if m.has_error()], received, self.traced.sampled_now,
            self.traced.round_timeout,
        )  # fmt: skip
        trace.failures = len(trace.failure_reasons)
        return result

    def _skipped_round(self, run_round: int, received: list[Message]) -> RoundTrace:
        """Screen the answered replies of a round Flower's wrapper did not aggregate:
        ``budget-exhausted`` and ledger lengths count, nothing is released or accounted."""
        answered = [msg for msg in received if not msg.has_error()]
        accepted = self.traced.screen_round(run_round, answered)
        trace = self.traced.last_round
        if accepted:  # some clients survived: the round was lost, not the federation
            trace.skipped = "an error reply: Flower's central DP aggregates nothing then"
        return trace
