"""A SuperLink with TLS and SuperNode authentication refuses SuperNodes it should refuse.

One SuperLink, four SuperNodes started side by side: the registered one comes online; an
unregistered key, no key, and the wrong root certificate are each refused with Flower's
exit code 305. Also exercises the health probes that docker-compose.yml runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from deploy.certs import TlsBundle, generate
from deploy.local import CONNECTION, Deployment, start_superlink, superexec_cmd
from deploy.local import supernode_cmd as deployed_supernode_cmd
from launch.connection import write_connection
from launch.env import deployment_env, tool
from launch.flwr import flwr, register, wait_online
from launch.net import free_ports
from launch.supervisor import Managed, ProcessSupervisor
from tests.deploy.conftest import assert_no_processes, skip_deploy

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.deploy, pytest.mark.slow, skip_deploy]


@dataclass
class Link:
    dep: Deployment
    other_ca: TlsBundle
    node0_id: str
    health_port: int


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    tmp = tmp_path_factory.mktemp("refusal")
    tls = generate(2, tmp / "certs", tmp / "keys")
    other = generate(1, tmp / "other" / "certs", tmp / "other" / "keys")
    ports = free_ports(7)
    sup = ProcessSupervisor(env=deployment_env(tmp / "flwr-home"), log_dir=tmp / "logs")
    dep = Deployment(sup, tls, tmp, ports[0], ports[1:5])
    write_connection(tmp / "flwr-home", CONNECTION, dep.address, tls.ca_cert)
    try:
        start_superlink(dep, timeout=60)
        health = [f"--health-server-address=127.0.0.1:{ports[5]}"]
        sup.start(
            "superexec-health", superexec_cmd(dep, ports[0], tls.superlink_secret) + health, tmp
        )
        node0 = register(sup, tls.supernodes[0].auth_pub, CONNECTION, tmp)
        yield Link(dep, other, node0, ports[5])
    finally:
        sup.stop_all()
    assert_no_processes(tmp)


def _supernode(link: Link, name: str, slot: int, key: Path | None, root_ca: Path) -> Managed:
    """SuperNode as deploy-local starts it, with its auth key (None: none) and root CA swapped."""
    replace = {
        "--auth-supernode-private-key=": f"--auth-supernode-private-key={key}" if key else None,
        "--root-certificates=": f"--root-certificates={root_ca}",
        "--port=": f"--port={link.dep.supernode_ports[slot]}",
        "--max-retries=": "--max-retries=1",
    }
    cmd = []
    for arg in deployed_supernode_cmd(link.dep, 0, 2):
        prefix = next((p for p in replace if arg.startswith(p)), None)
        if prefix is None:
            cmd.append(arg)
        elif replace[prefix] is not None:
            cmd.append(str(replace[prefix]))
    return link.dep.sup.start(name, [*cmd, "--max-wait-time=20"], cwd=link.dep.work_dir)


@pytest.mark.timeout(180)
def test_only_the_registered_supernode_with_the_right_ca_gets_in(link: Link) -> None:
    tls, other = link.dep.tls, link.other_ca
    registered, unregistered = tls.supernodes[0].auth_key, tls.supernodes[1].auth_key
    accepted = _supernode(link, "registered", 0, registered, tls.ca_cert)
    # Online first: wait_online fails on any supervised process that has exited, and a
    # refused SuperNode may exit before the accepted one shows up online.
    wait_online(link.dep.sup, CONNECTION, [link.node0_id], link.dep.work_dir, 60)
    refused = {
        "unregistered-key": _supernode(link, "unregistered-key", 1, unregistered, tls.ca_cert),
        "no-key": _supernode(link, "no-key", 2, None, tls.ca_cert),
        "wrong-ca": _supernode(link, "wrong-ca", 3, registered, other.ca_cert),
    }
    expected = {
        "unregistered-key": "[code: 2004] Failed to activate SuperNode",
        "no-key": "must be registered",
        "wrong-ca": "CERTIFICATE_VERIFY_FAILED",
    }
    for name, proc in refused.items():
        proc.popen.wait(timeout=60)
        log = proc.log_tail(60)
        assert proc.popen.returncode != 0, f"{name} was not refused:\n{log}"
        assert "Exit Code: 305" in log and expected[name] in log, f"{name}:\n{log}"
    assert accepted.popen.poll() is None
    nodes = flwr(link.dep.sup, link.dep.work_dir, "supernode", "list", CONNECTION)["nodes"]
    assert {n["node-id"]: n["status"] for n in nodes} == {link.node0_id: "online"}


def test_the_cli_refuses_a_superlink_signed_by_another_ca(link: Link, tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_connection(home, "wrong", link.dep.address, link.other_ca.ca_cert)
    env = deployment_env(home)
    result = subprocess.run(
        [tool("flwr"), "supernode", "list", "wrong", "--format", "json"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # `flwr ... --format json` exits 0 and reports the failure in its JSON.
    assert '"success": false' in result.stdout
    assert "Connection to the SuperLink is unavailable" in result.stdout


def _healthcheck_code(service: str) -> str:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return str(compose["services"][service]["healthcheck"]["test"][-1])


@pytest.mark.parametrize(("ca_attr", "ok"), [("dep", True), ("other_ca", False)])
def test_compose_https_healthcheck_probes_the_superlink(link: Link, ca_attr: str, ok: bool) -> None:
    ca = link.dep.tls.ca_cert if ca_attr == "dep" else link.other_ca.ca_cert
    code = _healthcheck_code("superlink").replace("/run/secrets/flwr-ca", str(ca))
    env = dict(
        os.environ, FEDEQUITY_HEALTH_URL=f"https://127.0.0.1:{link.dep.superlink_port}/health"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=30)
    assert (result.returncode == 0) is ok, result.stderr


def test_compose_grpc_healthcheck_probes_a_superexec(link: Link) -> None:
    code = _healthcheck_code("superexec-serverapp")
    good = code.replace("127.0.0.1:8081", f"127.0.0.1:{link.health_port}")
    assert subprocess.run([sys.executable, "-c", good], timeout=30).returncode == 0
    closed = free_ports(1)[0]
    bad = code.replace("127.0.0.1:8081", f"127.0.0.1:{closed}")
    assert (
        subprocess.run([sys.executable, "-c", bad], capture_output=True, timeout=30).returncode != 0
    )
