#!/usr/bin/env bash
# The GPU check: an imported miniature OpenVLA-OFT package predicts on CUDA in bf16 and takes GRPO LoRA
# steps on CUDA; prints timings and peak GPU memory as JSON (scripts/gpu_check.py says what each step does).
#   bash scripts/gpu_check.sh [--device cuda:N] [--json result.json]
# Exit 0: done and every check held; 1: a check failed; 2: no CUDA device here (nothing ran).
# Uses the repository's .venv when there is one, else `python` on PATH (set PYTHON to choose another).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
cd "$ROOT"
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
