#!/usr/bin/env bash
# Create .venv when missing, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'
fi
.venv/bin/ruff check cnnctl tests scripts
.venv/bin/python -m pytest "$@"
