#!/usr/bin/env bash
# One command: set up the environment (fast when already set up) and run the main job,
# the simulated robot loop. Extra arguments go to `wmpo demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec wmpo demo "$@"
