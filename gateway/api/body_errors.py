"""A pydantic validation error → the 400 a client reads: one error, the field named in the
ingress's own path style, the message in JSON terms rather than pydantic's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from gateway.errors import InvalidRequest

Path = tuple[int | str, ...]


def openai_path(loc: Path) -> str:
    """`messages[0].role`, as OpenAI names parameters."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def anthropic_path(loc: Path) -> str:
    """`messages.0.role`, as Anthropic names them."""
    return ".".join(str(p) for p in loc)


def _loc(e: ErrorDetails) -> Path:
    # A union's member name ("str", "list[ContentPart]", "function-after[...]") is pydantic's,
    # not the client's: keep only the keys and indices the client wrote.
    return tuple(p for p in e["loc"] if isinstance(p, int) or not _is_member(p))


def _is_member(part: str) -> bool:
    return "[" in part or part[:1].isupper() or part in {"str", "int", "float", "bool", "dict",
                                                          "list", "none"}


def _best(errors: list[ErrorDetails]) -> ErrorDetails:
    """One error to report: the first field's (fields validate in declaration order, so the
    most basic — `model` — comes first). A value that matched no member of a union yields one
    error per member; the deepest is the informative one (the member the client meant)."""
    field = errors[0]["loc"][:1]
    same = [e for e in errors if e["loc"][:1] == field]
    return max(same, key=lambda e: len(_loc(e)))


def invalid_request(err: ValidationError, render: Callable[[Path], str],
                    openai_style: bool = True) -> InvalidRequest:
    e = _best(err.errors(include_url=False))
    if not e["loc"]:  # the body itself: JSON, but not an object
        return InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    param = render(_loc(e))
    kind = e["type"]
    if kind == "missing":
        msg = (f"Missing required parameter: '{param}'." if openai_style
               else f"{param}: Field required")
        if param == "model" and openai_style:  # OpenAI's own words for the commonest slip
            msg = "You must provide a model parameter (a model name string)."
        return InvalidRequest(msg, param=param, code="missing_required_parameter")
    got = e.get("input")
    text = _MESSAGES.get(kind) or e["msg"].replace(" after validation", "")
    shown = "" if isinstance(got, dict | list) else f" (got {_short(got)})"
    code = "invalid_type" if kind.endswith("_type") or kind == "model_attributes_type" \
        else "invalid_value"
    if openai_style:
        msg = f"Invalid value for '{param}': {text}{shown}."
    else:
        msg = f"{param}: {text}{shown}"
    return InvalidRequest(msg, param=param, code=code)


# pydantic's wording names our classes ("instance of StreamOptions"); say it in JSON terms.
_MESSAGES = {"model_type": "Input should be a JSON object",
             "model_attributes_type": "Input should be a JSON object",
             "dict_type": "Input should be a JSON object"}


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
