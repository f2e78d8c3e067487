"""One signal scheme: SIGTERM/SIGHUP raise :class:`Interrupted` (so every ``finally`` stops
what it started); during clean-up, stop signals are ignored."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RAISING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT already raises


class Interrupted(BaseException):
    """SIGTERM/SIGHUP arrived. Like KeyboardInterrupt, ``except Exception`` lets it pass."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """The shell's exit status for death by this signal (143 for SIGTERM)."""
        return 128 + self.signum


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


Handler = Callable[[int, FrameType | None], Any] | int


@contextmanager
def _handled(signals: tuple[signal.Signals, ...], handler: Handler) -> Iterator[None]:
    """``handler`` for ``signals`` in the block, then the previous handlers again.

    Python sets handlers in the main thread only; elsewhere this is a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def signals_raise() -> AbstractContextManager[None]:
    """Turn SIGTERM/SIGHUP into :class:`Interrupted` in the block."""
    return _handled(RAISING_SIGNALS, _raise)


def signals_ignored() -> AbstractContextManager[None]:
    """Ignore SIGINT/SIGTERM/SIGHUP in the block (so a clean-up runs to its end)."""
    return _handled(STOP_SIGNALS, signal.SIG_IGN)
