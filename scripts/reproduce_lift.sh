#!/usr/bin/env bash
# The commands behind the lift measurements in docs/results.md, in order. Each step is skipped when
# its output already exists, so an interrupted run continues where it stopped.
# Usage: bash scripts/reproduce_lift.sh [RUN_DIR]   (default: runs/lift)
# Takes about 8 hours on a 2-core CPU; docs/results.md names the step behind each number.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh"
R="${1:-$ROOT/runs/lift}"
C="$ROOT/wmpo_core"
mkdir -p "$R"
cd "$R"

source "$ROOT/scripts/steps.sh"

# Base policy: 80 clean scripted demonstrations, behavior cloning (600 steps).
step lift_base/package_step0000600 wmpo train-policy --recipe lift_base --out lift_base
BASE=lift_base/package_step0000600

# Scripted episodes with noise (successes and failures) for the world and reward models.
step lift_noisy   wmpo collect-sim --task lift --episodes 60 --seed 5000 --noise 0.3 --steps-after-success 16 --out lift_noisy
step lift_noisy5  wmpo collect-sim --task lift --episodes 80 --seed 6000 --noise 0.5 --steps-after-success 16 --out lift_noisy5
step lift_noisy10 wmpo collect-sim --task lift --episodes 80 --seed 7000 --noise 1.0 --steps-after-success 16 --out lift_noisy10

# Held-out episodes (start states no training run sees): base-policy rollouts and noisy scripted ones.
step heldout_rollouts wmpo collect-sim --task lift --episodes 48 --seed 105000 --policy "$BASE" --temperature 1.0 --out heldout_rollouts
step heldout_noisy    wmpo collect-sim --task lift --episodes 24 --seed 9000 --noise 0.3 --out heldout_noisy
mkdir -p heldout_all && ln -sf "$R"/heldout_rollouts/* "$R"/heldout_noisy/* heldout_all/

# Frame autoencoder and world-model pretraining (5000 steps of the 64 px recipe).
step vae64   wmpo train-vae --episodes lift_base/demos lift_noisy --out vae64 --steps 400
step wm_long wmpo train-world-model --episodes lift_base/demos lift_noisy --out wm_long --vae vae64 \
  --config "$C/world_model/configs/sim64.json" --steps 5000

# A second pretrained world model on every scripted episode (clean and noisy, 300), the one
# WMPO aligns and imagines in for the results table.
step wm_all wmpo train-world-model --episodes lift_base/demos lift_noisy lift_noisy5 lift_noisy10 --out wm_all \
  --vae vae64 --config "$C/world_model/configs/sim64.json" --steps 5000

# The results table: P = 128 base rollouts shared by DPO, world-model alignment and the
# reward model; online GRPO in the simulator limited to the same 128 episodes. compare
# reuses whatever a previous run of it finished (cmp_lift/results.jsonl has every row).
wmpo compare --task lift --budget 128 --base "$BASE" --work cmp_lift --world-model wm_all --align-steps 500 \
  --dpo-config "$C/rl/configs/lift_dpo.json" --grpo-sim-config "$C/rl/configs/lift_grpo_sim.json" \
  --wmpo-config "$C/rl/configs/lift_wmpo.json" --reward-config "$C/reward/configs/lift.json" \
  --demos lift_noisy lift_noisy5 lift_noisy10 --episodes 100 --temperature 1.0 --json

# World-model fidelity and its ablations on the held-out base rollouts (one command; it
# reuses the variants it already trained).
wmpo ablate-world-model --demos lift_base/demos lift_noisy \
  --rollouts cmp_lift/rollouts/episodes --heldout heldout_rollouts --out ablation --pretrained wm_long --align-steps 500

# Reward model on real episodes only, evaluated on held-out real episodes and on their
# imagined replays in the aligned world model.
step reward_real wmpo train-reward --episodes cmp_lift/rollouts/episodes lift_noisy lift_noisy5 --out reward_real \
  --config "$C/reward/configs/lift.json" --min-frame 0
step_json reward_real.heldout.json wmpo eval-reward --model reward_real --episodes heldout_all --world-model ablation/aligned --json

# The WMPO row of the table: the real-episode reward model with its threshold re-chosen on
# imagined replays of 64 of the budget's rollouts, GRPO in the world model compare aligned,
# the other rows reused from cmp_lift.
step reward_imagined wmpo calibrate-reward --model reward_real --world-model cmp_lift/world_model \
  --episodes cmp_lift/rollouts/episodes --max-episodes 64 --out reward_imagined
mkdir -p cmp_cal && for d in rollouts grpo-sim evaluations; do [ -e cmp_cal/$d ] || cp -r cmp_lift/$d cmp_cal/; done
wmpo compare --task lift --budget 128 --base "$BASE" --work cmp_cal --dpo cmp_lift/dpo/policy \
  --world-model cmp_lift/world_model --no-align --reward reward_imagined --demos lift_noisy lift_noisy5 lift_noisy10 \
  --wmpo-config "$C/rl/configs/lift_wmpo.json" --grpo-sim-config "$C/rl/configs/lift_grpo_sim.json" \
  --episodes 100 --temperature 1.0 --json
# Run 6 of the WMPO row: the same world model and reward, 8 groups of 8 imagined trajectories
# per iteration instead of 4 (lift_wmpo_g8.json).
mkdir -p cmp_g8 && for d in rollouts grpo-sim evaluations; do [ -e cmp_g8/$d ] || cp -r cmp_lift/$d cmp_g8/; done
wmpo compare --task lift --budget 128 --base "$BASE" --work cmp_g8 --dpo cmp_lift/dpo/policy \
  --world-model cmp_lift/world_model --no-align --reward reward_imagined --demos lift_noisy lift_noisy5 lift_noisy10 \
  --wmpo-config "$C/rl/configs/lift_wmpo_g8.json" --grpo-sim-config "$C/rl/configs/lift_grpo_sim.json" \
  --episodes 100 --temperature 1.0 --json

# Confirmation on 200 start states nothing has seen (seeds 910000-910199), paired across methods.
confirm() {  # confirm PACKAGE NAME
  step_json "confirm/$2.json" wmpo eval --policy "$1" --task lift --episodes 200 --seed 910000 --temperature 1.0 --json
}
confirm "$BASE" base
confirm cmp_lift/dpo/policy dpo
confirm cmp_lift/grpo-sim/policy grpo_sim
confirm "$(python -c 'import json; print(json.load(open("cmp_cal/wmpo/validation.json"))["selected"])')" wmpo_run4
confirm cmp_g8/wmpo/policy wmpo_g8

# Lifelong loop, 3 iterations from the base policy: each collects 32 rollouts with the current
# version, aligns the world model (from compare's) and retrains the reward model on everything
# so far (the 128 budget rollouts and the noisy scripted episodes included), GRPO for 4
# iterations, gates on 40 held-out states, pushes. Then every version on the table's 100 states.
mkdir -p loop_demos && for d in cmp_lift/rollouts/episodes lift_noisy lift_noisy5; do
  for e in "$R/$d"/*/; do ln -sfn "$e" "loop_demos/$(basename "$e")"; done; done
