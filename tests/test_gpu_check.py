"""scripts/gpu_check.sh: without CUDA it stops at once with a message saying so (exit 2, nothing on stdout);
its --device cpu rehearsal runs every step of the check end to end (prediction, GRPO LoRA steps with a ratio
of exactly 1, imagination and reward scoring, the policy node's inference loop over DDS)."""

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check itself runs here")
def test_without_cuda_the_check_says_so_and_runs_nothing():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no CUDA device here" in done.stderr and "Nothing was run" in done.stderr
    assert done.stdout == ""


def test_cpu_rehearsal_runs_every_step(tmp_path):
    out = tmp_path / "result.json"
    done = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--hidden", "128", "--layers", "1", "--batch", "4",
                           "--predictions", "2", "--horizon", "8", "--node-seconds", "3", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result == json.loads(done.stdout)
    assert result["failures"] == [] and result["chunk_shape"] == [8, 7]
    assert result["grpo_step"]["ratio_min"] == result["grpo_step"]["ratio_max"] == 1.0
    assert result["grpo_step_micro_checkpointed"]["micro_batch"] == 2
    assert result["lora"]["trainable_params"] > 0
    assert result["imagination"]["frames_shape"] == [4, 4 + 8, 64, 64, 3]  # c real frames, then 8 imagined
    assert result["reward_scoring"]["trajectories"] == 4
    node = result["policy_node"]  # the robot's policy node served the package over DDS
    assert node["chunks"] >= 2 and node["chunk_shape"] == [8, 7] and node["finite"], node
    assert node["latency_ms"]["median"] > 0
    for key in ("import_s", "load_s", "first_predict_s", "rollout_sample_s"):
        assert result[key] > 0, key
