"""A real Docker engine for ``make compose-test``, kept off the host's network.

Two ``dockerd`` share one data root (the image cache, reused between runs):

* the *build* daemon runs with no bridge, no iptables and no forwarding, and builds with
  ``--network host``, so builds reach PyPI while the engine changes no firewall or route;
* the *run* daemon runs inside a network namespace of its own (``ip netns add`` and
  ``nsenter --net``; ``ip netns exec`` would remount ``/sys`` and hide the cgroups), so the
  stack's bridge, DNS and published ports exist only there.

Images: Flower's published ``flwr/*`` images where they can be pulled, otherwise stand-ins
of the same layout (``docker/flwr-standin.Dockerfile``) on a Debian base made with
``debootstrap`` and ``docker import``; then the project image from ``docker/Dockerfile``
unchanged, its CPU torch wheel served from a loopback HTTP server over pip's own
``find-links`` folder when there is one. Daemons are stopped by PID, also on failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from launch.net import free_ports, wait_healthy
from launch.supervisor import Managed, ProcessSupervisor, stop_popen

REPO = Path(__file__).resolve().parent.parent
FLWR_VERSION = "1.42.0"
FLOWER_ROLES = ("superlink", "supernode", "superexec")
PROJECT_IMAGE = "fedequity/superexec:0.1.0"
BASE_IMAGE = "fedequity/base:bookworm"
WHEEL_PORT = 38765
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_FLAGS = (
    "--bridge=none",
    "--iptables=false",
    "--ip6tables=false",
    "--ip-forward=false",
    "--ip-masq=false",
)


class EngineError(RuntimeError):
    """The engine could not be installed, started or made to build."""


def docker_cli() -> str:
    """The engine package's own CLI (a newer one elsewhere on PATH may want buildx)."""
    packaged = Path("/usr/bin/docker")
    return str(packaged) if packaged.exists() else shutil.which("docker") or "docker"


