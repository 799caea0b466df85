"""The official `openai` SDK through the gateway to the Azure OpenAI fake."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.fakes.azure_fake import FakeAzure
from tests.harness import Gateway
from tests.integration.conftest import simple_policy

KEY = "azure-fake-key-0123456789"


@pytest.fixture
def az() -> Iterator[FakeAzure]:
    with FakeAzure(entra_token="entra-token-abcdefghijkl",
                   deployments={"gpt4o-prod": "gpt-4o-2024-08-06",
                                "embed-prod": "text-embedding-3-small"}) as f:
        yield f


@pytest.fixture
def gw(az: FakeAzure, tmp_path: Any) -> Iterator[Gateway]:
    policy = simple_policy(tmp_path, {
        "az": {"kind": "azure", "base_url": az.url, "api_key": KEY},
        "az-entra": {"kind": "azure", "base_url": az.url + "/openai", "auth": "entra",
                     "api_key": "entra-token-abcdefghijkl", "api_version": "v1"},
        "az-wrong": {"kind": "azure", "base_url": az.url, "api_key": "wrong-key-0000000000"},
    }, {
        "gpt-4o": {"deployments": [{"provider": "az", "model": "gpt4o-prod"}]},
        "gpt-4o-v1": {"deployments": [{"provider": "az-entra", "model": "gpt4o-prod"}]},
        "gpt-4o-broken": {"deployments": [{"provider": "az-wrong", "model": "gpt4o-prod"}]},
        "missing": {"deployments": [{"provider": "az", "model": "no-such-deployment"}]},
        "embed": {"type": "embedding", "deployments": [{"provider": "az", "model": "embed-prod"}]},
    })
    with Gateway(policy, tmp=tmp_path) as g:
        yield g


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def test_chat_url_auth_and_public_model_name(gw: Gateway, az: FakeAzure) -> None:
    r = client(gw).chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": "Hi"}])
    assert r.choices[0].message.content == "Hello0 word1 word2 word3 word4"
    assert r.model == "gpt-4o"  # not Azure's "gpt-4o-2024-08-06"
    sent = az.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEY and "Authorization" not in sent.headers
    assert sent.body == {"model": "gpt4o-prod", "messages": [{"role": "user", "content": "Hi"}]}


def test_streams_with_the_prompt_filter_chunk(gw: Gateway, az: FakeAzure) -> None:
    chunks = list(client(gw).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True))
    # Azure's choice-less prompt_filter_results chunk is folded away: every chunk has a choice.
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == \
        "Hello0 word1 word2 word3 word4"
    assert all(c.model == "gpt-4o" for c in chunks)
    assert az.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(c.usage is None for c in chunks)
    with client(gw).chat.completions.stream(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}],
            stream_options={"include_usage": True}) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.content == "Hello0 word1 word2 word3 word4"
    assert final.usage is not None and final.usage.completion_tokens == 5


def test_v1_api_with_an_entra_token(gw: Gateway, az: FakeAzure) -> None:
    r = client(gw).chat.completions.create(model="gpt-4o-v1",
                                           messages=[{"role": "user", "content": "Hi"}])
    assert r.model == "gpt-4o-v1"
    sent = az.requests[-1]
    assert sent.path == "/openai/v1/chat/completions" and sent.query == {}
    assert sent.headers["Authorization"] == "Bearer entra-token-abcdefghijkl"


def test_embeddings(gw: Gateway, az: FakeAzure) -> None:
    e = client(gw).embeddings.create(model="embed", input=["a", "b"])
    assert len(e.data) == 2 and e.model == "embed"
    assert az.requests[-1].path == "/openai/deployments/embed-prod/embeddings"


def test_errors(gw: Gateway, az: FakeAzure) -> None:
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).chat.completions.create(model="gpt-4o-broken",
                                           messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 502 and "wrong-key" not in e.value.response.text
    with pytest.raises(openai.NotFoundError) as nf:
        client(gw).chat.completions.create(model="missing",
                                           messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "DeploymentNotFound"
    az.fail_next(1, 400, {"error": {"code": "content_filter", "param": "prompt", "status": 400,
                                    "message": "The response was filtered due to the prompt "
                                               "triggering Azure OpenAI's content management "
                                               "policy."}})
    with pytest.raises(openai.BadRequestError) as bad:
        client(gw).chat.completions.create(model="gpt-4o",
                                           messages=[{"role": "user", "content": "x"}])
    assert bad.value.code == "content_filter"
