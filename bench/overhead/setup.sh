#!/usr/bin/env bash
# Install what the overhead benchmark needs, idempotently: nginx and wrk (Debian packages),
# py-spy (for --profile) in the project's .venv, and LiteLLM's proxy in its own virtual
# environment (bench/.venv-litellm), so its dependencies never touch the gateway's.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx wrk
fi
# Debian's package may start a system nginx on :80; the benchmark runs its own on a free port
# and never uses that one.

PY=${PYTHON:-.venv/bin/python}
"$PY" -m pip --version >/dev/null
"$PY" -c "import aiohttp, httpx, starlette, uvicorn, uvloop, yaml" \
    || { echo "the project's .venv is incomplete: .venv/bin/pip install -e '.[dev]'"; exit 1; }
[ -x .venv/bin/py-spy ] || "$PY" -m pip install -q py-spy

if [ "${BENCH_SKIP_LITELLM:-0}" != 1 ] && [ ! -x bench/.venv-litellm/bin/litellm ]; then
    # Pinned, so that a rerun compares against the same LiteLLM (docs/benchmarks.md's rows were
    # measured with 1.108.7); another release with LITELLM_SPEC='litellm[proxy]==X'.
    BASE=$("$PY" -c "import sys; print(getattr(sys, '_base_executable', sys.executable))")
    "$BASE" -m venv bench/.venv-litellm
    bench/.venv-litellm/bin/pip install -q "${LITELLM_SPEC:-litellm[proxy]==1.108.7}"
fi
echo "bench setup OK"
