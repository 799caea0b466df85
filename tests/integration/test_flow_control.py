"""Flow control through a real gateway in front of two fake vLLM servers whose requests are
held until the test lets one finish: every assertion is on counts and on the order in which
queued requests reach the backends, none on time.

- a flooding tenant fills the pool and its queue; its excess is shed with 429 + Retry-After;
  a neighbour's requests reach the backends ahead of the flood's backlog (one flood request
  between two of the neighbour's, whatever the flood's queue length);
- a higher priority class is served first; a queue timeout is a 503 with Retry-After;
- a client that leaves while queued frees its place; no slot leaks; every request has exactly
  one ledger record, a shed one with its reason;
- with `single_use_backends`, a tenant sending single turns is routed to its share of the
  deployments while a chat tenant runs, the rest of the pool only as fallbacks.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.flow.confine import rendezvous
from tests.fakes.base import Fault, wait_until
from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import records
from tests.integration.tenancy_support import PolicyKey, policy_key


class GatedVLLM(FakeOpenAI):
    """A fake vLLM whose requests wait at a gate: `open(n)` lets n of them answer. Arrivals
    are appended (by the text of their last message) to a list shared across servers."""

    def __init__(self, name: str, arrivals: list[str], lock: threading.Lock) -> None:
        super().__init__(name, vllm=True, words=2)
        self.arrivals = arrivals
        self.lock = lock
        self.gated = True
        # Requests waiting at the gate, oldest first, by text; permits `open` left unused.
        self.held: list[tuple[str, asyncio.Future[None]]] = []
        self._permits = 0

    async def apply_pre_fault(self, fault: Fault | None) -> Any:
        body = self.requests[-1].body
        text = body["messages"][-1]["content"]
        with self.lock:
            self.arrivals.append(text)
        if self.gated:
            if self._permits:
                self._permits -= 1
            else:
                fut = asyncio.get_running_loop().create_future()
                with self.lock:
                    self.held.append((text, fut))
                await fut
        return await super().apply_pre_fault(fault)

    def open(self, n: int = 1, prefix: str | None = None) -> None:
        """Let the `n` oldest held requests answer (with `prefix`: the oldest whose text
        starts with it); permits not used at once wait for the next arrivals."""
        assert self._loop is not None

        def release() -> None:
            left = n
            with self.lock:
                for text, fut in list(self.held):
                    if left and (prefix is None or text.startswith(prefix)):
                        fut.set_result(None)
                        self.held.remove((text, fut))
                        left -= 1
                if prefix is None:
                    self._permits += left
        self._loop.call_soon_threadsafe(release)

    def holds(self, prefix: str) -> bool:
        with self.lock:
            return any(text.startswith(prefix) for text, _ in self.held)


TENANTS = ("flood", "neighbour", "batch", "vip")


class Pool:
    def __init__(self, tmp: Path, **flow: Any) -> None:
        self.tmp = tmp
        self.arrivals: list[str] = []
        self.lock = threading.Lock()
        self.fakes = [GatedVLLM(n, self.arrivals, self.lock).start() for n in ("a", "b")]
        self.keys: dict[str, PolicyKey] = {t: policy_key(f"{t}-key") for t in TENANTS}
        tenants = {
            "flood": {"keys": [self.keys["flood"].entry()]},
            "neighbour": {"keys": [self.keys["neighbour"].entry()]},
            "batch": {"keys": [self.keys["batch"].entry()], "priority": -1},
            "vip": {"keys": [self.keys["vip"].entry()], "priority": 10, "weight": 2},
        }
        policy = simple_policy(
            tmp, {f.name: provider(f, kind="vllm") for f in self.fakes},
            {"llama": {"deployments": [{"provider": f.name, "model": "m"} for f in self.fakes]}},
            tenants=tenants,
            flow_control={"max_in_flight_per_deployment": 2, "max_queued_per_tenant": 10,
                          **flow})
        self.policy = policy
        self.gw = Gateway(policy, tmp=tmp).start()
        self.pool = ThreadPoolExecutor(64)

    def send(self, tenant: str, text: str, **body: Any) -> Future[httpx.Response]:
        return self.pool.submit(
            httpx.post, self.gw.base_url + "/chat/completions", timeout=60,
            headers={"authorization": f"Bearer {self.keys[tenant].key}", "x-request-id": text},
            json={"model": "llama", "messages": [{"role": "user", "content": text}], **body})

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.gw.url + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def queued(self, tenant: str | None = None) -> float:
        return self.metric("gateway_flow_queue_depth",
                           **({"tenant": tenant} if tenant else {}))

    def wait_arrivals(self, n: int) -> None:
        assert wait_until(lambda: len(self.arrivals) >= n, timeout=20), self.arrivals

    def finish_one(self, prefix: str | None = None) -> str:
        """Let one held request answer (the oldest of a fake, or the oldest whose text starts
        with `prefix`); return what the freed slot dispatched next."""
        before = len(self.arrivals)
        for f in self.fakes:  # whichever holds a waiting request answers it (the other's
            if f.holds(prefix or ""):  # permit stays for the next arrival there)
                f.open(1, prefix)
                break
        else:
            raise AssertionError(f"no held request starts with {prefix!r}")
        self.wait_arrivals(before + 1)
        return self.arrivals[before]

    def close(self) -> None:
        for f in self.fakes:
            f.open(1000)
        self.pool.shutdown(wait=True)
        self.gw.stop()
        for f in self.fakes:
            f.stop()


@pytest.fixture
def make_pool(tmp_path: Path) -> Iterator[Callable[..., Pool]]:
    made: list[Pool] = []

    def make(**flow: Any) -> Pool:
        p = Pool(tmp_path, **flow)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.mark.parametrize("headroom", [0.0, 0.5])
def test_a_flooding_tenant_cannot_push_a_neighbour_behind_its_backlog(make_pool,
                                                                      headroom: float) -> None:
    p = make_pool(headroom=headroom)
    flood = [p.send("flood", f"flood-{i}") for i in range(4)]  # the pool's 4 slots
    p.wait_arrivals(4)
    flood += [p.send("flood", f"flood-{i}") for i in range(4, 24)]
    # 10 wait (max_queued_per_tenant); the other 10 are shed at once, 429 with Retry-After.
    assert wait_until(lambda: sum(f.done() for f in flood) == 10, timeout=20)
    assert wait_until(lambda: p.queued("flood") == 10, timeout=10)
    shed = [f.result() for f in flood if f.done()]
    assert {r.status_code for r in shed} == {429}
    assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
    assert {r.json()["error"]["code"] for r in shed} == {"flow_tenant_queue_full"}
    neighbour = [p.send("neighbour", f"neighbour-{i}") for i in range(3)]
    assert wait_until(lambda: p.queued("neighbour") == 3, timeout=10)

    if headroom == 0:
        # Weighted fair queuing alone: the neighbour's three requests alternate with the
        # flood's backlog instead of waiting behind its ten.
        order = [p.finish_one() for _ in range(13)]
        at = [i for i, text in enumerate(order) if text.startswith("neighbour")]
        assert at == [1, 3, 5], order
        assert sum(t.startswith("flood") for t in order) == 10  # its whole queued backlog
    else:
        # With headroom the flood, past its share of the four slots (two), gets no slot
        # until the neighbour holds its share: the first two freed go to the neighbour.
        order = [p.finish_one() for _ in range(2)]
        assert all(o.startswith("neighbour") for o in order), order
    for f in p.fakes:
        f.open(100)
    results = [f.result() for f in flood + neighbour]
    assert all(r.status_code == 200 for r in (f.result() for f in neighbour))
    # Each waited, and says for how long (the figure itself is not asserted on).
    assert all(f.result().headers["x-gateway-queue-ms"].isdigit() for f in neighbour)
    assert sum(r.status_code == 200 for r in results) == 17  # 4 + 10 flood, 3 neighbour
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)
    assert p.queued() == 0
    # One ledger record per request; the shed ones carry the reason.
    assert wait_until(lambda: len(records(p.tmp)) == 27, timeout=10)
    recs = records(p.tmp)
    assert sorted(r.client_request_id for r in recs) == sorted(
        [f"flood-{i}" for i in range(24)] + [f"neighbour-{i}" for i in range(3)])
    shed_recs = [r for r in recs if r.status == 429]
    assert len(shed_recs) == 10 and {r.error_code for r in shed_recs} == {
        "flow_tenant_queue_full"}
    assert p.metric("gateway_flow_shed_total", tenant="flood",
                    reason="tenant_queue_full") == 10
    assert p.metric("gateway_flow_queue_wait_seconds_count", tenant="neighbour") == 3
    assert p.metric("gateway_flow_limit") == 4


def test_with_equal_weights_a_flood_of_long_requests_cannot_crowd_out_a_light_neighbour(
        make_pool) -> None:
    """Fair shares count work (new tokens + max_tokens), not requests: the flood's requests
    are long, so the neighbour, at the same weight, takes three of the four slots as the
    flood's end — counting requests would have stopped it at two (its half) and kept the
    last slots idle as headroom."""
    p = make_pool(headroom=0.5)
    flood = [p.send("flood", f"flood-{i}", max_tokens=4000) for i in range(4)]
    p.wait_arrivals(4)
    flood += [p.send("flood", f"flood-{i}", max_tokens=4000) for i in range(4, 10)]
    assert wait_until(lambda: p.queued("flood") == 6, timeout=10)
    neighbour = [p.send("neighbour", f"neighbour-{i}", max_tokens=16) for i in range(3)]
    assert wait_until(lambda: p.queued("neighbour") == 3, timeout=10)
    order = [p.finish_one("flood") for _ in range(3)]
    assert sorted(order) == ["neighbour-0", "neighbour-1", "neighbour-2"], order
    assert p.queued("flood") == 6 and p.queued("neighbour") == 0
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in flood + neighbour)
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)
    assert wait_until(lambda: len(records(p.tmp)) == 13, timeout=10)


def test_a_higher_class_is_dispatched_first_and_a_lower_one_waits(make_pool) -> None:
    p = make_pool(headroom=0)  # every freed slot is dispatched: one arrival per finish
    held = [p.send("flood", f"hold-{i}") for i in range(4)]
    p.wait_arrivals(4)
    batch = [p.send("batch", f"batch-{i}") for i in range(3)]
    assert wait_until(lambda: p.queued("batch") == 3, timeout=10)
    std = [p.send("neighbour", f"neighbour-{i}") for i in range(2)]
    vip = [p.send("vip", f"vip-{i}") for i in range(2)]
    assert wait_until(lambda: p.queued() == 7, timeout=10)
    order = [p.finish_one() for _ in range(7)]
    assert [o.split("-")[0] for o in order] == ["vip"] * 2 + ["neighbour"] * 2 + ["batch"] * 3
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in held + batch + std + vip)


def test_a_queue_timeout_is_a_503_with_retry_after_and_one_record(make_pool) -> None:
    p = make_pool(queue_timeout_s=0.3)
    held = [p.send("flood", f"hold-{i}") for i in range(4)]
    p.wait_arrivals(4)
    client = openai.OpenAI(base_url=p.gw.base_url, api_key=p.keys["neighbour"].key,
                           max_retries=0)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="llama", messages=[{"role": "user",
                                                                 "content": "late"}],
                                       extra_headers={"x-request-id": "late"})
    assert e.value.status_code == 503
    assert e.value.response.headers["retry-after"].isdigit()
    assert e.value.code == "flow_queue_timeout"
    assert re.search(r"Retry after \d+ s", e.value.message)
    # The Anthropic ingress gets it in its own shape: overloaded_error, with Retry-After.
    r = httpx.post(p.gw.url + "/v1/messages", timeout=30, headers={
        "x-api-key": p.keys["neighbour"].key, "anthropic-version": "2023-06-01",
        "x-request-id": "late-anthropic"}, json={
        "model": "llama", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "overloaded_error"
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in held)
    assert wait_until(lambda: len(records(p.tmp)) == 6, timeout=10)
    late = [r for r in records(p.tmp) if r.client_request_id == "late"]
    assert len(late) == 1 and late[0].status == 503
    assert late[0].error_code == "flow_queue_timeout" and late[0].attempts == []
    assert p.metric("gateway_flow_shed_total", reason="queue_timeout") == 2


def _request_then_leave(url: str, key: str, queued: Callable[[], bool]) -> None:
    """Send one chat request on a raw socket; close the connection once it is queued."""
    host, port = url.removeprefix("http://").split(":")
    body = b'{"model":"llama","messages":[{"role":"user","content":"leaver"}]}'
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                  b"authorization: Bearer " + key.encode() + b"\r\n"
                  b"x-request-id: leaver\r\ncontent-type: application/json\r\n"
                  b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        assert wait_until(queued, timeout=10)


def test_a_client_that_leaves_while_queued_frees_its_place(make_pool) -> None:
    p = make_pool()
    held = [p.send("flood", f"hold-{i}") for i in range(4)]
    p.wait_arrivals(4)
    _request_then_leave(p.gw.url, p.keys["neighbour"].key, lambda: p.queued() == 1)
    assert wait_until(lambda: p.metric("gateway_flow_shed_total", reason="client_gone") == 1,
                      timeout=10)
    assert p.queued() == 0
    nxt = p.send("neighbour", "after")
    assert wait_until(lambda: p.queued() == 1, timeout=10)
    assert p.finish_one() == "after"  # the leaver was not dispatched in its place
    for f in p.fakes:
        f.open(100)
    assert nxt.result().status_code == 200
    assert all(f.result().status_code == 200 for f in held)
    assert wait_until(lambda: len(records(p.tmp)) == 6, timeout=10)
    leaver = [r for r in records(p.tmp) if r.client_request_id == "leaver"]
    assert len(leaver) == 1 and leaver[0].status == 499
    assert leaver[0].error_code == "client_closed_request" and leaver[0].client_disconnected
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)


def test_an_upstream_error_gives_its_slot_back(make_pool) -> None:
    p = make_pool()
    for f in p.fakes:
        f.gated = False
        f.fail_next(8, status=400)  # a client error: not retried, the request ends
    bad = [p.send("neighbour", f"bad-{i}") for i in range(8)]
    assert all(f.result().status_code == 400 for f in bad)
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)
    for f in p.fakes:
        f.gated = True
        with f._lock:
            f._faults.clear()
    arrived = len(p.arrivals)
    held = [p.send("flood", f"hold-{i}") for i in range(4)]  # all four slots are free again
    p.wait_arrivals(arrived + 4)
    extra = p.send("flood", "extra")  # and there are not more than four
    assert wait_until(lambda: p.queued() == 1, timeout=10)
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in [*held, extra])


def test_streams_hold_their_slot_until_they_end(make_pool) -> None:
    p = make_pool()
    streams = [p.send("flood", f"s-{i}", stream=True) for i in range(4)]
    p.wait_arrivals(4)
    late = p.send("neighbour", "late", stream=True)
    assert wait_until(lambda: p.queued() == 1, timeout=10)
    assert p.finish_one() == "late"
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in [*streams, late])
    assert "data: [DONE]" in late.result().text
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)


def test_shutdown_answers_a_queued_request_and_records_it(make_pool) -> None:
    p = make_pool()
    held = [p.send("flood", f"hold-{i}") for i in range(4)]
    p.wait_arrivals(4)
    queued = p.send("neighbour", "queued-at-stop")
    assert wait_until(lambda: p.queued() == 1, timeout=10)
    p.gw.stop()  # the drain's deadline cancels whatever still runs or waits
    r = queued.result()
    assert r.status_code == 503 and r.json()["error"]["code"] == "gateway_shutdown"
    assert "retry-after" in r.headers
    assert {f.result().status_code for f in held} == {503}
    recs = records(p.tmp)
    assert len(recs) == 5
    assert [x.error_code for x in recs if x.client_request_id == "queued-at-stop"] == [
        "gateway_shutdown"]


def test_a_reload_keeps_the_queue_and_applies_the_new_limit(make_pool) -> None:
    p = make_pool()
    held = [p.send("flood", f"hold-{i}") for i in range(4)]
    p.wait_arrivals(4)
    queued = [p.send("neighbour", f"queued-{i}") for i in range(2)]
    assert wait_until(lambda: p.queued() == 2, timeout=10)
    flow = {**p.policy["flow_control"], "max_in_flight_per_deployment": 3}
    p.gw.policy_path.write_text(yaml.safe_dump({**p.policy, "flow_control": flow}))
    # Six slots now: both waiting requests go, though none of the four running has ended.
    p.wait_arrivals(6)
    assert sorted(p.arrivals[4:]) == ["queued-0", "queued-1"]
    assert p.metric("gateway_flow_limit") == 6
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in held + queued)
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)


def _chat(p: Pool, text: str) -> Future[httpx.Response]:
    """A neighbour's later turn: it re-sends a conversation (re-reads its KV)."""
    return p.send("neighbour", text, max_tokens=16, messages=[
        {"role": "user", "content": "a" * 400}, {"role": "assistant", "content": "b" * 1600},
        {"role": "user", "content": text}])


