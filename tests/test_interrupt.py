"""Ctrl-C on every long-running `wmpo` command: a prompt exit 130, one line, no process left, work kept.

Each command runs for real in its own process group, as a terminal's foreground job; once it is
demonstrably mid-work (a checkpoint, an episode, a progress line) SIGINT goes to the whole group,
which is what Ctrl-C does. Then: exit code 130 within a bound, a single "interrupted" line on
stderr and no traceback, no process of the group (nor any process it started in a session of its
own, such as `wmpo up`'s nodes) still alive, and what it wrote is intact: a rerun of the same
command continues from it (checkpoints, finished episodes, finished stages).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from wmpo_core.cli import main as wmpo

WMPO = [sys.executable, "-m", "wmpo_core.cli"]
STOP_S = 30.0  # a loaded 2-core machine: a training step, a checkpoint and interpreter shutdown
READY_S = 300.0
TINY_WM = {
    "steps": 100000, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 2, "num_inference_steps": 2,
    "vae_steps": 2, "vae_batch_size": 4, "tiny_vae": {"block_out_channels": [8, 8, 16]},
    "transformer": {"patch_size": 2, "hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
                    "context_frames": 2, "chunk_size": 8},
}
TINY_REWARD = {"steps": 100000, "batch_size": 4, "lr": 1e-3, "val_fraction": 0.5, "score_stride": 4,
               "model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64}}
TINY_GRPO = {"iterations": 100000, "groups_per_batch": 1, "starts_per_round": 2, "max_sampling_rounds": 1,
             "horizon": 8, "checkpoint_every": 1, "grpo": {"group_size": 2, "minibatch_size": 4}}


# ------------------------------------------------------------------------------------ processes
def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(parent pid, process group, state, start time) of ``pid`` from /proc, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[2]), fields[0], int(fields[19])


def _all_processes() -> dict[int, tuple[int, int, str, int]]:
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = st
    return table


def _descendants(pid: int) -> set[tuple[int, int]]:
    """(pid, start time) of every live descendant of ``pid``, sessions of their own included."""
    table = _all_processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, state, start) in table.items():
            if ppid == parent and state != "Z":
                found.add((child, start))
                todo.append(child)
    return found


def _left_alive(pgid: int, seen: set[tuple[int, int]]) -> list[int]:
    """Processes of group ``pgid``, and processes of ``seen`` (same start time), that are not gone."""
    left = []
    for pid, (_, group, state, start) in _all_processes().items():
        if state == "Z":
            continue  # exited; only its parent's wait is missing
        if group == pgid or (pid, start) in seen:
            left.append(pid)
    return left


@dataclass
class Interrupted:
    returncode: int
    stdout: str
    stderr: str
    seconds: float  # from SIGINT to exit


def interrupt(cmd: list[str], ready: Callable[[], bool], tmp_path: Path, *, env: dict[str, str] | None = None,
              stop_s: float = STOP_S, name: str = "run") -> Interrupted:
    """Start ``cmd`` as a foreground job (its own process group), Ctrl-C it once ``ready()``, check nothing is left."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    with open(out, "w") as o, open(err, "w") as e:
        # A terminal's foreground job gets SIGINT's default disposition even when this suite runs as a background
        # job of a script (`cmd &`: SIGINT inherited as ignored, and Python then installs no KeyboardInterrupt).
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: set[tuple[int, int]] = set()
    try:
        deadline = time.monotonic() + READY_S
        while not ready():
            assert proc.poll() is None, f"exited {proc.returncode} before it was ready:\n{err.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within {READY_S:.0f} s:\n{err.read_text()[-3000:]}"
            seen |= _descendants(proc.pid)
            time.sleep(0.1)
        seen |= _descendants(proc.pid)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        try:
            proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {stop_s:.0f} s after Ctrl-C:\n{err.read_text()[-3000:]}")
        seconds = time.monotonic() - t0
        # Children may take a moment more than their parent to exit after its last wait (none should).
        deadline = time.monotonic() + 5.0
        while (left := _left_alive(proc.pid, seen)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes left after Ctrl-C: {left} ({len(seen)} started)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid, _ in seen:
            if _stat(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return Interrupted(proc.returncode, out.read_text(), err.read_text(), seconds)


def assert_clean_interrupt(result: Interrupted, stop_s: float = STOP_S) -> None:
    """Exit 130 within ``stop_s``, one "interrupted" line as stderr's last line, no traceback."""
    err = result.stderr
    assert result.returncode == 130, f"exit code {result.returncode}:\n{err[-3000:]}"
    assert result.seconds < stop_s
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in re.split(r"[\r\n]+", err) if line.strip()]
    assert lines and "interrupted" in lines[-1], err[-3000:]
    assert sum("interrupted" in line for line in lines) == 1, err[-3000:]


def _tqdm_step(stream: Path, desc: str) -> int:
    """The last step count a tqdm bar ``desc`` printed to ``stream`` (0 before any)."""
    if not stream.is_file():
        return 0
    counts = re.findall(re.escape(desc) + r":[^|\r\n]*\|[^|\r\n]*\|\s*(\d+)/", stream.read_text(errors="replace"))
    return int(counts[-1]) if counts else 0


def _checkpoints(folder: Path, pattern: str = "step-*", state: str = "state.json") -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if (p / state).is_file()) if folder.is_dir() else []


