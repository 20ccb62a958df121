"""Tools for plugin authors: a conformance suite every transport plugin runs against itself.

    from forge_core.testing import TransportConformance

    class TestMyTransport(TransportConformance):
        transport_factory = MyTransport      # a class or a module-level function (picklable)

or, without pytest, ``check_transport(MyTransport)``. See ``forge_core.testing.conformance``.
"""

from __future__ import annotations

from .conformance import CHECKS, TransportConformance, check_transport, run_check

__all__ = ["CHECKS", "TransportConformance", "check_transport", "run_check"]
