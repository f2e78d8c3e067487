"""Separate network hosts on one machine: the SuperLink and each SuperNode in a Linux
network namespace of its own (``deploy-local --netns``).

One namespace for the SuperLink (with its ServerApp SuperExec and the ``flwr`` CLI), one
per SuperNode (with its ClientApp SuperExec); node ``i`` is joined to the SuperLink's
namespace by a veth pair with link-local addresses ``169.254.<subnet>.<4i+1>`` (SuperLink
side) and ``.<4i+2>`` (node side), a /30 each. No namespace has a default route or any
other interface than its loopback and its veths, so traffic really crosses an interface,
reaches nothing outside, and a node's link can be cut (:meth:`Topology.cut`). Needs root
(``CAP_NET_ADMIN``) and iproute2's ``ip``. :meth:`Topology.delete` removes every
namespace, and the veths with them.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field


class NetnsError(RuntimeError):
    """A namespace or link could not be made (not root, no ``ip``)."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


@dataclass(frozen=True)
class Topology:
    """The namespaces and veth pairs of one deployment (names from ``tag``)."""

    nodes: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: int = 77

    @property
    def link_ns(self) -> str:
        return f"fe-{self.tag}-link"

    def node_ns(self, i: int) -> str:
        return f"fe-{self.tag}-node{i}"

    def link_addr(self, i: int) -> str:
        """The SuperLink's address as node ``i`` dials it."""
        return f"169.254.{self.subnet}.{4 * i + 1}"

    def node_addr(self, i: int) -> str:
        return f"169.254.{self.subnet}.{4 * i + 2}"

    def link_veth(self, i: int) -> str:
        return f"fe{self.tag}l{i}"  # interface names: at most 15 characters

    def node_veth(self, i: int) -> str:
        return f"fe{self.tag}n{i}"

    def namespaces(self) -> list[str]:
        return [self.link_ns, *(self.node_ns(i) for i in range(self.nodes))]

    def exec(self, ns: str, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run inside namespace ``ns`` (``ip netns exec`` execs it: same pid)."""
        return ["ip", "netns", "exec", ns, *cmd]

    def create(self) -> None:
        """Make the namespaces and links; on any failure, remove what was made."""
        if shutil.which("ip") is None:
            raise NetnsError("iproute2's `ip` is not installed")
        if not 0 < self.nodes <= 63:
            raise NetnsError(f"1..63 nodes fit in one /24 of /30 links, got {self.nodes}")
        try:
            for ns in self.namespaces():
                add_namespace(ns)
            for i in range(self.nodes):
                self._link(i)
        except NetnsError:
            self.delete()
            raise

    def _link(self, i: int) -> None:
        link, node = self.link_veth(i), self.node_veth(i)
        _ip("link", "add", link, "netns", self.link_ns, "type", "veth",
            "peer", "name", node, "netns", self.node_ns(i))  # fmt: skip
        _ip("-n", self.link_ns, "addr", "add", f"{self.link_addr(i)}/30", "dev", link)
        _ip("-n", self.node_ns(i), "addr", "add", f"{self.node_addr(i)}/30", "dev", node)
        _ip("-n", self.link_ns, "link", "set", link, "up")
        _ip("-n", self.node_ns(i), "link", "set", node, "up")

    def cut(self, i: int) -> None:
        """Take node ``i``'s link down (at the SuperLink's end): it is unreachable."""
        _ip("-n", self.link_ns, "link", "set", self.link_veth(i), "down")

    def delete(self) -> None:
        """Remove every namespace of this topology that exists (their veths go with them)."""
        existing = set(list_namespaces())
        for ns in self.namespaces():
            if ns in existing:
                delete_namespace(ns)


def add_namespace(name: str) -> None:
    """A new network namespace ``name`` with only its loopback, up."""
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def delete_namespace(name: str) -> None:
    """Remove namespace ``name`` (and the links in it); gone already is fine."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def list_namespaces() -> list[str]:
    """The names ``ip netns list`` shows (empty without ``ip``)."""
    if shutil.which("ip") is None:
        return []
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
