#!/usr/bin/env bash
# Install the project (with dev and local-backend extras) into .venv and run the whole suite.
# Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (see docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
# torch is pinned in pyproject (CPU build); installing it first keeps pip from resolving CUDA.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e '.[dev,local]'
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$code"
