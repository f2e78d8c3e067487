"""The deployment's own rules for ``docker-compose.yml``: secure by default, one topology.

Secure: TLS on every link, SuperNode authentication, SuperExec secrets, no ``--insecure``
outside the override file. Operable: health checks, restart policies, SuperLink state in
a named volume. Topology: SuperNode ``i`` has ``partition-id=i`` and
``num-partitions=N`` (N = number of SuperNodes) and one ClientApp SuperExec dialling it,
which keeps the node's privacy ledger on a named volume of its own.
"""

from __future__ import annotations

import argparse

from click import ClickException
from flwr.common.config import parse_config_args

from deploy.compose_checks import Compose, component, parsed_commands
from launch import env as launch_env

ONE_SHOT_RESTART = "no"


def _one_shot(svc: dict) -> bool:
    """A one-shot helper (the volume init): ``restart: "no"`` and its own entrypoint that
    starts no Flower command, so none of the Flower checks applies to it."""
    entrypoint = svc.get("entrypoint")
    words = [entrypoint] if isinstance(entrypoint, str) else list(entrypoint or [])
    flower = any(str(w).split("/")[-1].startswith(("flower-", "flwr")) for w in words)
    return svc.get("restart") == ONE_SHOT_RESTART and bool(words) and not flower


def _kinds(compose: Compose) -> dict[str, str]:
    services = compose["services"].items()
    return {n: k for n, s in services if (k := component(n, s)) is not None}


def check_secure(compose: Compose) -> list[str]:
    """TLS, SuperNode auth and SuperExec secrets everywhere; nothing insecure."""
    parsed, problems = parsed_commands(compose)
    for name, svc in compose["services"].items():
        # a Flower image with its own entrypoint is not parsed, so it would escape every
        # check: only the one-shot volume init may have one
        flower = str(svc.get("image", "")).startswith("flwr/")
        if flower and svc.get("entrypoint") and not _one_shot(svc):
            problems.append(f"{name}: a Flower image with its own entrypoint escapes the checks")
    for name, kind in _kinds(compose).items():
        args = parsed.get(name)
        if args is None:
            continue
        if args.insecure:
            problems.append(f"{name}: --insecure in the secure configuration")
        if not args.superexec_auth_secret_file:
            problems.append(f"{name}: no --superexec-auth-secret-file")
        if getattr(args, "runtime_dependency_install", False):  # any kind may pip-install
            problems.append(f"{name}: installs dependencies at run time")
        problems += [f"{name}: {p}" for p in _secure_flags(kind, args)]
    return problems


def _secure_flags(kind: str, args: argparse.Namespace) -> list[str]:
    missing = []
    if kind == "superlink":
        if not (args.ssl_certfile and args.ssl_keyfile and args.ssl_ca_certfile):
            missing.append("SuperLink without --ssl-certfile/--ssl-keyfile/--ssl-ca-certfile")
        if not args.enable_supernode_auth:
            missing.append("SuperLink without --enable-supernode-auth")
    elif kind == "supernode":
        if not args.root_certificates or not args.auth_supernode_private_key:
            missing.append("SuperNode without --root-certificates/--auth-supernode-private-key")
        if not (args.ssl_certfile and args.ssl_keyfile and args.ssl_ca_certfile):
            missing.append("SuperNode Runtime API without TLS")
    elif not args.root_certificates:
        missing.append("SuperExec without --root-certificates")
    return missing


def check_insecure_override(merged: Compose) -> list[str]:
    """The base + insecure override: every Flower service runs with ``--insecure``."""
    parsed, problems = parsed_commands(merged)
    for name in _kinds(merged):
        args = parsed.get(name)
        if args is not None and not args.insecure:
            problems.append(f"{name}: the insecure override leaves it on TLS (mixed setup)")
    return problems


def check_operable(compose: Compose) -> list[str]:
    """Health checks and restart policies; SuperLink database on a named volume."""
    problems = []
    named = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        if _one_shot(svc):
            continue
        if not svc.get("restart"):
            problems.append(f"{name}: no restart policy")
        if not svc.get("healthcheck", {}).get("test"):
            problems.append(f"{name}: no healthcheck")
    handed = {
        source
        for svc in compose["services"].values()
        if _one_shot(svc)
        for _, source, _ in _mounts(svc)
    }
    for volume in sorted(named - handed):  # a fresh volume is root's or the image user's
        problems.append(f"volume {volume}: no one-shot init service gives it to the user")
    parsed, _ = parsed_commands(compose)
    for name, kind in _kinds(compose).items():
        if kind != "superlink" or name not in parsed:
            continue
        database = str(parsed[name].database)
        mounts = _mounts(compose["services"][name])
        if not any(src in named and database.startswith(to + "/") for _, src, to in mounts):
            problems.append(f"{name}: --database {database} is not on a named volume")
    return problems


# Flower's part of the offline environment; the image (docker/Dockerfile) sets the rest.
OFFLINE_ENV = {k: v for k, v in launch_env.OFFLINE_ENV.items() if k.startswith("FLWR_")}


