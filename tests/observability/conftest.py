"""Observability tests: their helper actors are importable in children, and no service
outlives its test."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def shut_down_leftover_services():
    yield
    from forge_core.service._controller import shutdown_all

    shutdown_all()
