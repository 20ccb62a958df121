"""The TCP transport passes the conformance suite every transport plugin runs."""

from __future__ import annotations

import pytest

from forge_core.testing import TransportConformance
from forge_transport_tcp import TcpTransport

pytestmark = pytest.mark.timeout(120)


class TestTcpConformance(TransportConformance):
    transport_factory = TcpTransport
