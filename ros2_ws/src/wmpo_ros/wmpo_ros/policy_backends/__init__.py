"""Policy backends: what the policy node runs to turn an observation into an action chunk.

Looked up by name; a backend's module is imported only when selected (a scripted demo
never imports torch). Add one (e.g. a learned `vla` backend loading a policy package)
by writing a `PolicyBackend` subclass and listing it in `BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wmpo_ros.backends import backend_class
from wmpo_ros.policy_backends.base import PolicyBackend, PolicyError

# name -> "module:Class"
BACKENDS: dict[str, str] = {
    "scripted": "wmpo_ros.policy_backends.scripted:ScriptedPolicyBackend",
    "vla": "wmpo_ros.policy_backends.vla:VLAPolicyBackend",
}


def policy_backend_class(name: str) -> type[PolicyBackend]:
    """The class of backend `name` (ValueError naming the choices if unknown or not installed)."""
    return backend_class("policy", BACKENDS, name)


def make_policy_backend(name: str, options: Mapping[str, Any]) -> PolicyBackend:
    """Build backend `name` from its options (as returned by its `declare_parameters`)."""
    return policy_backend_class(name)(options)


__all__ = ["BACKENDS", "PolicyBackend", "PolicyError", "make_policy_backend", "policy_backend_class"]
