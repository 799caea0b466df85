"""The README's and the quickstart's snippets run as written against `gateway serve` on the
embedded default policy (issue 8, item 20): the SDK code blocks are executed, only the port
changed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, GatewayProcess

BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def snippets(doc: Path, lang: str) -> list[str]:
    """The code blocks of `doc` that talk to the default address in open mode (the
    quickstart's later steps add tenants and keys: those are other tests' business)."""
    text = doc.read_text().split("\n## 3.", 1)[0]
    return [code for kind, code in BLOCK.findall(text)
            if kind == lang and "127.0.0.1:4000" in code]


@pytest.fixture(scope="module")
def default_gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    tmp = tmp_path_factory.mktemp("readme")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "LOCAL_MODEL")}
    gw = GatewayProcess((ROOT / "policies" / "default.yaml").read_text(), env=env, tmp=tmp)
    gw.env = env  # exactly the README's environment: no provider keys
    gw.start(timeout=180)
    yield gw
    gw.stop()


@pytest.mark.parametrize("doc", ["README.md", "docs/quickstart.md", "docs/responses.md"])
def test_python_snippets_run_as_written(default_gateway: GatewayProcess, doc: str) -> None:
    blocks = snippets(ROOT / doc, "python")
    assert blocks, f"{doc} has no Python snippet for the default address"
    for code in blocks:
        code = code.replace("http://127.0.0.1:4000", default_gateway.url)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"{doc} snippet failed:\n{code}\n{r.stderr}"
        assert r.stdout.strip(), code


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_curl_snippet_runs_as_written(default_gateway: GatewayProcess) -> None:
    (cmd, *_) = [c for c in snippets(ROOT / "README.md", "bash") if c.startswith("curl")]
    cmd = cmd.replace("http://127.0.0.1:4000", default_gateway.url)
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and '"chat.completion"' in r.stdout, r.stdout + r.stderr
