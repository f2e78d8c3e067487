"""argparse types the command lines share: a bad value is named with its flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (steps, sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def comma_separated(kind: Callable[[str], object], what: str) -> Callable[[str], str]:
    """argparse type: ``text`` unchanged once each comma-separated item parses as ``kind``
    (``float`` takes ``inf``); ``what`` names the items in the error."""

    def check(text: str) -> str:
        try:
            for item in text.split(","):
                kind(item)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None
        return text

    return check
