"""`gateway keys …` and `gateway usage report …`: admin commands that read the policy for the
database they work on."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from gateway.policy.models import Policy


def _load(path_fn: Callable[[str | None], str], arg: str | None) -> Policy:
    from gateway.policy.load import PolicyError, load_policy

    try:
        return load_policy(path_fn(arg))
    except PolicyError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


def add_commands(sub: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
                 path_fn: Callable[[str | None], str]) -> None:
    keys = sub.add_parser("keys", help="issue, list and revoke API keys").add_subparsers(
        dest="keys_cmd", required=True)

    create = keys.add_parser("create", help="issue a key (printed once, stored as a hash)")
    policy_arg(create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default=None)
    create.add_argument("--expires", default=None, help="ISO date or datetime")

    async def do_create(args: argparse.Namespace) -> int:
        from gateway.keys import open_key_store
        from gateway.policy.tenants import parse_expiry

        policy = _load(path_fn, args.config)
        if args.tenant not in policy.tenants:
            print(f"unknown tenant {args.tenant!r}; declared tenants: "
                  f"{', '.join(sorted(policy.tenants)) or 'none'}", file=sys.stderr)
            return 2
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            issued = await store.create(args.tenant, args.name,
                                        parse_expiry(args.expires) if args.expires else None)
        finally:
            await store.close()
        print(issued.key)
        print(f"key id {issued.record.id} for tenant {args.tenant}; the key is shown only once",
              file=sys.stderr)
        return 0

    create.set_defaults(func=do_create)

    lst = keys.add_parser("list", help="list keys (never the keys themselves)")
    policy_arg(lst)
    lst.add_argument("--tenant", default=None)

    async def do_list(args: argparse.Namespace) -> int:
        from gateway.keys import open_key_store

        policy = _load(path_fn, args.config)
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            for rec in await store.list(args.tenant):
                print(json.dumps(rec.public(), default=str))
        finally:
            await store.close()
        return 0

    lst.set_defaults(func=do_list)

    revoke = keys.add_parser("revoke", help="revoke a key by id (refused everywhere within 1 s)")
    policy_arg(revoke)
    revoke.add_argument("key_id")

    async def do_revoke(args: argparse.Namespace) -> int:
        from gateway.auth import key_channel, publish_key_change
        from gateway.errors import GatewayError
        from gateway.keys import open_key_store

        policy = _load(path_fn, args.config)
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            rec = await store.revoke(args.key_id)
        except GatewayError as e:
            print(e.message, file=sys.stderr)
            return 1
        finally:
            await store.close()
        if policy.state.redis_url:
            await publish_key_change(policy.state.redis_url, key_channel(policy.state.key_prefix),
                                     f"revoke:{rec.id}")
        print(f"revoked {rec.id} (tenant {rec.tenant})")
        return 0

    revoke.set_defaults(func=do_revoke)

    hsh = keys.add_parser("hash", help="print sha256:<hex> of a key, for policy files")
    hsh.add_argument("key")

    def do_hash(args: argparse.Namespace) -> int:
        from gateway.keys import hash_key

        print(hash_key(args.key))
        return 0

    hsh.set_defaults(func=do_hash)

    usage = sub.add_parser("usage", help="usage reports").add_subparsers(dest="usage_cmd",
                                                                         required=True)
    report = usage.add_parser("report", help="usage and cost from the ledger")
    policy_arg(report)
    from gateway.accounting.reports import add_arguments, run_from_args

    add_arguments(report)

    def do_report(args: argparse.Namespace) -> int:
        from gateway.accounting.ledger import LedgerUnavailable

        policy = _load(path_fn, args.config)
        if args.end < args.start:
            print(f"--to ({args.end}) is before --from ({args.start}); swap them",
                  file=sys.stderr)
            return 2
        try:
            text = run_from_args(args, policy)
        except LedgerUnavailable as e:
            # A message, not a traceback: the usual cause is a wrong ledger.url or a database
            # that is down.
            print(f"cannot read the ledger: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(text)
        return 0

    report.set_defaults(func=do_report)
