"""`gateway rollout status|pause|resume|promote|abort MODEL`: a model's rollout, through the
admin API of a running gateway (any replica: the state is shared).

The gateway's address is `--url`, else the policy's `server.host`/`server.port`; the admin
key is `--admin-key`, else `$GATEWAY_ADMIN_KEY`, else the policy's `server.admin_key`. Exit
status: 0 done, 1 refused or unreachable (the message says why), 2 a wrong argument.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

ACTIONS = ("status", "pause", "resume", "promote", "abort")


def add_commands(sub: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
                 path_fn: Callable[[str | None], str]) -> None:
    p = sub.add_parser("rollout", help="a model's canary rollout: status, pause, resume, "
                                       "promote, abort (docs/rollouts.md)")
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("model", help="the public model name whose rollout to act on")
    p.add_argument("--url", default=None,
                   help="the gateway (default: http://server.host:server.port of the policy)")
    p.add_argument("--admin-key", default=None,
                   help="default: $GATEWAY_ADMIN_KEY, else the policy's server.admin_key")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    policy_arg(p)

    def run(args: argparse.Namespace) -> int:
        return _run(args, path_fn)

    p.set_defaults(func=run)


def _target(args: argparse.Namespace, path_fn: Callable[[str | None], str]
            ) -> tuple[str, str | None]:
    url, key = args.url, args.admin_key or os.environ.get("GATEWAY_ADMIN_KEY")
    if url is None or key is None:
        from gateway.policy.load import PolicyError, load_policy

        try:
            policy = load_policy(path_fn(args.config))
        except PolicyError as e:
            if url is None:
                raise SystemExit(f"{e}; pass --url (and --admin-key) instead") from None
        else:
            host = policy.server.host if policy.server.host not in ("0.0.0.0", "::") \
                else "127.0.0.1"
            url = url or f"http://{host}:{policy.server.port}"
            key = key or policy.server.admin_key
    return url.rstrip("/"), key


def _run(args: argparse.Namespace, path_fn: Callable[[str | None], str]) -> int:
    import httpx

    try:
        url, key = _target(args, path_fn)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    path = f"/admin/rollouts/{args.model}"
    method = "GET" if args.action == "status" else "POST"
    if method == "POST":
        path += f"/{args.action}"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        r = httpx.request(method, url + path, headers=headers, timeout=30.0)
    except httpx.HTTPError as e:
        print(f"cannot reach the gateway at {url}: {e}; pass --url", file=sys.stderr)
        return 1
    try:
        body = r.json()
    except ValueError:
        print(f"{url} answered HTTP {r.status_code} without JSON", file=sys.stderr)
        return 1
    if r.status_code != 200:
        msg = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
        print(" ".join(str(msg or body).split()), file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else render(body))
    return 0


def render(s: dict[str, Any]) -> str:
    """The status as a few lines a person reads."""
    lines = [f"{s['model']}: rollout {s['rollout']} {s['status'].replace('_', ' ')}, step "
             f"{s['step'] + 1}/{s['steps']}, candidate {s['percent']:g} %",
             f"  step: {s['step_elapsed_s']:.0f} s of at least {s['step_min_duration_s']:g} s; "
             f"candidate served {s['candidate']['served']} of at least "
             f"{s['step_min_requests']}; baseline {s['baseline']['served']}",
             f"  reason: {s['reason']}"]
    for g in s["gates"]:
        lines.append(f"  {g['gate']:28} {g['verdict']:6} candidate {_fmt(g['candidate'])} "
                     f"(n={g['candidate_n']}) baseline {_fmt(g['baseline'])} "
                     f"(n={g['baseline_n']}) z={_fmt(g['z'])}")
    return "\n".join(lines)


def _fmt(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"
