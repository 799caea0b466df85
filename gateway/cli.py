"""`gateway serve | policy check | keys … | usage report …`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys

DEFAULT_POLICY = "policies/default.yaml"


def _policy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None,
                   help=f"policy YAML (default: $GATEWAY_CONFIG or {DEFAULT_POLICY})")


def _policy_path(arg: str | None) -> str:
    import os

    return arg or os.environ.get("GATEWAY_CONFIG") or DEFAULT_POLICY


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import build_app
    from gateway.policy.load import PolicyError, load_policy

    path = _policy_path(args.config)
    try:
        policy = load_policy(path)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return 2
    host = args.host or policy.server.host
    port = args.port or policy.server.port
    app = build_app(policy, policy_path=path)
    # Requests allocate short-lived objects fast; with CPython's default thresholds the
    # collector ran ~340 times a second at 3,000 req/s and each full pass re-scanned the
    # ~65,000 objects made at start-up (~12 % of the core, docs/benchmarks.md). Park those
    # in the permanent generation and collect young objects less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools",
                log_level=args.log_level, access_log=False,
                timeout_graceful_shutdown=args.graceful_timeout)
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.load import PolicyError, load_policy

    status = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as e:
            print(e, file=sys.stderr)
            print(f"{path}: {len(e.issues)} error(s)", file=sys.stderr)
            status = 1
            continue
        print(f"{path}: OK ({len(policy.providers)} providers, {len(policy.models)} models, "
              f"{len(policy.tenants)} tenants)")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _policy_arg(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="warning", help="uvicorn's own log level")
    serve.add_argument("--graceful-timeout", type=float, default=30.0,
                       help="seconds to let running requests (long streams) finish on shutdown")
    serve.set_defaults(func=cmd_serve)

    policy = sub.add_parser("policy", help="policy tools").add_subparsers(dest="policy_cmd",
                                                                          required=True)
    check = policy.add_parser("check", help="validate policy files; non-zero on any error")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_policy_check)

    from gateway import cli_admin

    cli_admin.add_commands(sub, _policy_arg, _policy_path)

    args = parser.parse_args(argv)
    result = args.func(args)
    return int(asyncio.run(result) if asyncio.iscoroutine(result) else result)
