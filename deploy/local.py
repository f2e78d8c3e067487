"""``make deploy-local``: the compose topology as real processes on 127.0.0.1 (with
``--netns``: each SuperNode and the SuperLink on a network host of its own).

One SuperLink (TLS, SuperNode authentication, state in a database file), one SuperExec
for the ServerApp, N SuperNodes (``partition-id=i num-partitions=N``, a privacy ledger
under ``<work-dir>/supernode-i/ledger``) with one SuperExec each, all in
``--isolation process`` like ``docker-compose.yml``; Runtime APIs over TLS and
SuperExecs authenticated with the shared secret. SuperNode keys are registered with
``flwr supernode register`` before the nodes start; the app is submitted with
``flwr run <app> <connection> --stream``. Every process is stopped on exit, also on
failure or SIGINT/SIGTERM. The last line printed is the run directory.

Usage::

    python -m deploy.local [--supernodes 2] [--rounds 2] [--run-config 'k=v ...']
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
from flwr.common.config import parse_config_args

from deploy.certs import DEFAULT_CERTS_DIR, DEFAULT_KEYS_DIR, TlsBundle, generate
from deploy.netns import NetnsError, Topology
from deploy.run_config import load_experiment_file, run_config_flag
from launch.connection import write_connection
from launch.env import deployment_env, tool
from launch.flwr import check_completed, register, wait_answering, wait_online
from launch.net import free_ports, wait_healthy
from launch.signals import Interrupted, signals_ignored, signals_raise
from launch.stream import run_app
from launch.supervisor import FlowerError, ProcessSupervisor
from simulations.experiment import check_output_dir
from task.config import load_defaults, parse_run_config

REPO = Path(__file__).resolve().parent.parent
CONNECTION = "fedequity-local"
HOST = "127.0.0.1"


class DeployError(RuntimeError):
    """The deployment failed; the message says which component and why."""


@dataclass(frozen=True)
class Options:
    """What to deploy and where its files go."""

    supernodes: int = 2
    rounds: int = 2
    app_dir: Path = REPO
    output_dir: Path = REPO / "outputs"
    work_dir: Path | None = None  # default: <app>/.flwr/deploy-local/<timestamp>
    experiment: Path | None = REPO / "simulations" / "experiments" / "default.toml"
    run_config: tuple[str, ...] = ()
    certs_dir: Path = DEFAULT_CERTS_DIR
    keys_dir: Path = DEFAULT_KEYS_DIR
    timeout: float = 900.0
    startup_timeout: float = 60.0
    netns: bool = False  # each component on its own network host (deploy/netns.py)


@dataclass
class Deployment:
    """A running deployment: the supervisor, its ports and the CLI connection."""

    sup: ProcessSupervisor
    tls: TlsBundle
    work_dir: Path
    superlink_port: int
    supernode_ports: list[int] = field(default_factory=list)
    topology: Topology | None = None  # network namespaces, or all on loopback

    @property
    def address(self) -> str:
        """SuperLink address (Fleet, Control and Runtime API share one port) as the CLI
        and the ServerApp's SuperExec dial it: loopback, in the SuperLink's namespace."""
        return f"{HOST}:{self.superlink_port}"

    def fleet_address(self, index: int) -> str:
        """The SuperLink as SuperNode ``index`` dials it: across its veth under --netns."""
        host = self.topology.link_addr(index) if self.topology else HOST
        return f"{host}:{self.superlink_port}"

    def on_link_host(self, cmd: list[str]) -> list[str]:
        return self.topology.exec(self.topology.link_ns, cmd) if self.topology else cmd

    def on_node_host(self, index: int, cmd: list[str]) -> list[str]:
        return self.topology.exec(self.topology.node_ns(index), cmd) if self.topology else cmd


def superlink_cmd(dep: Deployment) -> list[str]:
    """``flower-superlink`` as in compose: TLS, node auth, database, process isolation."""
    tls = dep.tls
    return [
        tool("flower-superlink"),
        f"--ssl-ca-certfile={tls.ca_cert}",
        f"--ssl-certfile={tls.server_cert}",
        f"--ssl-keyfile={tls.server_key}",
        "--enable-supernode-auth",
        f"--database={dep.work_dir / 'superlink-state.db'}",
        "--isolation=process",
        f"--superexec-auth-secret-file={tls.superlink_secret}",
        "--disable-runtime-dependency-installation",
        # under --netns: every address of its namespace, i.e. loopback and its veths
        f"--host={'0.0.0.0' if dep.topology else HOST}",
        f"--port={dep.superlink_port}",
    ]


def superexec_cmd(dep: Deployment, runtime_port: int, secret: Path) -> list[str]:
    """``flower-superexec`` for the Runtime API at ``runtime_port`` (TLS + secret)."""
    return [
        tool("flower-superexec"),
        f"--runtime-api-address={HOST}:{runtime_port}",
        f"--root-certificates={dep.tls.ca_cert}",
        f"--superexec-auth-secret-file={secret}",
    ]


def ledger_dir(dep: Deployment, index: int) -> Path:
    """Where SuperNode ``index`` keeps its privacy ledger (node-config ``ledger-dir``): in
    the deployment's work dir, so a restarted node finds it again."""
    return dep.work_dir / f"supernode-{index}" / "ledger"


