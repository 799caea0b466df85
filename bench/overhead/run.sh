#!/usr/bin/env bash
# The one command: set up (idempotent), then run the whole comparison. Arguments go to
# `python -m bench.overhead` (e.g. --quick, --targets direct,bare-aiohttp,gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash bench/overhead/setup.sh
exec "${PYTHON:-.venv/bin/python}" -m bench.overhead "$@"
