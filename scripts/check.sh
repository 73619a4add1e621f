#!/usr/bin/env bash
# Static checks that CI runs before the tests: lint, formatting, and types of the public API modules.
# Needs the development install (bash scripts/setup.sh). About 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
