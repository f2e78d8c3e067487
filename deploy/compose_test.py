"""``make compose-test``: the docker-compose stack on a real Docker engine, end to end.

Builds the images (:mod:`deploy.engine`), writes the compose file for N SuperNodes from
``docker-compose.yml`` (:func:`render_compose`), makes a CA, certificates and SuperNode keys
for it, brings up SuperLink + N SuperNodes over TLS with SuperNode authentication inside the
run daemon's network namespace, registers the N keys, runs the default experiment for
``--rounds`` rounds with ``flwr run``, checks ``results.json``, then checks that a SuperNode
with an unregistered key is refused. Everything (containers, networks, volumes, both
daemons, the namespace) is removed at the end, also on failure; the images stay in
``--data-root`` as the cache of the next run.

Usage::

    python -m deploy.compose_test [--supernodes 2] [--rounds 2] [--data-root .cache/compose-engine]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from deploy import compose_checks as cc
from deploy import compose_policy as cp
from deploy import engine
from deploy.certs import TlsBundle, generate, mounted_files
from deploy.netns import NetnsError, add_namespace, delete_namespace
from deploy.run_config import load_experiment_file, run_config_flag
from launch.connection import write_connection
from launch.env import deployment_env
from launch.flwr import check_completed, register, wait_answering, wait_online
from launch.signals import Interrupted, signals_raise
from launch.stream import run_app
from launch.supervisor import FlowerError, ProcessSupervisor

REPO = engine.REPO
TEMPLATE = REPO / "docker-compose.yml"
CONNECTION = "fedequity-compose"
CONTAINER_UID = 49999  # Flower's `app` user
NODE_PAIR = ("supernode-0", "superexec-clientapp-0")
VOLUME_INIT = "volume-init"  # the one-shot service that hands every named volume over
REFUSED = "Exit Code: 305"  # how flower-supernode says its key is not registered


class ComposeTestError(RuntimeError):
    """The stack did not come up, run or refuse as it should; the message says which."""


def render_compose(num_supernodes: int, template: Path = TEMPLATE) -> dict[str, Any]:
    """The compose file for ``num_supernodes`` nodes: ``template`` with anchors resolved and
    its node-0 pair (services, ledger volume, secrets) repeated for every index."""
    if num_supernodes < 1:
        raise ValueError(f"--supernodes must be >= 1, got {num_supernodes}")
    base = yaml.safe_load(template.read_text())
    compose = {k: v for k, v in base.items() if not k.startswith("x-")}
    services = {n: s for n, s in compose["services"].items() if cc.component(n, s) != "supernode"}
    services = {n: s for n, s in services.items() if not n.startswith("superexec-clientapp-")}
    pair = {name: compose["services"][name] for name in NODE_PAIR}
    volumes = {k: v for k, v in compose["volumes"].items() if not k.startswith("supernode-")}
    secrets = {k: v for k, v in compose["secrets"].items() if not k.startswith("supernode-")}
    node_secrets = {k: v for k, v in compose["secrets"].items() if k.startswith("supernode-0-")}
    for i in range(num_supernodes):
        text = json.dumps(pair).replace("supernode-0", f"supernode-{i}")
        text = text.replace("superexec-clientapp-0", f"superexec-clientapp-{i}")
        text = text.replace("partition-id=0", f"partition-id={i}")
        text = text.replace("${FEDEQUITY_NUM_PARTITIONS:-3}", str(num_supernodes))
        services |= json.loads(text)
        volumes[f"supernode-{i}-ledger"] = None
        secrets |= json.loads(json.dumps(node_secrets).replace("supernode-0", f"supernode-{i}"))
    services[VOLUME_INIT]["volumes"] = [f"{name}:/volumes/{name}" for name in volumes]
    for service in services.values():
        if "build" in service:  # the file is written elsewhere; the context stays this repo
            service["build"]["context"] = str(template.parent.resolve())
    return {**compose, "services": services, "volumes": volumes, "secrets": secrets}


def policy_problems(compose_file: Path) -> list[str]:
    """What the deployment's own rules say about a rendered file (must be nothing)."""
    compose = cc.load(compose_file)
    checks = (cp.check_secure, cp.check_operable, cp.check_offline, cp.check_topology)
    return [problem for check in checks for problem in check(compose)]