def check_offline(compose: Compose) -> list[str]:
    """No telemetry, no update check, no ``uv sync`` at run time, in every Flower service."""
    problems = []
    for name in _kinds(compose):
        env = compose["services"][name].get("environment") or {}
        for key, value in OFFLINE_ENV.items():
            if str(env.get(key)) != value:
                problems.append(f"{name}: environment {key} must be {value!r}")
    return problems


def check_topology(compose: Compose) -> list[str]:
    """One SuperLink + ServerApp SuperExec; SuperNode i: partition i of N, its own SuperExec,
    DP noise from OS entropy (``secure-rng=true``), its ledger on its own named volume."""
    parsed, problems = parsed_commands(compose)
    kinds = _kinds(compose)
    supernodes = sorted(n for n, k in kinds.items() if k == "supernode")
    links = [n for n, k in kinds.items() if k == "superlink"]
    if len(links) != 1:
        problems.append(f"expected one SuperLink service, found {links}")
    executors = {
        n: str(a.runtime_api_address).rsplit(":", 1)[0]
        for n, a in parsed.items()
        if kinds[n] == "superexec"
    }
    dialled = list(executors.values())
    for target in [*links, *supernodes]:
        if dialled.count(target) != 1:
            problems.append(f"{target}: needs exactly one SuperExec, has {dialled.count(target)}")
    partitions = set()
    volumes_seen: set[str] = set()
    for name in supernodes:
        config = parsed[name].node_config if name in parsed else ""
        # As the SuperNode will read it: `secure-rng = true` (spaces) silently drops the key.
        try:
            pairs = parse_config_args([str(config or "")])
        except ClickException:
            problems.append(f"{name}: --node-config {config!r} is not key=value pairs")
            continue
        if pairs.get("num-partitions") != len(supernodes):
            problems.append(
                f"{name}: num-partitions={pairs.get('num-partitions')}, "
                f"expected {len(supernodes)} (one per SuperNode)"
            )
        if pairs.get("secure-rng") is not True:  # else DP noise is replayable from the run seed
            problems.append(f"{name}: node-config must set secure-rng=true")
        partitions.add(pairs.get("partition-id"))
        own = [n for n, target in executors.items() if target == name]
        problems += _ledger_problems(compose, name, pairs.get("ledger-dir"), own, volumes_seen)
    if partitions != set(range(len(supernodes))):
        problems.append(f"partition-ids {sorted(map(str, partitions))} are not 0..N-1")
    return problems


def _ledger_problems(
    compose: Compose, node: str, ledger_dir: object, executors: list[str], seen: set[str]
) -> list[str]:
    """The node's privacy ledger (node-config ``ledger-dir``) is written by the ClientApp,
    i.e. in its SuperExec's container: there it must be a named volume of this node alone,
    or a restarted container would start again from ε = 0."""
    if not isinstance(ledger_dir, str) or not ledger_dir.startswith("/"):
        return [f'{node}: node-config must set ledger-dir="/absolute/path" (got {ledger_dir!r})']
    named = set(compose.get("volumes") or {})
    problems = []
    for executor in executors:
        service = compose["services"][executor]
        volume = _volume_at(service, ledger_dir)
        if _in_memory(compose, service, ledger_dir, volume):
            problems.append(f"{executor}: ledger-dir {ledger_dir} of {node} is a tmpfs")
        elif volume is None or volume not in named:
            problems.append(f"{executor}: ledger-dir {ledger_dir} of {node} is not a named volume")
        elif volume in seen:
            problems.append(f"{executor}: ledger volume {volume} is shared with another node")
        else:
            seen.add(volume)
    return problems


def _mounts(service: dict) -> list[tuple[str, str, str]]:
    """``(type, source, target)`` of each of the service's mounts, in short syntax
    (``source:target[:mode]``, type "") or long (``{type, source, target}``); targets
    without a trailing slash."""
    mounts = []
    for mount in service.get("volumes") or []:
        if isinstance(mount, dict):
            kind, source = str(mount.get("type", "")), str(mount.get("source", ""))
            target = str(mount.get("target", ""))
        else:
            kind, (source, _, target) = "", str(mount).partition(":")
            target = target.split(":")[0]
        mounts.append((kind, source, target.rstrip("/")))
    return mounts


def _volume_at(service: dict, path: str) -> str | None:
    """The source of the service's mount at ``path``, if any."""
    return next((src for _, src, to in _mounts(service) if to == path.rstrip("/")), None)


def _in_memory(compose: Compose, service: dict, path: str, volume: str | None) -> bool:
    """Is ``path`` a tmpfs in ``service``: its ``tmpfs:`` list, a long-syntax tmpfs mount,
    or a named volume whose driver options make it one (gone with the container)?"""
    listed = service.get("tmpfs") or []
    listed = [listed] if isinstance(listed, str) else listed
    if any(str(entry).split(":")[0].rstrip("/") == path.rstrip("/") for entry in listed):
        return True
    if any(kind == "tmpfs" and to == path.rstrip("/") for kind, _, to in _mounts(service)):
        return True
    options = ((compose.get("volumes") or {}).get(volume) or {}).get("driver_opts") or {}
    return volume is not None and options.get("type") == "tmpfs"
