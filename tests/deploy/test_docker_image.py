"""docker/: the project image installs pyproject's dependencies, CPU torch, nothing else."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def _export_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "export_requirements", REPO / "docker" / "export_requirements.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_split_torch_from_the_rest_and_drop_flwr(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = [\n'
        '  "flwr[simulation]==1.42.*", "torch==2.13.0", "flwr-datasets>=0.5", "numpy>=1.26",\n]\n'
    )
    torch, rest = _export_module().split_requirements(pyproject)
    assert torch == ["torch==2.13.0"]
    assert rest == ["flwr-datasets>=0.5", "numpy>=1.26"]


def test_requirements_of_this_project_cover_every_dependency_but_flwr(tmp_path: Path) -> None:
    _export_module().main([str(REPO / "pyproject.toml"), str(tmp_path)])
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    written = (tmp_path / "torch.txt").read_text().split() + (
        tmp_path / "requirements.txt"
    ).read_text().splitlines()
    assert sorted(written) == sorted(d for d in deps if not d.startswith("flwr["))
    assert (tmp_path / "torch.txt").read_text().startswith("torch")


def test_missing_torch_is_an_error(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["numpy"]\n')
    with pytest.raises(ValueError, match="no torch"):
        _export_module().split_requirements(pyproject)


def test_dockerfile_uses_flower_base_cpu_index_and_no_runtime_installs() -> None:
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}$", DOCKERFILE, re.M)
    assert '--index-url "${TORCH_INDEX_URL}"' in DOCKERFILE
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in DOCKERFILE
    for env in (
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
        "FLWR_TELEMETRY_ENABLED=0",
        "FLWR_DISABLE_UPDATE_CHECK=1",
        "HF_HUB_OFFLINE=1",
    ):
        assert env in DOCKERFILE


def test_build_context_excludes_keys_and_code() -> None:
    lines = [
        x for x in (REPO / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")
    ]
    assert lines[0] == "*"  # everything excluded, then only what the build copies
    assert sorted(lines[1:]) == ["!docker/export_requirements.py", "!pyproject.toml"]
    copied = re.findall(r"^COPY (?:--\S+ )*(\S+) ", DOCKERFILE, re.M)
    assert sorted(copied) == ["docker/export_requirements.py", "pyproject.toml"]
