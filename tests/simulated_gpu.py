"""A GPU simulated on the CPU, to test device placement on a machine without one.

:class:`SimulatedGPU` is a torch function mode. Every tensor computes on the CPU, but the mode
remembers which tensors are "on the GPU" and enforces what a real CUDA device would:

- a tensor is on the GPU when it was moved there (``.to("cuda")``, ``.to(gpu_tensor)``,
  ``.cuda()``, ``module.to("cuda")``), created there (``device="cuda"`` or ``device=x.device``
  of a GPU tensor ``x``: such tensors report ``cuda:0`` as their device), or computed from a
  GPU tensor;
- an operation that mixes a GPU tensor with a CPU tensor of one or more dimensions is a
  *violation* (CUDA raises "Expected all tensors to be on the same device"); CPU scalars
  (0-d tensors) may mix, as on CUDA; indexing a GPU tensor with CPU indices and copying a CPU
  tensor into a GPU one are transfers, as on CUDA;
- ``.numpy()`` of a GPU tensor is a violation; ``.cpu()`` / ``.to("cpu")`` of one is a
  *copy to the host*, recorded with its shape; ``.item()``, ``int()``, ``.tolist()`` are
  counted as synchronizations, and every other operation on GPU tensors is counted by name.

A hard-coded ``torch.zeros(shape)`` (no device) or ``.cpu()`` in a path that should stay on the
device therefore shows up as a violation or as an extra copy to the host, although every number
is computed on the CPU exactly as without the mode.
"""

from __future__ import annotations

import traceback
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

GPU = torch.device("cuda", 0)
_CPU = torch.device("cpu")
_TensorBase = torch._C.TensorBase
_SYNCS = {"item", "tolist", "__int__", "__float__", "__bool__", "__index__"}
_NO_SWAP = {"device", "_parse_to"}  # torch.device("cuda") and nn.Module.to's argument parsing must see "cuda"
_NOT_COMPUTE = {"_has_compatible_shallow_copy_type"}  # nn.Module.to comparing a tensor with its moved copy


def _is_gpu_spec(value) -> bool:
    return (isinstance(value, torch.device) and value.type == "cuda") or (
        isinstance(value, str) and value.startswith("cuda"))


def _is_cpu_spec(value) -> bool:
    return (isinstance(value, torch.device) and value.type == "cpu") or (isinstance(value, str) and value == "cpu")


def _where() -> str:
    """The innermost frame outside torch and this file: where the offending call was written."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("simulated_gpu.py"):
            return f"{frame.filename}:{frame.lineno} {frame.line}"
    return "?"


@dataclass
class HostCopy:
    """A GPU tensor copied to the host: its shape and where it was asked for."""

    shape: tuple[int, ...]
    where: str


class SimulatedGPU(TorchFunctionMode):
    """Track GPU placement while computing on the CPU (see the module docstring)."""

    def __init__(self, watch: tuple[str, ...] = ()):
        """``watch``: operation names whose calls on GPU tensors are also counted by the line that made them."""
        super().__init__()
        self.watch = set(watch)
        self.watched: Counter[str] = Counter()  # "name at file:line" -> calls on GPU tensors
        self.violations: list[str] = []
        self.host_copies: list[HostCopy] = []
        self.syncs = 0
        self.gpu_ops: Counter[str] = Counter()  # operations run on GPU tensors, by name
        self._on_gpu: dict[int, weakref.ref] = {}

    # ------------------------------------------------------------------ placement
    def on_gpu(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is (simulated) on the GPU."""
        ref = self._on_gpu.get(id(t))
        return ref is not None and ref() is t

    def _mark(self, t):
        if isinstance(t, torch.Tensor):
            self._on_gpu[id(t)] = weakref.ref(t)
        return t

    def place(self, *modules: torch.nn.Module) -> None:
        """Put every parameter and buffer of ``modules`` on the GPU (as ``module.to("cuda")`` inside the mode)."""
        for m in modules:
            for t in [*m.parameters(), *m.buffers()]:
                self._mark(t)

    # ------------------------------------------------------------------ dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        owner = getattr(func, "__self__", None)
        if owner is _TensorBase.device:  # x.device
            return GPU if self.on_gpu(args[0]) else func(*args, **kwargs)
        if owner is _TensorBase.is_cuda:
            return self.on_gpu(args[0])
        if owner is _TensorBase.is_cpu:
            return not self.on_gpu(args[0])
        if owner is _TensorBase.data and name == "__set__":  # param.data = ... (nn.Module.to)
            out = func(*args, **kwargs)
            if self.on_gpu(args[1]):
                self._mark(args[0])
            else:
                self._on_gpu.pop(id(args[0]), None)
            return out

        wants_gpu = wants_cpu = False

        def swap(value):
            nonlocal wants_gpu, wants_cpu
            if _is_gpu_spec(value):
                wants_gpu = True
                return _CPU
            if _is_cpu_spec(value):
                wants_cpu = True
            return value

        if name not in _NO_SWAP:
            args, kwargs = tree_map(swap, args), tree_map(swap, kwargs)
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        self_tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None

        if name in ("numpy", "__array__") and self_tensor is not None and self.on_gpu(self_tensor):
            self.violations.append(f"numpy() of a GPU tensor {tuple(self_tensor.shape)} at {_where()}")
            return func(*args, **kwargs)
        if name in _SYNCS and self_tensor is not None and self.on_gpu(self_tensor):
            self.syncs += 1
            return func(*args, **kwargs)

        out = func(*args, **kwargs)

        if name in ("cpu", "to", "cuda", "type_as") and self_tensor is not None:  # type_as(x) moves to x's device
            target_gpu = (name == "cuda" or wants_gpu
                          or (name in ("to", "type_as") and any(self.on_gpu(t) for t in tensors[1:])))
            if name == "cpu" or (wants_cpu and not target_gpu):
                if self.on_gpu(self_tensor):
                    self.host_copies.append(HostCopy(tuple(self_tensor.shape), _where()))
                    return out.clone() if out is self_tensor else out  # a new tensor, as a real copy is
                return out
            if target_gpu or self.on_gpu(self_tensor):
                if out is self_tensor and not self.on_gpu(self_tensor):
                    out = out.clone()  # the host tensor stays on the host; its copy is on the GPU
                return self._mark(out)
            return out

        if name in _NOT_COMPUTE:
            return out
        gpu = [t for t in tensors if self.on_gpu(t)]
        if name in ("__getitem__", "__setitem__", "copy_", "index_put_", "index_put"):
            # indices may live on the host, and copying host data into a GPU tensor is a transfer
            if self_tensor is not None and self.on_gpu(self_tensor):
                return tree_map(self._mark, out)
            if gpu and any(t.dim() > 0 for t in gpu):
                self.violations.append(f"{name}: a host tensor {tuple(self_tensor.shape)} indexed or written with "
                                       f"GPU tensors at {_where()}")
            return out
        if gpu:
            self.gpu_ops[name] += 1
            if name in self.watch:
                self.watched[f"{name} at {_where()}"] += 1
            host = [t for t in tensors if not self.on_gpu(t) and t.dim() > 0]
            if host:
                self.violations.append(f"{name}: GPU tensors mixed with host tensor(s) "
                                       f"{[tuple(t.shape) for t in host]} at {_where()}")
        if gpu or wants_gpu:
            return tree_map(self._mark, out)
        return out
