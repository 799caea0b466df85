"""The modules `setup.py` compiles with mypyc, and how to tell whether they were.

Chosen by measurement (docs/routing.md, "Decision time"): the routing decision's pure logic,
whose time is spent in Python bytecode, with inputs the gateway built itself (fingerprints,
signals, targets), and whose compiled and interpreted code are checked to decide alike.
Compiling the request path too was tried and is not done (docs/benchmarks.md, "Compiling
the request path"): 13 % fewer instructions per request, but the suite found handlers that
Starlette no longer recognised, run-time type checks turning unexpected JSON into 500s, and
classes subclassed or patched from outside.

A module listed here must keep to what mypyc compiles faithfully: its annotations are checked
at run time (a value of the wrong type raises `TypeError`), its classes cannot get attributes
or methods assigned from outside (no monkeypatching an instance's method in a test), an
interpreted class cannot subclass a compiled one, and a subclass cannot narrow an inherited
attribute's type. `tests/unit/test_compiled.py` checks that an installed build has them
compiled and that compiled and interpreted code decide alike.

This module imports nothing of the gateway's: `setup.py` reads it before anything is
installed."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

MODULES: tuple[str, ...] = (
    "gateway.routing.prefix_index",
    "gateway.routing.prefix_heat",
    "gateway.routing.strategies.prefix_load",
)

BAKED: tuple[str, ...] = ("gateway.routing.base",)
"""Interpreted modules whose classes the compiled ones are built against: mypyc reads and
checks `EndpointLoad` and `Signals` as the named tuples they were at the build, so editing
one of these needs a reinstall too (an old build then fails at import: "tuple object
expected")."""

ROOT = Path(__file__).resolve().parent.parent
"""The directory holding the `gateway` package (the repository, in an editable install)."""


def source(module: str) -> Path:
    """The `.py` a listed module is compiled from."""
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extension(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def is_compiled(module: str) -> bool:
    """True if `module` (imported) was loaded from a C extension."""
    return _extension(getattr(sys.modules[module], "__file__", "") or "")


def status() -> dict[str, bool]:
    """Each listed module, imported, and whether it runs compiled."""
    out = {}
    for name in MODULES:
        importlib.import_module(name)
        out[name] = is_compiled(name)
    return out


def stale() -> list[str]:
    """Listed modules whose extension is older than their `.py` or than a `BAKED` module's:
    an editable install (`pip install -e .`) builds the extensions beside the sources, and
    Python keeps importing the extension after the source is edited, until the next install
    rebuilds it."""
    baked = [source(m) for m in BAKED]
    out = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        if origin is None or not _extension(origin):
            continue
        built = Path(origin).stat().st_mtime
        sources = [Path(origin).with_name(source(name).name), *baked]
        if any(py.exists() and py.stat().st_mtime > built for py in sources):
            out.append(name)
    return out
