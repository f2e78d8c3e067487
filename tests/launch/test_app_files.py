"""The staged app is exactly what ``flwr run`` would publish from the project itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.cli.utils import collect_files, filter_paths_for_publish

from launch.app_files import published_files, stage_app

REPO = Path(__file__).resolve().parents[2]


def make_project(root: Path, gitignore: str) -> Path:
    files = {
        "pyproject.toml": (REPO / "pyproject.toml").read_text(),
        ".gitignore": gitignore,
        "app.py": "x = 1\n",
        "pkg/mod.py": "y = 2\n",
        "pkg/__pycache__/mod.cpython-311.pyc": "compiled",
        "docs/guide.md": "# guide\n",
        "data.bin": "not an app file type",
        ".venv/lib/site.py": "a dependency",
        "outputs/run/results.json": "{}",
        "outputs/keep.md": "kept only if re-included",
        ".flwr/config.toml": "[x]\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "link.py").symlink_to(root / "app.py")  # Flower never publishes a symlink
    return root


def flowers_selection(root: Path) -> set[str]:
    return set(filter_paths_for_publish(collect_files(root)))


@pytest.mark.parametrize(
    "gitignore",
    [".venv\n__pycache__/\noutputs/\n", "outputs/*\n!outputs/keep.md\n", ""],
    ids=["pruned", "negated-pattern", "no-gitignore-rules"],
)
def test_published_files_are_flowers_selection(tmp_path: Path, gitignore: str) -> None:
    root = make_project(tmp_path / "project", gitignore)
    assert set(published_files(root)) == flowers_selection(root)


def test_the_staged_app_packs_to_the_same_fab(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", ".venv\n__pycache__/\noutputs/\n")
    staged = stage_app(root, tmp_path / "staged")
    assert sorted(p.name for p in staged.iterdir()) == [".gitignore", "app.py", "docs", "pkg",
                                                       "pyproject.toml"]  # fmt: skip
    digest = [hashlib.sha256(build_fab_from_disk(path)).hexdigest() for path in (root, staged)]
    assert digest[0] == digest[1]


def test_this_project_stages_what_flower_would_publish() -> None:
    assert set(published_files(REPO)) == flowers_selection(REPO)
