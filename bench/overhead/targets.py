"""What is measured: each proxy, how it is started (pinned to the system-under-test core) and
where its client points. Every target routes `bench-model` to the nginx mock and
`bench-stream` to the SSE mock; the bare pass-throughs have one upstream each, so they are
started once per upstream.

A target can also be measured through the Responses API (`variants`): the same processes,
another path and model. The gateway has three such rows: served natively (`kind: openai`
providers on the same mocks) with `store: false`, the same with the response stored (the
API's default), and translated to chat (the chat mocks' `kind: openai-compatible` providers)."""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from bench.overhead.apis import CHAT, RESPONSES, Api
from bench.overhead.procs import SUT_CPU, Proc, Procs, free_port

ROOT = Path(__file__).resolve().parents[2]
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pg_schema(redis_prefix: str) -> str:
    """The PostgreSQL ledger's schema of one run, named after its Redis prefix."""
    return "bench_" + redis_prefix.strip(":").replace("-", "_")
BENCH_KEY = "sk-bench-" + "0123456789abcdef" * 2
# A price on the deployment, so that the gateway's cost accounting runs as it does in production.
PRICING = [{"input": "0.15", "output": "0.60"}]


@dataclass
class Upstreams:
    json_base: str    # nginx: static chat completion
    stream_base: str  # mock_sse: SSE stream


@dataclass
class Endpoint:
    """Where the load goes, for one process (or no process: direct)."""

    url: str
    json_model: str = "bench-model"
    stream_model: str = "bench-stream"
    headers: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None
    port: int = 0
    api: Api = CHAT
    store: bool | None = None  # Responses' `store`; None: not sent (the API stores)
    cache: str | None = None  # the `x-gateway-cache` each reply must carry (STAGE_CACHE)

    def responses(self, json_model: str, stream_model: str, store: bool | None) -> Endpoint:
        """The same process reached through the Responses API."""
        assert self.url.endswith(CHAT.path), self.url
        return replace(self, url=self.url.removesuffix(CHAT.path) + RESPONSES.path,
                       api=RESPONSES, json_model=json_model, stream_model=stream_model,
                       store=store)


@dataclass(frozen=True)
class Variant:
    """One more row for a target: its processes reached through another API or model."""

    key: str    # after the target's name: "gateway/responses-native"
    label: str  # after its label
    json: Endpoint
    stream: Endpoint


def _responses(json_ep: Endpoint, stream_ep: Endpoint, key: str, label: str, model: str,
               store: bool | None) -> Variant:
    return Variant(key, label, json_ep.responses(model, model + "-stream", store),
                   stream_ep.responses(model, model + "-stream", store))


@dataclass
class Env:
    procs: Procs
    workdir: Path
    upstreams: Upstreams
    redis_url: str
    redis_prefix: str
    python: str = sys.executable
    # `--body-kb`: the non-streaming request's prompt padded to about this many KiB (0: as is).
    body_kb: int = 0


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    # One process serves both upstreams (two models); otherwise it is started per upstream.
    shared: bool = True
    ready_timeout: float = 30.0

    def start(self, env: Env, upstream: str | None = None) -> Endpoint:
        raise NotImplementedError

    def variants(self, json_ep: Endpoint, stream_ep: Endpoint) -> list[Variant]:
        """Its Responses API rows (the pass-throughs forward the bytes: one row)."""
        return [_responses(json_ep, stream_ep, "responses", "responses", "bench-responses",
                           False)]


@dataclass(frozen=True)
class Direct(Target):
    def start(self, env: Env, upstream: str | None = None) -> Endpoint:
        base = upstream or env.upstreams.json_base
        return Endpoint(base + "/chat/completions")


@dataclass(frozen=True)
class Bare(Target):
    client: str = "aiohttp"

    def start(self, env: Env, upstream: str | None = None) -> Endpoint:
        port = free_port()
        proc = env.procs.start(
            f"{self.name}-{port}",
            [env.python, "-m", "bench.overhead.bare_passthrough", "--upstream",
             upstream or env.upstreams.json_base, "--port", str(port), "--client", self.client],
            cpu=SUT_CPU, cwd=str(ROOT))
        return Endpoint(f"http://127.0.0.1:{port}/v1/chat/completions", proc=proc, port=port)


