"""`guards:` — named safety checks on the input and output of requests (docs/guards.md).

Each guard names a detector (what it looks for), a stage (the prompt, the reply, or both), an
action (block, redact, flag) and where it applies (tenants, models, or only traffic that
leaves for a provider outside our own cloud). Guards run in the order the file lists them.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


PiiType = Literal["email", "phone", "card", "iban", "national_id"]
_ALL_PII: tuple[PiiType, ...] = ("email", "phone", "card", "iban", "national_id")

# National ids the PII detector can find in free text, as python-stdnum module names (each has
# a candidate pattern in gateway/guards/pii.py and stdnum's checksum or format validation).
NATIONAL_IDS = ("us.ssn", "de.idnr", "fr.nir", "es.dni", "it.codicefiscale", "nl.bsn")


class SecretsDetector(_Strict):
    """Credentials and secrets, found with the `detect-secrets` library's plugin patterns."""

    kind: Literal["secrets"]
    """`secrets`: API keys, tokens and private keys (AWS, GitHub, GitLab, OpenAI, Slack, Stripe,
    JWTs, private key blocks…). Example: `secrets`."""
    plugins: list[str] | None = None
    """detect-secrets plugin class names to use (`AWSKeyDetector`, `GitHubTokenDetector`…);
    unset: every pattern-based plugin (entropy plugins are never used: on prose they flag
    ordinary words). Example: `[AWSKeyDetector, PrivateKeyDetector]`."""
    @field_validator("plugins")
    @classmethod
    def _known_plugins(cls, v: list[str] | None) -> list[str] | None:
        from gateway.guards.secrets import available_plugins

        known = available_plugins()
        for name in v or ():
            if name not in known:
                raise ValueError(f"unknown detect-secrets plugin {name!r}; choose from "
                                 f"{', '.join(known)}")
        return v

    keywords: bool = False
    """Also use detect-secrets' `KeywordDetector` (`password = "…"`-style assignments). Off by
    default: it is about 50× slower than the other plugins on long prompts. Example: `true`."""


class PiiDetector(_Strict):
    """Personal data: e-mail addresses, phone numbers, payment cards, IBANs, national ids."""

    kind: Literal["pii"]
    """`pii`. Example: `pii`."""
    types: list[PiiType] = Field(default_factory=lambda: list(_ALL_PII), min_length=1)
    """What to look for: `email`, `phone` (Google's libphonenumber rules, via `phonenumbers`),
    `card` (13–19 digits with a card-network prefix and a valid Luhn checksum), `iban`
    (country length and mod-97 checksum, via `python-stdnum`), `national_id` (see
    `national_ids`). Example: `[card, iban]`."""
    phone_regions: list[str] = Field(default_factory=lambda: ["US"])
    """ISO 3166 regions whose national phone formats are recognised without a `+` prefix
    (international `+…` numbers are recognised for every region). Example: `[DE, FR, GB]`."""
    national_ids: list[str] = Field(default_factory=lambda: ["us.ssn"])
    """National id formats to look for (python-stdnum module names): `us.ssn` (written
    `123-45-6789`), `de.idnr`, `fr.nir`, `es.dni`, `it.codicefiscale`, `nl.bsn`. Example:
    `[us.ssn, de.idnr]`."""

    @field_validator("national_ids")
    @classmethod
    def _known_ids(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in NATIONAL_IDS:
                raise ValueError(f"unknown national id {name!r}; choose from "
                                 f"{', '.join(NATIONAL_IDS)}")
        return v

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        import phonenumbers

        known = phonenumbers.SUPPORTED_REGIONS
        for r in v:
            if r not in known:
                raise ValueError(f"unknown phone region {r!r}: use an ISO 3166 code such as "
                                 "US, GB, DE")
        return v


class DenyListDetector(_Strict):
    """Words or phrases the policy forbids."""

    kind: Literal["deny_list"]
    """`deny_list`. Example: `deny_list`."""
    words: list[str] = Field(min_length=1)
    """Words or phrases, matched as whole words (a phrase's inner spaces match any run of
    whitespace). Example: `[project falcon, acme-internal]`."""
    case_sensitive: bool = False
    """Match case exactly. Example: `true`."""

    @field_validator("words")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        for w in v:
            if not w.strip():
                raise ValueError("deny-list words must not be empty or blank")
        return v


class RegexDetector(_Strict):
    """Regular expressions from the policy (Python `re` syntax)."""

    kind: Literal["regex"]
    """`regex`. Example: `regex`."""
    patterns: list[str] = Field(min_length=1)
    """Patterns; a match of any is a finding. Example: `['ORD-\\d{6}-[A-Z]{2}']`."""
    case_sensitive: bool = True
    """Match case exactly. Example: `false`."""

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                compiled = re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} is not a valid regular expression: {e}") \
                    from None
            if compiled.match(""):
                raise ValueError(f"pattern {p!r} matches the empty string: it would flag "
                                 "every request; make it require at least one character")
        return v


