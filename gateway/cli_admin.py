"""`gateway keys …` and `gateway usage report|requests …`: admin commands that read the policy
for the database they work on.

They find the policy as `gateway serve` does (`--config`, else `$GATEWAY_CONFIG`, else the
default path), and every failure is one line on stderr with a non-zero exit, never a
traceback: 2 for a wrong argument or policy, 1 for a database that cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from gateway.policy.models import Policy


class _Exit(Exception):
    def __init__(self, message: str, status: int) -> None:
        self.message = message
        self.status = status


def _fail(message: str, status: int = 2) -> NoReturn:
    raise _Exit(" ".join(message.split()), status)  # one line, whatever the cause wrote


@dataclass(frozen=True, slots=True)
class _Source:
    """The policy a command read, and how it was found (said when a tenant is unknown)."""

    policy: Policy
    path: str
    found_by: str

    def unknown_tenant(self, tenant: str, names: list[str], where: str) -> NoReturn:
        from gateway.policy.checks import did_you_mean, known

        hint = did_you_mean(tenant, names) or "."
        _fail(f"unknown tenant {tenant!r}: not in {where}{hint} Known tenants: "
              f"{known(names)}. This read the policy {self.path} "
              f"({self.found_by}); pass --config FILE for the one the gateway serves.")


def _load(path_fn: Callable[[str | None], str], arg: str | None) -> _Source:
    from gateway.policy.load import PolicyError, load_policy

    path = path_fn(arg)
    found_by = ("--config" if arg else "$GATEWAY_CONFIG" if os.environ.get("GATEWAY_CONFIG")
                else "the default path")
    try:
        policy = load_policy(path)
    except PolicyError as e:
        if not Path(path).is_file():
            _fail(f"{e} (found by {found_by}); pass --config FILE or set GATEWAY_CONFIG to the "
                  "policy the gateway serves")
        raise _Exit(str(e), 2) from None  # every problem, one per line, as `policy check`
    return _Source(policy, str(Path(path).resolve()), found_by)


Command = Callable[[argparse.Namespace], Awaitable[int]]


def _run(fn: Command) -> Command:
    """Turn `_Exit` (and the key store's and ledger's own errors) into a message and a status."""
    async def run(args: argparse.Namespace) -> int:
        from gateway.accounting.ledger import LedgerUnavailable
        from gateway.errors import GatewayError

        try:
            return await fn(args)
        except _Exit as e:
            print(e.message, file=sys.stderr)
            return e.status
        except GatewayError as e:
            print(" ".join(e.message.split()), file=sys.stderr)
            return 1
        except LedgerUnavailable as e:
            # The usual cause is a wrong ledger.url or a database that is down.
            print(" ".join(f"cannot read the ledger: {e}".split()), file=sys.stderr)
            return 1
    return run


def _expiry(text: str | None) -> datetime | None:
    from gateway.policy.tenants import parse_expiry

    if text is None:
        return None
    try:
        until = parse_expiry(text)
    except ValueError as e:
        _fail(f"bad --expires: {e}")
    if until <= datetime.now(UTC):
        # The admin API accepts it (tests issue expired keys); by hand it is a mistake.
        _fail(f"--expires {text} is in the past (the key would expire at "
              f"{until:%Y-%m-%dT%H:%M:%SZ}); give a later date")
    return until


def add_commands(sub: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
                 path_fn: Callable[[str | None], str]) -> None:
    _add_keys(sub, policy_arg, path_fn)
    _add_usage(sub, policy_arg, path_fn)


def _add_keys(sub: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
              path_fn: Callable[[str | None], str]) -> None:
    keys = sub.add_parser("keys", help="issue, list and revoke API keys").add_subparsers(
        dest="keys_cmd", required=True)

    create = keys.add_parser("create", help="issue a key (printed once, stored as a hash)")
    policy_arg(create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", default=None)
    create.add_argument("--expires", default=None,
                        help="ISO date (valid through that UTC day) or datetime, not in the past")

    async def do_create(args: argparse.Namespace) -> int:
        from gateway.keys import open_key_store

        until = _expiry(args.expires)
        src = _load(path_fn, args.config)
        policy = src.policy
        if args.tenant not in policy.tenants:
            src.unknown_tenant(args.tenant, sorted(policy.tenants), "the policy")
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            issued = await store.create(args.tenant, args.name, until)
        finally:
            await store.close()
        print(issued.key)
        print(f"key id {issued.record.id} for tenant {args.tenant}; the key is shown only once",
              file=sys.stderr)
        return 0

    create.set_defaults(func=_run(do_create))

    lst = keys.add_parser("list", help="list keys (never the keys themselves)")
    policy_arg(lst)
    lst.add_argument("--tenant", default=None)

    async def do_list(args: argparse.Namespace) -> int:
        from gateway.keys import open_key_store

        src = _load(path_fn, args.config)
        policy = src.policy
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            records = await store.list(args.tenant)
            # A tenant removed from the policy still lists its old keys; a typo lists nothing
            # and says so.
            if args.tenant is not None and not records and args.tenant not in policy.tenants:
                everyone = {r.tenant for r in await store.list(None)}
                src.unknown_tenant(args.tenant, sorted(everyone | set(policy.tenants)),
                                   "the policy or the key database")
        finally:
            await store.close()
        for rec in records:
            print(json.dumps(rec.public(), default=str))
        return 0

    lst.set_defaults(func=_run(do_list))

    revoke = keys.add_parser("revoke", help="revoke a key by id (refused everywhere within 1 s)")
    policy_arg(revoke)
    revoke.add_argument("key_id")

    async def do_revoke(args: argparse.Namespace) -> int:
        from gateway.auth import key_channel, publish_key_change
        from gateway.keys import open_key_store

        policy = _load(path_fn, args.config).policy
        store = open_key_store(policy.ledger.url, schema=policy.ledger.schema_name)
        try:
            rec = await store.revoke(args.key_id)
        finally:
            await store.close()
        if policy.state.redis_url:
            await publish_key_change(policy.state.redis_url, key_channel(policy.state.key_prefix),
                                     f"revoke:{rec.id}")
        print(f"revoked {rec.id} (tenant {rec.tenant})")
        return 0

    revoke.set_defaults(func=_run(do_revoke))

    hsh = keys.add_parser("hash", help="print sha256:<hex> of a key, for policy files")
    hsh.add_argument("key")

    def do_hash(args: argparse.Namespace) -> int:
        from gateway.keys import hash_key

        print(hash_key(args.key))
        return 0

    hsh.set_defaults(func=do_hash)


def _add_usage(sub: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
               path_fn: Callable[[str | None], str]) -> None:
    from gateway.accounting.reports import add_arguments

    usage = sub.add_parser("usage", help="usage reports").add_subparsers(dest="usage_cmd",
                                                                         required=True)
    report = usage.add_parser("report", help="usage and cost from the ledger (default: this "
                                             "month to date)")
    policy_arg(report)
    add_arguments(report)

    async def do_report(args: argparse.Namespace) -> int:
        from gateway.accounting.known_tenants import UnknownTenant, check_tenant
        from gateway.accounting.reports import run_from_args

        src = _load(path_fn, args.config)
        # Month to date by default, as /v1/usage answers.
        today = datetime.now(UTC).date()
        args.start = args.start or today.replace(day=1)
        args.end = args.end or today
        if args.end < args.start:
            _fail(f"--to ({args.end}) is before --from ({args.start}); swap them")
        try:
            if args.tenant is not None:
                check_tenant(src.policy, args.tenant, args.ledger_url)
            text = run_from_args(args, src.policy)
        except UnknownTenant as e:
            src.unknown_tenant(e.tenant, e.known, "the policy or the ledger")
        except ValueError as e:  # a --ledger-url of no scheme the ledger knows
            _fail(str(e))
        sys.stdout.write(text)
        return 0

    report.set_defaults(func=_run(do_report))
    _add_requests(usage, policy_arg, path_fn)


def _arg_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type whose ValueError message is the one shown (not "invalid value")."""
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _add_requests(usage: Any, policy_arg: Callable[[argparse.ArgumentParser], None],
                  path_fn: Callable[[str | None], str]) -> None:
    from gateway.accounting.request_list import DEFAULT_LIMIT, MAX_LIMIT, parse_limit, parse_status

    p = usage.add_parser("requests", help="one line per request, newest first, with the "
                                          "client's x-request-id (default: this month to date)")
    policy_arg(p)
    p.add_argument("--from", dest="start", type=_arg_type(date.fromisoformat), default=None,
                   help="first UTC day, YYYY-MM-DD (default: the 1st of this month)")
    p.add_argument("--to", dest="end", type=_arg_type(date.fromisoformat), default=None,
                   help="last UTC day (inclusive), YYYY-MM-DD (default: today)")
    p.add_argument("--tenant", default=None, help="only this tenant")
    p.add_argument("--model", default=None, help="only this model (the name clients ask for)")
    p.add_argument("--status", type=_arg_type(parse_status), default=None,
                   help="an HTTP status (429), or 'error' for any status >= 400")
    p.add_argument("--key", dest="key_id", default=None,
                   help="only this key id (as `gateway keys list` shows it)")
    p.add_argument("--client-request-id", default=None,
                   help="only requests the client sent with this x-request-id")
    p.add_argument("--limit", type=_arg_type(parse_limit), default=DEFAULT_LIMIT,
                   help=f"at most this many, newest first (default {DEFAULT_LIMIT}, "
                        f"at most {MAX_LIMIT:,})")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--ledger-url", default=None, help="overrides the policy's ledger.url")

    async def do_requests(args: argparse.Namespace) -> int:
        from gateway.accounting.known_tenants import UnknownTenant, check_tenant
        from gateway.accounting.request_list import RequestQuery, run_listing
        from gateway.accounting.request_list_render import render

        src = _load(path_fn, args.config)
        policy = src.policy
        today = datetime.now(UTC).date()  # month to date by default, as `usage report`
        start, end = args.start or today.replace(day=1), args.end or today
        if end < start:
            _fail(f"--to ({end}) is before --from ({start}); swap them")
        url = args.ledger_url or policy.ledger.url
        try:
            if args.tenant is not None:
                check_tenant(policy, args.tenant, url)
            query = RequestQuery(start, end, tenant=args.tenant, model=args.model,
                                 status=args.status, key_id=args.key_id,
                                 client_request_id=args.client_request_id, limit=args.limit)
            listing = run_listing(url, query, schema=policy.ledger.schema_name)
        except UnknownTenant as e:
            src.unknown_tenant(e.tenant, e.known, "the policy or the ledger")
        except ValueError as e:  # a --ledger-url of no scheme the ledger knows
            _fail(str(e))
        sys.stdout.write(render(listing, args.format))
        return 0

    p.set_defaults(func=_run(do_requests))
