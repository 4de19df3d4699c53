#!/usr/bin/env bash
# Builds a separate virtual environment in which an exported LeRobotDataset is read back outside this
# stack's own libraries. Idempotent: a second run with unchanged pins only checks the stamp. Prints the
# env's python.
#
# Default: the light environment of scripts/check_lerobot_dataset.py (and the test
# tests/test_lerobot.py::test_export_loads_with_lerobots_libraries_in_a_separate_env): the pins of
# scripts/lerobot_check_requirements.txt, no torch, about 430 MB. scripts/test.sh builds it.
# Where: $WMPO_LEROBOT_CHECK_ENV, else ${XDG_CACHE_HOME:-~/.cache}/wmpo/lerobot-check-env.
#
# --full (opt-in, several GB; scripts/test.sh does not build it): the `lerobot` package itself, whose
# LeRobotDataset loads the export in
# tests/test_lerobot.py::test_export_loads_with_lerobots_own_loader_in_a_separate_env. Its dataset module
# imports torchvision, whose builds for a current torch are CUDA ones, so this environment holds the CUDA
# torch of scripts/lerobot_full_requirements.txt (it runs on a CPU) and its nvidia-* libraries; then
# lerobot==0.4.4 with --no-deps (its metadata asks for torch<2.11, which has no torchvision that imports
# beside a CPU torch here). Wheels are taken from the folders of $WMPO_LEROBOT_WHEELS (colon-separated;
# default: /opt/pypi-more/files and /opt/pypi/files where they exist) before the package index.
# Where: $WMPO_LEROBOT_FULL_ENV, else ${XDG_CACHE_HOME:-~/.cache}/wmpo/lerobot-full-env.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
FULL=0
case "${1:-}" in
  --full) FULL=1 ;;
  "") ;;
  *) echo "usage: $0 [--full]" >&2; exit 2 ;;
esac
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/wmpo"
if [[ $FULL == 1 ]]; then
  REQ="$ROOT/scripts/lerobot_full_requirements.txt"
  ENV_DIR="${WMPO_LEROBOT_FULL_ENV:-$CACHE/lerobot-full-env}"
  NAME=lerobot-full-env
else
  REQ="$ROOT/scripts/lerobot_check_requirements.txt"
  ENV_DIR="${WMPO_LEROBOT_CHECK_ENV:-$CACHE/lerobot-check-env}"
  NAME=lerobot-check-env
fi
LEROBOT=lerobot==0.4.4
log() { printf '\033[1m[%s]\033[0m %s\n' "$NAME" "$*" >&2; }

stamp="$ENV_DIR/.wmpo-check-env-$(cat "$REQ" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  echo "$ENV_DIR/bin/python"
  exit 0
fi
log "building $ENV_DIR"
# pip runs only as the new environment's own python, never through an activated environment.
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PIP_TARGET PIP_PREFIX PIP_USER
[[ -x "$ENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$ENV_DIR"
pip_install() {
  "$ENV_DIR/bin/python" -m pip --disable-pip-version-check -q install "$@" 2>&1 \
    | { grep -v -e "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
if [[ $FULL == 0 ]]; then
  pip_install -r "$REQ"
  # The point of this environment is its own libraries: it must not have picked up a torch.
  if "$ENV_DIR/bin/python" -c "import torch" 2>/dev/null; then
    log "torch found in $ENV_DIR: remove the folder and run again"
    exit 1
  fi
  "$ENV_DIR/bin/python" -c "import datasets, pandas, PIL" || { log "install check failed"; exit 1; }
else
  links=()
  IFS=: read -r -a dirs <<< "${WMPO_LEROBOT_WHEELS:-/opt/pypi-more/files:/opt/pypi/files}"
  for d in "${dirs[@]}"; do [[ -d "$d" ]] && links+=(--find-links "$d"); done
  pip_install "${links[@]}" -r "$REQ"
  pip_install --no-deps "$LEROBOT"
  "$ENV_DIR/bin/python" - <<'PY' || { log "install check failed"; exit 1; }
import torch
assert torch.zeros(1).add(1).item() == 1.0
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401
PY
  log "$(du -sh "$ENV_DIR" | cut -f1) in $ENV_DIR"
fi
rm -f "$ENV_DIR"/.wmpo-check-env-*
touch "$stamp"
log "ready"
echo "$ENV_DIR/bin/python"
