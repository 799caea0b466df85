"""bench.overhead.spread: medians and spread over every round of saved runs."""

from __future__ import annotations

import json
from pathlib import Path

from bench.overhead.spread import OTHERS, paired, rounds, table


def _run(path: Path, cpu: dict[str, list[float]]) -> Path:
    results = {row: {"runs": {"b_throughput": [
        {"proxy_cpu_us_per_request": v, "rps": 1e6 / v, "background_cpu_pct": 10.0 + i}
        for i, v in enumerate(vs)]}} for row, vs in cpu.items()}
    path.write_text(json.dumps({"results": results}))
    return path


def test_rounds_of_several_files_pool_and_ratios_use_the_bare_row(tmp_path: Path) -> None:
    a = _run(tmp_path / "a.json", {"bare-aiohttp": [100, 102, 98], "gateway": [200, 210]})
    b = _run(tmp_path / "b.json", {"bare-aiohttp": [101], "gateway": [190]})
    data = rounds([a, b])
    assert data[("gateway", "CPU µs/req, c=64")] == [200, 210, 190]
    assert data[("gateway", "req/s, c=64")] == [5000, 1e6 / 210, 1e6 / 190]
    assert data[("gateway", OTHERS)] == [10.0, 11.0, 10.0]
    out = table(data)
    # 200 over the bare row's median of its four rounds, 100.5
    assert "| gateway | CPU µs/req, c=64 | 3 | 200 | 190 – 210 | ±5 % | 1.99× bare-aiohttp | — |" \
        in out
    assert "| bare-aiohttp | CPU µs/req, c=64 | 4 | 100 | 98.0 – 102 | ±2 % | — | — |" in out
    # req/s before CPU in a row, others' CPU last and never as a ratio
    assert out.index("| gateway | req/s, c=64 |") < out.index("| gateway | CPU µs/req, c=64 |") \
        < out.index(f"| gateway | {OTHERS} | 3 | 10.0 | 10.0 – 11.0 | ±5 % | — | — |")


def test_paired_ratios_divide_each_round_by_the_same_round_of_the_reference(
        tmp_path: Path) -> None:
    # The host slowed down by half between the rounds; each round's ratio still reads 2.0.
    a = _run(tmp_path / "a.json", {"bare-aiohttp": [100, 200, 150], "gateway": [200, 400]})
    b = _run(tmp_path / "b.json", {"bare-aiohttp": [50], "gateway": [110]})
    pairs = paired([a, b])
    assert pairs[("gateway", "CPU µs/req, c=64")] == [2.0, 2.0, 2.2]
    assert pairs[("gateway", "req/s, c=64")] == [0.5, 0.5, 50 / 110]
    assert ("bare-aiohttp", "CPU µs/req, c=64") not in pairs  # never against itself
    out = table(rounds([a, b]), pairs=pairs)
    assert "| gateway | CPU µs/req, c=64 | 3 | 200 | 110 – 400 | ±72 % | 1.60× bare-aiohttp " \
        "| 2.00× (2.00–2.20) |" in out
    # another reference row, named
    assert paired([a], against="gateway")[("bare-aiohttp", "CPU µs/req, c=64")] == [0.5, 0.5]
