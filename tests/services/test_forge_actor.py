"""ForgeActor: options, as_actor, as_service, setup, shutdown, and the errors users meet first."""

from __future__ import annotations

import os

import pytest

from forge_core import ForgeActor, ServiceInterface
from forge_core._mesh import _live_meshes
from forge_core.actor import ActorError, ActorMesh
from forge_core.errors import PluginError
from svc_actors import BadInit, BadSetup, Worker

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_unknown_options_are_a_type_error_naming_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown option\(s\) num_replica\b.*valid options "
                                        r"are: procs, num_replicas, with_gpus, hosts, router"):
        Worker.options(num_replica=2)
    with pytest.raises(ValueError, match="procs"):
        Worker.options(procs=0)


def test_options_returns_a_configured_class_and_chains():
    configured = Worker.options(num_replicas=3).options(router="least_loaded")
    assert issubclass(configured, Worker) and configured.__name__ == "Worker"
    assert configured._forge_config.num_replicas == 3
    assert configured._forge_config.router == "least_loaded"
    assert Worker._forge_config.num_replicas == 1  # the class itself is untouched
    assert configured._actor_class() is Worker


async def test_as_actor_with_and_without_options_runs_setup_and_shuts_down():
    mesh = await Worker.as_actor(tag="plain")
    assert isinstance(mesh, ActorMesh)
    info = await mesh.info.call_one()
    assert info["tag"] == "plain" and info["setup_runs"] == 1
    pair = await Worker.options(procs=2).as_actor("pair")
    infos = await pair.info.call()
    assert [i["setup_runs"] for i in infos] == [1, 1] and len({i["pid"] for i in infos}) == 2
    await Worker.shutdown(mesh)
    await Worker.shutdown(pair)
    assert not any(_alive(p) for p in [info["pid"], *(i["pid"] for i in infos)])
    with pytest.raises(TypeError, match="shutdown"):
        await Worker.shutdown(object())


async def test_as_service_without_options_and_shutdown_by_class():
    svc = await Worker.as_service(tag="default")
    assert isinstance(svc, ServiceInterface)
    info = await svc.info.route()
    assert info["tag"] == "default" and info["setup_runs"] == 1 and info["replica"] == 0
    assert "replicas=1 healthy=1 router=round_robin" in repr(svc)
    await Worker.shutdown(svc)
    assert "stopped" in repr(svc) and not _alive(info["pid"])


@pytest.mark.parametrize("cls, message", [(BadSetup, "no model here"),
                                          (BadInit, "cannot construct")])
async def test_start_errors_reach_the_caller_and_leave_nothing_running(cls, message):
    with pytest.raises(ActorError, match=message) as info:
        await cls.options(num_replicas=2).as_service()
    assert isinstance(info.value.exception, RuntimeError)
    with pytest.raises(ActorError, match=message):
        await cls.as_actor()
    assert not [m for m in _live_meshes if not m._stopped]


async def test_bad_arguments_and_routers_fail_before_any_process_starts():
    with pytest.raises(TypeError, match="Worker"):
        await Worker.as_service(1, 2, 3, 4)
    with pytest.raises(PluginError, match="no routing policy named 'fastest'.*least_loaded"):
        await Worker.options(router="fastest").as_service()
    with pytest.raises(TypeError):
        await Worker.options(router="round_robin", router_options={"speed": 1}).as_service()
    with pytest.raises(ValueError, match="num_replicas is for as_service"):
        await Worker.options(num_replicas=2).as_actor()
    assert not [m for m in _live_meshes if not m._stopped]


async def test_actor_adverbs_on_a_service_say_to_route_or_fan_out():
    svc = await Worker.as_service()
    for adverb in ("call_one", "choose", "call", "broadcast"):
        with pytest.raises(TypeError, match=r"Use \.route\(\.\.\.\) .* \.fanout\(\.\.\.\)"):
            getattr(svc.pid, adverb)()
    with pytest.raises(TypeError, match="route"):
        svc.pid()
    with pytest.raises(AttributeError, match=r"no endpoint 'nope'.*'pid'"):
        svc.nope
    await svc.shutdown()


class Plain(ForgeActor):
    pass


def test_setup_is_an_endpoint_even_unmarked():
    from forge_core._endpoint import endpoints_of

    assert "setup" in endpoints_of(Worker)
    assert "setup" not in endpoints_of(Plain)
