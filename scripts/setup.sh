#!/usr/bin/env bash
# Creates .venv in the repository root and installs the toolkit with its test tools.
# Idempotent: a second run only checks what is there. Needs Python >= 3.11 and the PyPI registry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch + torchvision first, as a matching pair (timm needs torchvision). On x86_64 these wheels come from the
# machine's local package cache here; elsewhere pip fetches them from PyPI.
if ! python -c "import torch, torchvision" 2>/dev/null; then
  case "$(uname -m)" in
    aarch64|arm64) python -m pip install -q "torch==2.9.1" "torchvision==0.24.1" ;;
    *) python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" ;;
  esac
fi
python -m pip install -q -e ".[dev]"
python -c "import chammi_data, chammi_models, pipelines; print('chammi toolkit installed in .venv')"
