"""docs/alerts.md's receiver snippet verifies what the gateway signs (and nothing else)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from gateway.alerts.signing import sign

DOC = Path(__file__).resolve().parents[3] / "docs" / "alerts.md"


def snippet_verify() -> Any:
    text = DOC.read_text().split("## Verifying a delivery", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None, "the Python snippet is gone from docs/alerts.md"
    scope: dict[str, Any] = {}
    exec(code.group(1), scope)  # our own documentation
    return scope["verify"]


def test_the_documented_receiver_accepts_the_gateways_signature() -> None:
    verify = snippet_verify()
    body = b'{"id":"evt_1","type":"budget_exhausted","data":{}}'
    now = int(time.time())
    header = sign(b"s3cret", now, body)
    assert verify(b"s3cret", header, body)
    assert not verify(b"other", header, body)
    assert not verify(b"s3cret", header, body + b" ")
    assert not verify(b"s3cret", sign(b"s3cret", now - 301, body), body)
