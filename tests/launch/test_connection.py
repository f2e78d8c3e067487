"""launch.connection: the connection file Flower 1.42's CLI reads."""

from __future__ import annotations

import tomllib
from pathlib import Path

from launch.connection import write_connection


def test_insecure_loopback_connection_is_the_default(tmp_path: Path) -> None:
    path = write_connection(tmp_path / "home", "fedequity", "127.0.0.1:9093")
    assert path == tmp_path / "home" / "config.toml"
    assert path.read_text() == (
        '[superlink]\ndefault = "fedequity"\n\n'
        '[superlink.fedequity]\naddress = "127.0.0.1:9093"\ninsecure = true\n'
    )


def test_tls_connection_names_the_absolute_root_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    path = write_connection(tmp_path / "home", "local", "127.0.0.1:1", tmp_path / "ca.crt")
    config = tomllib.loads(path.read_text())
    assert config["superlink"]["default"] == "local"
    assert config["superlink"]["local"] == {
        "address": "127.0.0.1:1",
        "root-certificates": (tmp_path / "ca.crt").resolve().as_posix(),
    }