# The run aligned on --demos as well as the collections: the lift recipe with "align_on": "all".
python - loop_recipe.json <<'EOF'
import json, sys
from wmpo_core.pipeline.recipe import load_recipe  # resolves the recipe's config paths
recipe = load_recipe("lift", align_on="all").to_dict()
json.dump({k: v for k, v in recipe.items() if k not in ("task", "source")}, open(sys.argv[1], "w"), indent=2)
EOF
wmpo loop --iterations 3 --out loop --policy "$BASE" --collect-direct --episodes-per-iter 32 --demos loop_demos \
  --recipe loop_recipe.json --world-model cmp_lift/world_model --wm-steps 300 --reward-config "$C/reward/configs/lift.json" --reward-steps 1000 \
  --grpo-config "$C/rl/configs/lift_wmpo.json" --grpo-iterations 4 --gate-episodes 40 --gate-alpha 0.2 --temperature 1.0
wmpo loop-report --out loop --episodes 100
# The reward in imagination, threshold-free: AUC of the table's reward on real videos and on imagined
# replays, for the 128 budget rollouts (seen by the world model and the reward) and for the loop's
# 96 rollouts (seen by neither).
step_json auc_budget.json wmpo eval-reward --model reward_imagined --world-model cmp_lift/world_model --json \
  --episodes cmp_lift/rollouts/episodes
step_json auc_unseen.json wmpo eval-reward --model reward_imagined --world-model cmp_lift/world_model --json \
  --episodes loop/iter_000/collect/episodes loop/iter_001/collect/episodes loop/iter_002/collect/episodes
echo "done: see $R/cmp_cal/results.jsonl, $R/cmp_g8/results.jsonl, $R/confirm, $R/ablation/ablation.json, $R/reward_real.heldout.json, $R/loop/report"
