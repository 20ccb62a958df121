"""The built-in routing policies, on fake replicas: no event loop, no processes."""

from __future__ import annotations

import pathlib
from collections import Counter

import pytest

from forge_core import plugins
from forge_core.errors import NoReplicaAvailable, PluginError
from forge_core.service.routing import FakeReplica, check_routing_policy
from forge_routing.policies import LeastLoaded, RoundRobin, SessionSticky


def replicas(n: int, **in_flight: int) -> list[FakeReplica]:
    return [FakeReplica(i, in_flight=in_flight.get(f"r{i}", 0)) for i in range(n)]


def test_the_plugin_registers_the_three_policies_by_name():
    found = plugins.routing_policies()
    assert {"round_robin", "least_loaded", "session_sticky"} <= set(found)
    assert found["least_loaded"] is LeastLoaded


@pytest.mark.parametrize("factory", [RoundRobin, LeastLoaded, SessionSticky],
                         ids=lambda f: f.name)
def test_every_policy_meets_the_contract(factory):
    check_routing_policy(factory)


def test_round_robin_takes_turns():
    policy, pool = RoundRobin(), replicas(3)
    assert [policy.choose(pool, None).index for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_least_loaded_picks_the_fewest_in_flight():
    policy = LeastLoaded()
    assert policy.choose(replicas(3, r0=4, r1=1, r2=2), None).index == 1


def test_least_loaded_breaks_ties_in_turn_so_sequential_session_starts_spread():
    policy, pool = LeastLoaded(), replicas(3)  # all idle: every choice is a tie
    picks = [policy.choose(pool, f"session-{i}").index for i in range(9)]
    assert picks == [0, 1, 2] * 3
    busy = replicas(4, r1=3)  # ties among 0, 2, 3 keep rotating past the busy one
    assert [policy.choose(busy, None).index for _ in range(4)] == [3, 0, 2, 3]


def test_least_loaded_starves_a_replica_that_stays_busy():
    policy, pool = LeastLoaded(), replicas(3)
    pool[0].in_flight = 50  # a slow replica piles up calls
    counts = Counter()
    for _ in range(300):
        chosen = policy.choose(pool, None)
        counts[chosen.index] += 1
        chosen.in_flight += 1
        if chosen.index != 0:
            chosen.in_flight -= 1  # fast replicas answer at once
    assert counts[0] == 0 and counts[1] == counts[2] == 150


def test_session_sticky_agrees_across_instances_without_shared_state():
    first, second = SessionSticky(), SessionSticky()  # e.g. two processes' interfaces
    pool = replicas(4)
    for i in range(50):
        session = f"s{i}"
        assert first.choose(pool, session) is second.choose(pool, session)
        assert first.choose(pool, session) is first.choose(pool, session)


def test_session_sticky_moves_only_the_sessions_of_a_replica_that_is_gone():
    policy, pool = SessionSticky(), replicas(4)
    before = {f"s{i}": policy.choose(pool, f"s{i}").index for i in range(400)}
    survivors = [r for r in pool if r.index != 2]
    after = {s: policy.choose(survivors, s).index for s in before}
    moved = {s for s in before if before[s] != after[s]}
    assert moved == {s for s in before if before[s] == 2}
    assert 60 < len(moved) < 140  # about a quarter: sessions spread over replicas


def test_session_sticky_uses_its_fallback_outside_sessions():
    policy, pool = SessionSticky(fallback="least_loaded"), replicas(3, r0=2, r2=1)
    assert policy.choose(pool, None).index == 1
    assert [SessionSticky().choose(replicas(3), None).index for _ in range(2)] == [0, 0]
    with pytest.raises(PluginError, match="no routing policy named 'nope'.*round_robin"):
        SessionSticky(fallback="nope")
    with pytest.raises(ValueError):
        SessionSticky(fallback="session_sticky")


def test_unknown_options_are_a_type_error():
    with pytest.raises(TypeError):
        RoundRobin(speed=3)


def test_an_empty_replica_list_is_no_replica_available():
    for policy in (RoundRobin(), LeastLoaded(), SessionSticky()):
        with pytest.raises(NoReplicaAvailable):
            policy.choose([], "s")


def test_the_plugin_imports_only_public_forge_modules():
    source = pathlib.Path(__file__).parents[1] / "forge_routing"
    for path in source.glob("*.py"):
        assert "forge_core._" not in path.read_text(), path
