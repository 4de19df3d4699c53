"""The interface between the policy node and a policy (scripted, learned VLA, ...).

The node owns ROS I/O, timing, threading and validation; a backend only predicts. A
backend is built from plain options (ROS-free), so the node can build a second instance
from a new package path and swap it in atomically between two inferences (hot-swap).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from wmpo_core.control import ACTION_DIM

if TYPE_CHECKING:
    from rclpy.node import Node


class PolicyError(RuntimeError):
    """The policy cannot predict from this input (the message says which field is wrong)."""


class PolicyBackend(ABC):
    """One policy behind the policy node.

    `predict_chunk` returns a (chunk_size, 7) array in physical units (docs/interfaces.md);
    the node checks shape and finiteness before publishing. Called from the node's
    inference thread only, one call at a time.
    """

    name: str = "base"
    needs_state: bool = False  # reads the simulator's privileged state from /sim/state
    needs_instruction: bool = True  # waits for wmpo/instruction before predicting
    action_dim: int = ACTION_DIM

    @classmethod
    def declare_parameters(cls, node: Node) -> dict[str, Any]:
        """Declare this backend's parameters on the node (prefixed `<name>.`); return the options."""
        return {}

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @property
    @abstractmethod
    def version(self) -> str:
        """Identifier published on wmpo/policy_version and stored with every episode."""

    @property
    @abstractmethod
    def chunk_size(self) -> int:
        """Steps per predicted chunk (K)."""

    @property
    def cameras(self) -> tuple[str, ...] | None:
        """Camera names this policy needs (None: whatever the node is configured with)."""
        return None

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(height, width) the policy needs, or None to accept any size."""
        return None

    @abstractmethod
    def predict_chunk(self, images: dict[str, np.ndarray], instruction: str, proprio: np.ndarray | None,
                      state: Mapping[str, Any] | None) -> np.ndarray:
        """(chunk_size, 7) actions for one observation; raise PolicyError on unusable input."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called when the backend is swapped out or the node stops."""
