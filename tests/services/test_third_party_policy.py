"""A routing policy from a package nobody in Forge wrote: pip install it, name it, use it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from forge_core import plugins
from svc_actors import Worker

pytestmark = pytest.mark.timeout(90)

POLICY = '''
from forge_core.hookspecs import hookimpl


class HighestIndex:
    """Always the healthy replica with the highest index (easy to observe)."""

    name = "{name}"

    def __init__(self, offset=0):
        self.offset = offset

    def choose(self, replicas, session_id):
        return max(replicas, key=lambda r: r.index)


@hookimpl
def forge_routing_policies():
    return [HighestIndex]
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.0.1"

[project.entry-points.forge_core]
{name} = "{module}"

[tool.setuptools]
py-modules = ["{module}"]
'''


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                   check=True, capture_output=True, timeout=120)


@pytest.fixture
def installed_policy(tmp_path):
    tag = uuid.uuid4().hex[:8]
    name, module, dist = f"highest_{tag}", f"forge_test_policy_{tag}", f"forge-test-policy-{tag}"
    (tmp_path / f"{module}.py").write_text(POLICY.format(name=name))
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(PYPROJECT.format(dist=dist, name=name, module=module)))
    pip("install", "--no-deps", "--no-build-isolation", str(tmp_path))
    plugins.reset()
    try:
        yield name
    finally:
        pip("uninstall", "-y", dist)
        plugins.reset()


async def test_a_pip_installed_policy_is_used_by_name(installed_policy):
    assert installed_policy in plugins.routing_policies()
    svc = await Worker.options(num_replicas=3, router=installed_policy,
                               router_options={"offset": 1}).as_service()
    replicas = {(await svc.info.route())["replica"] for _ in range(6)}
    assert replicas == {2}
    await svc.shutdown()
