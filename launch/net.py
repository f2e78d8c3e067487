"""Free loopback ports and health polling of a starting Flower process."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from launch.supervisor import FlowerError, Managed


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS reports free on ``host`` (all bound at once, so they are distinct)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_healthy(url: str, proc: Managed, timeout: float, ca_cert: Path | None = None) -> None:
    """Poll ``GET url`` until it answers 200; fail early if ``proc`` exits.

    With ``ca_cert``, ``url`` is HTTPS, verified against that CA.
    """
    context = ssl.create_default_context(cafile=str(ca_cert)) if ca_cert else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise proc.exited()
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)  # a local GET: polling often is cheap, and every run waits here
    raise FlowerError(f"{proc.name} not healthy at {url} after {timeout:.0f} s:\n{proc.log_tail()}")