def supernode_cmd(dep: Deployment, index: int, num: int) -> list[str]:
    """``flower-supernode`` ``index`` of ``num``: its key, its partition, its Runtime API."""
    node = dep.tls.supernodes[index]
    return [
        tool("flower-supernode"),
        f"--superlink={dep.fleet_address(index)}",
        f"--root-certificates={dep.tls.ca_cert}",
        f"--auth-supernode-private-key={node.auth_key}",
        f"--node-config=partition-id={index} num-partitions={num} secure-rng=true "
        f"ledger-dir={json.dumps(str(ledger_dir(dep, index)))}",
        "--isolation=process",
        f"--host={HOST}",
        f"--port={dep.supernode_ports[index]}",
        f"--ssl-certfile={node.runtime_cert}",
        f"--ssl-keyfile={node.runtime_key}",
        f"--ssl-ca-certfile={dep.tls.ca_cert}",
        f"--superexec-auth-secret-file={node.superexec_secret}",
        "--max-retries=5",
    ]


def start_superlink(dep: Deployment, timeout: float) -> None:
    """Start the SuperLink and its ServerApp SuperExec; wait until healthy."""
    proc = dep.sup.start("superlink", dep.on_link_host(superlink_cmd(dep)), cwd=dep.work_dir)
    if dep.topology is None:
        wait_healthy(f"https://{dep.address}/health", proc, timeout, ca_cert=dep.tls.ca_cert)
    else:  # its namespace is not ours: ask through the CLI, which runs there
        wait_answering(dep.sup, CONNECTION, dep.work_dir, proc, timeout)
    cmd = superexec_cmd(dep, dep.superlink_port, dep.tls.superlink_secret)
    dep.sup.start("superexec-serverapp", dep.on_link_host(cmd), cwd=dep.work_dir)


