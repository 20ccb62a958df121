"""Serialization of messages: pickle protocol 5 with large buffers out of band.

``dumps(obj)`` returns the pickle stream plus a list of memoryviews over the large buffers
(torch tensors, numpy arrays, large top-level ``bytes``) that the stream refers to; a transport
moves those buffers as they are (scatter-gather, shared memory, ...) and ``loads`` rebuilds the
objects over whatever buffers arrive, without copying them into the pickle stream.

Classes and functions that cannot be imported by name on the other side (those of a user's
``__main__`` script or notebook) travel by value: cloudpickle does that part.
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
from typing import Any

PROTOCOL = 5
# Buffers smaller than this are cheaper to keep inside the pickle stream than to send apart.
INBAND_LIMIT = 8 * 1024
# Top-level ``bytes`` arguments at least this large travel out of band (see ``LargeBytes``).
LARGE_BYTES = 64 * 1024


_PicklerClass: type | None = None


def _pickler_class() -> type:
    """The pickler, built on first use: cloudpickle is imported only when something must be
    pickled that plain values cannot express (a spawned process answering with ints never
    imports it)."""
    global _PicklerClass
    if _PicklerClass is not None:
        return _PicklerClass
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def __init__(self, file: io.BytesIO):
            super().__init__(file, protocol=PROTOCOL, buffer_callback=self._take_buffer)
            self.file = file
            self._buffers: list[memoryview] = []
            self.busy = False

        def _take_buffer(self, pickle_buffer: pickle.PickleBuffer) -> bool:
            raw = pickle_buffer.raw()
            if raw.nbytes < INBAND_LIMIT:
                return True  # serialize in band
            self._buffers.append(raw)
            return False

        def reducer_override(self, obj: Any) -> Any:
            # Look at tensors only if the user's code imported torch: never import it here.
            # Another thread may be half-way through ``import torch`` (no ``Tensor`` yet): then
            # nothing here can be a tensor.
            torch = sys.modules.get("torch")
            tensor_type = getattr(torch, "Tensor", None)
            if tensor_type is not None and isinstance(obj, tensor_type):
                reduced = _reduce_tensor(obj, torch)
                if reduced is not NotImplemented:
                    return reduced
            if type(obj) is LargeBytes:
                return (bytes, (pickle.PickleBuffer(obj.data),))
            return super().reducer_override(obj)

    _PicklerClass = Pickler
    return Pickler


class LargeBytes:
    """Marks a ``bytes`` value to travel out of band.

    CPython's pickler writes ``bytes`` into the stream before any hook sees them, so the kernel
    wraps large top-level ``bytes`` arguments and results in this marker; the receiver gets a
    plain ``bytes`` again.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def wrap_large_bytes(value: Any) -> Any:
    if type(value) is bytes and len(value) >= LARGE_BYTES:
        return LargeBytes(value)
    return value


_local = threading.local()
_SCALARS = frozenset({type(None), bool, int, float, str})


def is_plain(value: Any) -> bool:
    """Values the C pickler handles alone, with nothing to send out of band (hot path)."""
    kind = type(value)
    return kind in _SCALARS or (kind is bytes and len(value) < LARGE_BYTES)


def dumps(obj: Any) -> tuple[bytes, list[memoryview]]:
    if type(obj) in _SCALARS:
        return pickle.dumps(obj, PROTOCOL), []
    # Building a cloudpickle Pickler costs more than pickling a small message, so each thread
    # keeps one and reuses it (a fresh one for nested calls, e.g. from a __reduce__).
    pickler = getattr(_local, "pickler", None)
    if pickler is None or pickler.busy:
        pickler = _pickler_class()(io.BytesIO())
        if getattr(_local, "pickler", None) is None:
            _local.pickler = pickler
    stream, buffers = pickler.file, []
    pickler._buffers = buffers
    pickler.busy = True
    try:
        pickler.dump(obj)
        return stream.getvalue(), buffers
    finally:
        pickler.busy = False
        pickler.clear_memo()
        pickler._buffers = []
        stream.seek(0)
        stream.truncate()


def loads(data: bytes | memoryview, buffers: list) -> Any:
    return pickle.loads(data, buffers=buffers)


# ---------------------------------------------------------------------------------------------
# torch tensors: torch's own pickling copies the storage through torch.save into the stream;
# we send the raw bytes out of band instead and rebuild a tensor over the received buffer.


def _reduce_tensor(tensor: Any, torch: Any) -> Any:
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        return NotImplemented
    if tensor.is_conj() or tensor.is_neg():
        tensor = tensor.resolve_conj().resolve_neg()
    device = str(tensor.device)
    data = tensor.detach()
    if device != "cpu":
        data = data.cpu()
    data = data.contiguous()
    is_parameter = isinstance(tensor, torch.nn.Parameter)
    dtype = str(data.dtype).removeprefix("torch.")
    if data.numel() == 0:
        raw: Any = b""
    else:
        raw = pickle.PickleBuffer(data.reshape(-1).view(torch.uint8).numpy())
    return (
        _rebuild_tensor,
        (raw, dtype, tuple(data.shape), tensor.requires_grad, is_parameter, device),
    )


def _rebuild_tensor(raw, dtype_name, shape, requires_grad, is_parameter, device):
    import torch

    dtype = getattr(torch, dtype_name)
    if len(memoryview(raw)) == 0:
        tensor = torch.empty(shape, dtype=dtype)
    else:
        if isinstance(raw, bytes):  # arrived in band: torch wants a writable buffer
            raw = bytearray(raw)
        tensor = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)
    if device != "cpu":
        tensor = tensor.to(device)
    if is_parameter:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    if requires_grad:
        tensor.requires_grad_(True)
    return tensor
