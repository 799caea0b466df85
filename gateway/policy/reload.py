"""Hot reload: poll the policy file; a good file swaps in whole, a bad one keeps the last good
policy and says why. A reload never half-applies: settings only a restart can change, or a
preparation that fails (opening the key store), refuse the whole reload."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from gateway.policy.history import PolicyHistory, Result
from gateway.policy.load import PolicyError, load_policy
from gateway.policy.models import Policy

log = logging.getLogger("gateway.policy")

# Read once at start (connections, listeners, files): a change needs a restart.
_RESTART_ONLY = (
    ("server", "host"), ("server", "port"), ("server", "header_timeout_s"),
    ("server", "body_timeout_s"), ("server", "max_connections"), ("server", "keep_alive_s"),
    ("state", "redis_url"), ("state", "key_prefix"),
    ("ledger", "url"), ("ledger", "schema_name"), ("ledger", "spill_path"),
    ("ledger", "journal"), ("ledger", "journal_dir"),
)


class ReloadRefused(Exception):
    """The new policy is valid but cannot be applied to the running gateway."""


def restart_required(old: Policy, new: Policy) -> list[str]:
    """The restart-only settings that differ, as `section.key (old → new)`."""
    out = []
    for section, key in _RESTART_ONLY:
        a, b = getattr(getattr(old, section), key), getattr(getattr(new, section), key)
        if a != b:
            shown = ("***", "***") if key == "redis_url" or key == "url" else (a, b)
            out.append(f"{section}.{key} ({shown[0]!r} → {shown[1]!r})")
    return out


class PolicyWatcher:
    def __init__(self, path: str, apply: Callable[[Policy], Awaitable[None]], metrics: Any,
                 interval_s: float = 1.0, history: PolicyHistory | None = None) -> None:
        self._path = path
        # Every attempt's result, for the console's policy page and `GET /admin/policy`.
        self.history = history
        self._apply = apply
        self._metrics = metrics
        self._interval = interval_s
        self._task: asyncio.Task[None] | None = None
        self._stamp = self._mtime()
        self._kick = asyncio.Event()

    def _mtime(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        with suppress(ValueError, NotImplementedError, RuntimeError):
            # SIGHUP reloads at once (only possible in the main thread).
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._kick.set)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._interval)
            forced = self._kick.is_set()
            self._kick.clear()
            stamp = self._mtime()
            if stamp is None or (stamp == self._stamp and not forced):
                continue
            self._stamp = stamp
            await self.reload()

    async def reload(self) -> bool:
        try:
            policy = await asyncio.to_thread(load_policy, self._path)
        except PolicyError as e:
            self._metrics.policy_reloads.labels("rejected").inc()
            log.error("policy reload rejected; keeping the last good policy:\n%s", e)
            self._report("rejected", str(e))
            return False
        try:
            await self._apply(policy)
        except ReloadRefused as e:
            self._metrics.policy_reloads.labels("rejected").inc()
            log.error("policy reload refused; keeping the last good policy: %s", e)
            self._report("refused", str(e))
            return False
        except Exception:
            self._metrics.policy_reloads.labels("failed").inc()
            log.exception("policy reload failed to apply; keeping the last good policy")
            self._report("failed", "the new policy failed to apply (see the gateway's log)")
            return False
        self._metrics.policy_reloads.labels("ok").inc()
        if self.history is not None:
            self.history.applied(policy)
        log.info("policy reloaded from %s: %d models", self._path, len(policy.models))
        return True

    def _report(self, result: Result, message: str) -> None:
        if self.history is not None:
            self.history.not_applied(result, [message])
