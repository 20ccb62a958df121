"""What a result was measured on: machine, load, Python, torch, Forge's packages, git commit.

Figures from different machines (or from one machine under different load) do not compare;
this header goes above every table and into every JSON file so that a reader can tell.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def collect() -> dict:
    return {
        "host": platform.node(),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_avg_1m": os.getloadavg()[0],
        "gpus": gpus(),
        "python": platform.python_version(),
        "torch": _torch_version(),
        "packages": _packages(),
        "commit": _commit(),
    }


def lines(header: dict) -> list[str]:
    packages = ", ".join(f"{name} {version}" for name, version in header["packages"].items())
    load = f"load {header['load_avg_1m']:.1f} at start"
    if "load_avg_1m_end" in header:
        load += f", {header['load_avg_1m_end']:.1f} at end"
    return [
        f"machine  {header['host']}: {header['machine']}, {header['cpu']}, {header['cores']} "
        f"cores, {header['memory_gib']:.0f} GiB; {load}",
        f"gpus     {', '.join(header['gpus']) or 'none'}",
        f"python   {header['python']}, torch {header['torch']}",
        f"packages {packages}",
        f"commit   {header['commit']}",
    ]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return 0.0


def gpus() -> list[str]:
    """The CUDA devices, named only if torch is loaded already (importing it takes seconds):
    ask again after the run, which loads it wherever a figure needs it."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def _torch_version() -> str:
    """From the installed package's metadata: importing torch here would cost seconds before
    the suite starts its processes (the suite imports it later, while they boot)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.__version__
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _packages() -> dict[str, str]:
    """forge-core and every distribution that registers a Forge plugin."""
    import importlib.metadata

    found = {"forge-core": importlib.metadata.version("forge-core")}
    for entry in importlib.metadata.entry_points(group="forge_core"):
        if entry.dist is not None:
            found[entry.dist.name] = entry.dist.version
    return dict(sorted(found.items()))


def _commit() -> str:
    """The git commit of the source tree, "+dirty" with uncommitted changes; "unknown" for an
    installed package without its repository."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    if not (REPO / ".git").exists():  # installed: a repository around site-packages is not ours
        return "unknown"
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
