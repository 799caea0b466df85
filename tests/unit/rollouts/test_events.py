"""A transition's announcements: the counter, the gauge, the log event and the OTel span event."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from gateway.observability.tracing import Tracing
from gateway.policy.models import Policy
from gateway.rollouts.events import RolloutEvents


def test_a_transition_is_counted_logged_and_a_span_event(
        caplog: pytest.LogCaptureFixture) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing.from_policy(Policy.model_validate({"observability": {"tracing": True}}),
                                  tracer_provider=provider)
    registry = CollectorRegistry()
    events = RolloutEvents(registry, tracing)
    with caplog.at_level(logging.INFO, logger="gateway.rollouts"):
        events.transition("chat", "r1", "rolled_back",
                          {"reason": "gate breached: ttft_p95.max_ratio: candidate 0.8 (n=50) "
                                     "vs baseline 0.4 (n=900), z=8.1", "percent": 0.0})
        events.set_percent("chat", "r1", 0.0)
    text = generate_latest(registry).decode()
    assert 'gateway_rollout_transitions_total{model="chat",rollout="r1",' \
           'transition="rolled_back"} 1.0' in text
    assert 'gateway_rollout_candidate_percent{model="chat",rollout="r1"} 0.0' in text
    record = next(r for r in caplog.records if r.name == "gateway.rollouts")
    assert record.levelno == logging.WARNING and "ttft_p95" in record.getMessage()
    (span,) = exporter.get_finished_spans()
    assert span.name == "gateway.rollout"
    assert [e.name for e in span.events] == ["rollout.rolled_back"]
    assert span.events[0].attributes["gateway.rollout.model"] == "chat"
    provider.shutdown()