def gateway_policy(env: Env, port: int, *, tenants: bool, redis: bool, tmp: Path,
                   renamed: bool = False, postgres: bool = False) -> dict:
    ups = env.upstreams
    policy: dict = {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "ledger": {"url": f"sqlite:///{tmp}/ledger.db", "spill_path": f"{tmp}/spill.jsonl"},
        "providers": {
            "mock": {"kind": "openai-compatible", "base_url": ups.json_base},
            "mock-sse": {"kind": "openai-compatible", "base_url": ups.stream_base},
            # The same mocks as OpenAI itself: Responses requests pass through natively.
            "mock-responses": {"kind": "openai", "base_url": ups.json_base},
            "mock-sse-responses": {"kind": "openai", "base_url": ups.stream_base},
        },
        "models": {},
    }
    # Each public name is also the upstream's model, as with chat: no `model` rewriting —
    # except with `renamed`, where every deployment's model is `<public>-upstream`, as in
    # production: the gateway rewrites `model` in each request (and looks for it in replies).
    for model, provider in (("bench-model", "mock"), ("bench-stream", "mock-sse"),
                            ("bench-responses", "mock-responses"),
                            ("bench-responses-stream", "mock-sse-responses"),
                            ("bench-responses-tr", "mock"),
                            ("bench-responses-tr-stream", "mock-sse")):
        policy["models"][model] = {"deployments": [{
            "provider": provider, "model": model + "-upstream" if renamed else model,
            "pricing": PRICING}]}
    if tenants:
        # Limits high enough never to refuse, so every request pays for the whole admission.
        policy["tenants"] = {"bench": {
            "keys": [{"id": "bench-key", "hash": "sha256:" + hashlib.sha256(
                BENCH_KEY.encode()).hexdigest()}],
            "limits": {"rpm": 100_000_000, "tpm": 1_000_000_000_000, "concurrency": 100_000},
            "budget": {"monthly_usd": "100000000", "on_exceed": "block"},
        }}
    if redis:
        policy["state"] = {"redis_url": env.redis_url, "key_prefix": env.redis_prefix}
    if postgres:
        # The ledger (and key store) in a schema of the run's own, named after its Redis prefix.
        policy["ledger"]["url"] = PG_URL
        policy["ledger"]["schema"] = pg_schema(env.redis_prefix)
    return policy


# Policy sections a gateway target adds (`Gateway.stages`): request stages measured on the
# same mocks. "guard": one regex input guard that never matches the bench prompt, so every
# request pays for the scan and nothing else changes (docs/guards.md).
STAGE_SECTIONS: dict[str, dict] = {
    "guard": {"guards": {"order-ids": {"detector": {
        "kind": "regex", "patterns": [r"ORD-\d{6}-[A-Z]{2}\b"]}}}},
    # The exact response cache (docs/stages.md): every request after the first is a hit. The
    # benchmark's body sets no `temperature` or `seed`, and by default only such deterministic
    # requests are cached: without `deterministic_only: false` every request was a bypass.
    "cache": {"cache": {"ttl_s": 3600, "deterministic_only": False}},
}
STAGE_SECTIONS["guard+cache"] = {**STAGE_SECTIONS["guard"], **STAGE_SECTIONS["cache"]}
# Request headers a stage target's load sends: `no-cache` makes every request the cache's miss
# path (asked upstream, then stored) without changing the body.
STAGE_HEADERS: dict[str, dict[str, str]] = {"guard+cache": {"Cache-Control": "no-cache"}}
# The `x-gateway-cache` every reply of a stage target's load must carry: a target that stopped
# hitting (or missing) would otherwise measure another path under its name.
# (`no-cache` replies say `bypass`: asked afresh, and stored — the miss path's work.)
STAGE_CACHE: dict[str, str] = {"cache": "hit", "guard+cache": "bypass"}


