"""The local backend's `vllm:cache_config_info`, read back by the gateway's own parser."""

from __future__ import annotations

import pytest

from gateway.routing.signals import engine_metrics
from local_backend.metrics import BackendMetrics


@pytest.mark.parametrize("tokens", [16_384, 1000, 64])
def test_cache_config_info_gives_the_prefix_cache_budget_in_tokens(tokens: int) -> None:
    m = BackendMetrics("tiny")
    m.report_cache(tokens)
    text = m.render().decode()
    assert 'enable_prefix_caching="True"' in text
    assert engine_metrics(text, "tiny").cache_tokens == tokens


def test_a_disabled_prefix_cache_says_so() -> None:
    m = BackendMetrics("tiny")
    m.report_cache(0)
    text = m.render().decode()
    assert 'enable_prefix_caching="False"' in text and 'num_gpu_blocks="0"' in text
    # Nothing to size: the gateway keeps its default rather than assume an empty cache.
    assert engine_metrics(text, "tiny").cache_tokens is None
