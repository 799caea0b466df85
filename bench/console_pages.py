"""Console page latency over a large ledger: a month of 100 tenants × 20 models, 1,000,000
requests (docs/benchmarks.md, "Console pages").

    .venv/bin/python bench/console_pages.py                    # 1M records, 5 rounds per page
    .venv/bin/python bench/console_pages.py --records 100000   # a quicker look
    .venv/bin/python bench/console_pages.py --postgres postgresql://postgres@127.0.0.1:5432/test

The ledger (SQLite, the embedded default) is built once through the ledger's own `write` —
records, attempts and daily rollups in the same transactions as in production — and kept in
`bench/results/` for the next run; `--postgres URL` bulk-copies that file into a schema of
its own (COPY, kept for the next run too) and reads it there. Each page is then fetched
through the real app (its lifespan, the console's session check, the templates) with
Starlette's test client: the time is the whole request, database reads and HTML rendering
included, not the browser's drawing. Each row also gives the process CPU time of the
request (both threads: the client's and the app's), steadier than wall time under load.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from gateway.accounting.ledger import open_ledger
from gateway.accounting.pricing import PriceBook, Rates
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.usage import Usage
from gateway.keys import hash_key

RESULTS = Path(__file__).resolve().parent / "results"
# Bumped when the generated records change, so a cached ledger of older records is rebuilt.
LEDGER_VERSION = "v2"
TENANTS = [f"t{i:03d}" for i in range(100)]
MODELS = [f"m{i:02d}" for i in range(20)]
MONTH = datetime(2026, 11, 1, tzinfo=UTC)  # November: 30 days
DAYS = 30
ADMIN = "bench-admin-key-0123456789"
RATES = Rates(Decimal("2.5"), Decimal("1.25"), Decimal("2.5"), Decimal(10), Decimal(10))


def build_ledger(url: str, schema: str | None, n: int, seed: int = 1) -> None:
    book = PriceBook.from_rates({f"p/{m}": [RATES] for m in MODELS})
    ledger = open_ledger(url, schema)
    ledger.connect()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    batch: list[RequestRecord] = []
    for i in range(n):
        tenant, model = rng.choice(TENANTS), rng.choice(MODELS)
        rec = RequestRecord(
            f"bench-{i:08d}", MONTH + timedelta(seconds=rng.randint(0, DAYS * 86400 - 1)),
            tenant, f"key-{tenant}", model, "chat", rng.random() < 0.5, 200,
            rng.random() * 1000, 50.0)
        usage = Usage(rng.randint(10, 4000), rng.randint(0, 500), 0, rng.randint(1, 800), 0)
        # One in fifty answered by the response cache: its rollups carry hits and savings.
        hit = rng.random() < 0.02
        rec.attempts.append(AttemptRecord(f"p/{model}", "cache" if hit else "p", model,
                                          "cache_hit" if hit else "ok", 200, usage, 100.0))
        batch.append(book.price_record(rec))
        if len(batch) == 5000:
            ledger.write(batch)
            batch = []
            if (i + 1) % 100_000 == 0:
                print(f"  {i + 1:,} records, {time.perf_counter() - t0:.0f} s", flush=True)
    if batch:
        ledger.write(batch)
    ledger.close()


def policy_text(url: str, schema: str | None, tmp: Path) -> str:
    return yaml.safe_dump({
        "server": {"admin_key": ADMIN},
        "ledger": {"url": url, "schema": schema, "spill_path": str(tmp / "spill.jsonl"),
                   "journal": False},
        "providers": {"p": {"kind": "openai-compatible", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {m: {"deployments": [{"provider": "p", "model": m}]} for m in MODELS},
        "tenants": {t: {"keys": [{"id": f"key-{t}", "hash": hash_key(f"gw-bench-{t}-key")}],
                        "budget": {"monthly_usd": "1000"}} for t in TENANTS},
    })


PAGES = {
    "spend, all tenants, by tenant": "/ui/spend?from=2026-11-01&to=2026-11-30&by=tenant",
    "spend, all tenants, by model": "/ui/spend?from=2026-11-01&to=2026-11-30&by=model",
    "spend CSV (2,000 rows)": "/ui/spend.csv?from=2026-11-01&to=2026-11-30",
    "tenant page": "/ui/tenants/t042?from=2026-11-01&to=2026-11-30",
    "requests explorer (newest 100)": "/ui/requests?from=2026-11-01&to=2026-11-30",
    "requests, one tenant + model": "/ui/requests?from=2026-11-01&to=2026-11-30&tenant=t042"
                                    "&model=m07",
    "keys (100, last used)": "/ui/keys",
    "budgets and limits": "/ui/limits",
    "deployments": "/ui/deployments",
}


def calibration_ms() -> float:
    """A fixed pure-Python loop (a million additions): how loaded the machine was while the
    pages were timed, to compare runs made under different loads."""
    t0 = time.perf_counter()
    total = 0
    for i in range(1_000_000):
        total += i % 7
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--postgres", metavar="URL", default=None,
                    help="build and read the ledger in PostgreSQL (schema console_bench_N) "
                         "instead of a SQLite file")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"console-ledger-{LEDGER_VERSION}-{args.records}.db"
    url, schema = f"sqlite:///{path}", None
    if not path.exists():
        print(f"building {path} ({args.records:,} records)…", flush=True)
        part = path.with_suffix(".part")
        part.unlink(missing_ok=True)
        build_ledger(f"sqlite:///{part}", None, args.records)
        part.rename(path)
    if args.postgres:
        url, schema = args.postgres, f"console_bench_{LEDGER_VERSION}_{args.records}"
        if not _pg_has_ledger(url, schema):
            print(f"copying {path.name} into PostgreSQL schema {schema}…", flush=True)
            copy_to_postgres(path, url, schema)
            _pg_mark(url, schema)
    from starlette.testclient import TestClient

    from gateway.app import build_app
    from gateway.policy.load import parse_policy

    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    policy = parse_policy(policy_text(url, schema, tmp), str(tmp / "policy.yaml"), {})
    with TestClient(build_app(policy), base_url="http://127.0.0.1") as client:
        form = client.get("/ui/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        r = client.post("/ui/login", data={"key": ADMIN, "csrf": token.group(1)},
                        follow_redirects=False)
        assert r.status_code == 303, r.text
        print(f"\n{args.records:,} records in {url.split(':')[0]}, {len(TENANTS)} tenants × "
              f"{len(MODELS)} models, {DAYS} days; {args.rounds} rounds per page after one "
              "warm-up\n")
        print(f"calibration loop before: {calibration_ms():.0f} ms")
        print("| page | median ms | max ms | median CPU ms | bytes |\n"
              "| --- | --- | --- | --- | --- |")
        for name, path in PAGES.items():
            assert client.get(path).status_code == 200, path  # warm-up (imports, caches)
            times, cpu = [], []
            for _ in range(args.rounds):
                t0, c0 = time.perf_counter(), time.process_time()
                r = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
                assert r.status_code == 200, (path, r.status_code)
            print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | "
                  f"{statistics.median(cpu):.0f} | {len(r.content):,} |", flush=True)
        print(f"\ncalibration loop after: {calibration_ms():.0f} ms")


def copy_to_postgres(path: Path, url: str, schema: str) -> None:
    """The SQLite ledger's rows, rollups included, into a PostgreSQL schema with COPY (a bulk
    load: about a minute for 1M records, against several through `Ledger.write`); both
    benchmarks then read the same records."""
    import sqlite3

    import psycopg
    from psycopg import sql

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    ledger = open_ledger(url, schema)  # the tables, indexes and added columns, as a gateway
    ledger.connect()
    ledger.close()
    lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        for table in ("requests", "attempts", "rollups_daily"):
            have = {r[1] for r in lite.execute(f"PRAGMA table_info({table})")}
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s ORDER BY ordinal_position", (schema, table)) if r[0] in have]
            names = sql.SQL(", ").join(map(sql.Identifier, cols))
            with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                    sql.Identifier(table), names)) as copy:
                for row in lite.execute(f"SELECT {', '.join(cols)} FROM {table}"):
                    copy.write_row(row)
            print(f"  {table}: {time.perf_counter() - t0:.0f} s", flush=True)
    lite.close()


def _pg_has_ledger(url: str, schema: str) -> bool:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT obj_description(oid) FROM pg_namespace WHERE nspname = %s",
                           (schema,)).fetchone()
        return bool(row and row[0] == "complete")


def _pg_mark(url: str, schema: str) -> None:
    """Mark the schema complete (a build killed halfway is rebuilt), and ANALYZE it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("ANALYZE")
        conn.execute(sql.SQL("COMMENT ON SCHEMA {} IS 'complete'").format(
            sql.Identifier(schema)))


if __name__ == "__main__":
    main()
