"""The shm transport passes the conformance suite every transport plugin runs."""

from __future__ import annotations

import pytest

from forge_core.testing import TransportConformance
from forge_transport_shm import ShmTransport

pytestmark = pytest.mark.timeout(120)


class TestShmConformance(TransportConformance):
    transport_factory = ShmTransport
