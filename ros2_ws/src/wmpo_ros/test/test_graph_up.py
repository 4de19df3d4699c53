"""`wmpo up` process management: a node that dies is named and makes `wmpo up` exit non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ros_helpers import ros_env

pytestmark = pytest.mark.ros


def test_wmpo_up_names_the_dead_node_and_exits_nonzero(tmp_path: Path) -> None:
    graph = {"graph": {"nodes": {
        "recorder": {"executable": "episode_recorder_node", "parameters": {"output_dir": str(tmp_path / "ep"),
                                                                           "topics": ["wmpo/success"]}},
        "arm": {"executable": "arm_node", "parameters": {"backend": "teleport"}},  # fails at start
    }}}
    config = tmp_path / "graph.yaml"
    config.write_text(yaml.safe_dump(graph))
    proc = subprocess.run([sys.executable, "-m", "wmpo_core.cli", "up", "--config", str(config)],
                          env=ros_env(52), capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-2000:]
    assert "ERROR: node 'arm' exited with code 1" in out
    assert "unknown arm backend 'teleport'" in out  # the node's own error, forwarded with its prefix
    assert "stopped recorder (exit code 0)" in out  # the others are still stopped in order
