"""`POST /v1/moderations` through the real gateway with the official `openai` SDK: routed like
embeddings to an OpenAI-compatible backend, the reply passed through in OpenAI's shape, the
request in the ledger (input tokens estimated: moderation replies carry no usage)."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.fakes.openai_fake import FakeOpenAI
from tests.harness import Gateway
from tests.integration.conftest import simple_policy
from tests.integration.ledger_records import record


def test_moderations_pass_through_and_are_recorded(tmp_path: Path) -> None:
    fake = FakeOpenAI("oa").start()
    try:
        policy = simple_policy(
            tmp_path, {"oa": {"kind": "openai", "base_url": fake.url + "/v1"},
                       "loc": {"kind": "openai-compatible", "base_url": fake.url + "/v1"}},
            {"omni-moderation-latest": {"deployments": [
                {"provider": "oa", "model": "omni-moderation-2024-09-26"}]},
             "mod-b": {"deployments": [{"provider": "loc", "model": "m"}]}})
        with Gateway(policy, tmp=tmp_path) as gw:
            client = openai.OpenAI(base_url=gw.base_url, api_key="x", max_retries=0)
            res = client.moderations.with_raw_response.create(
                model="omni-moderation-latest", input=["a calm day", "I will hurt you"],
                extra_headers={"x-request-id": "mod1"})
            out = res.parse()
            assert [r.flagged for r in out.results] == [False, True]
            assert out.results[1].categories.violence is True
            assert out.results[1].category_scores.violence == pytest.approx(0.97)
            assert out.model == "omni-moderation-latest"  # the public name, not upstream's
            [sent] = fake.bodies("/moderations")
            assert sent["model"] == "omni-moderation-2024-09-26"
            assert sent["input"] == ["a calm day", "I will hurt you"]
            rec = record(gw.tmp, client_id="mod1")
            assert (rec.endpoint, rec.status) == ("moderations", 200)
            [a] = rec.attempts
            assert a.outcome == "ok" and a.usage is not None and a.usage.input_uncached > 0
            assert a.usage.output == 0
            # Through the other kind too, and text parts.
            assert client.moderations.create(model="mod-b", input=[
                {"type": "text", "text": "fine"}]).results[0].flagged is False
            with pytest.raises(openai.BadRequestError) as e:
                client.moderations.create(model="omni-moderation-latest", input=[])
            assert e.value.param == "input"
    finally:
        fake.stop()
