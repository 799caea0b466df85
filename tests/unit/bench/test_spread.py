"""bench.overhead.spread: medians and spread over every round of saved runs."""

from __future__ import annotations

import json
from pathlib import Path

from bench.overhead.spread import rounds, table


def _run(path: Path, cpu: dict[str, list[float]]) -> Path:
    results = {row: {"runs": {"b_throughput": [{"proxy_cpu_us_per_request": v} for v in vs]}}
               for row, vs in cpu.items()}
    path.write_text(json.dumps({"results": results}))
    return path


def test_rounds_of_several_files_pool_and_ratios_use_the_bare_row(tmp_path: Path) -> None:
    a = _run(tmp_path / "a.json", {"bare-aiohttp": [100, 102, 98], "gateway": [200, 210]})
    b = _run(tmp_path / "b.json", {"bare-aiohttp": [101], "gateway": [190]})
    data = rounds([a, b])
    assert data[("gateway", "b_throughput")] == [200, 210, 190]
    out = table(data)
    # 200 over the bare row's median of its four rounds, 100.5
    assert "| gateway | CPU µs/req, c=64 | 3 | 200 | 190 – 210 | ±5 % | 1.99× bare-aiohttp |" \
        in out
    assert "| bare-aiohttp | CPU µs/req, c=64 | 4 | 100 | 98.0 – 102 | ±2 % | — |" in out
