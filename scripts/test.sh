#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, then the whole test suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest tests/ -q -ra --timeout=900 -p no:cacheprovider "$@"
