"""Slow and vanishing clients against the real gateway: header and body timeouts answer 408
and close, the connection cap answers 503, and a client that leaves mid-body is one info line —
never an error traceback."""

from __future__ import annotations

import json
import select
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.base import wait_until
from tests.harness import GatewayProcess
from tests.integration.conftest import provider, simple_policy

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def _policy(tmp: Any, fake: Any, **server: Any) -> dict[str, Any]:
    return simple_policy(tmp, {"up": provider(fake)},
                         {"chat": {"deployments": [{"provider": "up", "model": "m"}]}},
                         server=server)


@pytest.fixture
def gw(fakes, gateway, tmp_path):
    return gateway(_policy(tmp_path, fakes("up"), header_timeout_s=1, body_timeout_s=1,
                           max_connections=200))


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_until_closed(s: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the gateway sends until it closes the connection (bounded)."""
    data = b""
    deadline = time.monotonic() + timeout
    s.settimeout(timeout)
    while time.monotonic() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection still open after {timeout} s; got {data!r}")


def _read_response(s: socket.socket, timeout: float = 10.0) -> bytes:
    """One whole response on a kept-alive connection: its head and `content-length` bytes of
    body, however TCP split them (a single recv may return the head alone)."""
    s.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-response: {raw!r}"
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, f"connection closed mid-body: {raw!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _closed(s: socket.socket) -> bool:
    """True once the gateway has closed `s` (EOF after its 408, or a reset)."""
    while select.select([s], [], [], 0)[0]:
        try:
            if not s.recv(65536):
                return True
        except OSError:
            return True
    return False


def test_fifty_slowloris_sockets_are_closed_while_others_are_served(gw) -> None:
    # Headers that never end, sent a byte at a time.
    trickle = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\nx-pad: " + b"a" * 10_000
    slow = [_connect(gw.port) for _ in range(50)]
    client = openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=10)
    sent = 0
    deadline = time.monotonic() + 30
    while slow and time.monotonic() < deadline:
        for s in list(slow):
            try:
                s.send(trickle[sent:sent + 1])
            except OSError:
                pass
            if _closed(s):
                s.close()
                slow.remove(s)
        sent += 1
        # Meanwhile an ordinary client is served at once.
        assert client.chat.completions.create(**CHAT).choices
        time.sleep(0.2)
    assert not slow, f"{len(slow)} slow sockets still open"


def test_incomplete_headers_get_408_in_openai_shape(gw) -> None:
    s = _connect(gw.port)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\n")
    status, headers, body = _split(_read_until_closed(s))
    assert status == 408 and headers["connection"] == "close"
    err = json.loads(body)["error"]
    assert err["code"] == "request_timeout" and "server.header_timeout_s" in err["message"]


def test_stalled_body_gets_408_and_is_closed(gw) -> None:
    s = _connect(gw.port)
    s.sendall(HEAD + b"content-length: 100\r\n\r\n" + b'{"model": "c')
    status, _, body = _split(_read_until_closed(s))
    assert status == 408
    err = json.loads(body)["error"]
    assert err["code"] == "request_timeout" and "server.body_timeout_s" in err["message"]


def test_body_sent_in_pieces_within_the_timeout_is_served(gw) -> None:
    body = json.dumps(CHAT).encode()
    s = _connect(gw.port)
    s.sendall(HEAD + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
    # The body timeout is between reads, as nginx's client_body_timeout: pauses well under it,
    # adding up to more than it, are fine.
    for i in range(0, len(body), len(body) // 6 + 1):
        time.sleep(0.25)
        s.sendall(body[i:i + len(body) // 6 + 1])
    status, _, reply = _split(_read_until_closed(s))
    assert status == 200, reply


def test_next_request_on_a_kept_alive_connection_has_its_own_header_deadline(gw) -> None:
    s = _connect(gw.port)
    s.sendall(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
    first = _read_response(s)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /hea")  # and nothing more
    status, _, _ = _split(_read_until_closed(s))
    assert status == 408


def test_connections_past_the_cap_get_503_until_one_closes(fakes, gateway, tmp_path) -> None:
    gw = gateway(_policy(tmp_path, fakes("up"), max_connections=3, keep_alive_s=60))
    held = []
    for _ in range(3):
        s = _connect(gw.port)
        s.sendall(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
        assert _read_response(s).startswith(b"HTTP/1.1 200")  # open, idle, kept alive
        held.append(s)
    r = httpx.post(gw.base_url + "/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    err = r.json()["error"]
    assert err["code"] == "too_many_connections" and "server.max_connections" in err["message"]
    # The connections admitted before the cap was reached are still served.
    held[0].sendall(b"GET /health HTTP/1.1\r\nhost: gw\r\n\r\n")
    assert _read_response(held[0]).startswith(b"HTTP/1.1 200")
    held.pop().close()
    assert wait_until(lambda: httpx.post(gw.base_url + "/chat/completions",
                                         json=CHAT).status_code == 200, timeout=10)
    for s in held:
        s.close()


def test_client_leaving_mid_body_is_an_info_line_not_a_traceback(fakes, tmp_path) -> None:
    fake = fakes("up")
    with GatewayProcess(_policy(tmp_path, fake, header_timeout_s=1), tmp=tmp_path) as gw:
        s = _connect(gw.port)
        s.sendall(HEAD + b"content-length: 1000\r\n\r\n" + b'{"model": "chat"')
        s.close()
        slow = _connect(gw.port)
        slow.sendall(b"GET /hea")
        _read_until_closed(slow)
        # Garbage and an unsupported upgrade are the client's problem too: no warnings.
        garbage = _connect(gw.port)
        garbage.sendall(b"\x00\x01 not http\r\n\r\n")
        assert _read_until_closed(garbage).startswith(b"HTTP/1.1 400")
        r = httpx.get(gw.url + "/health", headers={"connection": "upgrade", "upgrade": "h2c"})
        assert r.status_code == 200
        assert wait_until(lambda: "client disconnected before sending the whole request body"
                          in gw.log.read_text() and "closed a slow client connection"
                          in gw.log.read_text(), timeout=10)
        # Still serving.
        assert httpx.post(gw.base_url + "/chat/completions", json=CHAT).status_code == 200
    lines = [json.loads(line) for line in gw.log.read_text().splitlines() if line.strip()]
    assert not [x for x in lines if x["level"] in ("warning", "error", "critical")
                or "exc" in x or "Traceback" in x["msg"]]
    gone = [x for x in lines if x["msg"].startswith("client disconnected")]
    assert len(gone) == 1 and gone[0]["level"] == "info" and "bytes_received" in gone[0]

