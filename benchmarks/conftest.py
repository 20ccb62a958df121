"""The benchmarks keep their meshes for a whole module (starting them is not what they
measure): the repository's per-test clean-up of leftover meshes is switched off here."""

import pytest


@pytest.fixture(autouse=True)
def stop_leftover_meshes():
    yield