def _prepare_files(work: Path, num: int) -> tuple[TlsBundle, Path]:
    """Certificates and keys for ``num`` + 1 nodes (the last is never registered), owned by
    the containers' user; the compose file; the outputs folder."""
    tls = generate(num + 1, work / "deploy" / "certs", work / "deploy" / "keys")
    outputs = work / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    for path in [*mounted_files(tls), outputs]:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    compose_file = work / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump(render_compose(num), sort_keys=False))
    if problems := policy_problems(compose_file):
        raise ComposeTestError("rendered compose file breaks the policy:\n" + "\n".join(problems))
    return tls, compose_file


def run_config(rounds: int) -> list[str]:
    """The default experiment for ``rounds`` rounds, results in the ServerApp's /app/outputs
    (``./outputs`` of the compose file's folder)."""
    experiment = REPO / "simulations" / "experiments" / "default.toml"
    overrides = load_experiment_file(experiment)[0]
    return run_config_flag(overrides | {"num-server-rounds": rounds, "output-dir": "outputs"})


class Stack:
    """``docker-compose`` for one project against the run daemon."""

    def __init__(self, daemon: engine.Daemon, compose_file: Path, project: str) -> None:
        self.daemon, self.compose_file, self.project = daemon, compose_file, project

    def __call__(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        cmd = ["docker-compose", "-f", str(self.compose_file), "-p", self.project, *args]
        return subprocess.run(
            cmd, env=self.daemon.env, capture_output=True, text=True, timeout=timeout,
            check=False, cwd=self.compose_file.parent,
        )  # fmt: skip

    def up(self, *services: str) -> None:
        done = self("up", "-d", "--no-build", *services)
        if done.returncode != 0:
            raise ComposeTestError(f"compose up {' '.join(services)}:\n{done.stderr[-3000:]}")

    def down(self) -> list[str]:
        """Remove containers, networks and volumes; return any of the project's left."""
        self("down", "--volumes", "--remove-orphans", "--timeout", "20")
        label = f"label=com.docker.compose.project={self.project}"
        left = []
        for kind in ("container", "network", "volume"):
            listed = self.daemon.docker(kind, "ls", "-q", *(["-a"] if kind == "container" else []),
                                        "--filter", label)  # fmt: skip
            left += [f"{kind} {name}" for name in listed.split()]
        return left


def check_results(run_dir: Path, rounds: int) -> dict[str, Any]:
    """``results.json`` of a complete run with ``rounds`` rounds and a final ε."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise ComposeTestError(f"the run wrote no {path}")
    results: dict[str, Any] = json.loads(path.read_text())
    final = results.get("final") or {}
    if results.get("status") != "complete" or len(results.get("rounds", [])) != rounds:
        raise ComposeTestError(f"{path}: status {results.get('status')}, rounds {rounds} wanted")
    if not isinstance(final.get("accuracy"), float) or not final.get("max_epsilon"):
        raise ComposeTestError(f"{path}: no final accuracy / ε: {final}")
    return results


def check_refused(stack: Stack, tls: TlsBundle, timeout: float = 180.0) -> str:
    """A SuperNode whose key was never registered must exit, refused; return Flower's words."""
    intruder = tls.supernodes[-1].auth_key
    done = stack(
        "run", "--rm", "--no-deps", "-T", "-v", f"{intruder}:/run/secrets/intruder-key:ro",
        "supernode-0", "--superlink=superlink:8000", "--root-certificates=/run/secrets/flwr-ca",
        "--auth-supernode-private-key=/run/secrets/intruder-key", "--isolation=process",
        timeout=timeout,
    )  # fmt: skip
    out = done.stdout + done.stderr
    if done.returncode == 0 or REFUSED not in out:
        raise ComposeTestError(f"unregistered SuperNode exited {done.returncode}:\n{out[-2000:]}")
    return next(line for line in out.splitlines() if "[code:" in line or REFUSED in line)


def _take_down(stack: Stack | None) -> list[str]:
    """``down`` that never stops the clean-up after it (a dead daemon cannot list)."""
    if stack is None:
        return []
    try:
        return stack.down()
    except (engine.EngineError, subprocess.TimeoutExpired) as err:
        return [f"unknown ({str(err)[:200]})"]


def build_images(root: Path, sup: ProcessSupervisor) -> str:
    """Both Flower and project images in the data root; return where Flower's came from."""
    daemon = engine.start_daemon(sup, root, "build")
    try:
        source = engine.flower_images(daemon, root)
        engine.project_image(daemon, sup, root)
        return source
    finally:
        engine.stop_daemon(daemon)


def compose_test(num: int, rounds: int, root: Path, timeout: float = 1500.0) -> dict[str, Any]:
    """The whole check; return the run's results. Leaves only the image cache behind."""
    engine.ensure_installed()
    root = root.resolve()
    work = root / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir(parents=True)
    engine_sup = ProcessSupervisor(env=dict(os.environ), log_dir=work / "logs")
    cli = ProcessSupervisor(env=deployment_env(work / "flwr-home"), log_dir=work / "logs")
    netns = f"fe-compose-{uuid.uuid4().hex[:6]}"
    cli.cli_prefix = ("ip", "netns", "exec", netns)
    run_daemon: engine.Daemon | None = None
    stack: Stack | None = None
    with signals_raise():
        try:
            start = time.monotonic()
            source = build_images(root, engine_sup)
            print(f"compose-test: images ready in {time.monotonic() - start:.0f} s ({source})")
            tls, compose_file = _prepare_files(work, num)
            add_namespace(netns)
            run_daemon = engine.start_daemon(engine_sup, root, "run", netns=netns)
            stack = Stack(run_daemon, compose_file, netns)
            write_connection(work / "flwr-home", CONNECTION, "127.0.0.1:8000", tls.ca_cert)
            stack.up("superlink")
            wait_answering(cli, CONNECTION, work, run_daemon.proc, 120.0)
            ids = [register(cli, n.auth_pub, CONNECTION, work) for n in tls.supernodes[:num]]
            stack.up()
            wait_online(cli, CONNECTION, ids, work, 240.0)
            print(f"compose-test: {num} SuperNodes online after {time.monotonic() - start:.0f} s")
            run_id = run_app(cli, REPO, CONNECTION, run_config(rounds), work, timeout)
            check_completed(cli, CONNECTION, run_id, work, 120.0)
            results = check_results(work / "outputs" / run_id, rounds)
            refusal = check_refused(stack, tls)
            print(f"compose-test: unregistered SuperNode refused: {refusal.strip()}")
            print(f"compose-test: passed in {time.monotonic() - start:.0f} s; {work}")
            return results
        finally:
            left = _take_down(stack)
            if run_daemon is not None:
                engine.stop_daemon(run_daemon)
            engine_sup.stop_all()
            delete_namespace(netns)
            if left and sys.exc_info()[0] is None:
                raise ComposeTestError(f"compose down left {left}")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(prog="python -m deploy.compose_test", description=__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--supernodes", type=int, default=2, help="SuperNodes N (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="num-server-rounds (default 2)")
    p.add_argument(
        "--data-root", type=Path, default=REPO / ".cache" / "compose-engine",
        help="the engine's data root (images: ~3 GB, reused) and each run's files",
    )  # fmt: skip
    args = p.parse_args(argv)
    try:
        results = compose_test(args.supernodes, args.rounds, args.data_root)
    except (ComposeTestError, engine.EngineError, FlowerError, NetnsError, ValueError,
            OSError, subprocess.TimeoutExpired, Interrupted) as err:  # fmt: skip
        print(f"compose-test failed: {err}", file=sys.stderr)
        return 1
    print(json.dumps(results["final"], indent=1)[:800])
    return 0


if __name__ == "__main__":
    sys.exit(main())
