"""The app as ``flwr run`` publishes it, staged without walking the project's ignored trees.

``flwr run DIR`` lists every file under DIR (``os.walk`` and a ``resolve()`` per file)
before it drops what ``.gitignore`` excludes. In this project DIR also holds ``.venv``,
the feature cache and ``outputs/``: ~57,000 files, 5–7 s of every run on two cores, and
growing with every run kept. Here the ignored directories are pruned during the walk,
Flower's own filter (``filter_paths_for_publish``) picks the published files from what is
left, and they are copied to a small folder that ``flwr run`` then packs: the same files,
so the same FAB.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# a name no project file has: "is a file inside this directory ignored?"
_PROBE = "\0probe"


def published_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path → file, for exactly the files ``flwr run root`` would publish."""
    # Imported here: importing Flower takes 0.5 s the runner spends before its SuperLink.
    from flwr.cli.utils import (
        build_pathspec,
        filter_paths_for_publish,
        load_gitignore_patterns,
    )
    from flwr.supercore.constant import APP_PUBLISH_EXCLUDE_PATTERNS

    patterns = load_gitignore_patterns(root / ".gitignore")
    # A negated pattern may re-include a file below an ignored directory (pathspec judges
    # file by file), so with one the walk cannot prune and lists everything, as Flower does.
    prunable = not any(p.lstrip().startswith("!") for p in patterns)
    ignored = build_pathspec([*patterns, *APP_PUBLISH_EXCLUDE_PATTERNS])
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath).relative_to(root)
        if prunable:
            dirnames[:] = [d for d in dirnames
                           if not ignored.match_file((here / d / _PROBE).as_posix())]  # fmt: skip
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():  # Flower skips symlinks too
                found[(here / name).as_posix()] = path
    return {rel: found[rel] for rel in filter_paths_for_publish(found)}


def stage_app(root: Path, target: Path) -> Path:
    """Copy the published files of the app in ``root`` into ``target``; return ``target``."""
    for rel, source in published_files(root).items():
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return target
