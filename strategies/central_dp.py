"""Flower's server-side fixed clipping, fed only replies that match the global model."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

from strategies.base import RoundTrace, array_problem, rekey_like


class ScreenedFixedClipping(DifferentialPrivacyServerSideFixedClipping):
    """``DifferentialPrivacyServerSideFixedClipping`` that screens replies before clipping.

    Flower clips each reply's arrays *by position* against the global arrays before the
    wrapped strategy sees them: a reply with other shapes crashes the round, and one with
    its keys in another order is clipped against the wrong layers. Here replies whose
    arrays do not match the global model (keys, shapes, dtypes, finiteness) are held back
    and reported as rejected in the wrapped strategy's ``last_round``; the others are
    re-keyed in the global order and go through Flower's clipping and noise unchanged.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept: list[Message] = []
        held_back: dict[int, str] = {}
        for msg in replies:
            if not msg.has_error():  # error replies go on: Flower counts and skips them
                if reason := array_problem(msg.content, self.current_arrays):
                    held_back[msg.metadata.src_node_id] = reason
                    continue
                rekey_like(msg.content, self.current_arrays)
            kept.append(msg)
        result = super().aggregate_train(server_round, kept)
        trace = getattr(self.strategy, "last_round", None)
        if held_back and isinstance(trace, RoundTrace):
            if trace.round != server_round:  # Flower skipped the wrapped strategy
                trace = self.strategy.last_round = RoundTrace(round=server_round)  # type: ignore[attr-defined]
            trace.rejected.update(held_back)
        return result
