"""Golden fixtures (tests/fixtures/providers/): recorded-shape provider payloads in, expected
translations out. `UPDATE_GOLDEN=1 pytest tests/unit/providers tests/unit/api` rewrites the
expected files from the code — review the diff before committing it."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from gateway.call import Call

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "providers"
_CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(name: str) -> Any:
    return json.loads(read(name))


def normalise(obj: Any) -> Any:
    """Zero what differs per run: `created` timestamps and generated tool-call ids."""
    text = _CALL_ID.sub("call_GENERATED", json.dumps(obj, ensure_ascii=False))
    obj = json.loads(text)

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: (0 if k == "created" else walk(v)) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(obj)


def sse_events(data: bytes) -> list[Any]:
    """SSE bytes → [(event name or None, parsed data)], CRLF or LF."""
    out: list[Any] = []
    for raw in data.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not raw.strip():
            continue
        name = None
        payload = []
        for line in raw.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                payload.append(line[5:].strip())
        body = b"\n".join(payload)
        out.append([name, body.decode() if body == b"[DONE]" else json.loads(body)])
    return out


def check(name: str, actual: Any) -> None:
    """Compare with the expected fixture (normalised); rewrite it under UPDATE_GOLDEN=1."""
    actual = normalise(actual)
    path = FIXTURES / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert actual == json.loads(path.read_text()), f"differs from golden fixture {name}"


def call(body: dict[str, Any], *, stream: bool = False, include_usage: bool = False,
         ingress: str = "openai", native_body: dict[str, Any] | None = None,
         endpoint: str = "chat", headers: dict[str, str] | None = None) -> Call:
    return Call(endpoint=endpoint, model=body.get("model", "public"),  # type: ignore[arg-type]
                body=body, raw=json.dumps(body).encode(), stream=stream, request_id="r1",
                client_include_usage=include_usage, ingress=ingress,  # type: ignore[arg-type]
                native_body=native_body, headers=headers or {})


def feed_in_pieces(translator: Any, data: bytes, size: int = 7) -> bytes:
    """Feed a stream in awkward splits (mid-line, mid-CRLF) as the network would."""
    out = b"".join(translator.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + translator.finish()
