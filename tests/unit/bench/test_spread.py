"""bench.overhead.spread: medians and spread over every round of saved runs."""

from __future__ import annotations

import json
from pathlib import Path

from bench.overhead.spread import OTHERS, rounds, table


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
    assert "| gateway | CPU µs/req, c=64 | 3 | 200 | 190 – 210 | ±5 % | 1.99× bare-aiohttp |" \
        in out
    assert "| bare-aiohttp | CPU µs/req, c=64 | 4 | 100 | 98.0 – 102 | ±2 % | — |" in out
    # req/s before CPU in a row, others' CPU last and never as a ratio
    assert out.index("| gateway | req/s, c=64 |") < out.index("| gateway | CPU µs/req, c=64 |") \
        < out.index(f"| gateway | {OTHERS} | 3 | 10.0 | 10.0 – 11.0 | ±5 % | — |")
