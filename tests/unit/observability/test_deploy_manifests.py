"""deploy/: every overlay renders with `kubectl kustomize`, every rendered resource of a
Kubernetes kind passes Kubernetes' own JSON schema (kubernetes-validate, schemas shipped
offline), the custom resources (KEDA, Prometheus Operator) point at what exists, the gateway
Deployment keeps the operational contract (probes, non-root, read-only root, policy mount),
and each overlay's policy passes the same validation as `gateway policy check`.

`kubectl` (with its built-in kustomize) is part of the CI machine's image; .ci/run installs
kubectl where it is missing. The test fails, never skips, without it."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.policy.load import parse_policy
from tests.promql import exported_names, metric_names

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
OVERLAYS = ("dev", "production", "keda")
# The Kubernetes version whose schemas the manifests must pass.
K8S_VERSION = "1.30.0"

# What the policy reads from the environment; in the cluster these come from the Secret.
DUMMY_ENV = {
    "OPENAI_API_KEY": "sk-test",
    "GATEWAY_ADMIN_KEY": "admin-test",
    "REDIS_URL": "redis://redis.test:6379/0",
    "LEDGER_URL": "postgresql://gateway@postgres.test:5432/gateway",
    "POD_NAME": "gateway-0",
}


@functools.cache
def render(overlay: str = "production") -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is not installed: .ci/run installs it (apt kubectl)"
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d is not None)


def resources(overlay: str = "production") -> list[dict[str, Any]]:
    return list(render(overlay))


def find(kind: str, name: str, overlay: str = "production") -> dict[str, Any]:
    hits = [d for d in resources(overlay)
            if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name} in {overlay}, found {len(hits)}"
    return hits[0]


def policy_of(overlay: str) -> Any:
    cm = find("ConfigMap", "gateway-policy", overlay)
    return parse_policy(cm["data"]["policy.yaml"], f"deploy/overlays/{overlay}",
                        env=DUMMY_ENV)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_passes_the_kubernetes_schemas(overlay: str) -> None:
    docs = resources(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service"} <= kinds
    for d in docs:
        assert d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "model-gateway", d["metadata"]["name"]
        if "." in d["apiVersion"].split("/")[0]:
            continue  # a custom resource (keda.sh, monitoring.coreos.com): checked below
        # strict: an unknown field (a typo, a field of another version) fails too.
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)


def test_schema_check_catches_a_broken_manifest() -> None:
    dep = yaml.safe_load(yaml.safe_dump(find("Deployment", "gateway")))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    dep["spec"]["replicas"] = 2
    dep["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSION, strict=True)


def test_example_secrets_are_never_rendered() -> None:
    for overlay in OVERLAYS:
        assert not [d for d in resources(overlay) if d["kind"] == "Secret"], overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_policy_passes_policy_validation(overlay: str) -> None:
    policy = policy_of(overlay)
    assert policy.observability.metrics
    if overlay == "dev":
        # Embedded: no shared state, one replica, no autoscaling.
        assert policy.state.redis_url is None
        assert policy.ledger.url.startswith("sqlite:")
        assert find("Deployment", "gateway", "dev")["spec"]["replicas"] == 1
        assert not [d for d in resources("dev")
                    if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]


def test_gateway_policy_configmap_passes_policy_validation() -> None:
    policy = policy_of("production")
    # The shape the deployment is about: shared state, two vLLM backends, a paid fallback.
    assert policy.state.redis_url == DUMMY_ENV["REDIS_URL"]
    assert policy.ledger.url.startswith("postgresql://")
    assert policy.ledger.spill_path.endswith("spill-gateway-0.jsonl")
    route = policy.models["llama-3.1-8b"]
    assert route.strategy == "prefix-affinity"
    assert {policy.providers[d.provider].kind for d in route.deployments} == {"vllm"}
    assert len(route.deployments) == 2
    assert route.fallbacks and all(
        policy.providers[d.provider].kind == "openai"
        for fb in route.fallbacks for d in policy.models[fb].deployments)
    assert policy.tenants


def gateway_container() -> dict[str, Any]:
    (c,) = [c for c in find("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
            if c["name"] == "gateway"]
    return c


def test_policy_env_variables_are_all_provided_to_the_gateway() -> None:
    text = find("ConfigMap", "gateway-policy")["data"]["policy.yaml"]
    env = {e["name"] for e in gateway_container()["env"]}
    for name in DUMMY_ENV:
        assert f"${{{name}" in text
        assert name in env, f"the policy reads ${{{name}}} but the Deployment does not set it"


def test_vllm_services_named_in_the_policy_exist_and_serve_metrics() -> None:
    policy = parse_policy(find("ConfigMap", "gateway-policy")["data"]["policy.yaml"],
                          env=DUMMY_ENV)
    for name, p in policy.providers.items():
        if p.kind != "vllm":
            continue
        host = p.base_url.split("//", 1)[1].split(":", 1)[0]
        svc = find("Service", host)
        dep = find("Deployment", host)
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["command"] == ["vllm", "serve"], name
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {p["port"] for p in svc["spec"]["ports"]} == {8000}


def test_gateway_deployment_keeps_the_operational_contract() -> None:
    dep = find("Deployment", "gateway")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = gateway_container()
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The policy file the container is told to load is the one the ConfigMap mounts, as a
    # directory (a subPath mount would never see updates, and hot reload would silently stop).
    config = c["args"][c["args"].index("--config") + 1]
    policy_mount = mounts["policy"]
    assert config == f"{policy_mount['mountPath']}/policy.yaml"
    assert "subPath" not in policy_mount
    # `kubectl exec … gateway keys|usage …` has no --config: $GATEWAY_CONFIG must name the
    # same file, or the commands read policies/default.yaml and another database.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["GATEWAY_CONFIG"] == config
    assert volumes["policy"]["configMap"]["name"] == "gateway-policy"
    # var/ (the ledger spill file) is writable: an emptyDir under the image's WORKDIR.
    assert "emptyDir" in volumes[mounts["var"]["name"]]
    assert mounts["var"]["mountPath"] == "/app/var"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["http"]
    assert str(port) in c["args"]


def test_pdb_hpa_and_servicemonitor_select_the_gateway() -> None:
    labels = find("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(find("PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"])
    assert selects(find("Service", "gateway")["spec"]["selector"])
    hpa = find("HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "gateway" and hpa["minReplicas"] >= 2
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    svc_labels = find("Service", "gateway")["metadata"]["labels"]
    sm = find("ServiceMonitor", "gateway")["spec"]
    assert all(svc_labels.get(k) == v for k, v in sm["selector"]["matchLabels"].items())
    assert sm["endpoints"][0]["path"] == "/metrics"


@pytest.mark.parametrize("line", [
    "FROM python:3.11-slim",
    "USER 10001:10001",
    'CMD ["serve", "--config", "/etc/gateway/policy.yaml", "--host", "0.0.0.0"]',
    "WORKDIR /app",
])
def test_dockerfile_builds_the_image_the_manifests_expect(line: str) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert line in text.splitlines()
    assert "pip install ." in text


def test_dockerfile_points_admin_commands_at_the_policy_it_serves() -> None:
    # `docker exec CONTAINER gateway usage report` reads $GATEWAY_CONFIG: the file CMD serves.
    text = (DEPLOY / "Dockerfile").read_text()
    runtime = text.split("\nFROM ")[-1]  # the last stage is the image
    assert "    GATEWAY_CONFIG=/etc/gateway/policy.yaml \\" in runtime.splitlines()
    cmd = next(x for x in runtime.splitlines() if x.startswith("CMD "))
    assert '"--config", "/etc/gateway/policy.yaml"' in cmd


def gateway_metric_names() -> set[str]:
    """What a gateway's /metrics exports once it has seen traffic and a scrape."""
    from prometheus_client import generate_latest

    from gateway.observability.metrics import Metrics
    from gateway.routing.base import EndpointLoad, Signals

    policy = policy_of("production")
    m = Metrics()
    m.settled.demand.update(policy, Signals(loads={
        d.id: EndpointLoad(in_flight=1, waiting=1, running=1, kv_cache_usage=0.5)
        for route in policy.models.values() for d in route.deployments}))
    return exported_names(generate_latest(m.registry).decode())


