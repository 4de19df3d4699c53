"""`wmpo demo --fresh` removes only what the demo wrote in its folder (real files, real folders)."""

from __future__ import annotations

import argparse
from pathlib import Path

from wmpo_core import demo
from wmpo_core.commands import demo as demo_command


def _fake_earlier_run(out: Path) -> None:
    """What a finished demo leaves: its stage folders, the robot folder and the report files."""
    for name in demo.demo_outputs():
        if name.endswith((".html", ".json")):
            (out / name).write_text("{}")
        else:
            (out / name).mkdir()
            (out / name / "something").write_text("x")


def test_fresh_keeps_the_users_files(tmp_path):
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "my_notes.txt").write_text("mine")
    (out / "keys").mkdir()  # the user's own keys folder, there before the demo: same name as a demo stage
    (out / "keys" / "real_signing_key.pem").write_text("precious")
    demo.mark_demo_folder(out)
    for name in demo.demo_outputs():
        if name == "keys":
            continue
        if name.endswith((".html", ".json")):
            (out / name).write_text("{}")
        else:
            (out / name).mkdir()
    assert demo.remove_demo_outputs(out) is None
    assert sorted(p.name for p in out.iterdir()) == [demo.DEMO_MARK, "keys", "my_notes.txt"]
    assert (out / "keys" / "real_signing_key.pem").read_text() == "precious"
    assert (out / "my_notes.txt").read_text() == "mine"


def test_fresh_removes_a_marked_demo_folders_outputs(tmp_path):
    out = tmp_path / "demo_out"
    demo.mark_demo_folder(out)
    _fake_earlier_run(out)
    (out / "added_later.txt").write_text("the user's, written after the demo started")
    assert demo.remove_demo_outputs(out) is None
    assert sorted(p.name for p in out.iterdir()) == [demo.DEMO_MARK, "added_later.txt"]


def test_fresh_refuses_an_unmarked_folder_with_demo_names(tmp_path):
    out = tmp_path / "somewhere"
    (out / "reward").mkdir(parents=True)
    (out / "reward" / "model.bin").write_text("not the demo's")
    problem = demo.remove_demo_outputs(out)
    assert problem is not None and "reward" in problem and "no .wmpo-demo.json" in problem
    assert (out / "reward" / "model.bin").exists()


def test_demo_main_fresh_refusal_exits_2_before_any_stage(tmp_path, capsys):
    out = tmp_path / "somewhere"
    out.mkdir()
    (out / "keys").mkdir()
    parser = argparse.ArgumentParser()
    demo_command.configure(parser)
    args = parser.parse_args(["--out", str(out), "--fresh"])
    assert demo_command.main(args) == 2
    assert "--fresh" in capsys.readouterr().err and (out / "keys").is_dir()
