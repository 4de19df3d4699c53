"""The recipe of a task: which configs train the world model, the reward model and GRPO, which
camera they see, and how the reward model is trained. Defined here once; `wmpo demo`, `wmpo loop`
and `wmpo compare` all read it through :func:`load_recipe`.

A task's recipe is ``wmpo_core/pipeline/recipes/<task>.json`` (a task without one gets the
:class:`Recipe` defaults); ``--recipe FILE`` replaces it, and a command's own ``--wm-config``,
``--reward-config`` and ``--grpo-config`` replace single fields. Relative paths in a recipe file
are relative to that file.

The reward recipe (``reward_on_imagined``, ``calibrate_on``): by default the reward model learns
from real video only and its success threshold is then re-chosen on imagined replays, in the
aligned world model, of the policy's own episodes (``calibrate_on: "policy"``; all training
episodes when the policy's own hold one outcome only, or with ``"all"``). ``reward_on_imagined:
true`` also trains it on the imagined replays of its training episodes (`wmpo train-reward
--world-model`), the earlier recipe of `wmpo compare`: on lift it lowered the real-video F1
(0.96 -> 0.79, docs/results.md "Reward model").

Behaviour alignment (``align_on``) continues the pretrained world model on the policy's own rollouts
(``"policy"``, the paper's) or on every training episode, demonstrations included (``"all"``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from wmpo_core.stats import THRESHOLD_RULES

RECIPE_DIR = Path(__file__).parent / "recipes"
CORE = Path(__file__).resolve().parents[1]
CALIBRATE_ON = ("policy", "all")
ALIGN_ON = ("policy", "all")
CONFIG_FIELDS = ("world_model_config", "reward_config", "grpo_config", "success_head_config")


@dataclass(frozen=True)
class Recipe:
    """Training settings shared by every pipeline of one task (config files as absolute paths)."""

    task: str
    world_model_config: str = str(CORE / "world_model" / "configs" / "sim64.json")
    reward_config: str | None = None  # None: RewardTrainConfig defaults
    grpo_config: str | None = None  # None: WMPOConfig defaults
    # A SuccessHeadTrainConfig JSON: the reward step also trains the world model's success head on the same
    # episodes, and GRPO scores imagination with it instead of the video classifier (None: the classifier).
    success_head_config: str | None = None
    bc_recipe: str | None = None  # `wmpo train-policy --recipe NAME` for a base policy trained from demonstrations
    camera: str | None = None  # the camera the world and reward models see (None: as their configs say)
    # The cameras the simulated robot renders and records, and the policy node reads (None: the
    # graph file's, agentview and wrist). They must include the base policy's and the recipe's camera.
    cameras: tuple[str, ...] | None = None
    reward_on_imagined: bool = False  # also train the reward model on imagined replays of its episodes
    calibrate_on: str = "policy"  # threshold re-chosen on imagined replays of: "policy" episodes, or "all"
    # "policy" calibrates on the policy's own episodes only when they hold at least this many of each outcome
    # (else on all training episodes): a threshold that maximizes F1 over 1 or 2 successes is noise (one demo
    # run chose 0.0014 from 1 success among 16 rollouts, another 0.022 from 5; docs/results.md).
    calibration_min_outcomes: int = 5
    # What the threshold maximizes on the imagined replays: "f1", or "balanced" accuracy. Calibrated on a set
    # where most episodes succeed (the demonstrations among the training episodes), F1 is best calling nearly
    # everything a success and picks a threshold at the classifier's floor (0.0013 in one demo run).
    calibration_rule: str = "f1"
    # Behaviour alignment continues the pretrained world model on the policy's own rollouts ("policy", the
    # paper's) or on those and the other training episodes, the demonstrations it was pretrained on ("all").
    # Aligned on a weak base's rollouts alone (1 success in 16), one demo's world model stopped imagining the
    # lift (2 of 40 demonstrations imagined as successes, 36 before alignment); on both, 33 of 40
    # (docs/results.md, the demo).
    align_on: str = "policy"
    # GRPO in rounds (the paper's lifelong loop in small; its single alignment is 1 round). Between two
    # rounds: ``refresh_rollouts`` rollouts of the round's policy straight in the simulator, the world
    # model aligned further on every policy rollout so far (``refresh_align_steps``), the reward model
    # retrained on all episodes and its threshold re-chosen on those rollouts' imagined replays; the next
    # round continues from the round's policy. The GRPO iterations are split evenly over the rounds.
    grpo_rounds: int = 1
    refresh_rollouts: int = 48
    refresh_align_steps: int = 800
    source: str | None = None  # the recipe file read (None: the defaults)

    def __post_init__(self) -> None:
        for name in ("grpo_rounds", "refresh_rollouts", "refresh_align_steps", "calibration_min_outcomes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recipe {name}: expected a positive integer, got {value!r}")
        for name, choices in (("align_on", ALIGN_ON), ("calibration_rule", THRESHOLD_RULES),
                              ("calibrate_on", CALIBRATE_ON)):
            if getattr(self, name) not in choices:
                raise ValueError(f"recipe {name}: expected one of {choices}, got {getattr(self, name)!r}")
        if self.cameras is not None:
            if (isinstance(self.cameras, str) or not self.cameras
                    or not all(isinstance(c, str) and c for c in self.cameras)):
                raise ValueError(f"recipe cameras: expected a non-empty list of camera names, got {self.cameras!r}")
            object.__setattr__(self, "cameras", tuple(self.cameras))
            if self.camera and self.camera not in self.cameras:
                raise ValueError(f"recipe cameras {list(self.cameras)} lack the recipe's camera {self.camera!r}")

    def require_one_round(self, command: str, why: str) -> Recipe:
        """This recipe, or a ValueError when it asks for GRPO in rounds, which ``command`` does not run."""
        if self.grpo_rounds > 1:
            raise ValueError(f"recipe grpo_rounds {self.grpo_rounds} ({self.source or 'defaults'}): `wmpo {command}` "
                             f"runs GRPO in one round ({why}); `wmpo demo` runs rounds")
        return self

    def alignment_episodes(self, policy: Sequence[Path], others: Sequence[Path]) -> list[Path]:
        """The episode folders behaviour alignment trains on: ``policy`` (the policy's own rollouts), and
        ``others`` (the demonstrations and other training episodes) when ``align_on`` is "all"."""
        return [*policy, *others] if self.align_on == "all" else list(policy)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON data (stored beside a run's settings)."""
        return asdict(self)

    def world_model_config_data(self, vae_steps: int | None = None) -> dict[str, Any]:
        """The world-model training config with the recipe's camera (and ``vae_steps``) applied."""
        data = _read_object(Path(self.world_model_config))
        if self.camera:
            data["camera"] = self.camera
        if vae_steps is not None:
            data["vae_steps"] = vae_steps
        return data

    def grpo_config_data(self) -> dict[str, Any]:
        """The GRPO config as JSON data ({}: the command's defaults)."""
        return _read_object(Path(self.grpo_config)) if self.grpo_config else {}

    def reward_config_data(self) -> dict[str, Any] | None:
        """The reward training config with the recipe's camera applied (None: the defaults as they are)."""
        data = _read_object(Path(self.reward_config)) if self.reward_config else None
        if self.camera:
            data = {**(data or {}), "camera": self.camera}
        return data

    def write_world_model_config(self, path: Path, vae_steps: int | None = None) -> Path:
        """Write :meth:`world_model_config_data` to ``path`` (the file a step's command reads)."""
        return _write(path, self.world_model_config_data(vae_steps))

    def write_reward_config(self, path: Path) -> Path | None:
        """Write :meth:`reward_config_data` to ``path``; None (nothing written) for the defaults."""
        data = self.reward_config_data()
        return None if data is None else _write(path, data)


def _read_object(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def recipe_file(task: str) -> Path:
    """The shipped recipe file of ``task`` (it may not exist)."""
    return RECIPE_DIR / f"{task}.json"


def load_recipe(task: str, path: str | Path | None = None, **overrides: Any) -> Recipe:
    """The recipe of ``task``: ``path`` (else the task's shipped file, else the defaults), then every
    override that is not None (e.g. a command's ``world_model_config=args.wm_config``).

    A ValueError names the file and the field for an unknown field or a missing config file.
    """
    known = {f.name for f in fields(Recipe)} - {"task", "source"}
    source = Path(path) if path is not None else recipe_file(task)
    values: dict[str, Any] = {}
    if path is not None or source.is_file():
        data = _read_object(source)
        data.pop("description", None)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        for name in CONFIG_FIELDS:
            if data.get(name):
                data[name] = str((source.parent / data[name]).resolve())
        values.update(data)
        values["source"] = str(source.resolve())
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown recipe override(s): {', '.join(bad)}")
    values.update({k: (str(Path(v).resolve()) if k.endswith("_config") else v)
                   for k, v in overrides.items() if v is not None})
    recipe = Recipe(task=task, **values)
    for name in CONFIG_FIELDS:
        value = getattr(recipe, name)
        if value and not Path(value).is_file():
            raise ValueError(f"recipe {name} {value}: no such file" + (f" (from {source})" if recipe.source else ""))
    return recipe


def recipe_from_args(args: Any) -> Recipe:
    """The recipe a command's settings ask for: ``task`` and ``recipe``, then the single-field options
    ``wm_config``, ``reward_config`` and ``grpo_config`` (`wmpo compare`: ``wmpo_config``) where present.
    `wmpo demo`, `wmpo loop` (its LoopConfig) and `wmpo compare` all call this."""
    return load_recipe(args.task, getattr(args, "recipe", None),
                       world_model_config=getattr(args, "wm_config", None),
                       reward_config=getattr(args, "reward_config", None),
                       grpo_config=getattr(args, "grpo_config", None) or getattr(args, "wmpo_config", None))


def add_recipe_option(parser: Any, default: str = "wmpo_core/pipeline/recipes/<task>.json; the same for demo, "
                      "loop and compare") -> None:
    """``--recipe FILE``, the same option on `wmpo demo`, `wmpo loop` and `wmpo compare` (``default``: what
    the help says is used without it)."""
    parser.add_argument("--recipe", help="task recipe JSON: world-model, reward and GRPO configs, camera, reward "
                        f"training data (default: {default})")
