"""Tests of the ROS 2 package (its nodes, `wmpo up` / `wmpo record`, the graph files), kept with the
package as ament packages keep theirs and run by the project's one test command (pyproject's
testpaths). They share the project's test environment and helpers (tests/environment.py,
tests/ros_helpers.py, the tiny packages of tests/test_loop.py), so that folder goes on the path."""

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[4] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import environment  # noqa: E402, F401
