#!/usr/bin/env bash
# The README's main-job command: set up (idempotent), then train on the built-in default.
# Extra arguments go to `python -m omniopd.train` (e.g. --train.steps=8 or --config my.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m omniopd.train "$@"
