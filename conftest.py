"""Shared fixtures: every test gets a time limit (pytest-timeout, see pyproject.toml) and any
process mesh a test leaves running is stopped after it."""

from __future__ import annotations

import os
import sys

import pytest

# Test helpers (tests/actors.py) are importable by name, also in spawned processes.
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))


@pytest.fixture(autouse=True)
def stop_leftover_meshes():
    yield
    from forge_core._mesh import stop_all_meshes

    stop_all_meshes()


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests on a fresh uvloop, as a user's ``uvloop.run(main())`` would."""
    import inspect

    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    import uvloop

    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    uvloop.run(pyfuncitem.obj(**kwargs))
    return True
