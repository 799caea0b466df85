"""Pydantic's validation errors, rewritten as `PolicyIssue`s: the YAML path as written (not
pydantic's location, which adds a union's tag), the value, and what to change."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Collection
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gateway.policy.checks import did_you_mean, known
from gateway.policy.issues import Lines, Loc, PolicyIssue, issue
from gateway.policy.models import Policy, ProviderConfig

_QUOTED = re.compile(r"'([^']*)'")


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _tags(member: Any, field: str) -> tuple[str, ...]:
    if not (isinstance(member, type) and issubclass(member, BaseModel)):
        return ()
    info = member.model_fields.get(field)
    return typing.get_args(info.annotation) if info is not None else ()


PROVIDER_KINDS: tuple[str, ...] = tuple(
    kind for member in _union_members(ProviderConfig) for kind in _tags(member, "kind"))


class _Step:
    """Where a walk along a pydantic location stands: the type expected at this point."""

    def __init__(self, tp: Any) -> None:
        self.tp = tp

    def unwrap(self) -> tuple[Any, str | None]:
        """(the type without Annotated/Optional, the discriminator field if a tagged union)."""
        tp, disc = self.tp, None
        while True:
            origin = typing.get_origin(tp)
            if origin is typing.Annotated:
                base, *meta = typing.get_args(tp)
                disc = next((m.discriminator for m in meta
                             if isinstance(m, FieldInfo) and isinstance(m.discriminator, str)),
                            disc)
                tp = base
            elif origin in (typing.Union, types.UnionType):
                members = [a for a in typing.get_args(tp) if a is not type(None)]
                if disc is not None or len(members) != 1:
                    return tp, disc
                tp = members[0]
            else:
                return tp, disc


def _field(model: type[BaseModel], key: object) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if (info.alias or name) == key:
            return info
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[Loc, type[BaseModel] | None]:
    """The location as the YAML spells it (a tagged union's tag dropped), and the model that
    holds its last element (for an unknown key: the one whose fields are the choices)."""
    clean: list[str | int] = []
    step: _Step | None = _Step(Policy)
    parent: type[BaseModel] | None = None
    for i, part in enumerate(loc):
        if step is None:
            clean.append(part)
            continue
        tp, disc = step.unwrap()
        if disc is not None:
            member = next((m for m in _union_members(tp) if part in _tags(m, disc)), None)
            if member is not None:
                # pydantic adds the tag it chose as a location element; YAML has no such level
                step = _Step(member)
                continue
            tp = None
        clean.append(part)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if i == len(loc) - 1:
                parent = tp
            info = _field(tp, part)
            step = _Step(info.annotation) if info is not None else None
        elif origin is dict:
            step = _Step(typing.get_args(tp)[1])
        elif origin in (list, tuple):
            step = _Step(typing.get_args(tp)[0])
        else:
            step = None
    return tuple(clean), parent


def _choices(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _message(e: Any, parent: type[BaseModel] | None, key: object) -> str:
    msg: str = e["msg"]
    kind = e["type"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind == "extra_forbidden":
        hint = did_you_mean(key, _choices(parent)) if parent is not None else ""
        return f"unknown key{hint} (the keys are listed in docs/policy.md)"
    if kind == "union_tag_invalid":
        tag = e.get("ctx", {}).get("tag", e["input"])
        return (f"unknown provider kind {tag!r}{did_you_mean(tag, PROVIDER_KINDS)} "
                f"(known: {known(PROVIDER_KINDS)})")
    if kind == "union_tag_not_found":
        return f"missing 'kind' (one of: {', '.join(sorted(PROVIDER_KINDS))})"
    if "input" in e and not isinstance(e["input"], dict | list) and kind != "missing":
        msg = f"{msg} (got {e['input']!r})"
    if kind == "literal_error":
        msg += did_you_mean(e["input"], _QUOTED.findall(e.get("ctx", {}).get("expected", "")))
    return msg


def schema_issues(err: ValidationError, lines: Lines,
                  skip: Collection[Loc] = ()) -> list[PolicyIssue]:
    """One issue per pydantic error, except those under a value a missing `${VAR}` left empty
    (the variable was reported already; "input should be a valid integer" would be noise)."""
    out: list[PolicyIssue] = []
    for e in err.errors():
        loc, parent = _walk(tuple(e["loc"]))
        if any(loc[:i] in skip for i in range(1, len(loc) + 1)):
            continue
        tag = _QUOTED.findall(str(e.get("ctx", {}).get("discriminator", "")))
        if e["type"].startswith("union_tag") and tag and (*loc, tag[0]) in skip:
            continue  # `kind: ${KIND}` left empty: the variable is the error
        out.append(issue(loc, _message(e, parent, loc[-1] if loc else None), lines))
    return out
