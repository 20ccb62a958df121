"""The plugin system: entry points, blocking, listing, and errors that say what to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forge_core import plugins
from forge_core.errors import PluginError


def test_the_tcp_transport_is_found_through_its_entry_point():
    assert "tcp" in plugins.transports()


def test_hookspecs_cover_every_replaceable_piece():
    from forge_core import hookspecs

    for hook in ["forge_transports", "forge_routing_policies", "forge_allocators",
                 "forge_gpu_inventory", "forge_weight_sync_backends"]:
        assert callable(getattr(hookspecs, hook))


def test_forge_plugins_lists_plugins_and_hooks():
    out = subprocess.run([sys.executable, "-m", "forge_core.cli", "plugins"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "tcp" in out.stdout and "forge-transport-tcp" in out.stdout
    assert "forge_transports" in out.stdout


def test_a_blocked_plugin_is_not_loaded_and_the_error_says_so():
    # Every transport is blocked (shm too, where installed): only then does nothing reach.
    env = dict(os.environ, FORGE_DISABLE_PLUGINS="tcp,shm")
    code = ("from forge_core import plugins\n"
            "assert not {'tcp', 'shm'} & set(plugins.transports())\n"
            "from forge_core.actor import spawn_procs\n"
            "spawn_procs(per_host={'procs': 1})\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode != 0
    assert "no transport plugin" in out.stderr and "forge-transport-tcp" in out.stderr


def test_a_missing_capability_names_what_is_installed():
    with pytest.raises(PluginError, match=r"no transport named 'carrier-pigeon'.*installed transports: .*tcp"):
        plugins.require("transport", "carrier-pigeon", plugins.transports(), "Install it.")


def test_forcing_an_unknown_transport_is_a_clear_error():
    from actors import Counter
    from forge_core.actor import spawn_procs

    procs = spawn_procs(per_host={"procs": 1}, transport="carrier-pigeon")
    mesh = procs.spawn("c", Counter)
    with pytest.raises(Exception, match="carrier-pigeon"):
        mesh.get_value.call_one().get(timeout=30)
    procs.stop().get(timeout=10)
