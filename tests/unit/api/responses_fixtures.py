"""Golden fixtures for the Responses ↔ chat codec (tests/fixtures/responses/), and the official
`openai` SDK reading the codec's bytes as it reads OpenAI's: its HTTP transport hands it what
the codec produced, so `client.responses.create/stream` parse them with their own code.
`UPDATE_GOLDEN=1 pytest tests/unit/api` rewrites the expected files — review the diff."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx2
import openai

from gateway.call import Call

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "responses"
RESPONSE_ID = "resp_" + "0f" * 16


def read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def load(name: str) -> Any:
    return json.loads(read(name))


def normalise(obj: Any) -> Any:
    """Zero the clock: `completed_at` is when the codec ran."""
    if isinstance(obj, dict):
        return {k: (0 if k == "completed_at" and v else normalise(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    return obj


def check(name: str, actual: Any) -> None:
    """Compare with the expected fixture (normalised); rewrite it under UPDATE_GOLDEN=1."""
    actual = normalise(actual)
    path = FIXTURES / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    assert actual == json.loads(path.read_text()), f"differs from golden fixture {name}"


def responses_call(native: dict[str, Any] | None = None, stream: bool = False) -> Call:
    native = native or {"model": "llama-public", "input": "x"}
    return Call(endpoint="chat", model=native["model"], body={}, raw=b"", stream=stream,
                request_id="r1", client_include_usage=stream, ingress="responses",
                native_body=native, native_raw=json.dumps(native).encode(),
                response_id=RESPONSE_ID)


def sdk_client(body: bytes, stream: bool) -> openai.OpenAI:
    """An `openai` client whose every request is answered with `body`."""

    def answer(request: httpx2.Request) -> httpx2.Response:
        kind = "text/event-stream" if stream else "application/json"
        return httpx2.Response(200, headers={"content-type": kind}, content=body)

    return openai.OpenAI(api_key="gw-test", base_url="http://gateway.test/v1", max_retries=0,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(answer)),
                         _strict_response_validation=True)
