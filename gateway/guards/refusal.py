"""The `Blocked` a guard raises: it names the guard and the kind of check, never what matched
(which must reach neither the client nor the logs)."""

from __future__ import annotations

from gateway.call import Call
from gateway.guards.compiled import CompiledGuard
from gateway.stages.base import Blocked

CONTENT = "it contains content this policy does not allow"
TOO_LONG = "it is longer than this policy allows"


def unchecked(where: str) -> str:
    """The reason of a `fail_closed` refusal."""
    return (f"its safety classifier gave no verdict in time and this policy refuses unchecked "
            f"{where}s")


def blocked(g: CompiledGuard, what: str, why: str | None = None,
            param: str | None = None, release: bytes = b"") -> Blocked:
    """`what`: `prompt` or `reply`; `release` (mid-stream): events that still reach the client
    in front of the block."""
    where = "request" if what == "prompt" else "reply"
    return Blocked(g.name, f"The {where} was blocked by the gateway's {g.name!r} guard: "
                   f"{why or CONTENT}. Remove that content, or ask the gateway's administrator "
                   "about the policy.", param=param, release=release)


def prompt_param(call: Call) -> str:
    """The request field that holds the prompt, for the error's `param`."""
    if call.ingress == "responses" or call.endpoint in ("embeddings", "moderations"):
        return "input"
    return "prompt" if call.endpoint == "completions" else "messages"
