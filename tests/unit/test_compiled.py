"""The modules `gateway/compiled.py` lists: compiled in an installed build, and deciding
exactly as their interpreted source does."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.compiled import BAKED, MODULES, is_compiled, source, stale, status
from gateway.routing import prefix_index

ROOT = Path(__file__).resolve().parents[2]
PURE = os.environ.get("GATEWAY_PURE") == "1"


def _interpreted(name: str) -> ModuleType:
    """`name` loaded from its `.py` under another name, beside the compiled one."""
    py = source(name)
    spec = importlib.util.spec_from_file_location(f"_interpreted_{py.stem}", py)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses and NamedTuples look their module up
    spec.loader.exec_module(mod)
    return mod


def test_listed_modules_run_compiled_unless_pure() -> None:
    # The install this suite runs on (scripts/test.sh: pip install -e .) built them; a
    # build that fell back to pure Python shows here, not as a silent slowdown.
    assert status() == {m: not PURE for m in MODULES}
    assert stale() == []


def test_an_edited_source_is_reported_stale() -> None:
    # What tests/conftest.py refuses to run on: a `.py` newer than its extension.
    name = "gateway.routing.prefix_heat"
    py, ext = source(name), sys.modules[name].__file__ or ""
    before = py.stat()
    try:
        os.utime(py, (before.st_atime, (Path(ext).stat().st_mtime if not PURE else 0) + 10))
        assert stale() == ([] if PURE else [name])
    finally:
        os.utime(py, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stale() == []


def test_an_edited_baked_module_makes_every_extension_stale() -> None:
    # The compiled modules read `EndpointLoad` as the named tuple it was when they were built.
    py = source(BAKED[0])
    newest = max(Path(sys.modules[m].__file__ or "").stat().st_mtime for m in MODULES)
    before = py.stat()
    try:
        os.utime(py, (before.st_atime, (newest if not PURE else 0) + 10))
        assert stale() == ([] if PURE else list(MODULES))
    finally:
        os.utime(py, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert stale() == []


def test_interpreted_copy_is_interpreted() -> None:
    assert not (_interpreted("gateway.routing.prefix_index").__file__ or "").endswith(".so")
    assert is_compiled("gateway.routing.prefix_index") is not PURE


def _scenario(*flags: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "tests.unit.compiled_scenario",
                          *flags], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)},
                         timeout=300)
    return out.stdout.split()


def test_compiled_and_interpreted_make_the_same_decisions() -> None:
    # 800 decisions of prefix-load over 16 endpoints, chat and RAG prompts, fixed and live
    # signals: fingerprints, token estimates and the whole order, digest against digest.
    native, source = _scenario(), _scenario("--interpreted")
    assert native[0] == ("interpreted" if PURE else "compiled")
    assert source[0] == "interpreted"
    assert native[1] == source[1]


_PY = _interpreted("gateway.routing.prefix_index")
_content = st.one_of(
    st.text(max_size=3000),
    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=800)}),
             max_size=3),
    st.none())
_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": _content}),
    max_size=6)


@settings(max_examples=150, deadline=None)
@given(messages=_messages, chunk=st.sampled_from([64, 256, 1024]),
       extra=st.dictionaries(st.sampled_from(["prompt", "input", "instructions"]),
                             st.text(max_size=500), max_size=2))
def test_fingerprints_agree(messages: list[dict[str, object]], chunk: int,
                            extra: dict[str, str]) -> None:
    for body in ({"messages": messages, **extra}, extra):
        assert (prefix_index.fingerprint_parts(body, chunk)
                == _PY.fingerprint_parts(body, chunk))
        cache, cache_py = prefix_index.Fingerprints(), _PY.Fingerprints()
        for _ in range(2):  # the second time through the message cache
            assert (prefix_index.fingerprint_parts(body, chunk, cache)
                    == _PY.fingerprint_parts(body, chunk, cache_py))


def _chain(steps: list[int]) -> list[int]:
    """A prompt's chained fingerprints: one per prefix (bijective base 5), as the real ones
    are, so prompts sharing a head share its fingerprints."""
    out, h = [], 0
    for c in steps:
        h = h * 5 + c + 1
        out.append(h)
    return out


@settings(max_examples=100, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.lists(st.integers(0, 3), max_size=12),
                              st.integers(1, 600)), max_size=40),
       capacity=st.integers(50, 5000))
def test_index_agrees(ops: list[tuple[int, list[int], int]], capacity: int) -> None:
    # The same records into both indexes (eviction included), then the same questions.
    native, source = prefix_index.PrefixIndex(capacity), _PY.PrefixIndex(capacity)
    names = [f"gpu-{i}" for i in range(6)]
    for ep, steps, tok in ops:
        fps = _chain(steps)
        tokens = [tok] * len(fps)
        native.record(names[ep], fps, tokens)
        source.record(names[ep], fps, tokens)
        for i in range(len(fps) + 1):
            assert (native.matched(fps[:i], tokens[:i], names)
                    == source.matched(fps[:i], tokens[:i], names))
    assert ([native.cached_tokens(n) for n in names]
            == [source.cached_tokens(n) for n in names])


def test_a_build_whose_shared_library_fails_installs_pure_python(tmp_path: Path) -> None:
    # Each listed module's extension is a shim importing one shared library: if that library
    # does not compile, no shim may be left behind to import it (setup.py, all or none).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("gateway", "local_backend"):
        shutil.copytree(ROOT / pkg, src / pkg,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    cc = tmp_path / "cc.sh"  # the compiler fails on the shared library only
    cc.write_text('#!/bin/sh\ncase "$*" in *__native_gateway_native*) exit 1;; esac\n'
                  'exec gcc "$@"\n')
    cc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_PURE"}
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                         env={**env, "CC": str(cc)}, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    assert "gateway_native__mypyc not compiled" in log
    assert "building 'gateway.routing.prefix_index' extension" in log  # the shims did build
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gateway/routing/prefix_index.py" in names
    assert [n for n in names if n.endswith(".so")] == []
