"""gateway.api.parse.header_map: one dict per request, answering as Starlette's Headers.get."""

from __future__ import annotations

from starlette.requests import Request

from gateway.api.parse import api_key, header_map, session_header, trace_headers


def _request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_the_first_of_a_repeated_header_wins_as_with_starlette() -> None:
    req = _request([(b"authorization", b"Bearer first"), (b"x-session-id", b"s1"),
                    (b"authorization", b"Bearer second"), (b"traceparent", b"00-ab-cd-01")])
    got = header_map(req)
    assert got["authorization"] == req.headers.get("authorization") == "Bearer first"
    assert api_key(req) == "first"
    assert session_header(req) == {"x-session-id": "s1"}
    assert trace_headers(req) == {"traceparent": "00-ab-cd-01"}


def test_built_once_per_request_and_latin1_decoded() -> None:
    req = _request([(b"x-api-key", "caf\xe9".encode("latin-1"))])
    first = header_map(req)
    assert header_map(req) is first
    assert api_key(req) == req.headers.get("x-api-key") == "caf\xe9"
