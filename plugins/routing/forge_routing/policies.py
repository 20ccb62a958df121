"""The three built-in routing policies. Plain synchronous code: no I/O, no event loop.

A policy is made once per interface copy and is handed the healthy replicas of its service
(never empty, in index order) for every call it places; see ``forge_core.service.routing``.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Sequence

from forge_core.errors import NoReplicaAvailable


def _require_some(replicas: Sequence[Any], policy: str) -> None:
    if not replicas:
        raise NoReplicaAvailable(reason=f"the {policy} policy was given no healthy replica")


class RoundRobin:
    """Each call goes to the next healthy replica in turn."""

    name: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, replicas: Sequence[Any], session_id: str | None) -> Any:
        _require_some(replicas, self.name)
        turn = self._turn
        self._turn = turn + 1
        return replicas[turn % len(replicas)]

    def __repr__(self) -> str:
        return f"<RoundRobin turn={self._turn}>"


class LeastLoaded:
    """The replica with the fewest calls in flight.

    Ties go round robin: among the least loaded, the first whose index follows the one chosen
    last. So when every replica is idle (a client that starts sessions one after another, each
    finishing before the next), successive choices still visit every replica instead of piling
    onto replica 0.
    """

    name: ClassVar[str] = "least_loaded"

    def __init__(self) -> None:
        self._last = -1

    def choose(self, replicas: Sequence[Any], session_id: str | None) -> Any:
        _require_some(replicas, self.name)
        low = min(r.in_flight for r in replicas)
        first_tie = None
        for replica in replicas:
            if replica.in_flight != low:
                continue
            if replica.index > self._last:
                self._last = replica.index
                return replica
            if first_tie is None:
                first_tie = replica
        self._last = first_tie.index  # wrapped around: no tie after the last one chosen
        return first_tie

    def __repr__(self) -> str:
        return f"<LeastLoaded last={self._last}>"


def _rendezvous_score(session_id: str, index: int) -> int:
    # A stable hash (not Python's per-process salted ``hash``): every process scores alike.
    digest = hashlib.blake2b(f"{session_id}\x00{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class SessionSticky:
    """Sessions by rendezvous hashing; other calls by a fallback policy.

    A session goes to the healthy replica with the highest score for (session id, replica
    index). Interface copies in different processes therefore place a session on the same
    replica without talking to each other, and when a replica dies only the sessions it held
    move. Calls outside sessions use ``fallback`` (``"round_robin"`` by default; any installed
    policy name), made with ``fallback_options``.
    """

    name: ClassVar[str] = "session_sticky"

    def __init__(self, fallback: str = "round_robin",
                 fallback_options: dict[str, Any] | None = None) -> None:
        if fallback == self.name:
            raise ValueError("session_sticky cannot be its own fallback")
        self.fallback_name = fallback
        self._fallback = _make_policy(fallback, fallback_options or {})

    def choose(self, replicas: Sequence[Any], session_id: str | None) -> Any:
        _require_some(replicas, self.name)
        if session_id is None:
            return self._fallback.choose(replicas, None)
        return max(replicas, key=lambda r: _rendezvous_score(session_id, r.index))

    def __repr__(self) -> str:
        return f"<SessionSticky fallback={self.fallback_name}>"


_BUILT_IN = {p.name: p for p in (RoundRobin, LeastLoaded)}


def _make_policy(name: str, options: dict[str, Any]) -> Any:
    factory = _BUILT_IN.get(name)
    if factory is None:  # another installed plugin's policy
        from forge_core import plugins

        factory = plugins.require("routing policy", name, plugins.routing_policies(),
                                  "Install the plugin that provides it.")
    return factory(**options)
