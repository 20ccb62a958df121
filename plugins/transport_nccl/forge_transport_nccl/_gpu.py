"""What the GPU backends need, checked lazily and reported by name (never an ImportError)."""

from __future__ import annotations

import functools
from typing import Any

INSTALL = "pip install 'forge-transport-nccl[gpu]'"


@functools.lru_cache(maxsize=None)
def torch_cuda() -> tuple[bool, str]:
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return True, ""


@functools.lru_cache(maxsize=None)
def cupy_or_reason() -> tuple[Any, str]:
    """cupy, ready for device calls; or None and why not."""
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return None, f"cupy is not installed ({INSTALL})"
    ok, why = torch_cuda()
    if not ok:
        return None, why
    try:
        import cupy
    except ImportError:
        return None, f"cupy is not installed ({INSTALL})"
    except Exception as exc:  # a broken CUDA install shows up here
        return None, f"cupy cannot be imported: {exc}"
    try:
        usable = cupy.is_available()
    except Exception:
        usable = False
    if not usable:
        return None, "cupy sees no CUDA GPU (cupy.is_available() is False)"
    return cupy, ""


@functools.lru_cache(maxsize=None)
def nccl_or_reason() -> tuple[Any, str]:
    """cupy's NCCL bindings, or None and why not."""
    cupy, why = cupy_or_reason()
    if cupy is None:
        return None, why
    try:
        from cupy.cuda import nccl
    except Exception as exc:
        return None, f"cupy's NCCL bindings cannot be imported: {exc}"
    if not getattr(nccl, "available", False):
        return None, "cupy finds no NCCL library (pip install nvidia-nccl-cu13)"
    return nccl, ""


def device_uuid(index: int) -> str:
    import torch

    return str(torch.cuda.get_device_properties(index).uuid)


def local_index(uuid: str) -> int | None:
    """The index, in this process, of the GPU with this UUID (CUDA_VISIBLE_DEVICES renumbers)."""
    import torch

    for index in range(torch.cuda.device_count()):
        if device_uuid(index) == uuid:
            return index
    return None


def wrap(cupy: Any, ptr: int, nbytes: int, index: int, owner: Any = None) -> Any:
    """A torch uint8 tensor over device memory cupy knows by pointer (no copy)."""
    import torch

    memory = cupy.cuda.UnownedMemory(ptr, nbytes, owner, index)
    array = cupy.ndarray((nbytes,), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))
    return torch.from_dlpack(array)
