"""``$FLWR_HOME/config.toml``: where the ``flwr`` CLI finds its SuperLink connections."""

from __future__ import annotations

from pathlib import Path


def write_connection(
    flwr_home: Path, name: str, address: str, root_cert: Path | None = None
) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one connection, the default.

    TLS with ``root_cert``, else ``insecure = true``. Flower 1.42 keeps connections here
    (not in ``pyproject.toml``); the root certificate path must be absolute because the
    CLI resolves it from wherever it runs.
    """
    if root_cert is None:
        security = "insecure = true\n"
    else:
        security = f'root-certificates = "{root_cert.resolve().as_posix()}"\n'
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "{address}"\n'
        + security,
        encoding="utf-8",
    )
    return path
