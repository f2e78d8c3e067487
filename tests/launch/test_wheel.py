"""The wheel carries every package the code imports: built offline, imported from outside.

The editable install puts the repository on ``sys.path``; the child interpreter drops it
(``-P``, an empty working directory, the repository's paths removed), so the imports can
only come from the installed wheel.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACKAGES = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
    "targets"
]["wheel"]["packages"]
MODULES = ["simulations.runner", "simulations.__main__", "launch", "launch.env", "deploy.local"]
CHILD = """
import importlib, os, sys
repo, target = sys.argv[1], sys.argv[2]
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != repo]  # the editable .pth
for name in sys.argv[3:]:
    module = importlib.import_module(name)
    assert module.__file__.startswith(target + os.sep), (name, module.__file__)
print("ok")
"""


def _pip(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed in); built without network."""
    tmp = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", ".", "-w", str(tmp / "dist"),
         cwd=REPO)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("fedequity-*.whl")
    _pip("install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    return wheel, tmp / "site"


@pytest.mark.timeout(600)
def test_installed_wheel_imports_without_the_repository(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, site = installed
    empty = tmp_path / "empty"
    empty.mkdir()
    modules = [*PACKAGES, *MODULES]
    result = subprocess.run(
        [sys.executable, "-P", "-c", CHILD, str(REPO), str(site), *modules],
        cwd=empty, env={"PYTHONPATH": str(site), "PATH": str(Path(sys.executable).parent)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def test_wheel_lists_every_package_and_the_console_script(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    assert {"server", "clients", "strategies", "simulations", "task", "deploy", "launch"} <= set(
        PACKAGES
    )
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {name.split("/")[0] for name in names if "/" in name} >= set(PACKAGES)
    assert "fedequity = simulations.__main__:cli" in scripts
    assert "simulations/experiments/default.toml" in names  # deploy.local's default experiment
    assert {"task/lexicons/hatecheck.json", "task/lexicons/synthetic.json"} <= set(names)
    # Generated TLS material is gitignored, and so never packaged.
    assert not [n for n in names if n.startswith(("deploy/certs/", "deploy/keys/"))]
