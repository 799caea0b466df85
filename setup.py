"""Build hook: compile the gateway's hottest pure-Python modules with mypyc.

Everything else about the package is in pyproject.toml. The modules listed in
`gateway/compiled.py` are compiled to C extensions from their own unchanged source (mypyc, the
compiler mypy and black ship with); Python imports an extension before a `.py` of the same name,
so a compiled build runs the same code at C speed and an uncompiled one runs the `.py`. A build
without a C compiler or Python's headers (or with `GATEWAY_PURE=1`) installs the pure-Python
package instead of failing: the gateway works the same, only slower (docs/operations.md,
"Compiled modules").
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Read by path, not imported: importing `gateway` would need its dependencies installed.
MODULES: tuple[str, ...] = runpy.run_path(str(ROOT / "gateway" / "compiled.py"))["MODULES"]
# mypy's own options for the translation, not pyproject's [tool.mypy]: the build environment
# has none of the gateway's dependencies (their types are Any here) nor the pydantic plugin,
# and type errors in modules that are not compiled must not stop a build.
MYPY_FLAGS = ["--config-file=", "--ignore-missing-imports", "--follow-imports=silent",
              "--python-version=3.11"]


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python modules in place instead of failing the
    install (setuptools' own `optional` covers the compile step, not a missing toolchain).
    All or none: each listed module's extension is a shim importing the one shared library
    (`gateway_native__mypyc`), so if any of them fails, the others' outputs are removed too,
    and no shim is left to import a library that was not built."""

    def run(self) -> None:
        self._failed = False
        try:
            super().run()
        except Exception as exc:  # any toolchain failure: fall back
            self._failed = True
            print(f"mypyc build failed, installing pure Python: {exc}", file=sys.stderr)
        if self._failed:
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).unlink(missing_ok=True)

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._failed = True
            print(f"mypyc: {ext.name} not compiled ({exc}); installing pure Python",
                  file=sys.stderr)


def _extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("GATEWAY_PURE") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # no mypy in the build environment
        return []
    paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in MODULES]
    try:
        exts = mypycify([*MYPY_FLAGS, *paths], opt_level="3", group_name="gateway_native")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error it refuses: stay pure
        print(f"mypyc could not translate the modules, installing pure Python: {exc}",
              file=sys.stderr)
        return []
    for ext in exts:
        ext.optional = True
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
