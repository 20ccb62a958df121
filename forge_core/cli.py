"""The ``forge`` command: ``forge demo``, ``forge plugins``, ``forge bench``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:  # the agent parses its own options
        from .agent import main as agent_main

        return agent_main(argv[1:])
    parser = argparse.ArgumentParser(prog="forge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the main example job")
    demo.set_defaults(run=_demo)

    listing = commands.add_parser("plugins", help="list installed plugins and their hooks")
    listing.set_defaults(run=_plugins)

    commands.add_parser("agent", help="serve this host to Forge clients (forge agent -h)")

    bench = commands.add_parser("bench", help="run the kernel benchmarks")
    bench.add_argument("--quick", action="store_true", help="fewer iterations")
    bench.set_defaults(run=_bench)

    args = parser.parse_args(argv)
    return args.run(args)


def _example(name: str) -> Path:
    path = REPO / "examples" / name
    if not path.exists():
        sys.exit(f"forge: {path} not found; `forge demo` runs the examples of a source checkout "
                 f"installed as the README says (pip install -e .)")
    return path


def _demo(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, str(_example("walkthrough.py"))])


def _plugins(args: argparse.Namespace) -> int:
    from . import plugins

    rows = plugins.describe()
    if not rows:
        print("no plugins installed (entry-point group 'forge_core')")
        return 0
    width = max(len(r["name"]) for r in rows)
    dist_width = max(len(r["distribution"]) for r in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['distribution']:<{dist_width}}  "
              f"{', '.join(row['hooks'])}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    script = REPO / "benchmarks" / "bench_kernel.py"
    if not script.exists():
        sys.exit(f"forge: {script} not found (run from a source checkout)")
    env = dict(os.environ)
    return subprocess.call([sys.executable, str(script)] + (["--quick"] if args.quick else []),
                           env=env)


if __name__ == "__main__":
    sys.exit(main())