def ensure_installed() -> None:
    """Install Debian's engine, compose v1, debootstrap, iproute2 and iptables if one is
    missing (iptables-save: compose-test compares the host's rules before and after)."""
    wanted = {"dockerd": "docker.io", "docker-compose": "docker-compose"}
    wanted |= {"debootstrap": "debootstrap", "ip": "iproute2", "iptables-save": "iptables"}
    missing = [pkg for exe, pkg in wanted.items() if shutil.which(exe) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise EngineError(f"compose-test needs root to install {missing} and run dockerd")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # a failing third-party list must not stop the install; only the install itself counts
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
    cmd = ["apt-get", "install", "-y", "-q", *missing]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EngineError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")


@dataclass
class Daemon:
    """One running ``dockerd`` and how to talk to it."""

    name: str
    proc: Managed
    socket: Path
    exec_root: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for ``docker`` / ``docker-compose`` against this daemon."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 900.0, stdin: bytes | None = None) -> str:
        """Run ``docker <args>``; raise with its output if it fails."""
        done = subprocess.run(
            [docker_cli(), *args], env=self.env, input=stdin, capture_output=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            out = (done.stdout + done.stderr).decode(errors="replace")[-3000:]
            raise EngineError(f"docker {' '.join(args[:3])} failed:\n{out}")
        return done.stdout.decode(errors="replace")

    def has_image(self, ref: str) -> bool:
        return bool(self.docker("images", "-q", ref).strip())


def start_daemon(sup: ProcessSupervisor, root: Path, name: str, netns: str | None = None) -> Daemon:
    """Start ``dockerd`` on ``<root>/engine`` (the shared data root) and wait for it."""
    sock, exec_root = root / f"{name}.sock", root / f"exec-{name}"
    exec_root.mkdir(parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    cmd = [
        "dockerd", f"--data-root={root / 'engine'}", f"--exec-root={exec_root}",
        f"--host=unix://{sock}", f"--pidfile={root / f'{name}.pid'}",
        "--storage-driver=overlay2",
    ]  # fmt: skip
    if netns is None:
        cmd += BUILD_FLAGS
    else:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
    daemon = Daemon(name, sup.start(f"dockerd-{name}", cmd, cwd=root), sock, exec_root)
    deadline = time.monotonic() + 60
    while True:
        if daemon.proc.popen.poll() is not None:
            raise EngineError(f"dockerd ({name}) exited:\n{daemon.proc.log_tail()}")
        try:
            daemon.docker("version", timeout=10)
            return daemon
        except (EngineError, subprocess.TimeoutExpired) as err:
            if time.monotonic() > deadline:
                tail = daemon.proc.log_tail()
                raise EngineError(f"dockerd ({name}) not answering:\n{tail}") from err
        time.sleep(0.5)


def stop_daemon(daemon: Daemon) -> None:
    """SIGTERM by PID, wait, and unmount what a killed daemon may leave in its exec-root."""
    stop_popen(daemon.proc.popen, grace=30)
    leftover = daemon.exec_root / "netns" / "default"
    if os.path.ismount(leftover):
        subprocess.run(["umount", str(leftover)], check=False, capture_output=True)


def _base_image(daemon: Daemon, root: Path) -> None:
    """A Debian bookworm with python3 + venv, the host's CA bundle and a pip.conf naming it
    (this machine's TLS goes through its own CA), imported as ``BASE_IMAGE``."""
    rootfs = root / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        cmd = [
            "debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(rootfs), "http://deb.debian.org/debian",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise EngineError(f"debootstrap failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        pip_conf = "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
        (rootfs / "etc/pip.conf").write_text(pip_conf)
    tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True)
    path_env = "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    daemon.docker("import", "-c", path_env, "-", BASE_IMAGE, stdin=tar.stdout)


def flower_images(daemon: Daemon, root: Path) -> str:
    """Make ``flwr/<role>:FLWR_VERSION`` available; return where they came from."""
    refs = [f"flwr/{role}:{FLWR_VERSION}" for role in FLOWER_ROLES]
    if all(daemon.has_image(ref) for ref in refs):
        return "cache"
    try:
        for ref in refs:
            daemon.docker("pull", ref, timeout=600)
        return "Docker Hub"
    except (EngineError, subprocess.TimeoutExpired):
        pass
    if not daemon.has_image(BASE_IMAGE):
        _base_image(daemon, root)
    dockerfile = (REPO / "docker" / "flwr-standin.Dockerfile").read_bytes()
    for role, ref in zip(FLOWER_ROLES, refs, strict=True):
        daemon.docker(
            "build", "-q", "--network=host", f"--target={role}",
            f"--build-arg=BASE_IMAGE={BASE_IMAGE}", f"--build-arg=FLWR_VERSION={FLWR_VERSION}",
            "-t", ref, "-", stdin=dockerfile,
        )  # fmt: skip
    return f"stand-ins on {BASE_IMAGE}"


def _local_torch_wheels() -> Path | None:
    """pip's configured find-links folder, if it holds a CPU torch wheel."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    folder = Path(os.environ.get("PIP_FIND_LINKS") or done.stdout.strip() or "/nonexistent")
    return folder if folder.is_dir() and any(folder.glob("torch-*+cpu-*.whl")) else None


def _wheel_port() -> int:
    """A fixed port when free: the URL is a build argument, and a new value would miss the
    layer cache and reinstall every dependency."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", WHEEL_PORT))
            return WHEEL_PORT
        except OSError:
            return free_ports(1)[0]


def project_image(daemon: Daemon, sup: ProcessSupervisor, root: Path) -> None:
    """Build ``docker/Dockerfile`` (layers cached in the data root)."""
    args = ["build", "-q", "--network=host", "-f", "docker/Dockerfile", "-t", PROJECT_IMAGE]
    wheels = _local_torch_wheels()
    server = None
    if wheels is not None:  # torch from the local wheel, its dependencies from PyPI
        port = _wheel_port()
        http = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
        server = sup.start("wheel-server", [*http, "--directory", str(wheels)], cwd=root)
        args += [
            "--build-arg=TORCH_INDEX_URL=https://pypi.org/simple",
            f"--build-arg=PIP_FIND_LINKS=http://127.0.0.1:{port}/",
        ]
        wait_healthy(f"http://127.0.0.1:{port}/", server, timeout=30)
    try:
        daemon.docker(*args, str(REPO), timeout=1800)
    finally:
        if server is not None:
            stop_popen(server.popen, grace=10)
