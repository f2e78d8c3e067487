"""A client's privacy ledger on disk, so that no restart or resume resets its ε.

``context.state`` lives as long as the node process (simulation: the run). A resumed run
is a new Flower run with fresh contexts, and a restarted node starts empty; either would
start again from ε = 0. So each client also keeps its ledger in a file, written
atomically and fsync'd *before* its reply leaves, and starts every round from the longer
of the two histories.

One round may be asked twice: a run resumed from the checkpoint of round r − 1 asks
round r again. With seeded DP randomness (simulation) and the same request, the second
answer is bit-identical to the first, so it releases nothing new and is charged once: the
file keeps the ledger from *before* its last round, the digest of that round's request
(the global weights, the run config, the round's train config and the client's rows) and
the digest of the answer it sent, and only an identical request rolls back to it.
Anything else (other weights, another seed or setting, changed data, OS-entropy noise) is
charged again. The answer is checked too: seeded computation that is not bit-identical
after all (another BLAS, thread count or library version) would give a second answer
with the *same* noise, whose difference from the first is noise-free; such an answer is
never sent (:class:`RepeatDiffers`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from task.accounting import STATE_KEYS
from task.cache import write_durably
from task.wire import SPENT_EVENTS, SPENT_PARTITIONS, TRAIN_SECONDS

FORMAT = 3
#: format 1 kept a digest of the weights alone, format 2 no digest of the answer: a
#: repeated round of either is charged again (safe), and both are still read
READABLE_FORMATS = (1, 2, FORMAT)


class LedgerFileError(ValueError):
    """The ledger file exists but cannot be read: refuse to train rather than reset ε."""


class RepeatDiffers(ValueError):
    """A round asked again, rolled back to be charged once, computed another answer than
    the one already sent: sending it would release more than the ledger records."""


@dataclass(frozen=True)
class StoredLedger:
    round: int
    request_digest: str
    before: dict[str, Any]  # the ledger state before ``round``
    after: dict[str, Any]  # the ledger state after it
    reply_digest: str = ""  # of the answer sent in ``round`` ("": unknown, format < 3)


def request_digest(tensors: Mapping[str, torch.Tensor], settings: Mapping[str, Any]) -> str:
    """A digest of what a seeded answer is computed from: ``tensors`` (names, dtypes,
    shapes and bytes: the global weights and the client's rows) and ``settings`` (the run
    and train configs, as JSON)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = torch.as_tensor(tensors[name]).detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    digest.update(json.dumps(settings, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def reply_digest(arrays: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """A digest of an answer as it is sent: its arrays and its metrics, less the wall time."""
    released = {k: v for k, v in metrics.items() if k != TRAIN_SECONDS}
    return request_digest({f"arrays/{k}": v for k, v in arrays.items()}, {"metrics": released})


def ledger_path(directory: str | Path, partition_id: int) -> Path:
    return Path(directory) / f"partition-{partition_id}.json"


@contextmanager
def exclusive(path: Path | None) -> Iterator[None]:
    """Hold the ledger's lock (``<ledger>.lock``) for a whole round, from reading the
    ledger to writing it. Two rounds of one client can overlap (one the server gave up on
    is still training when the next arrives): both would start from the same ledger, and
    the last write would drop the other's charge. The second waits for the first. The OS
    releases the lock of a killed process. ``None``: no file, nothing to lock."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(path: Path) -> StoredLedger | None:
    """The stored ledger, None if there is no file; a damaged file is an error."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") not in READABLE_FORMATS:
            raise ValueError(f"format {data.get('format')!r}, expected one of {READABLE_FORMATS}")
        digest_key = "weights_digest" if data["format"] == 1 else "request_digest"
        stored = StoredLedger(
            round=int(data["round"]),
            request_digest=str(data[digest_key]),
            before=dict(data["before"]),
            after=dict(data["after"]),
            reply_digest=str(data.get("reply_digest", "")),
        )
        _check_grows(stored.before, stored.after)
        return stored
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LedgerFileError(
            f"privacy ledger {path} is unreadable ({error}); refusing to train, since "
            "starting from an empty ledger would reset this client's ε"
        ) from error


def save(path: Path, stored: StoredLedger) -> None:
    """Write atomically and fsync, so that the ledger on disk survives a kill -9."""
    payload = json.dumps(
        {
            "format": FORMAT,
            "round": stored.round,
            "request_digest": stored.request_digest,
            "before": stored.before,
            "after": stored.after,
            "reply_digest": stored.reply_digest,
        }
    )
    write_durably(path, payload)


def _check_grows(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    """A round only adds events: ``before`` must begin ``after`` (an edited file fails)."""
    for key in STATE_KEYS:
        early, late = list(before.get(key, [])), list(after.get(key, []))
        if late[: len(early)] != early:
            raise ValueError(f"'after.{key}' does not continue 'before.{key}'")
    lengths = {len(after.get(key, [])) for key in STATE_KEYS}
    if len(lengths) != 1:
        raise ValueError(f"'after' holds lists of unequal length {sorted(lengths)}")


def starting_state(
    stored: StoredLedger | None,
    in_memory: Mapping[str, Any],
    *,
    server_round: int,
    digest: str,
    reproducible: bool,
) -> dict[str, Any]:
    """The ledger state this round starts from: the longer history of file and memory,
    except that a seeded repeat of the stored round (the same request) starts where that
    round started (:func:`is_repeat`)."""
    memory = dict(in_memory)
    if stored is None:
        return memory
    if is_repeat(stored, server_round=server_round, digest=digest, reproducible=reproducible):
        return dict(stored.before)
    return dict(stored.after) if _length(stored.after) >= _length(memory) else memory


def is_repeat(
    stored: StoredLedger | None, *, server_round: int, digest: str, reproducible: bool
) -> bool:
    """Is this request the stored round asked again, to be charged once if its answer is
    the one already sent (the stored answer's digest is known)?"""
    return (
        stored is not None
        and reproducible
        and stored.round == server_round
        and stored.request_digest == digest
        and bool(stored.reply_digest)
    )


def check_same_answer(stored: StoredLedger, reply_digest: str) -> None:
    """Refuse to send a repeated round's answer that is not the one already sent."""
    if reply_digest != stored.reply_digest:
        raise RepeatDiffers(
            f"round {stored.round} asked again: its answer is not bit-identical to the one "
            "already sent (non-deterministic computation); not sent, since it would be "
            "charged as the same release"
        )


def recorded_events(server_config: Mapping[str, Any], partition_id: int) -> int:
    """How many ledger events the server last saw from ``partition_id`` (0: none)."""
    partitions = list(server_config.get(SPENT_PARTITIONS, []))
    events = list(server_config.get(SPENT_EVENTS, []))
    if len(partitions) != len(events):
        raise ValueError(f"train config: {SPENT_PARTITIONS} and {SPENT_EVENTS} differ in length")
    return int(dict(zip(partitions, events, strict=True)).get(partition_id, 0))


def check_not_lost(state: Mapping[str, Any], *, recorded: int, where: str) -> None:
    """Refuse to train from a ledger shorter than the server has already seen: the node
    lost it (a restart without its ledger file, a deleted file) and would reset its ε."""
    if (held := _length(state)) < recorded:
        raise LedgerFileError(
            f"privacy ledger lost: this node holds {held} events ({where}) but the server "
            f"recorded {recorded} from it; refusing to train, since starting again would "
            "reset its ε (keep node-config ledger-dir on storage that survives restarts)"
        )


def _length(state: Mapping[str, Any]) -> int:
    return len(state.get("steps", []))
