"""One entry point for every policy on disk: a signed-layout package, a plain model directory, or OpenVLA."""

from __future__ import annotations

import json
from pathlib import Path

from wmpo_core.policy.modeling_vla import CONFIG_NAME, VLAPolicy
from wmpo_core.policy.placement import place_policy


def load_policy(path: str | Path, unnorm_key: str | None = None, device: str | None = None,
                dtype: str | None = None) -> VLAPolicy:
    """Load ``path`` in eval mode (on ``device`` in ``dtype`` when given, see :func:`place_policy`).

    * a policy package (``manifest.json``): every hash and shape verified first;
    * an OpenVLA checkpoint (``config.json`` with ``model_type`` ``openvla``): mapped without remote code;
    * a model directory written by :meth:`VLAPolicy.save_pretrained` (e.g. a training checkpoint).
    """
    from wmpo_core.registry.verify import MANIFEST_FILE

    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a policy directory")
    if (d / MANIFEST_FILE).exists():
        from wmpo_core.registry.package import load_package

        policy = load_package(d)
    else:
        try:
            model_type = json.loads((d / CONFIG_NAME).read_text()).get("model_type")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise ValueError(f"{d / CONFIG_NAME}: cannot read: {exc}") from exc
        if model_type == "openvla":
            from wmpo_core.policy.openvla import load_openvla

            policy = load_openvla(d, unnorm_key)
        else:
            policy = VLAPolicy.from_pretrained(d).eval()
    if unnorm_key is not None:
        policy.norm_stats.get(unnorm_key)  # fail now, not at the first prediction
        policy.config.unnorm_key = unnorm_key
    if device is not None or dtype is not None:
        place_policy(policy, device, dtype)
    return policy
