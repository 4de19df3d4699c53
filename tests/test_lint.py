"""The tree is ruff clean (rules in pyproject.toml) and mypy passes on the typed core modules that
pyproject.toml's [tool.mypy] lists, so a lint or type slip fails here, not in review."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    """The dev extra's ``name`` beside this Python, else on PATH; the test is skipped without it."""
    exe = Path(sys.executable).with_name(name)
    if exe.is_file():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} missing: pip install -e '.[dev]'")
    return [found]


def _ruff() -> list[str]:
    return _tool("ruff")


def test_ruff_check_clean():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean_on_the_typed_core():
    """mypy with pyproject.toml's [tool.mypy]: the files it lists, the cache in .mypy_cache (about 2 s warm,
    a minute or two cold)."""
    proc = subprocess.run([*_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml")], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout, proc.stdout
