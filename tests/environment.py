"""Test-wide environment: offscreen MuJoCo, DDS discovery kept on this machine, one torch thread.

Imported by tests/conftest.py and by the ROS package's own test/conftest.py, before any test module.
"""

import os

# The tiny models are dominated by per-op overhead: one thread was 3-9x faster than two on
# a busy 2-core machine, and node subprocesses inherit it so they do not fight the tests.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