def _landed(p: Pool, prefix: str) -> dict[str, int]:
    """How many requests whose last message starts with `prefix` each fake received."""
    return {f.name: sum(r.body["messages"][-1]["content"].startswith(prefix)
                        for r in f.requests) for f in p.fakes}


@pytest.mark.parametrize("confined", [False, True])
def test_a_single_use_tenant_is_confined_to_its_backends_while_a_chat_runs(
        make_pool, confined: bool) -> None:
    """`single_use_backends: 0.5` of two: with a chat tenant's turn running, every request of
    the flood (single turns, which re-read nothing) goes to the one deployment its name hashes
    to, however loaded, and the chat's next turns go to the other one; without it the
    strategy spreads the flood over both."""
    p = make_pool(headroom=0, max_in_flight_per_deployment=3,
                  **({"single_use_backends": 0.5} if confined else {}))
    chat = [_chat(p, "chat-0")]
    p.wait_arrivals(1)
    flood = [p.send("flood", f"flood-{i}") for i in range(3)]
    p.wait_arrivals(4)
    landed = _landed(p, "flood")
    if confined:
        home = next(iter(rendezvous("flood", ["a/m", "b/m"], 1))).split("/")[0]
        assert landed[home] == 3, landed
        # While the flood runs, the chat's turns are kept on the other backend.
        chat += [_chat(p, f"chat-{i}") for i in (1, 2)]
        p.wait_arrivals(6)
        assert _landed(p, "chat-1")[home] == 0 and _landed(p, "chat-2")[home] == 0
    else:
        assert min(landed.values()) >= 1, landed
    for f in p.fakes:
        f.open(100)
    assert all(f.result().status_code == 200 for f in chat + flood)
    assert wait_until(lambda: p.metric("gateway_flow_in_flight") == 0, timeout=10)


def test_a_confined_request_falls_back_to_the_rest_of_the_pool(make_pool) -> None:
    p = make_pool(single_use_backends=0.5)
    chat = _chat(p, "chat-0")
    p.wait_arrivals(1)
    home = next(iter(rendezvous("flood", ["a/m", "b/m"], 1))).split("/")[0]
    for f in p.fakes:  # the chat's turn stays held; what comes next is answered at once
        f.gated = False
    other = next(f for f in p.fakes if f.name != home)
    next(f for f in p.fakes if f.name == home).fail_next(1, status=503)  # retried elsewhere
    r = p.send("flood", "flood-0").result()
    assert r.status_code == 200
    assert _landed(p, "flood") == {home: 1, other.name: 1}
    for f in p.fakes:
        f.open(100)
    assert chat.result().status_code == 200
