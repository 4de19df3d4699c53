#!/usr/bin/env bash
# Builds the separate virtual environment in which scripts/check_lerobot_dataset.py (and the test
# tests/test_lerobot.py::test_export_loads_with_lerobots_libraries_in_a_separate_env) reads an
# exported LeRobotDataset: the pins of scripts/lerobot_check_requirements.txt, no torch.
# Idempotent: a second run with unchanged pins only checks the stamp. Prints the env's python.
# Where: $WMPO_LEROBOT_CHECK_ENV, else ${XDG_CACHE_HOME:-~/.cache}/wmpo/lerobot-check-env.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQ="$ROOT/scripts/lerobot_check_requirements.txt"
ENV_DIR="${WMPO_LEROBOT_CHECK_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/wmpo/lerobot-check-env}"
PYTHON="${PYTHON:-python3}"
log() { printf '\033[1m[lerobot-check-env]\033[0m %s\n' "$*" >&2; }

stamp="$ENV_DIR/.wmpo-check-env-$(cat "$REQ" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  echo "$ENV_DIR/bin/python"
  exit 0
fi
log "building $ENV_DIR"
[[ -x "$ENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip --disable-pip-version-check -q install -r "$REQ" 2>&1 \
  | { grep -v -e "^WARNING: Location" || true; }
# The point of this environment is its own libraries: it must not have picked up a torch.
if "$ENV_DIR/bin/python" -c "import torch" 2>/dev/null; then
  log "torch found in $ENV_DIR: remove the folder and run again"
  exit 1
fi
"$ENV_DIR/bin/python" -c "import datasets, pandas, PIL" || { log "install check failed"; exit 1; }
rm -f "$ENV_DIR"/.wmpo-check-env-*
touch "$stamp"
log "ready"
echo "$ENV_DIR/bin/python"