class LengthDetector(_Strict):
    """Prompts (input) or replies (output) longer than a bound."""

    kind: Literal["length"]
    """`length`. Example: `length`."""
    max_chars: int | None = Field(None, ge=1)
    """Most characters of text: on input every message, system prompt and tool text; on
    output the reply's text (a stream is counted as it arrives and cut at this many
    characters). Example: `200000`."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens: on input the prompt as admission estimates it (characters / 4 plus
    message overhead); on output the reply's completion tokens as the upstream reports them,
    or characters / 4 where it has not yet (a stream is cut at `4 × max_tokens` characters).
    Example: `32000`."""

    @model_validator(mode="after")
    def _a_bound(self) -> LengthDetector:
        if self.max_chars is None and self.max_tokens is None:
            raise ValueError("a length detector needs max_chars or max_tokens (or both)")
        return self


class ModelDetector(_Strict):
    """A classifier model, called through the gateway's own routing (docs/guards.md)."""

    kind: Literal["model"]
    """`model`. Example: `model`."""
    model: str
    """Public model name (under `models:`) of the classifier. Its tokens are billed to the
    tenant of the request it checks, as an attempt with outcome `guard`, and its worst case
    is reserved with the request at admission (budgets, token limits). Example:
    `llama-guard`."""
    api: Literal["chat", "moderation"] = "chat"
    """`chat`: a Llama Guard–style chat model that answers `safe`, or `unsafe` and its
    categories on the next line; `moderation`: OpenAI's `/v1/moderations` (flagged or not).
    Example: `moderation`."""
    categories: list[str] = Field(default_factory=list)
    """Block only these categories (Llama Guard's `S1`…`S14`, or moderation category names
    such as `violence`); empty: any unsafe verdict. Example: `[S1, S9]`."""
    timeout_s: float = Field(2.0, gt=0, le=120)
    """Seconds the classifier may take, every attempt included. Example: `0.5`."""
    on_error: Literal["fail_open", "fail_closed"] = "fail_closed"
    """When the classifier times out or fails: let the request through (`fail_open`) or
    refuse it (`fail_closed`, 400 naming the guard). Either way the verdict is recorded and
    counted. Example: `fail_open`."""
    segment_chars: int = Field(2048, ge=64, le=65_536)
    """Output checks on streams: the classifier is asked about each segment of this many
    characters of reply text as it completes (with the last quarter of the segment before,
    for context), and the text's end; a segment is held back from the client until its
    verdict. Smaller: text reaches the client sooner, more classifier calls. Example:
    `1024`."""


Detector = Annotated[
    SecretsDetector | PiiDetector | DenyListDetector | RegexDetector | LengthDetector
    | ModelDetector,
    Field(discriminator="kind"),
]


class GuardScope(_Strict):
    """Where a guard applies. Every condition given must hold; nothing given: all traffic."""

    tenants: list[str] = Field(default_factory=list)
    """Only requests of these tenants; empty: every tenant. Example: `[acme]`."""
    models: list[str] = Field(default_factory=list)
    """Only requests for these public model names; empty: every model. Example: `[gpt-4o]`."""
    external_only: bool = False
    """Only traffic to providers outside our own cloud: every provider kind except `local`
    and `vllm` (self-hosted). Checked per upstream attempt, so a request that falls back from
    a self-hosted deployment to an external one is checked before it leaves. Example:
    `true`."""


class Guard(_Strict):
    """One named safety check."""

    detector: Detector
    """What the guard looks for: `{kind: secrets | pii | deny_list | regex | length | model,
    …}`. Example: `{kind: pii, types: [card, iban]}`."""
    stage: Literal["input", "output", "both"] = "input"
    """Check the request (`input`), the reply (`output`, streams included, incrementally) or
    both. Every detector works on both. Example: `both`."""
    action: Literal["block", "redact", "flag"] = "block"
    """`block`: refuse with 400 `content_policy_violation` naming the guard (mid-stream: end
    the stream with `finish_reason: content_filter` and an error event); `redact`: replace
    what matched and go on; `flag`: only record and count the finding. Example: `redact`."""
    applies_to: GuardScope = Field(default_factory=GuardScope)
    """Tenants, models, or external-only traffic this guard is limited to. Example:
    `{external_only: true}`."""
    replacement: str = "[REDACTED:{label}]"
    """What a redacted match becomes; `{label}` is the finding's type (`card`, `email`,
    `AWSKeyDetector`, `deny_list`…). Example: `'***'`."""
    window_chars: int = Field(256, ge=8, le=65_536)
    """Output checks on streams by the text detectors (`secrets`, `pii`, `deny_list`,
    `regex`) scan a sliding window of this many characters, so a match split across chunks
    is still caught; at most this much text is held back from the client at any time. Set
    it above the longest match you expect (a `model` detector holds `segment_chars`; a
    `length` one holds nothing). Example: `512`."""

    @model_validator(mode="after")
    def _consistent(self) -> Guard:
        kind = self.detector.kind
        if kind in ("length", "model") and self.action == "redact":
            raise ValueError(f"a {kind} detector finds nothing to redact: use action "
                             "block or flag")
        try:
            self.replacement.format(label="x")
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"replacement {self.replacement!r} may use only the {{label}} "
                             "placeholder") from None
        return self

