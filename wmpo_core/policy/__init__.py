"""VLA policies: action tokenizer, the embedded VLA model, OpenVLA loader, behavior cloning, evaluation.

```python
from wmpo_core.policy import VLAConfig, VLAPolicy, load_policy
policy = load_policy("runs/bc/package_step0002000")   # package, model directory or OpenVLA checkpoint
chunk = policy.predict_chunk({"agentview": frame}, "lift the cube")   # (K, 7) physical units
```

Importing this package is cheap; torch and transformers load with the model modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wmpo_core.registry.verify import register_shape_rule

__all__ = ["ActionTokenizer", "VLABatch", "VLAConfig", "VLAPolicy", "load_policy"]

_LAZY = {
    "ActionTokenizer": "wmpo_core.policy.action_tokenizer",
    "VLABatch": "wmpo_core.policy.modeling_vla",
    "VLAConfig": "wmpo_core.policy.configuration_vla",
    "VLAPolicy": "wmpo_core.policy.modeling_vla",
    "load_policy": "wmpo_core.policy.loading",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wmpo_core.policy' has no attribute {name!r}")


def _vla_shapes(config: Mapping[str, Any], package_dir: Any = None) -> dict[str, tuple[int, ...]]:
    """Tensor shapes a VLA ``config.json`` implies, built on the meta device (no memory, no weights).

    The package's own ``tokenizer.json`` is used when there is one (an imported OpenVLA tokenizer has
    ``<PAD>``, not the embedded default's ``<pad>``); without it the embedded default tokenizer is built.
    """
    from pathlib import Path

    import torch

    from wmpo_core.policy.configuration_vla import VLAConfig
    from wmpo_core.policy.modeling_vla import TOKENIZER_NAME, VLAPolicy
    from wmpo_core.policy.text_tokenizer import load_text_tokenizer

    cfg = VLAConfig.from_dict(dict(config))
    tokenizer = None
    if package_dir is not None and (Path(package_dir) / TOKENIZER_NAME).is_file():
        tokenizer = load_text_tokenizer(Path(package_dir) / TOKENIZER_NAME, (cfg.pad_token, cfg.bos_token))
    with torch.device("meta"):
        model = VLAPolicy(cfg, tokenizer)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


register_shape_rule("wmpo-vla", _vla_shapes)
