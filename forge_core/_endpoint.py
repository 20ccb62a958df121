"""``@endpoint``: marking actor methods callable from other processes.

The decorator leaves the method as it is (an actor can still call ``self.method()``) and
records an ``EndpointSpec``: whether it is async, whether calls may overlap, whether a service
may retry it on another replica, and a picklable copy of its signature, so that a caller holding
only a mesh handle checks arguments before anything is sent.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from . import _messages, _wire

_ATTR = "_forge_endpoint"


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    is_async: bool
    concurrent: bool  # overlapping calls allowed (async endpoints only)
    retry: bool  # a service may retry the call on another replica if its replica dies
    signature: inspect.Signature  # without ``self``; annotations and default values stripped
    # The number of parameters when all are plain positional ones without defaults: then a
    # call with exactly that many positional arguments needs no full ``bind`` (hot path).
    plain_arity: int | None = None
    # The name as a call's body starts with it (see _messages); alone, it is a call with no
    # arguments.
    wire_name: bytes = b""

    def check_arguments(self, class_name: str, args: tuple, kwargs: dict) -> None:
        if not kwargs and len(args) == self.plain_arity:
            return
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{class_name}.{self.name}{self.signature}: {exc}") from None

    def parameter_name(self, args: tuple, kwargs: dict, position: int | str) -> str:
        if isinstance(position, str):
            return position
        try:
            names = list(self.signature.bind_partial(*args, **kwargs).arguments)
            return names[position]
        except (TypeError, IndexError):
            return f"#{position}"


def endpoint(fn: Callable | None = None, *, concurrent: bool = False, retry: bool = True):
    """Mark an actor method as an endpoint.

    ``@endpoint`` or ``@endpoint(concurrent=True)``: with ``concurrent``, calls to an async
    endpoint overlap (a vLLM-style generator batches them) instead of running one at a time.
    ``retry=False`` tells services never to run the call twice when a replica dies mid-call.
    """

    def mark(method: Callable) -> Callable:
        if not callable(method):
            raise TypeError(f"@endpoint decorates methods, not {method!r}")
        setattr(method, _ATTR, (concurrent, retry))
        return method

    return mark(fn) if fn is not None else mark


def _portable_signature(method: Callable) -> inspect.Signature:
    sig = inspect.signature(method)
    params = list(sig.parameters.values())[1:]  # drop self
    stripped = [p.replace(annotation=inspect.Parameter.empty,
                          default=None if p.default is not inspect.Parameter.empty else p.default)
                for p in params]
    return inspect.Signature(stripped)


@functools.lru_cache(maxsize=None)
def endpoints_of(cls: type) -> dict[str, EndpointSpec]:
    specs = {}
    for name in dir(cls):
        method = getattr(cls, name, None)
        marker = getattr(method, _ATTR, None)
        if marker is None:
            continue
        concurrent, retry = marker
        is_async = inspect.iscoroutinefunction(method)
        signature = _portable_signature(method)
        params = signature.parameters.values()
        plain = all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in params)
        specs[name] = EndpointSpec(name, is_async, concurrent and is_async, retry, signature,
                                   len(params) if plain else None, _messages.wire_name(name))
    return specs


def encode_call(class_name: str, spec: EndpointSpec, args: tuple, kwargs: dict
                ) -> tuple[bytes, list]:
    """Check and pickle a call's arguments at the caller; errors name the argument."""
    if not args and not kwargs and spec.plain_arity == 0:
        return spec.wire_name, []
    spec.check_arguments(class_name, args, kwargs)
    if all(map(_wire.is_plain, args)) and (not kwargs or all(map(_wire.is_plain, kwargs.values()))):
        return _messages.call_body(spec.wire_name, args, kwargs), []
    args = tuple(_wire.wrap_large_bytes(a) for a in args)
    kwargs = {k: _wire.wrap_large_bytes(v) for k, v in kwargs.items()}
    try:
        pickled, buffers = _wire.dumps((args, kwargs))
        return _messages.call_body(spec.wire_name, args, kwargs, pickled), buffers
    except NotReady:
        raise
    except Exception as exc:
        culprit = _find_unpicklable(args, kwargs)
        name = spec.parameter_name(args, kwargs, culprit) if culprit is not None else "?"
        raise TypeError(f"argument {name!r} of {class_name}.{spec.name} cannot be pickled, so it "
                        f"cannot be sent to the actor: {exc}") from exc


def _find_unpicklable(args: tuple, kwargs: dict) -> int | str | None:
    for position, value in [*enumerate(args), *kwargs.items()]:
        try:
            _wire.dumps(value)
        except NotReady:
            continue
        except Exception:
            return position
    return None


class NotReady(Exception):
    """Raised while pickling a mesh handle whose processes or actors are still starting; the
    caller waits for ``ready`` and pickles again."""

    def __init__(self, ready: Any):
        super().__init__("mesh still starting")
        self.ready = ready