@dataclass(frozen=True)
class Gateway(Target):
    tenants: bool = False
    redis: bool = False
    postgres: bool = False  # the PostgreSQL ledger (BENCH_PG_URL) instead of SQLite
    renamed: bool = False
    # A key of STAGE_SECTIONS whose sections the policy gets ("": none).
    stages: str = ""
    # A directory holding a modified copy of the `gateway` package, imported ahead of the
    # project's (`--patched DIR`): a proposed change measured in the same run as the original.
    src: str | None = None

    def start(self, env: Env, upstream: str | None = None) -> Endpoint:
        port = free_port()
        tmp = env.workdir / self.name.replace("+", "-")
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "policy.yaml"
        policy = gateway_policy(env, port, tenants=self.tenants, redis=self.redis, tmp=tmp,
                                renamed=self.renamed, postgres=self.postgres)
        policy.update(STAGE_SECTIONS.get(self.stages, {}))
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        proc = env.procs.start(
            self.name, [env.python, "-m", "gateway", "serve", "--config", str(path),
                        "--host", "127.0.0.1", "--port", str(port)],
            cpu=SUT_CPU, cwd=str(tmp),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (self.src, str(ROOT))
                                                             if p)})
        headers = {"Authorization": f"Bearer {BENCH_KEY}"} if self.tenants else {}
        headers.update(STAGE_HEADERS.get(self.stages, {}))
        return Endpoint(f"http://127.0.0.1:{port}/v1/chat/completions", headers=headers,
                        proc=proc, port=port, cache=STAGE_CACHE.get(self.stages))

    def variants(self, json_ep: Endpoint, stream_ep: Endpoint) -> list[Variant]:
        return [
            _responses(json_ep, stream_ep, "responses-native", "responses native",
                       "bench-responses", False),
            _responses(json_ep, stream_ep, "responses-stored", "responses native, stored",
                       "bench-responses", None),
            _responses(json_ep, stream_ep, "responses-translated", "responses translated",
                       "bench-responses-tr", False),
        ]


@dataclass(frozen=True)
class LiteLLM(Target):
    def start(self, env: Env, upstream: str | None = None) -> Endpoint:
        exe = LITELLM_VENV / "bin" / "litellm"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} is missing: run bench/overhead/setup.sh")
        port = free_port()
        tmp = env.workdir / self.name
        tmp.mkdir(parents=True, exist_ok=True)
        ups = env.upstreams
        config = {
            "model_list": [
                {"model_name": "bench-model", "litellm_params": {
                    "model": "openai/bench-model", "api_base": ups.json_base,
                    "api_key": "sk-upstream"}},
                {"model_name": "bench-stream", "litellm_params": {
                    "model": "openai/bench-stream", "api_base": ups.stream_base,
                    "api_key": "sk-upstream"}},
            ],
            "litellm_settings": {"telemetry": False, "drop_params": True},
            # No database: the master key is the only key. LiteLLM refuses to start without one.
            "general_settings": {"master_key": BENCH_KEY},
        }
        path = tmp / "config.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env_vars = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            # Read the bundled model price map instead of fetching it from the internet.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            # ERROR also turns uvicorn's access log off, as the gateway runs.
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "DISABLE_ADMIN_UI": "True",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        proc = env.procs.start(
            self.name, [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port",
                        str(port), "--num_workers", "1"],
            cpu=SUT_CPU, cwd=str(tmp), env=env_vars)
        return Endpoint(f"http://127.0.0.1:{port}/v1/chat/completions",
                        headers={"Authorization": f"Bearer {BENCH_KEY}"}, proc=proc, port=port)

    def variants(self, json_ep: Endpoint, stream_ep: Endpoint) -> list[Variant]:
        return []  # chat only: the comparison with LiteLLM is issue 9's


def patched(t: Target, src: str, tag: str = "patched") -> Target:
    """The same gateway configuration, run from a modified copy of the package."""
    if not isinstance(t, Gateway):
        raise ValueError(f"--patched applies to gateway targets, not {t.name}")
    return replace(t, name=f"{t.name}+{tag}", label=f"{t.label} [{tag}]", src=src)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Direct("direct", "direct (client → mock)", shared=False),
    Bare("bare-aiohttp", "bare pass-through, aiohttp", shared=False),
    Bare("bare-httpx", "bare pass-through, httpx", shared=False, client="httpx"),
    Gateway("gateway", "this gateway (open mode)"),
    Gateway("gateway-guard", "this gateway (open mode) + one regex input guard", stages="guard"),
    Gateway("gateway-cache-hit", "this gateway (open mode), answered from the response cache",
            stages="cache"),
    Gateway("gateway-guard-cache-miss", "this gateway (open mode) + one regex input guard + "
            "the response cache, every request its miss path (Cache-Control: no-cache)",
            stages="guard+cache"),
    Gateway("gateway-renamed", "this gateway (open mode), renamed models", renamed=True),
    Gateway("gateway-auth", "this gateway + tenants, auth, memory limits", tenants=True),
    Gateway("gateway-redis", "this gateway + tenants, auth, Redis limits", tenants=True,
            redis=True),
    Gateway("gateway-redis-pg", "this gateway + tenants, auth, Redis limits, PostgreSQL ledger",
            tenants=True, redis=True, postgres=True),
    LiteLLM("litellm", "LiteLLM proxy", ready_timeout=120.0),
)}

