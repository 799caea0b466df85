"""`gateway serve | policy check | keys … | usage report …`."""

from __future__ import annotations

import argparse
import asyncio
import sys

DEFAULT_POLICY = "policies/default.yaml"


def _policy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None,
                   help=f"policy YAML (default: $GATEWAY_CONFIG or {DEFAULT_POLICY})")


def _policy_path(arg: str | None) -> str:
    import os

    return arg or os.environ.get("GATEWAY_CONFIG") or DEFAULT_POLICY


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {n})")
    return n


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.policy.load import PolicyError, load_policy
    from gateway.server import ListenError, listen, run_policy
    from gateway.workers import WorkerArgs, refusal, run_workers

    path = _policy_path(args.config)
    try:
        policy = load_policy(path)
    except PolicyError as e:
        print(e, file=sys.stderr)
        return 2
    refused = refusal(args.workers, policy)
    if refused:
        print(refused, file=sys.stderr)
        return 2
    host = args.host or policy.server.host
    port = args.port or policy.server.port
    try:
        # First: a busy port must fail before any local backend starts loading a model.
        sock = listen(host, port)
    except ListenError as e:
        print(e, file=sys.stderr)
        return 1
    if args.workers > 1:
        return run_workers(args.workers, sock, WorkerArgs(path, args.log_level,
                                                          args.graceful_timeout))
    return run_policy(policy, path, sock, log_level=args.log_level,
                      graceful_timeout_s=args.graceful_timeout)


def cmd_policy_check(args: argparse.Namespace) -> int:
    from gateway.policy.load import check_policy_file

    status = 0
    for path in args.files:
        check = check_policy_file(path)
        for issue in [*check.errors, *check.warnings]:
            print(issue.render(path), file=sys.stderr)
        # Warnings are printed but never fail the check: the policy still loads and serves.
        warned = f", {len(check.warnings)} warning(s)" if check.warnings else ""
        if check.policy is None:
            print(f"{path}: {len(check.errors)} error(s){warned}", file=sys.stderr)
            status = 1
            continue
        p = check.policy
        print(f"{path}: OK ({len(p.providers)} providers, {len(p.models)} models, "
              f"{len(p.tenants)} tenants){warned}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    _policy_arg(serve)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--log-level", default="warning", help="uvicorn's own log level")
    serve.add_argument("--workers", type=_positive, default=1,
                       help="processes serving the port, one per core (more than 1 needs "
                            "state.redis_url: docs/operations.md)")
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
    from gateway import cli_rollout

    cli_rollout.add_commands(sub, _policy_arg, _policy_path)

    args = parser.parse_args(argv)
    result = args.func(args)
    return int(asyncio.run(result) if asyncio.iscoroutine(result) else result)
