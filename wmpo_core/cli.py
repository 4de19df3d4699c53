"""The `wmpo` command.

Each subcommand lives in its own module exposing ``HELP`` (one line), ``configure(parser)``
and ``main(args) -> int``. Modules are imported only when their command runs, so
`wmpo --help` stays fast and `wmpo episodes` never imports torch. Commands that need
ROS 2 (`up`, `record`) are contributed by the wmpo_ros package through the
``wmpo.commands`` entry-point group, which keeps this package free of rclpy.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points

# name -> (module, one-line help for the list of `wmpo --help`, which so needs no imports). A verb's
# module is ``<part>.commands.<verb>`` (``wmpo_core.commands.<verb>`` for the verbs composing the whole
# stack); its HELP is the description `wmpo <verb> --help` prints.
BUILTIN_COMMANDS: dict[str, tuple[str, str]] = {
    "episodes": ("wmpo_core.data.commands.episodes", "list recorded episodes; --repair recovers crashed bags"),
    "label": ("wmpo_core.data.commands.label", "label episodes' success after the fact (one, or a CSV)"),
    "import-bag": ("wmpo_core.data.commands.import_bag", "episodes from any robot's rosbag2 through a mapping file"),
    "export-lerobot": ("wmpo_core.data.commands.export_lerobot", "write episodes as a LeRobotDataset (v3.0)"),
    "import-lerobot": ("wmpo_core.data.commands.import_lerobot", "episodes from a LeRobotDataset (v3.x)"),
    "collect-sim": ("wmpo_core.data.commands.collect_sim", "record episodes in the simulator without ROS (scripted or a policy)"),
    "demo": ("wmpo_core.commands.demo", "run the whole loop on the simulated robot and write a report"),
    "eval": ("wmpo_core.policy.commands.eval", "evaluate a policy closed loop in the simulator"),
    "train-policy": ("wmpo_core.policy.commands.train_policy", "behavior cloning from recorded episodes"),
    "predict": ("wmpo_core.policy.commands.predict", "print the action chunk a policy outputs for one image"),
    "import-openvla": ("wmpo_core.policy.commands.import_openvla",
                       "turn an OpenVLA / OpenVLA-OFT checkpoint directory into a signed policy package"),
    "train-vae": ("wmpo_core.world_model.commands.train_vae", "train the frame autoencoder on recorded frames"),
    "train-world-model": ("wmpo_core.world_model.commands.train_world_model", "train / align the video world model"),
    "eval-world-model": ("wmpo_core.world_model.commands.eval_world_model", "world-model fidelity against reference predictors"),
    "ablate-world-model": ("wmpo_core.world_model.commands.ablate_world_model",
                           "world-model ablations: no noisy-frame conditioning, no behavior alignment"),
    "train-success-head": ("wmpo_core.world_model.commands.train_success_head",
                           "train a success head on the world model's latents (per-frame success)"),
    "imagine": ("wmpo_core.world_model.commands.imagine", "real vs imagined video for one episode"),
    "train-reward": ("wmpo_core.reward.commands.train_reward", "train the video success classifier"),
    "eval-reward": ("wmpo_core.reward.commands.eval_reward", "precision / recall / F1 of the reward model"),
    "calibrate-reward": ("wmpo_core.reward.commands.calibrate_reward", "set the reward threshold on imagined replays"),
    "diagnose-imagination": ("wmpo_core.reward.commands.diagnose_imagination",
                             "where imagination loses the task outcome: reward AUC on real to imagined video"),
    "grpo": ("wmpo_core.rl.commands.grpo", "GRPO in imagination"),
    "grpo-sim": ("wmpo_core.rl.commands.grpo_sim", "baseline: online GRPO in the simulator"),
    "dpo": ("wmpo_core.rl.commands.dpo", "baseline: offline DPO on success/failure pairs"),
    "compare": ("wmpo_core.rl.commands.compare", "results table: base, DPO, online GRPO, WMPO"),
    "loop": ("wmpo_core.commands.loop", "lifelong learning: collect, align, improve, gate, push"),
    "loop-report": ("wmpo_core.commands.loop_report", "evaluate every policy of a loop run on the same held-out start states"),
    "loop-watch": ("wmpo_core.commands.loop_watch",
                   "robot run: watch the promoted version and roll back to the previous one when it does worse"),
    "keygen": ("wmpo_core.registry.commands.keygen", "make an Ed25519 signing key pair"),
    "export": ("wmpo_core.registry.commands.export", "package and sign a policy"),
    "verify": ("wmpo_core.registry.commands.verify", "verify a policy package offline"),
    "push": ("wmpo_core.registry.commands.push", "copy a package to a robot and ask its policy node to load it"),
}


def _plugin_commands() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="wmpo.commands")}


def _available() -> dict[str, tuple[str, str | None]]:
    found: dict[str, tuple[str, str | None]] = {}
    for name, (module, help_) in BUILTIN_COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_)
    for name, module in _plugin_commands().items():
        found.setdefault(name, (module, None))
    return found


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wmpo",
        description="WMPO robot stack: record episodes, train world and reward models, "
        "improve the policy in imagination, push it back to the robot.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_) in sorted(_available().items()):
        if name == selected:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=module.HELP, description=module.HELP)
            module.configure(p)
            p.set_defaults(_run=module.main)
        else:
            sub.add_parser(name, help=help_ or "(ROS 2 command)", add_help=False)
    return parser


def caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is, or wraps, a KeyboardInterrupt.

    Ctrl-C that lands while compiled code calls back into Python (numba's dispatcher in robosuite's
    controller) surfaces as a SystemError whose cause is the KeyboardInterrupt; it is still Ctrl-C.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    available = _available()
    if selected is not None and selected not in available:
        print(f"wmpo: unknown command {selected!r}; see `wmpo --help`", file=sys.stderr)
        return 2
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        if not caused_by_interrupt(exc):
            raise
    # Out of the except block the interrupted frames are freed: their progress bars close before the
    # message below, which so stays the last line on the terminal.
    gc.collect()
    print("wmpo: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
