"""deploy/: every manifest parses, the kustomization lists real files, the gateway Deployment
keeps the operational contract (probes, non-root, read-only root, policy mount), and the
policy in its ConfigMap passes the same validation as `gateway policy check`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.policy.load import parse_policy

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"

# What the policy reads from the environment; in the cluster these come from the Secret.
DUMMY_ENV = {
    "OPENAI_API_KEY": "sk-test",
    "GATEWAY_ADMIN_KEY": "admin-test",
    "REDIS_URL": "redis://redis.test:6379/0",
    "LEDGER_URL": "postgresql://gateway@postgres.test:5432/gateway",
    "POD_NAME": "gateway-0",
}


def load_all() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def resources() -> list[dict[str, Any]]:
    return [d for name, docs in load_all().items() if name != "kustomization.yaml"
            for d in docs]


def find(kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def gateway_container() -> dict[str, Any]:
    (c,) = [c for c in find("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
            if c["name"] == "gateway"]
    return c


def test_every_manifest_parses_and_names_its_kind() -> None:
    docs = load_all()
    assert len(docs) >= 5
    for name, items in docs.items():
        assert items, f"{name} is empty"
        for d in items:
            assert d.get("apiVersion") and d.get("kind"), name
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], name


def test_kustomization_lists_existing_files_and_never_the_example_secrets() -> None:
    (k,) = load_all()["kustomization.yaml"]
    listed = k["resources"]
    for r in listed:
        assert (DEPLOY / r).is_file(), r
    assert not [r for r in listed if "example" in r]
    missing = {p.name for p in DEPLOY.glob("*.yaml")} - set(listed) - {"kustomization.yaml"}
    assert all("example" in m for m in missing), missing


def test_gateway_policy_configmap_passes_policy_validation() -> None:
    cm = find("ConfigMap", "gateway-policy")
    policy = parse_policy(cm["data"]["policy.yaml"], "deploy/gateway-policy.yaml",
                          env=DUMMY_ENV)
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
