"""The suite's environment (tests/environment.py), set before any test module is imported."""

import environment  # noqa: F401