def client_threads(num_supernodes: int) -> dict[str, str]:
    """Share the cores among the ClientApps that train at the same time (like one CPU per
    client in simulation); without it each torch process takes every core."""
    per_client = str(max(1, (os.cpu_count() or 1) // num_supernodes))
    return {"OMP_NUM_THREADS": per_client, "MKL_NUM_THREADS": per_client}


def start_supernodes(dep: Deployment, num: int, timeout: float) -> list[str]:
    """Register each SuperNode's public key, start node + SuperExec; wait until online."""
    nodes = dep.tls.supernodes[:num]
    node_ids = [register(dep.sup, n.auth_pub, CONNECTION, dep.work_dir) for n in nodes]
    threads = client_threads(num)
    for i, node in enumerate(nodes):
        cmd = dep.on_node_host(i, supernode_cmd(dep, i, num))
        dep.sup.start(f"supernode-{i}", cmd, cwd=dep.work_dir)
        cmd = dep.on_node_host(i, superexec_cmd(dep, dep.supernode_ports[i], node.superexec_secret))
        dep.sup.start(f"superexec-clientapp-{i}", cmd, cwd=dep.work_dir, extra_env=threads)
    wait_online(dep.sup, CONNECTION, node_ids, dep.work_dir, timeout)
    return node_ids


def run_config_args(opts: Options) -> list[str]:
    """One ``--run-config`` flag, later values winning: the experiment file's overrides, the
    user's items, then rounds and the absolute output dir. Each user item is parsed by
    Flower on its own and merged key by key: Flower merges separate flags by top-level
    table, so a later ``train.*`` flag would drop every earlier ``train.*`` key."""
    overrides = load_experiment_file(opts.experiment)[0] if opts.experiment else {}
    for item in [*opts.run_config, f"num-server-rounds={opts.rounds}"]:
        try:
            overrides |= parse_config_args([item])
        except click.ClickException:  # Flower's TOML-value parser: no traceback for a typo
            raise ValueError(
                f"--run-config {item!r}: not key=value items with TOML values; a string "
                "needs quotes, e.g. \"strategy='fedavg' seed=3\""
            ) from None
    overrides["output-dir"] = str(opts.output_dir.resolve()).replace("\\", "/")
    # every key and value, and the output dir, named before a certificate or process is made
    parse_run_config(load_defaults() | overrides)
    check_output_dir(overrides["output-dir"])
    return run_config_flag(overrides)


def prepare_deployment(opts: Options, work: Path, topology: Topology | None) -> Deployment:
    """Certificates (naming the SuperLink's veth addresses under --netns), ports, the
    supervisor and the CLI connection of a deployment about to start."""
    sans = [f"IP:{topology.link_addr(i)}" for i in range(opts.supernodes)] if topology else []
    tls = generate(opts.supernodes, opts.certs_dir, opts.keys_dir, extra_sans=sans)
    flwr_home = work / "flwr-home"
    ports = free_ports(opts.supernodes + 1)
    sup = ProcessSupervisor(env=deployment_env(flwr_home), log_dir=work / "logs")
    if topology is not None:  # the CLI talks to the SuperLink from inside its namespace
        sup.cli_prefix = tuple(topology.exec(topology.link_ns, []))
    dep = Deployment(sup, tls, work, ports[0], ports[1:], topology)
    write_connection(flwr_home, CONNECTION, dep.address, tls.ca_cert)
    return dep


def deploy_local(opts: Options, topology: Topology | None = None) -> Path:
    """Run the app once in deployment mode; return ``<output-dir>/<run-id>``. With
    ``opts.netns``, in the namespaces of ``topology`` (default: new names), made here and
    removed again."""
    if opts.supernodes < 1 or opts.rounds < 1:
        raise ValueError("--supernodes and --rounds must be >= 1")
    run_args = run_config_args(opts)  # a bad experiment file fails before anything starts
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work = (opts.work_dir or opts.app_dir / ".flwr" / "deploy-local" / stamp).resolve()
    work.mkdir(parents=True, exist_ok=True)
    topology = (topology or Topology(opts.supernodes)) if opts.netns else None
    dep = prepare_deployment(opts, work, topology)
    sup = dep.sup
    print(
        f"deploy-local: SuperLink https://{dep.address}, {opts.supernodes} SuperNodes, "
        f"{opts.rounds} rounds; logs in {work / 'logs'}",
        flush=True,
    )
    with signals_raise():
        try:
            if topology is not None:
                topology.create()
                print(f"deploy-local: network namespaces {topology.namespaces()}", flush=True)
            start_superlink(dep, opts.startup_timeout)
            start_supernodes(dep, opts.supernodes, opts.startup_timeout)
            run_id = run_app(sup, opts.app_dir, CONNECTION, run_args, work, opts.timeout)
            check_completed(sup, CONNECTION, run_id, work, opts.timeout)
        finally:
            leftovers = sup.stop_all()
            if leftovers:
                print(f"deploy-local: had to SIGKILL {leftovers}", file=sys.stderr)
            if topology is not None:
                with signals_ignored():  # a second Ctrl-C must not leave namespaces behind
                    topology.delete()
    run_dir = opts.output_dir.resolve() / run_id
    if not (run_dir / "results.json").is_file():
        raise DeployError(f"run {run_id} completed but wrote no {run_dir / 'results.json'}")
    return run_dir


INTERRUPTED = "deploy-local interrupted; all processes stopped"


def parse_args(argv: Sequence[str] | None) -> Options:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.split("\n")[0])
    p.add_argument("--supernodes", type=int, default=2, help="number of SuperNodes (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="num-server-rounds (default 2)")
    p.add_argument("--app", type=Path, default=REPO, help="Flower App directory")
    p.add_argument("--output-dir", type=Path, default=None, help="default: <app>/outputs")
    p.add_argument("--work-dir", type=Path, default=None, help="logs, state, FLWR_HOME")
    p.add_argument(
        "--experiment",
        type=lambda text: Path(text) if text.lower() not in ("", "none") else None,
        default=Options.experiment,
        help="experiment TOML whose run-config overrides apply (default: the default "
        "experiment; 'none' for pyproject's defaults; its [federation] table is ignored)",
    )
    p.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="more run-config overrides as key=value items, e.g. \"dp.mode='local' seed=3\"",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument(
        "--netns",
        action="store_true",
        help="the SuperLink and each SuperNode in a network namespace of its own, joined by "
        "veth pairs with link-local addresses (root; deploy/netns.py)",
    )
    p.add_argument("--certs-dir", type=Path, default=DEFAULT_CERTS_DIR, help="CA, certificates")
    p.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help="SuperNode keys")
    a = p.parse_args(argv)
    return Options(
        supernodes=a.supernodes,
        rounds=a.rounds,
        app_dir=a.app.resolve(),
        output_dir=(a.output_dir or a.app / "outputs").resolve(),
        work_dir=a.work_dir,
        experiment=a.experiment,
        run_config=tuple(a.run_config),
        timeout=a.timeout,
        netns=a.netns,
        certs_dir=a.certs_dir,
        keys_dir=a.keys_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; prints the run directory as the last line."""
    opts = parse_args(argv)
    start = time.monotonic()
    try:
        run_dir = deploy_local(opts)
    except (DeployError, FlowerError, NetnsError, ValueError, OSError) as err:
        print(f"deploy-local failed: {err}", file=sys.stderr)
        return 1
    except Interrupted as interrupted:  # SIGTERM/SIGHUP: the same line as Ctrl-C's
        print(INTERRUPTED, file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    results = json.loads((run_dir / "results.json").read_text())
    print(
        f"deploy-local: {len(results.get('rounds', []))} rounds on {opts.supernodes} "
        f"SuperNodes in {time.monotonic() - start:.1f} s"
    )
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
