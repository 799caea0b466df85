"""Ledger throughput and report latency.

    .venv/bin/python bench/ledger_bench.py                      # SQLite + PostgreSQL, 50k each
    .venv/bin/python bench/ledger_bench.py --records 200000 --backends sqlite
    .venv/bin/python bench/ledger_bench.py --report-records 1000000   # report over 1M records
    .venv/bin/python bench/ledger_bench.py --instructions [--src DIR]  # per record, callgrind

Throughput is measured through the real path: ``LedgerWriter.record()`` from the caller's
thread, the writer thread batching (policy defaults: 500 / 0.2 s) and committing, until
``flush()`` returns with everything stored. Records are built before the clock starts.
PostgreSQL gets a fresh schema, dropped afterwards.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent.parent))  # after PYTHONPATH: --src

from gateway.accounting.ledger import open_ledger
from gateway.accounting.pricing import PriceBook, Rates
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.reports import render, run_report
from gateway.accounting.usage import Usage
from gateway.accounting.writer import LedgerWriter

PG_URL = os.environ.get("GATEWAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DEPLOYMENTS = [("oa/gpt-4o", "oa"), ("az/gpt-4o", "az"), ("gpu/llama", "gpu")]
BOOK = PriceBook.from_rates({
    "oa/gpt-4o": [Rates(Decimal("2.5"), Decimal("1.25"), Decimal("2.5"), Decimal(10),
                        Decimal(10))],
    "az/gpt-4o": [Rates(Decimal("2.75"), Decimal("1.375"), Decimal("2.75"), Decimal(11),
                        Decimal(11))],
})


def records(n: int, days: int = 30, seed: int = 1) -> list[RequestRecord]:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    run = uuid.uuid4().hex[:8]
    out = []
    for i in range(n):
        tenant = f"tenant-{rng.randint(0, 49)}"
        rec = RequestRecord(
            f"{run}-{i}", start + timedelta(seconds=rng.randint(0, days * 86400 - 1)), tenant,
            f"key-{tenant}", rng.choice(["gpt", "llama", "mini"]), "chat", True, 200,
            rng.random() * 1000, 50.0)
        tries = 1 if rng.random() < 0.9 else 2
        for t in range(tries):
            dep, prov = rng.choice(DEPLOYMENTS)
            ok = t == tries - 1
            usage = Usage(rng.randint(10, 4000), rng.randint(0, 1000), 0, rng.randint(1, 800),
                          0) if ok else None
            rec.attempts.append(AttemptRecord(dep, prov, dep.split("/")[1],
                                              "ok" if ok else "error", 200 if ok else 503,
                                              usage, 100.0))
        out.append(BOOK.price_record(rec))
    return out


def throughput(url: str, schema: str | None, recs: list[RequestRecord], spill: Path) -> None:
    w = LedgerWriter(open_ledger(url, schema), spill)
    w.start()
    assert w.flush(60)  # connected, tables created: not part of the measurement
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    for r in recs:
        w.record(r)
    t_enqueue = time.perf_counter() - t0
    assert w.flush(600)
    elapsed = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    w.close()
    assert w.stats.written == len(recs), w.stats
    # CPU per record (every thread of this process: the writer and the caller) is what the
    # writer takes from the gateway's core; records/s also moves with the machine's load.
    print(f"  {len(recs):>8} records  {elapsed:7.2f} s  {len(recs) / elapsed:>9,.0f} records/s"
          f"  {cpu / len(recs) * 1e6:6.1f} µs CPU/record"
          f"  (record() {t_enqueue / len(recs) * 1e6:.2f} µs each, {w.stats.batches} batches)")


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(PG_URL, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def report_latency(url: str, schema: str | None, n: int, tmp: Path) -> None:
    print(f"report over {n:,} records ({url.split(':')[0]}):")
    recs = records(n, days=90, seed=2)
    ledger = open_ledger(url, schema)
    ledger.connect()
    t0 = time.perf_counter()
    for i in range(0, n, 5000):
        ledger.write(recs[i : i + 5000])
    print(f"  loaded in {time.perf_counter() - t0:.1f} s")
    ledger.close()
    del recs
    for group_by in (("tenant", "model"), ("day", "tenant", "model", "provider"), ()):
        t0 = time.perf_counter()
        r = run_report(url, date(2026, 1, 1), date(2026, 3, 31), schema=schema,
                       group_by=group_by)
        render(r, "csv")
        print(f"  group by {','.join(group_by) or '(none)':<28} {len(r.rows):>6} rows"
              f"  {time.perf_counter() - t0:6.3f} s  requests={r.totals.requests:,}"
              f"  cost={r.totals.cost_usd}")


def _write_now(n: int, total: int) -> None:
    """`--write-now`: write the first `n` of `total` records stamped now (as the gateway
    writes them: one day, times in order) straight into a fresh SQLite ledger, in batches."""
    recs = records(total)
    now = datetime.now(UTC)
    for r in recs:
        r.ts = now
    # The collector as `gateway serve` sets it up (server.py): what it scans is the
    # gateway's, not this script's.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 50)
    ledger = open_ledger(f"sqlite:///{tempfile.mkdtemp(prefix='ledger-ir-')}/bench.db")
    ledger.connect()
    for i in range(0, n, 500):
        ledger.write(recs[i : i + 500])


def instructions(src: str | None) -> None:
    """Instructions per SQLite record written, under callgrind: two runs that build the same
    6,000 records and write 1,000 or all of them; the difference over 5,000 records is the
    write path alone (rows, conversion, SQLite, commits), unmoved by the machine's load."""
    exe = shutil.which("valgrind")
    if exe is None:
        sys.exit("valgrind is missing: apt-get install -y valgrind")
    tmp = Path(tempfile.mkdtemp(prefix="ledger-ir-"))
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    totals = []
    for n in (1000, 6000):
        out = tmp / f"cg.{n}"
        subprocess.run([exe, "--tool=callgrind", f"--callgrind-out-file={out}", "-q",
                        sys.executable, __file__, "--write-now", str(n)], env=env, check=True)
        line = next(x for x in out.read_text().splitlines()
                    if x.startswith(("summary:", "totals:")))
        totals.append(int(line.split()[1]))
    print(f"sqlite, records stamped now: {(totals[1] - totals[0]) / 5000:,.0f} "
          f"instructions per record written ({src or 'this tree'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--instructions", action="store_true",
                    help="instructions per SQLite record written, under callgrind")
    ap.add_argument("--src", help="with --instructions: a directory holding a modified "
                    "copy of gateway/ to measure instead")
    ap.add_argument("--write-now", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--report-records", type=int, default=0,
                    help="also time reports over a ledger of this many records")
    args = ap.parse_args()
    if args.write_now is not None:
        _write_now(args.write_now, 6000)
        return
    if args.instructions:
        instructions(args.src)
        return
    backends = args.backends.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="ledger-bench-"))
    recs = records(args.records)
    print(f"ledger write throughput (batch 500, flush 0.2 s), {os.cpu_count()} CPUs:")
    if "sqlite" in backends:
        print(" sqlite (WAL, synchronous=NORMAL):")
        throughput(f"sqlite:///{tmp}/bench.db", None, recs, tmp / "spill-sqlite.jsonl")
    if "postgres" in backends:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        print(" postgresql:")
        try:
            throughput(PG_URL, schema, recs, tmp / "spill-pg.jsonl")
        finally:
            drop_schema(schema)
    if args.report_records:
        if "sqlite" in backends:
            report_latency(f"sqlite:///{tmp}/report.db", None, args.report_records, tmp)
        if "postgres" in backends:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            try:
                report_latency(PG_URL, schema, args.report_records, tmp)
            finally:
                drop_schema(schema)


if __name__ == "__main__":
    main()
