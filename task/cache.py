"""Where FedEquity keeps what it computes once per machine: tokenizers, features, noise."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``FEDEQUITY_CACHE``, else ``~/.cache/fedequity``."""
    default = Path.home() / ".cache" / "fedequity"
    return Path(os.environ.get("FEDEQUITY_CACHE", default))
