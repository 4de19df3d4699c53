"""The `wmpo` verbs: one module per verb, found through cli.BUILTIN_COMMANDS, each exposing HELP,
configure(parser) and main(args); every module of a ``commands`` package is a verb of the table or the
``common`` module its verbs share. Nothing is run but argument parsing."""

from __future__ import annotations

import argparse
import importlib
import inspect
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from wmpo_core import cli

CORE = Path(cli.__file__).resolve().parent
OLD_PATTERN = ("HELP_", "configure_", "main_")


def expected_module(verb: str, module: str) -> str:
    """``wmpo_core[.<part>].commands.<verb with underscores>``."""
    part = module.split(".")[1]
    prefix = "wmpo_core.commands" if part == "commands" else f"wmpo_core.{part}.commands"
    return f"{prefix}.{verb.replace('-', '_')}"


def command_package_modules(core: Path = CORE) -> set[str]:
    """Dotted names of the modules in every ``commands`` package of the core (not the packages)."""
    found = set()
    for path in core.rglob("commands/*.py"):
        if path.name != "__init__.py":
            found.add(".".join(path.relative_to(core.parent).with_suffix("").parts))
    return found


def problems(table: dict[str, tuple[str, str]], modules: set[str]) -> list[str]:
    """What breaks the one-module-per-verb rule, for a table and the command-package modules present."""
    bad = []
    for verb, (module, help_) in table.items():
        if module != expected_module(verb, module):
            bad.append(f"{verb}: module {module}, expected {expected_module(verb, module)}")
        if not help_:
            bad.append(f"{verb}: no one-line help in the table")
    listed = {m for m, _ in table.values()}
    for module in sorted(modules - listed):
        if module.rsplit(".", 1)[1] != "common":
            bad.append(f"{module}: in a commands package but no verb of BUILTIN_COMMANDS (nor common)")
    return bad


def interface_problems(verb: str, module) -> list[str]:
    bad = []
    if not isinstance(getattr(module, "HELP", None), str) or not module.HELP:
        bad.append(f"{verb}: HELP is not a non-empty string")
    for name in ("configure", "main"):
        fn = getattr(module, name, None)
        if not callable(fn) or len(inspect.signature(fn).parameters) != 1:
            bad.append(f"{verb}: {name} is not a function of one argument")
    bad += [f"{verb}: {name} (one verb per module: HELP, configure, main)"
            for name in vars(module) if name.startswith(OLD_PATTERN)]
    return bad


def test_every_verb_has_its_own_module_named_after_it():
    assert not problems(cli.BUILTIN_COMMANDS, command_package_modules())
    assert len({m for m, _ in cli.BUILTIN_COMMANDS.values()}) == len(cli.BUILTIN_COMMANDS)


@pytest.mark.parametrize("verb", sorted(cli.BUILTIN_COMMANDS))
def test_each_verb_module_exposes_help_configure_and_main(verb):
    module = importlib.import_module(cli.BUILTIN_COMMANDS[verb][0])
    assert not interface_problems(verb, module)
    parser = argparse.ArgumentParser(prog=f"wmpo {verb}")
    module.configure(parser)  # declares its options without error
    built = cli.build_parser(verb)
    sub = next(a for a in built._actions if isinstance(a, argparse._SubParsersAction))
    assert sub.choices[verb].description == module.HELP
    assert sub.choices[verb].get_default("_run") is module.main


def test_the_checks_catch_a_misplaced_verb_a_stray_module_and_the_old_pattern():
    table = dict(cli.BUILTIN_COMMANDS)
    modules = command_package_modules()
    table["grpo"] = ("wmpo_core.rl.commands", table["grpo"][1])  # several verbs in one module again
    stray = "wmpo_core.reward.commands.train_and_eval"
    found = problems(table, modules | {stray})
    assert any(p.startswith("grpo: module wmpo_core.rl.commands,") for p in found), found
    assert any(p.startswith(stray) for p in found), found
    assert any("wmpo_core.rl.commands.grpo: in a commands package but no verb" in p for p in found), found
    old = type("old", (), {"HELP": "x", "configure": staticmethod(lambda p: None),
                           "main": staticmethod(lambda a: 0), "HELP_grpo": "x"})
    assert interface_problems("grpo", old) == ["grpo: HELP_grpo (one verb per module: HELP, configure, main)"]


def test_plugin_verbs_from_the_ros_package_are_still_listed():
    plugins = {ep.name for ep in entry_points(group="wmpo.commands")}
    if not plugins:
        pytest.skip("wmpo_ros is not installed here: no wmpo.commands entry points")
    available = cli._available()
    assert {"up", "record"} <= plugins
    assert plugins <= set(available) and not plugins & set(cli.BUILTIN_COMMANDS)
    assert all(available[name][1] is None for name in plugins)  # listed as "(ROS 2 command)" without an import


def test_ctrl_c_wrapped_by_compiled_code_still_counts_as_an_interrupt():
    """numba's dispatcher turns a KeyboardInterrupt raised in its Python callback into a chained SystemError."""
    def numba_like():
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            try:
                raise SystemError("_numba_unpickle returned a result with an exception set") from inner
            except SystemError as middle:
                raise SystemError("CPUDispatcher returned a result with an exception set") from middle

    with pytest.raises(SystemError) as wrapped:
        numba_like()
    assert cli.caused_by_interrupt(wrapped.value)
    assert cli.caused_by_interrupt(KeyboardInterrupt())
    try:
        try:
            raise ValueError("bad bag")
        except ValueError as cause:
            raise RuntimeError("read failed") from cause
    except RuntimeError as plain:
        assert not cli.caused_by_interrupt(plain)
    looped = RuntimeError("a cycle")
    looped.__context__ = RuntimeError("back")
    looped.__context__.__context__ = looped
    assert not cli.caused_by_interrupt(looped)
