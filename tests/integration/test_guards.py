"""Safety checks (guards) through the real gateway, driven by the official SDKs, against the
fakes: what the upstream receives is asserted on the fake's recorded bodies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import provider, simple_policy
from tests.integration.ledger_records import record

CARD = "4111 1111 1111 1111"
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
PROMPT = f"Charge card {CARD} and deploy with key {AWS_KEY} please."

PII_AND_SECRETS: dict[str, Any] = {
    "cards-stay-home": {"detector": {"kind": "pii", "types": ["card", "iban"]},
                        "applies_to": {"external_only": True}},
    "no-keys-out": {"detector": {"kind": "secrets"}, "applies_to": {"external_only": True}},
}


def _policy(tmp: Any, fakes: dict[str, FakeOpenAI], guards: dict[str, Any],
            **models: Any) -> dict[str, Any]:
    providers = {"ext": provider(fakes["ext"], "openai-compatible"),
                 "gpu": provider(fakes["gpu"], "vllm")}
    if "cls" in fakes:
        providers["cls"] = provider(fakes["cls"], "vllm")
    routes: dict[str, Any] = {
        "ext-chat": {"deployments": [{"provider": "ext", "model": "gpt-x"}]},
        "gpu-chat": {"deployments": [{"provider": "gpu", "model": "llama"}]},
        "gpu-then-ext": {"deployments": [{"provider": "gpu", "model": "llama"}],
                         "fallbacks": ["ext-chat"]},
        **models,
    }
    return simple_policy(tmp, providers, routes, guards=guards)


@pytest.fixture
def setup(fakes: Callable[..., FakeOpenAI], gateway: Callable[..., Gateway], tmp_path: Any
          ) -> Callable[..., tuple[Gateway, dict[str, FakeOpenAI]]]:
    def make(guards: dict[str, Any], classifier: bool = False,
             **models: Any) -> tuple[Gateway, dict[str, FakeOpenAI]]:
        fs = {"ext": fakes("ext"), "gpu": fakes("gpu", vllm=True)}
        if classifier:
            fs["cls"] = fakes("cls", vllm=True)
        return gateway(_policy(tmp_path, fs, guards, **models)), fs
    return make


def _client(gw: Gateway, rid: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="none", max_retries=0,
                         default_headers={"x-request-id": rid})


def _sent(fake: FakeOpenAI) -> str:
    return json.dumps(fake.bodies("/chat/completions"))


def test_card_and_key_to_an_external_model_are_blocked_before_they_leave(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(PII_AND_SECRETS)
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "blk-1").chat.completions.create(
            model="ext-chat", messages=[{"role": "user", "content": PROMPT}])
    err = e.value.body
    assert isinstance(err, dict) and err["code"] == "content_policy_violation"
    assert "cards-stay-home" in err["message"]
    assert CARD not in err["message"] and "4111" not in err["message"]
    assert fs["ext"].bodies() == []  # the external upstream never saw the request
    rec = record(tmp_path, client_id="blk-1")
    assert rec.status == 400 and rec.error_code == "content_policy_violation"
    assert rec.guards is not None
    verdict = {v["name"]: v for v in rec.guards}["cards-stay-home"]
    assert verdict["verdict"] == "block" and verdict["labels"] == ["card"]
    assert CARD not in json.dumps(rec.guards)


def test_redacting_policy_sends_the_external_model_the_prompt_without_them(
        setup: Any, tmp_path: Any) -> None:
    guards = {name: {**g, "action": "redact"} for name, g in PII_AND_SECRETS.items()}
    gw, fs = setup(guards)
    reply = _client(gw, "red-1").chat.completions.create(
        model="ext-chat", messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content
    sent = _sent(fs["ext"])
    assert "4111" not in sent and AWS_KEY not in sent
    assert "[REDACTED:card]" in sent and "[REDACTED:AWSKeyDetector]" in sent
    rec = record(tmp_path, client_id="red-1")
    assert rec.status == 200
    assert {v["name"]: v["verdict"] for v in rec.guards or []} == {
        "cards-stay-home": "redact", "no-keys-out": "redact"}


def test_the_same_prompt_to_a_self_hosted_model_passes_unchanged(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(PII_AND_SECRETS)
    reply = _client(gw, "own-1").chat.completions.create(
        model="gpu-chat", messages=[{"role": "user", "content": PROMPT}])
    assert reply.choices[0].message.content
    assert CARD in _sent(fs["gpu"]) and AWS_KEY in _sent(fs["gpu"])
    # External-only guards never ran: no verdicts for a request that stayed home.
    assert record(tmp_path, client_id="own-1").guards is None


def test_fallback_from_self_hosted_to_external_is_checked_before_it_leaves(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(PII_AND_SECRETS)
    fs["gpu"].fail_next(1, status=503)
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "fb-1").chat.completions.create(
            model="gpu-then-ext", messages=[{"role": "user", "content": PROMPT}])
    assert e.value.body["code"] == "content_policy_violation"  # type: ignore[index]
    assert len(fs["gpu"].bodies()) == 1 and fs["ext"].bodies() == []
    rec = record(tmp_path, client_id="fb-1")
    verdict = rec.guards[0] if rec.guards else {}
    assert verdict["verdict"] == "block" and verdict["deployment"] == "ext/gpt-x"


def test_redaction_for_external_keeps_the_original_for_self_hosted_fallback(
        setup: Any, tmp_path: Any) -> None:
    guards = {"cards": {"detector": {"kind": "pii", "types": ["card"]}, "action": "redact",
                        "applies_to": {"external_only": True}}}
    gw, fs = setup(guards, **{"ext-then-gpu": {
        "deployments": [{"provider": "ext", "model": "gpt-x"}], "fallbacks": ["gpu-chat"]}})
    fs["ext"].fail_next(1, status=503)
    _client(gw, "fb-2").chat.completions.create(
        model="ext-then-gpu", messages=[{"role": "user", "content": PROMPT}])
    assert "4111" not in _sent(fs["ext"]) and CARD in _sent(fs["gpu"])


def test_output_guard_cuts_a_stream_whose_phrase_is_split_across_chunks(
        setup: Any, tmp_path: Any) -> None:
    guards = {"no-launch-codes": {"detector": {"kind": "deny_list", "words": ["launch code"]},
                                  "stage": "output", "window_chars": 16}}
    gw, fs = setup(guards)
    preamble = "Sure, here is a preamble longer than the window. "
    fs["ext"].text = lambda: [preamble, "Some filler here. ", "The laun",  # type: ignore
                              "ch code is 0000.", " Bye."]
    fs["ext"].chunk_delay = 0.05  # one chunk per read, as a real model streams
    got = ""
    with pytest.raises(openai.APIError):
        stream = _client(gw, "out-1").chat.completions.create(
            model="ext-chat", messages=[{"role": "user", "content": "hi"}], stream=True)
        for chunk in stream:
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    # Text a window ahead of the phrase streamed; the phrase, split in two, never did.
    assert got == preamble
    rec = record(tmp_path, client_id="out-1")
    assert rec.attempts[-1].outcome == "blocked"
    assert rec.error_code == "content_policy_violation"
    # What streamed before the block is billed (estimated: the stream ended before its usage).
    usage = rec.attempts[-1].usage
    assert usage is not None and usage.output > 0
    assert [(v["name"], v["verdict"]) for v in rec.guards or []] == [
        ("no-launch-codes", "block")]


def test_output_stream_that_passes_reaches_the_client_whole(setup: Any) -> None:
    guards = {"no-launch-codes": {"detector": {"kind": "deny_list", "words": ["launch code"]},
                                  "stage": "output", "window_chars": 16}}
    gw, fs = setup(guards)
    stream = _client(gw, "out-2").chat.completions.create(
        model="ext-chat", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        usage = chunk.usage or usage
    assert "".join(parts) == "".join(fs["ext"].text())
    assert usage is not None and usage.completion_tokens == 5


def test_output_redaction_on_a_stream_and_a_reply(setup: Any) -> None:
    guards = {"cards-out": {"detector": {"kind": "pii", "types": ["card"]}, "stage": "output",
                            "action": "redact", "window_chars": 40}}
    gw, fs = setup(guards)
    fs["ext"].text = lambda: ["Your card ", "4111 1111 ", "1111 1111", " is on file."]  # type: ignore
    client = _client(gw, "out-3")
    text = "".join((c.choices[0].delta.content or "") for c in client.chat.completions.create(
        model="ext-chat", messages=[{"role": "user", "content": "hi"}], stream=True)
        if c.choices)
    assert text == "Your card [REDACTED:card] is on file."
    reply = client.chat.completions.create(model="ext-chat",
                                           messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "Your card [REDACTED:card] is on file."


def test_anthropic_ingress_block_is_a_400_in_anthropic_shape(setup: Any) -> None:
    guards = {"no-keys": {"detector": {"kind": "secrets"}}}
    gw, fs = setup(guards)
    client = anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model="ext-chat", max_tokens=10,
                               messages=[{"role": "user", "content": PROMPT}])
    assert "no-keys" in str(e.value) and AWS_KEY not in str(e.value)
    assert fs["ext"].bodies() == []


CLASSIFIER = {"guard-model": {"deployments": [{"provider": "cls", "model": "llama-guard",
                                              "pricing": [{"input": 1, "output": 2}]}]}}


def _guarded(on_error: str) -> dict[str, Any]:
    return {"llama-guard": {"detector": {"kind": "model", "model": "guard-model",
                                         "timeout_s": 0.3, "on_error": on_error}}}


def _guard_count(gw: Gateway, verdict: str) -> float:
    text = httpx.get(gw.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith("gateway_guard_verdicts_total{") and f'verdict="{verdict}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("on_error", ["fail_open", "fail_closed"])
def test_slow_classifier_fails_open_or_closed_and_is_counted(
        setup: Any, tmp_path: Any, on_error: str) -> None:
    gw, fs = setup(_guarded(on_error), classifier=True, **CLASSIFIER)
    fs["cls"].delay_next(1, seconds=2.0)
    client = _client(gw, f"cls-{on_error}")
    if on_error == "fail_open":
        reply = client.chat.completions.create(
            model="gpu-chat", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content
        assert len(fs["gpu"].bodies()) == 1
    else:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="gpu-chat", messages=[{"role": "user", "content": "hello"}])
        assert "llama-guard" in e.value.body["message"]  # type: ignore[index]
        assert fs["gpu"].bodies() == []
    rec = record(tmp_path, client_id=f"cls-{on_error}")
    assert [v["verdict"] for v in rec.guards or []] == [on_error]
    guard_attempts = [a for a in rec.attempts if a.outcome == "guard"]
    assert len(guard_attempts) == 1 and (guard_attempts[0].error or "").startswith("timeout")
    from tests.fakes.base import wait_until
    assert wait_until(lambda: _guard_count(gw, on_error) == 1.0)


def test_classifier_verdict_blocks_unsafe_and_its_tokens_are_billed(
        setup: Any, tmp_path: Any) -> None:
    gw, fs = setup(_guarded("fail_closed"), classifier=True, **CLASSIFIER)
    fs["cls"].text = lambda: ["unsafe", "\nS1"]  # type: ignore[method-assign]
    with pytest.raises(openai.BadRequestError):
        _client(gw, "cls-unsafe").chat.completions.create(
            model="gpu-chat", messages=[{"role": "user", "content": "something bad"}])
    rec = record(tmp_path, client_id="cls-unsafe")
    assert [(v["verdict"], v["labels"]) for v in rec.guards or []] == [("block", ["S1"])]
    [a] = rec.attempts
    assert a.outcome == "guard" and a.deployment == "cls/llama-guard"
    assert a.usage is not None and a.usage.output == 2
    assert a.cost_usd > 0  # priced like any attempt, billed to the request's tenant
    assert fs["cls"].bodies()[0]["messages"][0]["content"] == "something bad"
    assert fs["gpu"].bodies() == []

    fs["cls"].text = lambda: ["safe"]  # type: ignore[method-assign]
    reply = _client(gw, "cls-safe").chat.completions.create(
        model="gpu-chat", messages=[{"role": "user", "content": "fine"}])
    assert reply.choices[0].message.content
    rec = record(tmp_path, client_id="cls-safe")
    assert [a.outcome for a in rec.attempts] == ["guard", "ok"]
    assert rec.cost_usd == rec.attempts[0].cost_usd  # gpu-chat has no price of its own


def test_anthropic_stream_block_ends_with_an_anthropic_error_event(setup: Any) -> None:
    guards = {"no-launch-codes": {"detector": {"kind": "deny_list", "words": ["launch code"]},
                                  "stage": "output", "window_chars": 16}}
    gw, fs = setup(guards)
    fs["ext"].text = lambda: ["the laun", "ch code is 0000"]  # type: ignore[method-assign]
    fs["ext"].chunk_delay = 0.02
    client = anthropic.Anthropic(base_url=gw.url, api_key="none", max_retries=0)
    got = ""
    with pytest.raises(anthropic.APIStatusError) as e:
        with client.messages.stream(model="ext-chat", max_tokens=20,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            for t in stream.text_stream:
                got += t
    assert "no-launch-codes" in str(e.value)
    assert "laun" not in got


def test_responses_ingress_prompt_is_blocked_before_it_leaves(setup: Any) -> None:
    gw, fs = setup(PII_AND_SECRETS)
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "resp-1").responses.create(model="ext-chat", input=PROMPT)
    assert e.value.body["code"] == "content_policy_violation"  # type: ignore[index]
    assert fs["ext"].requests == []


def test_guard_verdicts_become_apply_guardrail_spans(
        fakes: Any, gateway: Any, tmp_path: Any) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.observability.tracing import Tracing
    from tests.fakes.base import wait_until

    fs = {"ext": fakes("ext"), "gpu": fakes("gpu", vllm=True)}
    policy = _policy(tmp_path, fs, PII_AND_SECRETS)
    policy["observability"] = {"tracing": True}
    gw = gateway(policy)
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    gw.app.state.deps.tracing = Tracing.from_policy(gw.policy, tracer_provider=tp)
    with pytest.raises(openai.BadRequestError):
        _client(gw, "tr-1").chat.completions.create(
            model="ext-chat", messages=[{"role": "user", "content": PROMPT}])

    def guard_spans() -> list[Any]:
        return [s for s in exporter.get_finished_spans()
                if s.name.startswith("apply_guardrail")]
    assert wait_until(lambda: len(guard_spans()) == 1)
    [span] = guard_spans()
    assert span.name == "apply_guardrail cards-stay-home"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "apply_guardrail"
    assert attrs["gen_ai.guardrail.decision"] == "deny"
    assert attrs["gen_ai.guardrail.findings"] == ("card",)
    assert CARD not in json.dumps({k: str(v) for k, v in attrs.items()})
    tp.shutdown()


def test_moderation_api_guard_on_an_external_classifier(
        fakes: Any, gateway: Any, tmp_path: Any) -> None:
    fs = {"ext": fakes("ext"), "gpu": fakes("gpu", vllm=True), "mod": fakes("mod")}
    policy = _policy(tmp_path, fs, {"moderated": {"detector": {
        "kind": "model", "model": "omni-moderation", "api": "moderation",
        "categories": ["violence"]}}}, **{"omni-moderation": {
            "deployments": [{"provider": "mod", "model": "omni-moderation-latest"}]}})
    policy["providers"]["mod"] = provider(fs["mod"], "openai")
    gw = gateway(policy)
    with pytest.raises(openai.BadRequestError) as e:
        _client(gw, "mod-1").chat.completions.create(
            model="gpu-chat", messages=[{"role": "user", "content": "I will hurt him"}])
    assert "moderated" in e.value.body["message"]  # type: ignore[index]
    assert fs["gpu"].bodies() == []
    assert fs["mod"].bodies("/moderations")[0]["input"] == "I will hurt him"
    rec = record(tmp_path, client_id="mod-1")
    assert [(v["verdict"], v["labels"]) for v in rec.guards or []] == [("block", ["violence"])]
    assert [(a.outcome, a.deployment) for a in rec.attempts] == [
        ("guard", "mod/omni-moderation-latest")]
    _client(gw, "mod-2").chat.completions.create(
        model="gpu-chat", messages=[{"role": "user", "content": "hello"}])
    assert [a.outcome for a in record(tmp_path, client_id="mod-2").attempts] == ["guard", "ok"]


def test_native_responses_stream_is_redacted_and_its_final_objects_too(
        fakes: Any, gateway: Any, tmp_path: Any) -> None:
    fs = {"ext": fakes("ext"), "gpu": fakes("gpu", vllm=True)}
    policy = _policy(tmp_path, fs, {"cards-out": {
        "detector": {"kind": "pii", "types": ["card"]}, "stage": "output", "action": "redact",
        "window_chars": 40}})
    policy["providers"]["ext"] = provider(fs["ext"], "openai")  # serves /v1/responses natively
    gw = gateway(policy)
    fs["ext"].text = lambda: ["Card ", "4111 1111 ", "1111 1111", " saved."]  # type: ignore
    client = _client(gw, "rs-1")
    deltas, final = "", None
    for event in client.responses.create(model="ext-chat", input="hi", stream=True):
        if event.type == "response.output_text.delta":
            deltas += event.delta
        if event.type == "response.completed":
            final = event.response
    assert fs["ext"].bodies("/responses")  # it went natively
    assert deltas == "Card [REDACTED:card] saved."
    assert final is not None and final.output_text == "Card [REDACTED:card] saved."
    # The stored copy (previous_response_id, GET /v1/responses/{id}) is redacted too.
    stored = client.responses.retrieve(final.id)
    assert stored.output_text == "Card [REDACTED:card] saved."
    reply = client.responses.create(model="ext-chat", input="hi")
    assert reply.output_text == "Card [REDACTED:card] saved."
    assert client.responses.retrieve(reply.id).output_text == "Card [REDACTED:card] saved."
