#!/usr/bin/env bash
# Create .venv when missing, then lint and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
    .venv/bin/pip install -q -e '.[dev]'
fi
.venv/bin/ruff check cnnctl tests scripts
# Without arguments: everything but the few tests marked heavy (minutes each on 2 cores: exports of the deepest zoo
# networks); `scripts/test.sh -m heavy` runs those.
if [ $# -eq 0 ]; then set -- -m "not heavy"; fi
.venv/bin/python -m pytest "$@"
