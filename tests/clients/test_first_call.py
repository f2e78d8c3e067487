"""The mod that marks the end of a run's start-up: once per process, at the first message."""

from __future__ import annotations

import logging
from typing import cast

import pytest
from flwr.app import Context, Message

from clients import first_call
from clients.first_call import FIRST_CALL, first_call_time, note_first_call


def test_the_first_message_of_a_process_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(first_call, "_seen_in_this_process", False)
    handled: list[Message] = []

    def call_next(msg: Message, _context: Context) -> Message:
        handled.append(msg)
        return msg

    msg, context = cast(Message, object()), cast(Context, object())  # passed on untouched
    with caplog.at_level(logging.INFO, logger="flwr"):
        replies = [note_first_call(msg, context, call_next) for _ in range(3)]
    assert replies == [msg] * 3 and handled == [msg] * 3  # every message still handled
    logged = [r.getMessage() for r in caplog.records if FIRST_CALL in r.getMessage()]
    assert len(logged) == 1
    assert first_call_time(logged) is not None


def test_the_earliest_first_call_of_all_processes_is_the_runs() -> None:
    lines = [
        "INFO :      round 1/8 acc=0.5",
        f"(ClientAppActor pid=2) INFO :      {FIRST_CALL} 1700000012.250",
        f"(ClientAppActor pid=1) INFO :      {FIRST_CALL} 1700000010.500",
    ]
    assert first_call_time(lines) == 1700000010.5
    assert first_call_time(["no such line"]) is None
