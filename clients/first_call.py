"""A Flower mod that logs when this process's ClientApp gets its first message.

That moment ends a run's start-up: until then the SuperLink, the simulation engine, Ray and
its actors were starting. ``simulations/benchmarks/overhead.py`` reads the line to measure
the fixed cost as the issue defines it (command start to round 1's first client call); in
a simulation every actor logs it once, so the earliest line is the run's first call.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from logging import INFO

from flwr.app import Context, Message
from flwr.common.logger import log

FIRST_CALL = "ClientApp process got its first message at unix time"
_FIRST_CALL_LINE = re.compile(re.escape(FIRST_CALL) + r" (\d+\.\d+)")
_seen_in_this_process = False


def note_first_call(
    msg: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Log :data:`FIRST_CALL` once per process, then handle ``msg`` as usual."""
    global _seen_in_this_process
    if not _seen_in_this_process:
        _seen_in_this_process = True
        log(INFO, "%s %.3f", FIRST_CALL, time.time())
    return call_next(msg, context)


def first_call_time(lines: Iterable[str]) -> float | None:
    """The earliest :data:`FIRST_CALL` time in ``lines`` (logs of a run), else None."""
    times = [float(m.group(1)) for line in lines if (m := _FIRST_CALL_LINE.search(line))]
    return min(times) if times else None
