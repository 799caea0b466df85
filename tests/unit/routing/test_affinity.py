"""`models.*.session_key`: which value of a request pins its conversation, per model."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from gateway.call import Call, Conversation
from gateway.policy.models import ModelRoute
from gateway.routing.affinity import keyed, session_of, with_session
from gateway.routing.base import NO_SIGNALS, Signals
from gateway.routing.strategies.prefix_affinity import PrefixAffinity
from gateway.routing.strategies.prefix_load import PrefixLoad
from tests.unit.routing.targets import chat, target

CANDS = [target(f"gpu-{i}") for i in range(4)]


def _chat(user: str | None = None, header: str | None = None) -> Call:
    c = chat("system", "hello")
    if user:
        c.body["user"] = user
    c.session = header or user  # what the OpenAI ingress sets
    if header:
        c.headers["x-session-id"] = header
    return c


def _responses(prev: str | None, user: str | None = None) -> Call:
    native = {"model": "m", "input": "hi", **({"previous_response_id": prev} if prev else {}),
              **({"user": user} if user else {})}
    c = Call(endpoint="chat", model="m", body={}, raw=b"", stream=False, request_id="r",
             ingress="responses", native_body=native, session=user or prev)
    return c


def test_each_rule_picks_its_own_value() -> None:
    both = _chat(user="alice", header="conv-7")
    assert session_of("auto", both) == "conv-7"
    assert session_of("header", both) == "conv-7"
    assert session_of("user", both) == "alice"
    assert session_of("none", both) is None
    assert session_of("header", _chat(user="alice")) is None  # no header: no key
    assert session_of("previous_response_id", both) is None  # not a Responses call
    r = _responses("resp_1", user="bob")
    assert session_of("previous_response_id", r) == "resp_1"
    assert session_of("user", r) == "bob"
    r.conversation = Conversation(items=[], previous_id="resp_0")
    assert session_of("previous_response_id", r) == "resp_0"


def test_with_session_copies_only_when_the_key_changes() -> None:
    c = _chat(user="alice", header="conv-7")
    assert with_session("auto", c) is c
    assert with_session("header", c) is c
    u = with_session("user", c)
    assert u is not c and u.session == "alice" and c.session == "conv-7"


@pytest.mark.parametrize("factory", [PrefixAffinity, PrefixLoad])
def test_a_user_keyed_model_keeps_one_user_on_one_endpoint_whatever_the_header(factory) -> None:
    s = keyed(factory(1), "user")
    homes: Counter[str] = Counter()
    for i in range(12):
        c = _chat(user="alice", header=f"conv-{i}")
        # A distinct prompt each time (worth ~1k tokens): only the key can keep them together.
        c.body["messages"] = [{"role": "user", "content": f"question {i} " + "words " * 700}]
        homes[s.order(CANDS, Signals(loads={}), c)[0].id] += 1  # a new snapshot each time
    assert len(homes) == 1


def test_prefix_load_sends_a_session_back_while_the_prompt_differs() -> None:
    s = PrefixLoad(seed=3)
    first = _responses("resp_1")
    first.body = {"messages": [{"role": "user", "content": "x" * 8000}]}
    home = s.order(CANDS, NO_SIGNALS, first)[0].id
    # The next turn repeats none of the prompt (the backend keeps the history by id), yet the
    # session's last prompt counts as cached there.
    nxt = _responses("resp_1")
    nxt.body = {"messages": [{"role": "user", "content": "and then?"}]}
    assert s.order(CANDS, NO_SIGNALS, nxt)[0].id == home


def test_the_policy_field_accepts_the_rules_and_names_the_bad_value() -> None:
    d = [{"provider": "p", "model": "m"}]
    assert ModelRoute(deployments=d).session_key == "auto"
    assert ModelRoute(deployments=d, session_key="previous_response_id").session_key == \
        "previous_response_id"
    with pytest.raises(ValidationError, match="session_key"):
        ModelRoute(deployments=d, session_key="cookie")


def test_a_named_header_is_the_key_and_the_policy_lists_it_for_the_ingress() -> None:
    from gateway.policy.models import Policy
    from gateway.policy.spill import SessionHeader
    from gateway.routing.affinity import session_headers

    rule = ModelRoute(deployments=[{"provider": "p", "model": "m"}],
                      session_key={"header": "X-Conversation-Id"}).session_key
    assert rule == SessionHeader(header="x-conversation-id")  # names compare lower-cased
    c = _chat(user="alice", header="conv-7")
    assert session_of(rule, c) is None  # x-session-id is not the named header
    c.headers["x-conversation-id"] = "thread-9"
    assert session_of(rule, c) == "thread-9"
    assert with_session(rule, c).session == "thread-9"
    p = Policy.model_validate({"providers": {"p": {"kind": "vllm", "base_url": "http://p/v1"}},
                               "models": {"a": {"deployments": [{"provider": "p", "model": "m"}],
                                                "session_key": {"header": "x-conversation-id"}},
                                          "b": {"deployments": [{"provider": "p", "model": "m"}],
                                                "session_key": "header"}}})
    assert session_headers(p) == ("x-session-id", "x-conversation-id")


@pytest.mark.parametrize("bad", ["Authorization", "x api", "", "cookie"])
def test_a_session_header_that_is_not_a_name_or_carries_credentials_is_refused(bad) -> None:
    with pytest.raises(ValidationError, match="session_key"):
        ModelRoute(deployments=[{"provider": "p", "model": "m"}], session_key={"header": bad})
