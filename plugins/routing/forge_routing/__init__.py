"""Forge's routing policies, registered through the ``forge_routing_policies`` hook.

Each policy class is its own factory: it has a ``name``, and calling it with the service's
``router_options`` makes a policy. See ``forge_core.service.routing`` for the contract.
"""

from __future__ import annotations

from forge_core.hookspecs import hookimpl

from .policies import LeastLoaded, RoundRobin, SessionSticky


@hookimpl
def forge_routing_policies() -> list:
    return [RoundRobin, LeastLoaded, SessionSticky]
