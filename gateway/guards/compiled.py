"""The policy's `guards:` built once per policy load: detectors compiled, scopes as sets.

A guard's text detector is built here (patterns compiled, libraries' tables loaded) so a
request pays only for scanning. `applies` answers the tenant/model part of the scope; the
`external_only` part needs the attempt's destination and is the stage's to check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.guards.base import Finding, TextDetector
from gateway.guards.patterns import deny_list, regexes
from gateway.guards.pii import PiiDetector
from gateway.policy import guards as cfg

# Provider kinds that run inside our own cloud: everything else is external for
# `applies_to.external_only` (docs/guards.md).
SELF_HOSTED_KINDS = frozenset({"local", "vllm"})


@dataclass(frozen=True, slots=True)
class CompiledGuard:
    name: str
    action: str
    replacement: str
    window: int
    input: bool
    output: bool
    tenants: frozenset[str]
    models: frozenset[str]
    external_only: bool
    # Text detectors (secrets, pii, deny_list, regex); None for `length` and `model`.
    find: Callable[[str], list[Finding]] | None
    length: cfg.LengthDetector | None
    model: cfg.ModelDetector | None

    @property
    def kind(self) -> str:
        if self.model is not None:
            return "model"
        return "length" if self.length is not None else "text"

    def applies(self, tenant: str, model: str) -> bool:
        return (not self.tenants or tenant in self.tenants) and \
            (not self.models or model in self.models)


def text_detector(d: cfg.Detector) -> TextDetector | None:
    if isinstance(d, cfg.SecretsDetector):
        # Imported here: without a secrets guard detect-secrets is never loaded (5 MB).
        from gateway.guards.secrets import SecretsDetector

        return SecretsDetector(d.plugins, d.keywords)
    if isinstance(d, cfg.PiiDetector):
        return PiiDetector(d.types, d.phone_regions, d.national_ids)
    if isinstance(d, cfg.DenyListDetector):
        return deny_list(d.words, d.case_sensitive)
    if isinstance(d, cfg.RegexDetector):
        return regexes(d.patterns, d.case_sensitive)
    return None


def compile_guards(guards: dict[str, cfg.Guard]) -> list[CompiledGuard]:
    out = []
    for name, g in guards.items():
        d = g.detector
        text = text_detector(d)
        out.append(CompiledGuard(
            name=name, action=g.action, replacement=g.replacement, window=g.window_chars,
            input=g.stage in ("input", "both"), output=g.stage in ("output", "both"),
            tenants=frozenset(g.applies_to.tenants), models=frozenset(g.applies_to.models),
            external_only=g.applies_to.external_only,
            find=text.find if text is not None else None,
            length=d if isinstance(d, cfg.LengthDetector) else None,
            model=d if isinstance(d, cfg.ModelDetector) else None,
        ))
    return out
