"""Split ``pyproject.toml``'s dependencies for the image: torch (CPU index) and the rest.

``python docker/export_requirements.py pyproject.toml OUT_DIR`` writes
``OUT_DIR/torch.txt`` (the torch pin, installed from the PyTorch CPU index) and
``OUT_DIR/requirements.txt`` (everything else). ``flwr[...]`` is dropped: the base image
``flwr/superexec`` already has Flower, and ``[simulation]`` (Ray) is not used in deployment.
Standard library only: it runs inside the image before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def split_requirements(pyproject: Path) -> tuple[list[str], list[str]]:
    """(torch requirements, other requirements) of ``[project].dependencies``."""
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    torch: list[str] = []
    rest: list[str] = []
    for dep in deps:
        match = _NAME.match(dep)
        if match is None:
            raise ValueError(f"{pyproject}: cannot parse dependency {dep!r}")
        name = match.group(1).lower().replace("_", "-")
        if name == "flwr":
            continue
        (torch if name == "torch" else rest).append(dep)
    if not torch:
        raise ValueError(f"{pyproject}: no torch dependency to install from the CPU index")
    return torch, rest


def main(argv: list[str]) -> None:
    """CLI: ``export_requirements.py PYPROJECT OUT_DIR``."""
    if len(argv) != 2:
        raise SystemExit("usage: export_requirements.py PYPROJECT OUT_DIR")
    torch, rest = split_requirements(Path(argv[0]))
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "torch.txt").write_text("\n".join(torch) + "\n")
    (out / "requirements.txt").write_text("\n".join(rest) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
