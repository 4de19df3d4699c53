"""Discrete action tokens with OpenVLA's binning semantics.

Each normalized action dimension in ``[-1, 1]`` is cut by ``n_bins`` uniformly spaced
edges (``linspace(-1, 1, n_bins)``); ``digitize`` gives a bin index in ``1..n_bins``
and the token id is ``vocab_size - index``, so the action tokens occupy the last
``n_bins`` ids of the language-model vocabulary. Decoding maps a token back to the
center of its bin (``n_bins - 1`` centers; the topmost index is clipped onto the
last center), exactly as OpenVLA's ``ActionTokenizer`` does.
"""

from __future__ import annotations

import numpy as np
import torch


class ActionTokenizer:
    """Continuous normalized actions <-> token ids at the end of a vocabulary."""

    def __init__(self, vocab_size: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0):
        if n_bins < 2 or vocab_size < n_bins:
            raise ValueError(f"ActionTokenizer: need 2 <= n_bins <= vocab_size, got n_bins={n_bins}, vocab_size={vocab_size}")
        self.vocab_size = int(vocab_size)
        self.n_bins = int(n_bins)
        self.min_action = float(min_action)
        self.max_action = float(max_action)
        self.bins = np.linspace(self.min_action, self.max_action, self.n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.bin_width = float(self.bins[1] - self.bins[0])

    @property
    def token_begin(self) -> int:
        """First action token id (the action tokens are ``[token_begin, vocab_size)``)."""
        return self.vocab_size - self.n_bins

    def encode(self, actions: np.ndarray | torch.Tensor) -> np.ndarray:
        """Normalized actions (any shape) -> int64 token ids of the same shape; values are clipped to the range."""
        a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        if not np.all(np.isfinite(a)):
            raise ValueError("ActionTokenizer.encode: actions contain NaN or inf")
        a = np.clip(a.astype(np.float64), self.min_action, self.max_action)
        index = np.digitize(a, self.bins)  # 1..n_bins
        return (self.vocab_size - index).astype(np.int64)

    def decode(self, token_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Token ids (any shape) -> normalized actions at the bin centers (float32)."""
        t = token_ids.detach().cpu().numpy() if isinstance(token_ids, torch.Tensor) else np.asarray(token_ids)
        t = t.astype(np.int64)
        if t.size and (t.min() < self.token_begin or t.max() >= self.vocab_size):
            raise ValueError(
                f"ActionTokenizer.decode: token ids must lie in [{self.token_begin}, {self.vocab_size}), "
                f"got [{t.min()}, {t.max()}]"
            )
        center = np.clip(self.vocab_size - t - 1, 0, self.bin_centers.shape[0] - 1)
        return self.bin_centers[center].astype(np.float32)

    def bins_to_tokens(self, bins: torch.Tensor) -> torch.Tensor:
        """Class index over the action head (0 = ``token_begin``) -> vocabulary token id."""
        return bins + self.token_begin

    def tokens_to_bins(self, tokens: torch.Tensor) -> torch.Tensor:
        """Vocabulary token id -> class index over the action head (0 = ``token_begin``)."""
        return tokens - self.token_begin
