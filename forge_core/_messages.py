"""The kernel's envelope: what every message between Forge processes starts with.

``meta = HEADER(kind, request_id, len(actor_id)) + actor_id + body``. The envelope is a fixed
struct, not pickle, so a process can always answer a request (for instance with "could not
unpickle your arguments") without trusting its body.

The body of a call is ``u8 len(name) + name + pickle((args, kwargs))``, the pickle left out
when there are no arguments; the body of a reply is the pickled result, empty for ``None``.
Most calls of an RL loop (``step()``, ``nop()``, a weight-sync notice) thus need no pickle at
either end.
"""

from __future__ import annotations

import pickle
import struct
import traceback
from typing import Any

from . import _wire
from .errors import ActorError, RemoteException

HEADER = struct.Struct("<BQH")

REQUEST = 1  # call an endpoint; a reply follows
SEND = 2  # call an endpoint; no reply (broadcast)
REPLY_OK = 3
REPLY_ERR = 4
SPAWN = 5  # construct an actor; a reply follows
STOP = 6  # stop this process
PING = 7  # liveness probe; a reply follows
REQUEST_TRACED = 8  # REQUEST whose body starts with u8 len + a W3C traceparent (_tracing)


def wire_name(name: str) -> bytes:
    """An endpoint's name as a call body starts with it."""
    encoded = name.encode()
    if len(encoded) > 255:
        raise TypeError(f"endpoint name {name[:40]!r}... is longer than 255 bytes")
    return bytes([len(encoded)]) + encoded


def call_body(wire: bytes, args: tuple, kwargs: dict, pickled: bytes | None = None) -> bytes:
    """The body of a call; ``pickled`` is ``(args, kwargs)`` already pickled, if any."""
    if pickled is None and (args or kwargs):
        pickled = pickle.dumps((args, kwargs), _wire.PROTOCOL)
    return wire + pickled if pickled else wire


def pack(kind: int, request_id: int, actor_id: bytes, payload: bytes) -> bytes:
    return HEADER.pack(kind, request_id, len(actor_id)) + actor_id + payload


def unpack(meta: bytes) -> tuple[int, int, bytes, int]:
    """-> (kind, request_id, actor_id, offset of the pickle in ``meta``)."""
    kind, request_id, actor_len = HEADER.unpack_from(meta)
    start = HEADER.size + actor_len
    return kind, request_id, meta[HEADER.size:start], start


def encode_error(exc: BaseException, where: str) -> tuple[bytes, list]:
    """Pickle an endpoint's exception, with its traceback, for the caller.

    The message and traceback travel apart from the exception itself (pickled on its own), so
    that the caller still learns what was raised, where, when the exception cannot be unpickled
    there (a custom ``__init__`` that its ``args`` do not fit, a class the caller lacks)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    summary = f"{type(exc).__name__}: {exc}"
    message = f"{where} raised {summary}"
    try:
        blob, buffers = _wire.dumps(exc)
    except Exception as pickling_error:  # the exception itself does not pickle
        message = f"{message} (the exception could not be pickled: {pickling_error!r})"
        blob, buffers = _wire.dumps(RemoteException(summary))
    return _wire.dumps((message, tb, summary, blob))[0], buffers


def encode_failure(message: str) -> tuple[bytes, list]:
    """An error the kernel itself reports (bad arguments on arrival, unknown actor, ...)."""
    blob, buffers = _wire.dumps(RemoteException(message))
    return _wire.dumps((message, "", message, blob))[0], buffers


def decode_reply(kind: int, meta: bytes, offset: int, buffers: list) -> Any:
    """Turn a reply into the value, or raise ``ActorError``."""
    if kind == REPLY_OK:
        if offset == len(meta):
            return None
        try:
            return _wire.loads(memoryview(meta)[offset:], buffers)
        except Exception as exc:  # neither the endpoint raised nor the caller's code: say so
            raise ActorError(f"the result of the call could not be unpickled here: "
                             f"{exc!r}") from exc
    try:
        message, tb, summary, blob = _wire.loads(memoryview(meta)[offset:], [])
    except Exception as unpickling_error:
        raise ActorError(f"an endpoint failed and its error report could not be read: "
                         f"{unpickling_error!r}") from None
    try:
        exc = _wire.loads(blob, buffers)
    except Exception as unpickling_error:
        message = f"{message} (the exception could not be unpickled here: {unpickling_error!r})"
        exc = RemoteException(summary)
    text = f"{message}\n\nRemote traceback:\n{tb}" if tb else message
    raise ActorError(text, exc, tb)
