"""Which stages a policy configures, built once per `Runtime` (rebuilt on reload).

Each builder returns the stages its policy section asks for (none when the section is absent,
so an unconfigured gateway gets an empty tuple and its request path does no stage work).
A new kind of stage is one module and one line in `_BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from gateway.flow.stage import build_flow_stages
from gateway.guards.stage import build_guard_stages
from gateway.stages.base import Stage
from gateway.stages.cache import build_cache_stages
from gateway.stages.pipeline import ordered

if TYPE_CHECKING:
    from gateway.policy.models import Policy
    from gateway.runtime import Runtime

Builder = Callable[["Policy", "Runtime"], Iterable[Stage]]

_BUILDERS: list[Builder] = [
    build_guard_stages,
    build_cache_stages,
    build_flow_stages,
]


def build_stages(policy: Policy, runtime: Runtime) -> tuple[Stage, ...]:
    """Every configured stage, in run order (`Stage.order`)."""
    return ordered([s for build in _BUILDERS for s in build(policy, runtime)])