def _step_of(checkpoint: Path) -> int:
    return int(re.sub(r"\D", "", checkpoint.name))


# ------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Synthetic episode bags (a square moved by the actions), half of them successes, and tiny configs."""
    from wmpo_core.world_model.synthetic import moving_square_episode, write_episode_bag

    root = tmp_path_factory.mktemp("interrupt")
    for seed in range(6):
        write_episode_bag(root / "episodes", moving_square_episode(24, seed, 64, success=seed % 2 == 0))
    for name, cfg in (("wm", TINY_WM), ("reward", TINY_REWARD), ("grpo", TINY_GRPO)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    return root


def _with(data: Path, name: str, **changes) -> str:
    """A copy of the tiny config ``name`` with ``changes``."""
    cfg = json.loads((data / f"{name}.json").read_text()) | changes
    path = data / f"{name}-{abs(hash(json.dumps(changes, sort_keys=True)))}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.sim
def test_collect_sim_keeps_finished_episodes(tmp_path: Path) -> None:
    from wmpo_core.data.episodes import EpisodeError, list_episodes

    out = tmp_path / "episodes"

    def finished() -> list[Path]:
        return sorted(p for p in out.glob("*/metadata.yaml")) if out.is_dir() else []

    cmd = WMPO + ["collect-sim", "--task", "lift", "--episodes", "200", "--out", str(out), "--max-steps", "16",
                  "--no-progress"]
    result = interrupt(cmd, lambda: len(finished()) >= 1, tmp_path)
    assert_clean_interrupt(result)
    kept = list_episodes(out)
    assert kept and not [e for e in kept if isinstance(e, EpisodeError)], kept  # no half-written bag
    assert all(e.status == "complete" for e in kept)  # type: ignore[union-attr]
    before = {e.path: (e.path / "metadata.yaml").stat().st_mtime_ns for e in kept}  # type: ignore[union-attr]
    # Collection goes on into the same folder from the next seed; the earlier episodes stay as they were.
    again = subprocess.run(cmd[:cmd.index("--episodes")] + ["--episodes", "1", "--seed", str(len(kept)), "--out",
                                                             str(out), "--max-steps", "16", "--no-progress"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(list_episodes(out)) == len(kept) + 1
    assert {p: (p / "metadata.yaml").stat().st_mtime_ns for p in before} == before


def test_train_vae_leaves_no_model_that_looks_finished(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "vae"
    cfg = _with(data, "wm", vae_steps=100000)
    cmd = WMPO + ["train-vae", "--episodes", str(data / "episodes"), "--out", str(out), "--config", cfg]
    result = interrupt(cmd, lambda: _tqdm_step(tmp_path / "run.err", "train-vae") >= 2, tmp_path)
    assert_clean_interrupt(result)
    assert not (out / "config.json").exists() and not (out / "vae_training.json").exists()
    # Not resumable by design (minutes at most); the same command trains it afresh into the same folder.
    assert wmpo(["train-vae", "--episodes", str(data / "episodes"), "--out", str(out), "--config", cfg,
                 "--steps", "2"]) == 0
    assert (out / "config.json").is_file() and (out / "diffusion_pytorch_model.safetensors").is_file()


def test_train_world_model_resumes_from_its_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "wm"
    cmd = WMPO + ["train-world-model", "--episodes", str(data / "episodes"), "--out", str(out),
                  "--config", str(data / "wm.json")]
    result = interrupt(cmd, lambda: bool(_checkpoints(out / "checkpoints")), tmp_path)
    assert_clean_interrupt(result)
    last = _checkpoints(out / "checkpoints")[-1]
    assert not list((out / "checkpoints").glob(".tmp-*"))  # no half-written checkpoint left behind
    step = _step_of(last)
    again = subprocess.run(cmd + ["--steps", str(step + 2)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout[again.stdout.index("{"):])
    assert summary["finished"] and summary["step"] == step + 2
    state = json.loads((_checkpoints(out / "checkpoints")[-1] / "state.json").read_text())
    assert len(state["losses"]) == step + 2 and len(summary) and (out / "world_model.json").is_file()
    assert summary["seconds_per_step"] > 0 and json.loads((out / "trainer_state.json").read_text())["step"] == step + 2


def test_train_reward_leaves_no_model_that_looks_finished(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "reward"
    cmd = WMPO + ["train-reward", "--episodes", str(data / "episodes"), "--out", str(out),
                  "--config", str(data / "reward.json")]
    result = interrupt(cmd, lambda: _tqdm_step(tmp_path / "run.err", "train-reward") >= 2, tmp_path)
    assert_clean_interrupt(result)
    assert not (out / "reward.json").exists() and not (out / "model.safetensors").exists()
    again = subprocess.run(cmd + ["--steps", "2"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "reward.json").is_file() and (out / "model.safetensors").is_file()


def test_train_policy_resumes_from_its_checkpoint(data: Path, tmp_path: Path) -> None:
    from wmpo_core.policy.train import latest_checkpoint

    out = tmp_path / "bc"
    cmd = WMPO + ["train-policy", "--episodes", str(data / "episodes"), "--out", str(out), "--steps", "100000",
                  "--batch-size", "2", "--save-every", "2", "--all-episodes"]
    result = interrupt(cmd, lambda: out.is_dir() and latest_checkpoint(out) is not None, tmp_path)
    assert_clean_interrupt(result)
    last = latest_checkpoint(out)
    assert last is not None
    step = json.loads((last / "trainer_state.json").read_text())["step"]
    again = subprocess.run(cmd[:cmd.index("--steps")] + ["--steps", str(step + 2), "--batch-size", "2",
                                                          "--save-every", "2", "--all-episodes", "--resume"],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    final = latest_checkpoint(out)
    assert final is not None and json.loads((final / "trainer_state.json").read_text())["step"] == step + 2
    assert (out / "package" / "manifest.json").is_file() or list(out.glob("*/manifest.json"))


@pytest.fixture(scope="module")
def models(data: Path) -> Path:
    """A tiny world model and reward model trained on the synthetic episodes, and an untrained policy."""
    from test_loop import tiny_package

    assert wmpo(["train-world-model", "--episodes", str(data / "episodes"), "--out", str(data / "wm_run"),
                 "--config", str(data / "wm.json"), "--steps", "2"]) == 0
    assert wmpo(["train-reward", "--episodes", str(data / "episodes"), "--out", str(data / "reward_run"),
                 "--config", str(data / "reward.json"), "--steps", "2"]) == 0
    tiny_package(data / "policy")
    return data


def test_grpo_resumes_from_its_checkpoint(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "grpo"
    cmd = WMPO + ["grpo", "--policy", str(models / "policy"), "--world-model", str(models / "wm_run"),
                  "--reward", str(models / "reward_run"), "--episodes", str(models / "episodes"),
                  "--config", str(models / "grpo.json"), "--out", str(out)]
    result = interrupt(cmd, lambda: bool(_checkpoints(out / "checkpoints")), tmp_path)
    assert_clean_interrupt(result)
    done = _step_of(_checkpoints(out / "checkpoints")[-1])
    again = subprocess.run(cmd + ["--iterations", str(done + 1)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _step_of(_checkpoints(out / "checkpoints")[-1]) == done + 1


# ------------------------------------------------------------------------------------ orchestration
ORCHESTRATION_STOP_S = 60.0  # the running stage's command stops first, then the orchestrator
DEMO_DOMAIN_ID = "219"  # this file's own DDS domain


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.timeout(900)
def test_loop_stops_its_stage_command_and_resumes_it(data: Path, tmp_path: Path) -> None:
    """Ctrl-C while the loop's world-model stage trains (a `wmpo train-world-model` child process)."""
    from test_loop import tiny_package

    tiny_package(tmp_path / "base")
    run = tmp_path / "run"
    stage = run / "iter_000" / "world_model"
    cmd = WMPO + ["loop", "--iterations", "1", "--out", str(run), "--policy", str(tmp_path / "base"),
                  "--collect-direct", "--episodes-per-iter", "2", "--max-steps", "8", "--demos", str(data / "episodes"),
                  "--wm-config", str(data / "wm.json"), "--reward-config", str(data / "reward.json"),
                  "--grpo-config", str(data / "grpo.json"), "--gate-episodes", "1"]
    first = interrupt(cmd, lambda: bool(_checkpoints(stage / "run" / "checkpoints")), tmp_path,
                      stop_s=ORCHESTRATION_STOP_S, name="first")
    assert_clean_interrupt(first, ORCHESTRATION_STOP_S)
    collect = run / "iter_000" / "collect"
    assert (collect / "stage.json").is_file() and not (stage / "stage.json").exists()
    marker = (collect / "stage.json").stat().st_mtime_ns
    step = _step_of(_checkpoints(stage / "run" / "checkpoints")[-1])

    # The rerun reuses the collection and the world model continues from its checkpoint.
    second = interrupt(cmd, lambda: any(_step_of(c) > step for c in _checkpoints(stage / "run" / "checkpoints")),
                       tmp_path, stop_s=ORCHESTRATION_STOP_S, name="second")
    assert_clean_interrupt(second, ORCHESTRATION_STOP_S)
    assert "collect: done before" in second.stdout and (collect / "stage.json").stat().st_mtime_ns == marker
    state = json.loads((_checkpoints(stage / "run" / "checkpoints")[-1] / "state.json").read_text())
    assert state["step"] > step and len(state["losses"]) == state["step"]  # continued, not restarted


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.sim
@pytest.mark.timeout(900)
def test_demo_stops_the_ros_graph_it_started(data: Path, tmp_path: Path) -> None:
    """Ctrl-C while `wmpo demo` records demonstrations through the ROS graph (`wmpo record` and its nodes)."""
    out = tmp_path / "demo"
    env = dict(os.environ, ROS_DOMAIN_ID=DEMO_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = WMPO + ["demo", "--out", str(out), "--demos", "2", "--rollouts", "2", "--eval-episodes", "2",
                  "--max-steps", "60", "--bc-steps", "4", "--wm-steps", "2", "--align-steps", "2",
                  "--reward-steps", "2", "--grpo-iterations", "1", "--wm-config", str(data / "wm.json"),
                  "--reward-config", str(data / "reward.json"), "--grpo-config", str(data / "grpo.json")]
    episodes = out / "record_demos" / "episodes"

    earlier: set[str] = set()

    def recording() -> bool:  # the recorder has opened an episode's bag (not one of an earlier run)
        return episodes.is_dir() and any(p.is_dir() and not p.name.startswith(".") and p.name not in earlier
                                         for p in episodes.iterdir())

    first = interrupt(cmd, recording, tmp_path, env=env, stop_s=ORCHESTRATION_STOP_S, name="first")
    earlier |= {p.name for p in episodes.iterdir()}
    # `wmpo record` finished its own orderly stop (nodes stopped, recorder first; then it lists the
    # episodes, the interrupted one finalized) instead of being killed mid-way by the demo.
    log = (out / "record_demos" / "commands.log").read_text()
    after = log[log.index("wmpo record: interrupted"):]
    assert [name for name in earlier if not name.startswith(".") and name in after], log[-3000:]
    assert_clean_interrupt(first, ORCHESTRATION_STOP_S)
    assert (out / "keys" / "stage.json").is_file() and not (out / "record_demos" / "stage.json").exists()
    keys = {p: p.read_bytes() for p in (out / "keys").rglob("*") if p.is_file()}

    second = interrupt(cmd, recording, tmp_path, env=env, stop_s=ORCHESTRATION_STOP_S, name="second")
    assert_clean_interrupt(second, ORCHESTRATION_STOP_S)
    assert "done before" in second.stdout and "reused" in second.stdout, second.stdout[-2000:]
    assert {p: p.read_bytes() for p in keys} == keys
