"""`gateway policy check` on `rollout:` entries: schema errors and cross-references, each at
its YAML path."""

from __future__ import annotations

from pathlib import Path

from gateway.policy.load import check_policy_file

HEAD = """
providers:
  p: {kind: vllm, base_url: "http://127.0.0.1:1/v1"}
tenants:
  platform: {}
models:
  other:
    deployments: [{provider: p, model: v9}]
  chat:
    deployments:
      - {provider: p, model: v1}
      - {provider: p, model: v2}
    rollout:
"""


def check(tmp_path: Path, rollout: str) -> list[str]:
    f = tmp_path / "p.yaml"
    f.write_text(HEAD + "".join(f"      {line}\n" for line in rollout.strip().splitlines()))
    c = check_policy_file(str(f))
    return [f"{i.path}: {i.message}" for i in c.errors]


def test_a_complete_rollout_passes(tmp_path: Path) -> None:
    assert check(tmp_path, """
candidate: {deployments: [p/v2]}
steps: [{percent: 5}, {percent: 50, min_duration_s: 60, min_requests: 10}]
gates: {error_rate: {max: 0.02}, ttft_p95: {max_ratio: 1.2}, length_share: {max_ratio: 2}}
shadow: {percent: 10, tenant: platform}
sticky: x-session
""") == []


def test_unknown_references_are_named_with_their_path(tmp_path: Path) -> None:
    errors = check(tmp_path, """
candidate: {deployments: [p/v3]}
steps: [{percent: 5}]
shadow: {percent: 10, tenant: platfrom}
""")
    assert any(e.startswith("models.chat.rollout.candidate.deployments[0]: unknown deployment "
                            "'p/v3'") for e in errors), errors
    assert any(e.startswith("models.chat.rollout.shadow.tenant: unknown tenant 'platfrom'; "
                            "did you mean 'platform'?") for e in errors), errors


def test_a_candidate_model_must_exist_and_not_be_itself(tmp_path: Path) -> None:
    assert any("unknown model 'othr'; did you mean 'other'?" in e for e in check(tmp_path, """
candidate: {model: othr}
steps: [{percent: 5}]
"""))
    assert any("its own candidate" in e for e in check(tmp_path, """
candidate: {model: chat}
steps: [{percent: 5}]
"""))


def test_the_whole_model_as_candidate_leaves_no_baseline(tmp_path: Path) -> None:
    assert any("no baseline" in e for e in check(tmp_path, """
candidate: {deployments: [p/v1, p/v2]}
steps: [{percent: 5}]
"""))


def test_schema_errors_say_what_to_change(tmp_path: Path) -> None:
    errors = check(tmp_path, """
candidate: {deployments: [p/v2], model: other}
steps: [{percent: 10}, {percent: 5}]
""")
    assert any(e.startswith("models.chat.rollout.candidate") and "exactly one" in e
               for e in errors), errors
    errors = check(tmp_path, """
candidate: {deployments: [p/v2]}
steps: [{percent: 10}, {percent: 5}]
gates: {error_rate: {}}
""")
    assert any("give `max`, `max_ratio` or both" in e for e in errors), errors
    errors = check(tmp_path, """
candidate: {deployments: [p/v2]}
steps: [{percent: 10}, {percent: 5}]
""")
    assert any("steps must increase" in e for e in errors), errors
