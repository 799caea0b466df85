"""What rewriting `model` in a 200 KiB request costs: the re-encode the adapter used to do
against `request_json.with_members`, and the edge's parse beside them. Run it under callgrind
and subtract `--what none`: instructions do not move when the machine is busy.

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python bench/body_rewrite.py --what reencode --n 20
    # --what with_members | parse | msgspec_parse | utf8_decode | none; --ascii for a
    # prompt without non-ASCII letters

The body is the overhead benchmark's `--body-kb 200` request (`bench/overhead/apis.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec
from pydantic_core import from_json

from bench.overhead.apis import CHAT, padded
from gateway.providers.request_json import with_members


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--what", default="with_members")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--kb", type=int, default=200)
    p.add_argument("--ascii", action="store_true")
    a = p.parse_args()
    text = padded(CHAT.json_body("bench-model", None), a.kb)
    raw = (text.encode("ascii", "ignore") if a.ascii else text.encode())
    body = from_json(raw)

    def reencode() -> bytes:  # OpenAICompatAdapter.request_body before issue 9
        b = dict(body)
        b["model"] = "bench-model-upstream"
        return json.dumps(b, ensure_ascii=False, separators=(",", ":")).encode()

    decoder = msgspec.json.Decoder()
    runs: dict[str, Callable[[], object]] = {
        "reencode": reencode,
        "with_members": lambda: with_members(raw, body, {"model": "bench-model-upstream"}),
        "parse": lambda: from_json(raw, allow_inf_nan=False),  # the edge (json_body.py)
        "msgspec_parse": lambda: decoder.decode(raw),
        "utf8_decode": raw.decode,
        "none": lambda: None,
    }
    fn = runs[a.what]
    for _ in range(a.n):
        fn()
    print(f"{a.what}: {a.n} × {len(raw):,} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
