#!/usr/bin/env bash
# One command: set up the environment (fast when already set up) and run the test suite.
# Extra arguments go to pytest (e.g. -m slow, -k recorder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
cd "$ROOT"
# The separate environment in which tests/test_lerobot.py reads an exported LeRobotDataset (about 20 s once).
bash "$ROOT/scripts/make_lerobot_check_env.sh" >/dev/null
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "[test] pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit $rc
