"""Validate ``docker-compose.yml`` (and the insecure override) without a Docker engine.

1. ``docker-compose config -q`` with Debian's docker-compose 1.29.2 (schema, merge,
   interpolation), fetched once with ``--fetch`` (``apt-get download`` + ``dpkg -x`` into
   ``.cache/docker-compose``; the PyPI build of 1.29.2 does not install on PyYAML 6);
2. what compose does not check (:mod:`deploy.compose_checks`, :mod:`deploy.compose_policy`):
   every secret file is produced by ``deploy.certs``, every command is accepted by Flower
   1.42's own CLI parsers, mounted secrets match the paths commands read, certificate SANs
   cover the host names dialled, images are pinned to pyproject's flwr, TLS + auth on,
   health checks, restart policies, a named volume for SuperLink state, one partition per
   SuperNode.

Usage::

    python -m deploy.validate_compose [--fetch] [--require-cli]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from deploy import compose_checks as cc
from deploy import compose_policy as cp
from deploy.certs import generate

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "docker-compose.yml"
INSECURE = REPO / "docker-compose.insecure.yml"
CACHE = REPO / ".cache" / "docker-compose"
DEBIAN_PACKAGES = (
    "docker-compose",
    "python3-cached-property",
    "python3-distro",
    "python3-docker",
    "python3-dockerpty",
    "python3-docopt",
    "python3-dotenv",
    "python3-jsonschema",
    "python3-requests",
    "python3-texttable",
    "python3-websocket",
    "python3-yaml",
    "python3-attr",
    "python3-pyrsistent",
    "python3-urllib3",
    "python3-idna",
    "python3-certifi",
    "python3-chardet",
    "python3-charset-normalizer",
    "python3-six",
    "python3-distutils",
    "python3-lib2to3",
)
SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's: the .debs target its ABI


def fetch_compose(cache: Path = CACHE) -> Path:
    """Download Debian's docker-compose 1.29.2 and its Python deps; unpack; return the root."""
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    download = ["apt-get", "download", *DEBIAN_PACKAGES]
    if subprocess.run(download, cwd=debs, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True)  # package lists missing or stale
        subprocess.run(download, cwd=debs, check=True)
    shutil.rmtree(root, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def compose_command(cache: Path = CACHE) -> tuple[list[str], dict[str, str]] | None:
    """The unpacked docker-compose as (argv prefix, env), or None if not fetched."""
    root = cache / "root"
    binary = root / "usr" / "bin" / "docker-compose"
    if not binary.is_file() or not SYSTEM_PYTHON.is_file():
        return None
    paths = [root / "usr/lib/python3/dist-packages", *sorted(root.glob("usr/lib/python3.*"))]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDEQUITY_", "SUPERLINK_"))}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    return [str(SYSTEM_PYTHON), "-s", str(binary)], env


def compose_config(files: Sequence[Path], cache: Path = CACHE) -> subprocess.CompletedProcess[str]:
    """``docker-compose -f F... config -q``; raises FileNotFoundError if not fetched."""
    found = compose_command(cache)
    if found is None:
        raise FileNotFoundError(f"docker-compose not unpacked under {cache}; use --fetch")
    argv, env = found
    args = [a for f in files for a in ("-f", str(f))]
    return subprocess.run(
        [*argv, *args, "config", "-q"], cwd=REPO, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def structural_problems(base: Path = BASE, insecure: Path = INSECURE) -> list[str]:
    """Every check compose does not do, against freshly generated certificates."""
    import flwr  # the installed version is the reference

    compose = cc.load(base)
    supernodes = [n for n, s in compose["services"].items() if cc.component(n, s) == "supernode"]
    with tempfile.TemporaryDirectory() as tmp:
        certs, keys = Path(tmp) / "certs", Path(tmp) / "keys"
        bundle = generate(len(supernodes), certs, keys)
        remap = {"./deploy/certs/": certs, "./deploy/keys/": keys}
        problems = cc.check_secret_files(compose, base.parent, remap)
        problems += cc.check_tls_names(compose, bundle)
    problems += cc.check_versions(
        compose, base.parent / "pyproject.toml", base.parent / "docker/Dockerfile",
        flwr.__version__,
    )  # fmt: skip
    problems += cc.check_secret_mounts(compose)
    problems += cp.check_secure(compose)
    problems += cp.check_operable(compose)
    problems += cp.check_offline(compose)
    problems += cp.check_topology(compose)
    merged = cc.load(base, insecure)
    override = cp.check_insecure_override(merged) + cp.check_topology(merged)
    problems += [f"insecure override: {p}" for p in override]
    return sorted(set(problems))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: structural checks, then ``docker-compose config -q`` on both variants."""
    parser = argparse.ArgumentParser(prog="python -m deploy.validate_compose")
    parser.add_argument("--fetch", action="store_true", help="apt-get download docker-compose")
    parser.add_argument("--require-cli", action="store_true", help="fail if compose is missing")
    args = parser.parse_args(argv)
    if args.fetch and compose_command() is None:
        fetch_compose()
    problems = structural_problems()
    for problem in problems:
        print(f"docker-compose.yml: {problem}", file=sys.stderr)
    status = 1 if problems else 0
    if compose_command() is None:
        print("docker-compose 1.29.2 not available (run with --fetch)", file=sys.stderr)
        return 1 if args.require_cli else status
    for files in ([BASE], [BASE, INSECURE]):
        result = compose_config(files)
        names = " + ".join(f.name for f in files)
        if result.returncode != 0:
            print(f"docker-compose config -q {names}:\n{result.stderr}", file=sys.stderr)
            status = 1
        else:
            print(f"docker-compose config -q {names}: ok")
    print("structural checks: ok" if not problems else f"{len(problems)} problem(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
