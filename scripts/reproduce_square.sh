#!/usr/bin/env bash
# The commands behind the square table in docs/results.md, in order. Each step is skipped when its output
# already exists, so an interrupted run continues where it stopped.
# Usage: bash scripts/reproduce_square.sh [RUN_DIR]   (default: runs/square)
# About 3 hours on a 2-core CPU run as it stands (one core per step); the world-model branch and
# the comparison's rollouts/baselines are independent until the final compare, which is how the
# run in docs/results.md took about 2 hours in two shells.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
R="${1:-$ROOT/runs/square}"
C="$ROOT/wmpo_core"
mkdir -p "$R"
cd "$R"
# Episodes are cut at 300 steps in training and evaluation (the task allows 400): the scripted
# demonstrator's successful demonstrations take 95-275 steps, and a failing 400-step episode
# costs a third more.
H=300

source "$ROOT/scripts/steps.sh"

# Base policy: 80 clean scripted demonstrations, behavior cloning (1000 steps).
step sq_base/package_step0001000 wmpo train-policy --recipe square_base --out sq_base
BASE=sq_base/package_step0001000
# Noisy scripted episodes (successes and failures) for the world and reward models.
step sq_noisy3 wmpo collect-sim --task square --episodes 60 --seed 5000 --noise 0.3 --steps-after-success 16 --out sq_noisy3

# Baselines on the budget: 128 base rollouts (16 start states x 8), DPO on their pairs, online GRPO
# with 128 simulator episodes; evaluated on 100 held-out start states (no WMPO row yet).
wmpo compare --task square --budget 128 --max-steps $H --base "$BASE" --work cmp_sq \
  --dpo-config "$C/rl/configs/lift_dpo.json" --grpo-sim-config "$C/rl/configs/lift_grpo_sim.json" \
  --episodes 100 --temperature 1.0 --json

# World model: frame autoencoder, pretraining on the scripted episodes, alignment on the rollouts.
step vae64 wmpo train-vae --episodes sq_base/demos sq_noisy3 --out vae64 --steps 400
step wm_sq wmpo train-world-model --episodes sq_base/demos sq_noisy3 --out wm_sq --vae vae64 \
  --config "$C/world_model/configs/sim64.json" --steps 3000
step wm_sq_aligned wmpo train-world-model --episodes cmp_sq/rollouts/episodes --init wm_sq --out wm_sq_aligned --steps 500
# Reward model on real episodes, threshold re-chosen on imagined replays of 64 episodes (run 4's recipe on
# lift), drawn from the rollouts and the noisy scripted ones: the rollouts alone may hold no success.
step reward_sq wmpo train-reward --episodes cmp_sq/rollouts/episodes sq_base/demos sq_noisy3 --out reward_sq \
  --config "$C/reward/configs/square.json" --min-frame 0
step reward_sq_cal wmpo calibrate-reward --model reward_sq --world-model wm_sq_aligned \
  --episodes cmp_sq/rollouts/episodes sq_noisy3 --max-episodes 64 --out reward_sq_cal
# GRPO in imagination from the real first frames of the rollouts and scripted episodes.
step wmpo_sq/policy wmpo grpo --policy "$BASE" --world-model wm_sq_aligned --reward reward_sq_cal \
  --episodes cmp_sq/rollouts/episodes sq_noisy3 --config "$C/rl/configs/square_wmpo.json" --budget 128 --out wmpo_sq

# The table: the baselines' evaluations are reused, WMPO's is added.
wmpo compare --task square --budget 128 --max-steps $H --base "$BASE" --work cmp_sq \
  --dpo cmp_sq/dpo/policy --grpo-sim cmp_sq/grpo-sim/policy --wmpo wmpo_sq/policy --episodes 100 --temperature 1.0 --jobs 2 --json
echo "done: see $R/cmp_sq/results.jsonl"
