"""``ForgeActor``: an actor class that starts itself as an actor mesh or as a service.

    policy = await Policy.options(num_replicas=4, router="least_loaded").as_service(model)
    trainer = await Trainer.options(procs=2).as_actor(lr=1e-5)
    await Policy.shutdown(policy); await Trainer.shutdown(trainer)
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, ClassVar

from .. import plugins
from .._endpoint import _ATTR, endpoint, endpoints_of
from .._mesh import ActorMesh, ProcMesh, spawn_cluster_procs, spawn_procs, this_proc
from ..actor import Actor
from ._controller import ServiceController
from ._interface import INSTALL_HINT, ServiceInterface, _unwrap
from ._options import ServiceConfig
from ._replica import ReplicaRecipe, constructed

# The processes of each mesh ``as_actor`` made, so that ``shutdown(mesh)`` can end them.
_actor_procs: "weakref.WeakKeyDictionary[ActorMesh, ProcMesh]" = weakref.WeakKeyDictionary()


class ForgeActor(Actor):
    """Base class of actors that run as services (replicated, routed, supervised) or as plain
    actor meshes. An optional ``async def setup(self)`` runs on every new replica (and every
    rank of an ``as_actor`` mesh) after construction: the place for heavy initialization, such
    as loading a model. Its errors reach whoever started the service or mesh.
    """

    _forge_config: ClassVar[ServiceConfig] = ServiceConfig()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        setup = cls.__dict__.get("setup")
        if callable(setup) and not hasattr(setup, _ATTR):
            endpoint(setup)  # setup is an endpoint whether or not it was marked as one

    @classmethod
    def options(cls, **options: Any) -> type:
        """A copy of this class configured for ``as_service``/``as_actor``.

        Options: procs, num_replicas, with_gpus, hosts, router, router_options, name, env,
        probe_interval, probe_timeout, max_restarts, restart_backoff, start_timeout,
        retry_wait, logs, log_file (see ``ServiceConfig``). Unknown names raise ``TypeError``.
        """
        base = cls._actor_class()
        config = cls._forge_config.with_changes(base.__name__, options)
        return type(base.__name__, (base,), {
            "_forge_config": config, "_forge_base": base, "__module__": base.__module__,
            "__qualname__": base.__qualname__, "__doc__": base.__doc__})

    @classmethod
    def _actor_class(cls) -> type:
        # Classes made by options() stand for the user's class: that is what gets spawned.
        return cls.__dict__.get("_forge_base") or cls

    @classmethod
    async def as_service(cls, *args: Any, **kwargs: Any) -> ServiceInterface:
        """Start ``num_replicas`` replicas of ``cls(*args, **kwargs)`` (each on ``procs``
        processes of its own), run ``setup`` on each, and return the interface to route to
        them. Raises the first replica's error if any fails to start (nothing is left running).
        """
        return await launch_service(cls._actor_class(), cls._forge_config, args, kwargs)

    @classmethod
    async def as_actor(cls, *args: Any, **kwargs: Any) -> ActorMesh:
        """Start one actor mesh of ``cls(*args, **kwargs)`` on ``procs`` new processes, run
        ``setup`` on every rank, and return the mesh."""
        return await launch_actor(cls._actor_class(), cls._forge_config, args, kwargs)

    @classmethod
    async def shutdown(cls, handle: Any) -> None:
        """Stop what ``as_service`` or ``as_actor`` returned."""
        if isinstance(handle, ServiceInterface):
            await handle.shutdown()
            return
        procs = _actor_procs.pop(handle, None) if isinstance(handle, ActorMesh) else None
        if procs is None:
            raise TypeError(f"shutdown() stops what as_service() or as_actor() returned in this "
                            f"process, not {handle!r}")
        await procs.stop()


def _check_arguments(actor_class: type, args: tuple, kwargs: dict) -> None:
    try:
        inspect.signature(actor_class).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"{actor_class.__name__}{inspect.signature(actor_class)}: {exc}") from None


async def launch_service(actor_class: type, config: ServiceConfig, args: tuple,
                         kwargs: dict) -> ServiceInterface:
    _check_arguments(actor_class, args, kwargs)
    factory = plugins.require("routing policy", config.router, plugins.routing_policies(),
                              INSTALL_HINT)
    factory(**config.router_options)  # bad router options fail here, before any process starts
    name = config.name or actor_class.__name__
    endpoints = endpoints_of(actor_class)
    recipe = ReplicaRecipe(name, actor_class, args, kwargs, config, "setup" in endpoints)
    # The controller lives here, in the caller's process: it owns the replicas' processes, so
    # the kernel tells it of their deaths first.
    controller = this_proc().spawn(f"{name}.controller", ServiceController, recipe)
    await constructed(controller)
    uid = controller._actor_id
    view = _unwrap(await controller.start.call_one(uid))
    return ServiceInterface(name, uid, actor_class.__name__, endpoints, controller, config, view)


async def launch_actor(actor_class: type, config: ServiceConfig, args: tuple,
                       kwargs: dict) -> ActorMesh:
    if config.num_replicas != 1:
        raise ValueError("num_replicas is for as_service(); as_actor() starts one actor mesh "
                         "(use procs= for its size)")
    _check_arguments(actor_class, args, kwargs)
    name = config.name or actor_class.__name__
    sizes = {config.dimension: config.procs}
    env = dict(config.env)
    procs = (spawn_cluster_procs(list(config.hosts), sizes, env=env, name=name) if config.hosts
             else spawn_procs(sizes, env=env, name=name, logs=config.logs,
                              log_file=config.log_file))
    try:
        mesh = procs.spawn(name, actor_class, *args, **kwargs)
        await constructed(mesh)
        if "setup" in endpoints_of(actor_class):
            await mesh.setup.call()
    except BaseException:
        await procs.stop()
        raise
    _actor_procs[mesh] = procs
    return mesh
