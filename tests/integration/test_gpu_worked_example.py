"""The worked example in docs/accounting.md ("GPU-hour billing", "Reports") comes out of the
code: this builds its ledger and lifetimes, runs the report and compares it with the page.

    .venv/bin/python -m tests.integration.test_gpu_worked_example   # print the outputs
"""

from __future__ import annotations

import re
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from gateway.accounting.gpu_billing import GpuPeriod
from gateway.accounting.gpu_periods import open_period_store
from gateway.accounting.ledger import open_ledger
from gateway.accounting.pricing import PriceBook, Rates
from gateway.accounting.records import AttemptRecord, RequestRecord
from gateway.accounting.reports import Report, render, run_report
from gateway.accounting.usage import Usage

DOC = Path(__file__).resolve().parents[2] / "docs" / "accounting.md"
DAY = date(2026, 3, 2)
MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)
COMMAND = "$ gateway usage report --from 2026-03-02 --to 2026-03-02"

# (tenant, model, deployment, requests, per request: input_uncached, cache_read, output)
TRAFFIC = [
    ("acme", "gpt-4o", "openai/gpt-4o", 6, 1200, 300, 250),
    ("globex", "gpt-4o", "openai/gpt-4o", 2, 1200, 300, 250),
    ("acme", "llama-3-8b", "gpu-a/llama", 10, 1100, 0, 400),
    ("globex", "llama-3-8b", "gpu-a/llama", 4, 900, 0, 350),
    ("acme", "llama-3-70b", "gpu-b/llama", 1, 800, 0, 200),
]


def hm(h: int, m: int = 0) -> datetime:
    return MIDNIGHT + timedelta(hours=h, minutes=m)


# What the gateways recorded in gpu_periods that day.
PERIODS = [
    # gpu-a: two replicas, one since the day before and still in force, one 08:00–20:00
    GpuPeriod("gpu-a/llama", "gpu-a", Decimal("2.10"), hm(-10), hm(33, 30), None, "p1", "r1"),
    GpuPeriod("gpu-a/llama", "gpu-a", Decimal("2.10"), hm(8), hm(20), None, "p2", "r2"),
    # gpu-b: added by a reload at 13:53, removed at 13:58
    GpuPeriod("gpu-b/llama", "gpu-b", Decimal(3), hm(13, 53), hm(13, 58), None, "p3", "r1"),
    # gpu-c: in force from the day before, drained (weight 0) at 04:00
    GpuPeriod("gpu-c/llama", "gpu-c", Decimal("1.50"), hm(-4), hm(4), None, "p4", "r1"),
]


def build(url: str) -> None:
    book = PriceBook.from_rates({"openai/gpt-4o": [Rates(
        Decimal("2.50"), Decimal("1.25"), Decimal("2.50"), Decimal(10), Decimal(10))]})
    records = []
    for tenant, model, dep, n, inp, cached, out in TRAFFIC:
        for i in range(n):
            usage = Usage(input_uncached=inp, cache_read=cached, output=out)
            records.append(book.price_record(RequestRecord(
                f"{tenant}-{model}-{i}", hm(10, i), tenant, f"k-{tenant}", model, "chat",
                False, 200, 120.0, attempts=[AttemptRecord(
                    dep, dep.split("/")[0], model, "ok", 200, usage, 100.0)])))
    ledger = open_ledger(url)
    ledger.connect()
    ledger.write(records)
    ledger.close()
    store = open_period_store(url)
    store.write(PERIODS)
    store.close()


def example(url: str) -> Report:
    build(url)
    return run_report(url, DAY, DAY, now=datetime(2026, 3, 5, tzinfo=UTC))


def documented(after: str) -> str:
    """The code block of docs/accounting.md that starts with the line ``after``, without it."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(), re.S):
        if block.startswith(after + "\n"):
            return block[len(after) + 1:]
    raise AssertionError(f"no code block starting with {after!r} in {DOC}")


def test_the_worked_example_is_what_the_report_prints(tmp_path: Path) -> None:
    r = example(f"sqlite:///{tmp_path}/ledger.db")
    assert documented(COMMAND) == render(r, "table")
    assert documented(COMMAND + " --format csv") == render(r, "csv")
    got = {(g.deployment, g.tenant): (g.hours, g.cost_usd) for g in r.gpu}
    assert got == {
        ("gpu-a/llama", "acme"): (Decimal(18), Decimal("37.8")),
        ("gpu-a/llama", "globex"): (Decimal(6), Decimal("12.6")),
        ("gpu-b/llama", "acme"): (Decimal("0.083333"), Decimal("0.25")),
        ("gpu-c/llama", "(unallocated)"): (Decimal(4), Decimal(6)),
    }
    assert r.gpu_hours == Decimal("28.083333") and r.gpu_cost_usd == Decimal("56.65")
    assert r.total_cost_usd == Decimal("56.697")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rep = example(f"sqlite:///{d}/ledger.db")
        sys.stdout.write(COMMAND + "\n" + render(rep, "table") + "\n")
        sys.stdout.write(COMMAND + " --format csv\n" + render(rep, "csv"))
