"""Where a policy runs: the ``device`` / ``dtype`` settings shared by the policy node, `wmpo predict` and `wmpo eval`.

Torch-free at import, so command-line parsers can use the help texts without loading torch.
"""

from __future__ import annotations

from typing import Any

DEVICE_HELP = "where the policy runs: auto (the first CUDA GPU when there is one, else cpu), cpu, cuda or cuda:N"
MODELS_DEVICE_HELP = ("where the world model, reward model and policy run: cpu (default), cuda, cuda:N or auto "
                      "(the first CUDA GPU when there is one)")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_HELP = "weights dtype: auto (as stored in the package), float32, bfloat16 or float16"


def resolve_device(spec: str | None = "auto"):
    """``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> a torch device; a GPU that is not there is an error naming it."""
    import torch

    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {spec!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"device {spec!r}: this machine has {count} CUDA device(s)")
    return device


def place_policy(policy: Any, device: str | None = "auto", dtype: str | None = "auto") -> Any:
    """Move ``policy`` to ``device`` and cast its weights to ``dtype`` (``auto`` keeps the stored one).

    Only parameters and persistent buffers are cast: non-persistent float buffers (rotary frequencies,
    image normalization constants) stay float32, as when a bf16 checkpoint is loaded.
    """
    import torch

    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    policy.to(resolve_device(device))
    if dtype != "auto":
        target = getattr(torch, dtype)
        for p in policy.parameters():
            if p.is_floating_point():
                p.data = p.data.to(target)
    return policy
