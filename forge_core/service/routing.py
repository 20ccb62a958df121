"""What a routing policy is: the contract between services and routing plugins.

A service interface picks the replica for each ``route()`` call with a *routing policy*. Plugins
provide policies through the ``forge_routing_policies`` hook as *factories*::

    @forge_core.hookimpl
    def forge_routing_policies():
        return [MyPolicyFactory()]      # each has a ``name``; calling it makes a policy

``Cls.options(router="my_policy", router_options={...})`` selects one by name; every copy of a
``ServiceInterface`` (one per process that routes) calls ``factory(**router_options)`` once and
keeps the policy it gets.

A policy's ``choose(replicas, session_id)`` is synchronous and does no I/O: nothing interleaves
between choosing and sending, so counters on the policy need no lock. It is given the healthy
replicas only (never an empty sequence; it raises ``NoReplicaAvailable`` if it is), in index
order, as light read-only views (``ReplicaView``), and returns one of them.

``session_id`` is None for calls outside a session. Inside one, the interface asks the policy
only to *place* the session (its first call, or after its replica died) and then keeps the
session on that replica itself, whatever the policy: a policy sees a session id to spread new
sessions well, or to place them deterministically so that interfaces in several processes agree
(``session_sticky`` does that by rendezvous hashing).

Policies are plain objects: test them without an event loop or processes, on fake replicas
(``check_routing_policy`` runs the checks every policy must pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

from ..errors import NoReplicaAvailable

__all__ = ["FakeReplica", "ReplicaView", "RoutingPolicy", "RoutingPolicyFactory",
           "check_routing_policy", "NoReplicaAvailable"]


@runtime_checkable
class ReplicaView(Protocol):
    """What a policy may read about a replica. Read only: the interface owns these."""

    @property
    def index(self) -> int:
        """The replica's number in its service, 0-based; a restarted replica keeps it."""

    @property
    def in_flight(self) -> int:
        """Calls this interface copy has sent to the replica that have not answered yet."""

    @property
    def healthy(self) -> bool:
        """Always True for the replicas passed to ``choose``."""


class RoutingPolicy(Protocol):
    def choose(self, replicas: Sequence[ReplicaView], session_id: str | None) -> ReplicaView:
        """Return one of ``replicas`` (non-empty, healthy, in index order). Synchronous, no I/O."""


class RoutingPolicyFactory(Protocol):
    name: str

    def __call__(self, **options: Any) -> RoutingPolicy:
        """Make a policy for one interface copy; unknown options raise ``TypeError``."""


@dataclass
class FakeReplica:
    """A stand-in replica for testing policies without processes."""

    index: int
    in_flight: int = 0
    healthy: bool = True


def check_routing_policy(factory: RoutingPolicyFactory, **options: Any) -> None:
    """Assert the contract every policy must meet (for plugin authors' tests).

    Checks that the factory has a ``name``, that its policies return one of the replicas they
    are given (for a range of sizes, with and without session ids, including after replicas
    disappear), and that an empty sequence raises ``NoReplicaAvailable``.
    """
    assert isinstance(getattr(factory, "name", None), str) and factory.name, \
        "a routing policy factory needs a non-empty str `name`"
    policy = factory(**options)
    for size in (1, 2, 3, 5):
        replicas = [FakeReplica(i, in_flight=i % 2) for i in range(size)]
        for call in range(3 * size):
            for session in (None, f"session-{call}"):
                chosen = policy.choose(replicas, session)
                assert any(chosen is r for r in replicas), \
                    f"{factory.name}.choose returned {chosen!r}, not one of the replicas it got"
        survivors = replicas[1:] or replicas
        for session in (None, "session-0"):
            chosen = policy.choose(survivors, session)
            assert any(chosen is r for r in survivors), \
                f"{factory.name}.choose returned a replica it was not given"
    try:
        policy.choose([], None)
    except NoReplicaAvailable:
        pass
    else:
        raise AssertionError(f"{factory.name}.choose([]) must raise NoReplicaAvailable")
