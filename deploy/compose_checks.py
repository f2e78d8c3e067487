"""What ``docker-compose config`` cannot check about ``docker-compose.yml``.

Compose validates the file's schema, not whether the secret files exist, whether the
commands are valid Flower 1.42 flags, whether a service reads ``/run/secrets/x`` without
mounting ``x``, or whether each TLS peer's certificate covers the host name it is dialled
by. Each ``check_*`` function returns a list of problems (empty when fine).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from deploy.certs import TlsBundle, cert_sans, supernode_name

Compose = dict[str, Any]
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")
_SECRET_PATH = re.compile(r"/run/secrets/([\w.-]+)")
_FLWR_IMAGE = re.compile(r"^flwr/(superlink|supernode|superexec):(.+)$")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose-style ``${VAR:-default}`` substitution, recursively (``$$`` escapes)."""
    if isinstance(value, str):
        parts = value.split("$$")

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(3)
            return env.get(name) or (m.group(2) or "")

        return "$".join(_VAR.sub(sub, p) for p in parts)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load(*files: Path, env: Mapping[str, str] | None = None) -> Compose:
    """Load and merge compose files (override semantics for the keys used here)."""
    merged: Compose = {}
    for path in files:
        data = interpolate(yaml.safe_load(path.read_text()), env or {})
        for key, value in data.items():
            if key == "services":
                services = merged.setdefault("services", {})
                for name, svc in value.items():
                    services[name] = {**services.get(name, {}), **svc}
            elif isinstance(value, dict):
                merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def flwr_pin(pyproject: Path) -> str:
    """The ``flwr`` version spec in ``pyproject.toml`` (e.g. ``==1.42.*``)."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    for dep in deps:
        match = re.match(r"^flwr(\[[^\]]*\])?\s*(.+)$", dep)
        if match:
            return match.group(2).strip()
    raise ValueError(f"{pyproject}: no flwr dependency")


def check_versions(
    compose: Compose, pyproject: Path, dockerfile: Path, flwr_version: str
) -> list[str]:
    """Every Flower image, the build arg and the Dockerfile default match the flwr pin."""
    pin = flwr_pin(pyproject)
    prefix = pin.removeprefix("==").removesuffix(".*")
    problems = []
    if not flwr_version.startswith(prefix):
        problems.append(f"installed flwr {flwr_version} does not satisfy pyproject {pin}")
    for name, svc in compose["services"].items():
        image = svc.get("image", "")
        match = _FLWR_IMAGE.match(image)
        if match and match.group(2) != flwr_version:
            problems.append(f"{name}: image {image} is not pinned to flwr {flwr_version}")
        build_arg = svc.get("build", {}).get("args", {}).get("FLWR_VERSION")
        if build_arg is not None and str(build_arg) != flwr_version:
            problems.append(f"{name}: build arg FLWR_VERSION={build_arg} != {flwr_version}")
        if not match and "build" not in svc:
            problems.append(f"{name}: image {image!r} is neither flwr/* nor built here")
    arg = re.search(r"^ARG FLWR_VERSION=(\S+)", dockerfile.read_text(), re.M)
    if not arg or arg.group(1) != flwr_version:
        problems.append(f"{dockerfile}: ARG FLWR_VERSION must default to {flwr_version}")
    return problems


def check_secret_files(compose: Compose, root: Path, remap: Mapping[str, Path]) -> list[str]:
    """Every ``secrets.<x>.file`` exists (``remap`` maps a path prefix to another folder)."""
    problems = []
    for name, spec in compose.get("secrets", {}).items():
        rel = str(spec.get("file", ""))
        path = root / rel
        for prefix, target in remap.items():
            if rel.startswith(prefix):
                path = target / rel[len(prefix) :]
        if not path.is_file():
            problems.append(f"secret {name}: file {rel} not produced ({path} missing)")
    return problems


def check_secret_mounts(compose: Compose) -> list[str]:
    """Each ``/run/secrets/x`` a service reads is mounted in it and declared at top level."""
    declared = set(compose.get("secrets", {}))
    problems = []
    for name, svc in compose["services"].items():
        mounted = {s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])}
        text = yaml.safe_dump({"c": svc.get("command"), "h": svc.get("healthcheck")})
        for used in set(_SECRET_PATH.findall(text)):
            if used not in mounted:
                problems.append(f"{name}: reads /run/secrets/{used} but does not mount it")
        problems += [f"{name}: secret {s} is not declared" for s in mounted - declared]
    return problems


def _parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from flwr.supercore.cli.flower_superexec import _parse_args as superexec
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink as superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode as supernode

    return {"superlink": superlink, "supernode": supernode, "superexec": superexec}


def component(name: str, svc: Compose) -> str | None:
    """``superlink``/``supernode``/``superexec`` for a Flower service, else None."""
    match = _FLWR_IMAGE.match(svc.get("image", ""))
    if match:
        return match.group(1) if svc.get("entrypoint") is None else None
    return "superexec" if "build" in svc else None


def parse_command(kind: str, command: list[str]) -> argparse.Namespace:
    """Parse ``command`` with Flower's own parser for ``kind``; ValueError if it rejects it."""
    parser = _parsers()[kind]()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, unknown = parser.parse_known_args(command)
    except SystemExit as exc:
        raise ValueError(err.getvalue().strip().splitlines()[-1]) from exc
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def parsed_commands(compose: Compose) -> tuple[dict[str, argparse.Namespace], list[str]]:
    """Every Flower service's command parsed by Flower 1.42's CLI parsers, plus problems."""
    parsed: dict[str, argparse.Namespace] = {}
    problems = []
    for name, svc in compose["services"].items():
        kind = component(name, svc)
        if kind is None:
            continue
        try:
            parsed[name] = parse_command(kind, [str(c) for c in svc.get("command", [])])
        except ValueError as err:
            problems.append(f"{name}: flower-{kind} rejects its command: {err}")
    return parsed, problems


def check_tls_names(compose: Compose, bundle: TlsBundle) -> list[str]:
    """Each host a client dials (``--superlink``, ``--runtime-api-address``) is in the SANs
    of the certificate the peer serves."""
    served = {"superlink": bundle.server_cert}
    served |= {supernode_name(i): n.runtime_cert for i, n in enumerate(bundle.supernodes)}
    parsed, problems = parsed_commands(compose)
    for name, args in parsed.items():
        target = getattr(args, "superlink", None) or getattr(args, "runtime_api_address", None)
        if not target:
            continue
        host = target.rsplit(":", 1)[0]
        cert = served.get(host)
        if cert is None:
            problems.append(f"{name}: dials {host}, which no generated certificate serves")
        elif f"DNS:{host}" not in cert_sans(cert):
            problems.append(f"{name}: dials {host}, not in the SANs of {cert.name}")
    return problems
