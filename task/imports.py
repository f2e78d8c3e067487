"""Import a package without one of its eagerly imported submodules."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def skipping_submodule(name: str) -> Iterator[None]:
    """Import a package inside this block without its submodule ``name``.

    While the block runs, a stand-in module holds that submodule's place. Afterwards the
    stand-in is removed from ``sys.modules`` and from the package. A later explicit import of
    ``name`` therefore loads the real submodule. If the package is already imported, this
    does nothing.
    """
    package, _, attribute = name.rpartition(".")
    if package in sys.modules:
        yield
        return
    stand_in = types.ModuleType(name)
    sys.modules[name] = stand_in
    try:
        yield
    finally:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        parent = sys.modules.get(package)
        if parent is not None and getattr(parent, attribute, None) is stand_in:
            delattr(parent, attribute)
