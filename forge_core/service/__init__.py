"""Services: replicated actors behind one handle, with routing, sessions and recovery.

    from forge_core import ForgeActor, endpoint

    policy = await Policy.options(num_replicas=4, router="least_loaded").as_service(model)
    await policy.generate.route(prompt)        # one healthy replica, picked by the policy
    await policy.generate.fanout(prompt)       # every healthy replica
    async with policy.session():               # these calls stick to one replica
        ...
    await policy.shutdown()

``routing`` holds the contract routing plugins implement; the rest is machinery.
"""

from ..errors import NoReplicaAvailable, RoutingError
from ._forge_actor import ForgeActor
from ._interface import ServiceEndpoint, ServiceInterface, Session
from ._options import ServiceConfig
from ._view import ReplicaMetrics

__all__ = ["ForgeActor", "NoReplicaAvailable", "ReplicaMetrics", "RoutingError",
           "ServiceConfig", "ServiceEndpoint", "ServiceInterface", "Session"]
