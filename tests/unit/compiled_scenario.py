"""Run by `test_compiled.py` in a subprocess: the routing decisions of `prefix-load` on the
decision benchmark's prompts, printed as one digest.

`--interpreted` installs an import hook first that loads every module `gateway/compiled.py`
lists from its `.py` source, so the same decisions are made by the interpreted code; the two
digests must be equal. The first line printed is which way the modules ran."""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

from gateway.compiled import MODULES, source


class _SourceOnly(importlib.abc.MetaPathFinder):
    """Finds the compiled modules' `.py` files, ahead of the path finder that would prefer
    the extension beside them."""

    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(name, source(name))


def main(argv: list[str]) -> None:
    if "--interpreted" in argv:
        sys.meta_path.insert(0, _SourceOnly())
    from bench.routing_decision import _Row
    from gateway.compiled import status
    from gateway.routing.prefix_index import fingerprint_parts

    print("compiled" if all(status().values()) else "interpreted")
    digest = hashlib.sha256()
    for kind in ("chat", "rag"):
        for live in (False, True):
            row = _Row("prefix-load", kind, 16, 200, live)
            for call in row.calls:
                fps, tokens, _ = fingerprint_parts(call.body)
                order = row.strategy.order(row.targets, row.signals(), call)
                if row.index is not None and row.index.pending:
                    row.index.apply()
                row.after(order)
                digest.update(repr((fps, tokens, [t.id for t in order])).encode())
    print(digest.hexdigest())


if __name__ == "__main__":
    main(sys.argv[1:])
