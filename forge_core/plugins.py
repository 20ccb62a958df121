"""Finding and loading plugins.

Plugins are found through the entry-point group ``forge_core``. A plugin can be blocked by
name with ``FORGE_DISABLE_PLUGINS=name1,name2``. A spawned Forge process is handed the list
its parent resolved (``FORGE_PLUGINS``) so that it does not scan every installed distribution
again: that scan is a large part of a bare process's start-up time.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

DISABLE_ENV = "FORGE_DISABLE_PLUGINS"
RESOLVED_ENV = "FORGE_PLUGINS"

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def blocked_names() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    with _lock:
        if _manager is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            for name in blocked_names():
                pm.set_blocked(name)
            resolved = os.environ.get(RESOLVED_ENV)
            if resolved is not None:
                _load_resolved(pm, resolved)
            else:
                pm.load_setuptools_entrypoints(hookspecs.PROJECT)
            _manager = pm
        return _manager


def _load_resolved(pm: pluggy.PluginManager, resolved: str) -> None:
    for item in filter(None, resolved.split(";")):
        name, _, module = item.partition("=")
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        pm.register(importlib.import_module(module), name=name)


def resolved_for_children() -> str:
    """The ``FORGE_PLUGINS`` value that lets a child load exactly this process's plugins."""
    pm = plugin_manager()
    items = []
    for name, plugin in pm.list_name_plugin():
        module = getattr(plugin, "__name__", None)
        if module and not pm.is_blocked(name):
            items.append(f"{name}={module}")
    return ";".join(items)


def reset() -> None:
    """Forget the loaded plugins (tests that install or block plugins call this)."""
    global _manager
    with _lock:
        _manager = None


def _collect(hook_name: str) -> list[Any]:
    results = getattr(plugin_manager().hook, hook_name)()
    return [obj for group in results for obj in (group or [])]


def transports() -> dict[str, Any]:
    return {t.name: t for t in _collect("forge_transports")}


def routing_policies() -> dict[str, Any]:
    return {p.name: p for p in _collect("forge_routing_policies")}


def allocators() -> dict[str, Any]:
    return {a.name: a for a in _collect("forge_allocators")}


def weight_sync_backends() -> dict[str, Any]:
    return {b.name: b for b in _collect("forge_weight_sync_backends")}


def require(kind: str, name: str, available: dict[str, Any], install_hint: str) -> Any:
    """Return ``available[name]`` or raise an error naming what is installed and what to do."""
    try:
        return available[name]
    except KeyError:
        have = ", ".join(sorted(available)) or "none"
        blocked = blocked_names()
        extra = f" (blocked by {DISABLE_ENV}: {', '.join(sorted(blocked))})" if blocked else ""
        raise PluginError(
            f"no {kind} named {name!r} is installed; installed {kind}s: {have}{extra}. "
            f"{install_hint}"
        ) from None


def describe() -> list[dict[str, Any]]:
    """What ``forge plugins`` prints: each plugin, its distribution and the hooks it implements."""
    pm = plugin_manager()
    dists = {name: dist for name, dist in _entry_point_dists()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({"name": name, "distribution": dists.get(name, "-"), "hooks": hooks})
    for name in sorted(blocked_names()):
        rows.append({"name": name, "distribution": dists.get(name, "-"), "hooks": ["(blocked)"]})
    return rows


def _entry_point_dists():
    import importlib.metadata  # slow to import; only `forge plugins` needs it

    for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT):
        dist = ep.dist
        yield ep.name, f"{dist.name} {dist.version}" if dist else "-"
