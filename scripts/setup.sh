#!/usr/bin/env bash
# Idempotent environment setup: creates .venv at the repo root with torch (CPU) first,
# then the project with the sim, ros and dev extras, plus the Debian GL libraries
# MuJoCo needs for offscreen rendering. A second run with nothing changed takes seconds.
# Source it (". scripts/setup.sh") or run it; it leaves .venv activated when sourced.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="${WMPO_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"

# Drop pip's noise about unreachable local index folders; pipefail keeps pip's exit status.
quiet_pip() { grep -v -e "^WARNING: Location" -e "BuildBackendWarning" || true; }
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# 1. GL libraries for MuJoCo offscreen rendering (EGL / OSMesa on Mesa llvmpipe), libusb for pyrealsense2.
missing=()
for pkg in libegl1 libgl1 libosmesa6 libusb-1.0-0; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} (MuJoCo offscreen rendering)"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing Debian packages ${missing[*]}; run: sudo apt-get install ${missing[*]}"
    exit 1
  fi
fi

# 2. The virtual environment, reinstalled only when a dependency file changed.
stamp_src=$(cat "$ROOT/pyproject.toml" "$ROOT/ros2_ws/src/wmpo_ros/setup.py" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16)
stamp="$VENV/.wmpo-setup-$stamp_src-torch$TORCH_VERSION"
if [[ -f "$stamp" ]]; then
  log "environment up to date ($VENV)"
else
  [[ -x "$VENV/bin/python" ]] || { log "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
  pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  # torch first: any other torch request pulls a multi-GB CUDA build.
  if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION (CPU)"
    "${pip[@]}" install "torch==$TORCH_VERSION" 2>&1 | quiet_pip
  fi
  log "installing wmpo[sim,ros,dev,kinematics,realsense,lerobot,lora] and wmpo_ros (editable)"
  "${pip[@]}" install -e "$ROOT[sim,ros,dev,kinematics,realsense,lerobot,lora]" -e "$ROOT/ros2_ws/src/wmpo_ros" 2>&1 | quiet_pip
  "$VENV/bin/python" -c "import torch, wmpo_core, wmpo_ros" || { log "install check failed"; exit 1; }
  rm -f "$VENV"/.wmpo-setup-*
  touch "$stamp"
  log "environment ready"
fi

# 3. Runtime environment shared by the demo, the tests and the CLI.
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-$MUJOCO_GL}"
# Keep DDS discovery on this machine unless the user asks otherwise.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
