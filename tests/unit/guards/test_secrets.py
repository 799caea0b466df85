"""The secrets detector (detect-secrets' plugin patterns): what it finds, and the span."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.guards.secrets import SecretsDetector, available_plugins

DETECTOR = SecretsDetector()


def found(text: str, d: SecretsDetector = DETECTOR) -> list[tuple[str, str]]:
    return sorted((f.label, text[f.start:f.end]) for f in d.find(text))


@pytest.mark.parametrize("secret,label,span", [
    ("AKIAIOSFODNN7EXAMPLE", "AWSKeyDetector", None),
    ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", "GitHubTokenDetector", None),
    ("glpat-abcdefghijklmnopqrst", "GitLabTokenDetector", None),
    ("sk-abcdefghijklmnopqrstT3BlbkFJabcdefghijklmnopqrst", "OpenAIDetector", None),
    ("xoxb-123456789012-1234567890123-abcdefghijklmnopqrstuvwx", "SlackDetector", None),
    ("sk_live_abcdefghijklmnopqrstuvwx", "StripeDetector", None),
    ("-----BEGIN RSA PRIVATE KEY-----", "PrivateKeyDetector", "BEGIN RSA PRIVATE KEY"),
])
def test_finds_the_whole_secret(secret: str, label: str, span: str | None) -> None:
    # The whole token (not a plugin's capture group like GitHub's `ghp`), so redaction
    # leaves none of it behind.
    assert (label, span or secret) in found(f"please use {secret} for the deploy")


@pytest.mark.parametrize("text", [
    "hello world, this is ordinary prose with words like password and token",
    "the commit 3f2a9c1 fixed it; see AKIA in the docs",          # prefix only
    "ghp_short is not a token",
    "a uuid 123e4567-e89b-12d3-a456-426614174000 is an id",
])
def test_prose_and_near_misses_are_not_flagged(text: str) -> None:
    assert found(text) == []


def test_keyword_assignments_only_when_asked() -> None:
    text = 'config: password = "hunter2xyz"'
    assert found(text) == []
    with_keywords = SecretsDetector(keywords=True)
    assert ("KeywordDetector", "hunter2xyz") in found(text, with_keywords)


def test_plugins_can_be_chosen_and_unknown_ones_refused() -> None:
    aws_only = SecretsDetector(["AWSKeyDetector"])
    text = "AKIAIOSFODNN7EXAMPLE ghp_abcdefghijklmnopqrstuvwxyz0123456789"
    assert [label for label, _ in found(text, aws_only)] == ["AWSKeyDetector"]
    assert "IPPublicDetector" not in available_plugins()
    with pytest.raises(ValueError, match="unknown detect-secrets plugin"):
        SecretsDetector(["NoSuchDetector"])


_FRAGMENTS = st.sampled_from([
    " ", "=", ": ", '"', "'", "_", "-", "cloudant", "cl", "ibm", "cloud", "iam", "cos", "hmac",
    "softlayer", "sl", "api", "KEY", "key", "pwd", "Password", "pass", "token", "secret",
    "access", "https://", "user:", "@acct.cloudant.com", "api.softlayer.com/soap/v3/", "AKC",
    "APB", "aws", "a" * 24, "0123456789abcdef" * 4, "0123456789abcdef" * 3, "x" * 44,
    "Ab1" * 4, "\n"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(_FRAGMENTS, max_size=24))
def test_the_prefilter_never_changes_what_is_found(parts: list[str]) -> None:
    text = "".join(parts)
    filtered = SecretsDetector()
    unfiltered = SecretsDetector()
    unfiltered.prefilter = False
    assert filtered.find(text) == unfiltered.find(text)


def test_the_prefilter_applies_to_the_slow_assignment_patterns() -> None:
    d = SecretsDetector()
    slow = {label for label, _p, needs in d.patterns if needs is not None}
    assert {"CloudantDetector", "IbmCloudIamDetector", "IbmCosHmacDetector",
            "SoftlayerDetector", "ArtifactoryDetector"} <= slow
    hex64 = "0123456789abcdef" * 4
    assert ("CloudantDetector", hex64) in found(f'cloudant_apikey = "{hex64}"')


# Modern OpenAI keys (shape of real ones: ~150 URL-safe base64 characters after the prefix),
# made up here; detect-secrets' own OpenAIDetector needs the legacy `T3BlbkFJ` marker.
_BODY = "Ab3dE_f9-" * 17
PROJECT_KEY = f"sk-proj-{_BODY}"
SVCACCT_KEY = f"sk-svcacct-{_BODY}"
ADMIN_KEY = f"sk-admin-{_BODY[:60]}"


@pytest.mark.parametrize("key", [PROJECT_KEY, SVCACCT_KEY, ADMIN_KEY])
def test_modern_openai_keys_are_found_by_our_registered_plugin(key: str) -> None:
    assert "T3BlbkFJ" not in key
    assert found(f"export OPENAI_API_KEY={key}\nthanks") == [
        ("OpenAIProjectKeyDetector", key)]


@pytest.mark.parametrize("text", [
    "our sk-proj-name convention and the sk-admin-panel page",       # prefix, no key body
    f"sk-proj-{'a' * 39}",                                            # one short of a key
    f"sk-project-{_BODY}",                                            # not an OpenAI prefix
    f"sk-live-{_BODY}",
])
def test_near_misses_of_modern_openai_keys_are_not_flagged(text: str) -> None:
    assert [label for label, _ in found(text)] == []


def test_the_plugin_is_registered_the_detect_secrets_way() -> None:
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.settings import get_settings

    assert "OpenAIProjectKeyDetector" in available_plugins()
    # A custom plugin in the library's settings (a file:// path, as `scan --plugin` writes),
    # listed by the library's own plugin mapping beside its built-ins.
    path = get_settings().plugins["OpenAIProjectKeyDetector"]["path"]
    assert path.startswith("file://") and path.endswith("gateway/guards/secret_plugins.py")
    mapping = get_mapping_from_secret_type_to_class()
    assert mapping["OpenAI Project Key"].__name__ == "OpenAIProjectKeyDetector"
    assert mapping["OpenAI Token"].__name__ == "OpenAIDetector"
    # Chosen by name like a built-in, and redacted whole.
    only = SecretsDetector(["OpenAIProjectKeyDetector"])
    assert found(f"k={PROJECT_KEY}", only) == [("OpenAIProjectKeyDetector", PROJECT_KEY)]


def test_a_legacy_project_key_with_the_marker_is_found_by_both_and_redacted_once() -> None:
    from gateway.guards.base import redact

    key = "sk-proj-" + "a1B2" * 10 + "x" * 20 + "T3BlbkFJ" + "y" * 20
    text = f"key {key} end"
    labels = {label for label, _ in found(text)}
    assert labels == {"OpenAIDetector", "OpenAIProjectKeyDetector"}
    assert redact(text, DETECTOR.find(text), "[X]") == "key [X] end"
