"""Sign-out ends a console session on the server: a copy of the cookie taken before sign-out
is refused afterwards — on the same gateway (sign-outs in memory), on another replica (shared
in Redis), and after a restart of a gateway without Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.console.session import COOKIE
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.console_support import ACME_KEY, ADMIN_KEY, console_policy, csrf_of, sign_in
from tests.integration.tenancy_support import REDIS_URL, redis_prefix

__all__ = ["redis_prefix"]  # the fixture this module uses


@pytest.fixture
def fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    up = FakeOpenAI("up").start()
    gpu = FakeOpenAI("gpu", vllm=True).start()
    yield up, gpu
    up.stop()
    gpu.stop()


def _copy(c: httpx.Client, url: str) -> httpx.Client:
    """Another client holding the same session cookie (what a stolen copy would be)."""
    cookie = c.cookies.get(COOKIE)
    assert cookie
    return httpx.Client(base_url=url, follow_redirects=False, cookies={COOKIE: cookie})


def _sign_out(c: httpx.Client) -> None:
    token = csrf_of(c.get("/ui/spend").text)
    assert c.post("/ui/logout", data={"csrf": token}).status_code == 303


def _refused(c: httpx.Client, code: str = "signed_out") -> None:
    r = c.get("/ui/data/spend")
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == code
    assert c.get("/ui/spend").status_code == 303  # a page sends it to sign-in


@pytest.mark.parametrize("key", [ADMIN_KEY, ACME_KEY], ids=["admin", "tenant"])
def test_a_copied_cookie_stops_working_after_sign_out(
        tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI], key: str) -> None:
    with Gateway(console_policy(tmp_path, *fakes), tmp=tmp_path) as gw:
        c = sign_in(gw.url, key)
        copy = _copy(c, gw.url)
        assert copy.get("/ui/data/spend").status_code == 200
        _sign_out(c)
        _refused(copy)
        # Another sign-in with the same key is a new session, unaffected.
        assert sign_in(gw.url, key).get("/ui/data/spend").status_code == 200


def test_sign_out_on_one_replica_ends_the_session_on_another(
        tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI], redis_prefix: str) -> None:
    policy: dict[str, Any] = console_policy(tmp_path, *fakes)
    policy["state"] = {"redis_url": REDIS_URL, "key_prefix": redis_prefix}
    with Gateway(policy, tmp=tmp_path) as a, Gateway(policy, tmp=tmp_path) as b:
        c = sign_in(a.url, ADMIN_KEY)
        on_a, on_b = _copy(c, a.url), _copy(c, b.url)
        assert on_b.get("/ui/data/spend").status_code == 200  # no sticky sessions
        _sign_out(c)
        _refused(on_b)
        _refused(on_a)


def test_without_redis_a_restart_ends_sessions_instead_of_reviving_signed_out_ones(
        tmp_path: Path, fakes: tuple[FakeOpenAI, FakeOpenAI]) -> None:
    policy = console_policy(tmp_path, *fakes)
    with Gateway(policy, tmp=tmp_path) as gw:
        c = sign_in(gw.url, ADMIN_KEY)
        cookie = c.cookies.get(COOKIE)
        _sign_out(c)
    with Gateway(policy, tmp=tmp_path) as again:
        copy = httpx.Client(base_url=again.url, follow_redirects=False,
                            cookies={COOKIE: cookie or ""})
        _refused(copy, "bad_session")
        assert sign_in(again.url, ADMIN_KEY).get("/ui/data/spend").status_code == 200