def test_keda_scaled_objects_target_real_deployments_with_valid_queries() -> None:
    exported = gateway_metric_names()
    scaled = [d for d in resources("keda") if d["kind"] == "ScaledObject"]
    assert {s["metadata"]["name"] for s in scaled} == {"gateway", "vllm-a"}
    # KEDA builds the gateway's HPA; a second HPA on the same Deployment would fight it.
    assert not [d for d in resources("keda") if d["kind"] == "HorizontalPodAutoscaler"]
    for so in scaled:
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        spec = so["spec"]
        ref = spec["scaleTargetRef"]
        assert ref["kind"] == "Deployment"
        find("Deployment", ref["name"], "keda")
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
        prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
        assert prom, so["metadata"]["name"]
        for t in prom:
            meta = t["metadata"]
            assert meta["serverAddress"].startswith("http")
            assert float(meta["threshold"]) > 0
            assert t["metricType"] in ("AverageValue", "Value")
            names = metric_names(meta["query"])
            assert names and names <= exported, (meta["query"], names - exported)
    vllm = next(s for s in scaled if s["metadata"]["name"] == "vllm-a")
    # The pool label the queries select is a self-hosted provider of the policy.
    policy = policy_of("keda")
    assert policy.providers["vllm-a"].kind == "vllm"
    assert all('pool="vllm-a"' in t["metadata"]["query"] for t in vllm["spec"]["triggers"])


def test_metric_name_check_catches_an_unknown_metric() -> None:
    exported = gateway_metric_names()
    assert metric_names('max(gateway_pool_requests_waiting{pool="x"})') <= exported
    assert not metric_names("sum(rate(gateway_pool_waiting_total[1m]))") <= exported
    with pytest.raises(ValueError):
        metric_names("sum(rate(gateway_model_in_flight[1m])")


def test_the_grafana_dashboard_ships_as_a_sidecar_configmap() -> None:
    import json

    cm = find("ConfigMap", "gateway-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["model-gateway.json"])
    assert shipped == json.loads((DEPLOY / "grafana" / "model-gateway.json").read_text())
    assert shipped["uid"] == "model-gateway"
