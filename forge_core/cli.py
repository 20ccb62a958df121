"""The ``forge`` command: ``forge demo``, ``forge plugins``, ``forge bench``."""

from __future__ import annotations

import argparse
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

    demo = commands.add_parser(
        "demo", help="a GRPO RL loop on Forge services: policy (vLLM), reward, buffer, trainer",
        description="Runs a small GRPO-style RL loop on Forge services and shows that it learns: "
                    "a policy service answers 'a+b=', a reward service scores the answers, a "
                    "trainer learns from them and syncs its weights to every policy replica.")
    demo.add_argument("--steps", type=int, default=50, help="RL steps (default 50)")
    demo.add_argument("--replicas", type=int, default=2, help="policy replicas (default 2)")
    demo.add_argument("--hidden-size", type=int, default=64, help="model width (default 64)")
    demo.add_argument("--layers", type=int, default=2, help="model layers (default 2)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--generator", choices=["auto", "vllm", "torch"], default="auto",
                      help="vLLM where installed (auto), or the plain torch generator")
    demo.add_argument("--transport", "--weight-sync", dest="weight_sync", default="auto",
                      help="weight-sync backend: auto, shm or tcp (default auto)")
    demo.add_argument("--kill-replica-at", type=int, default=-1, metavar="STEP",
                      help="kill -9 one policy replica before this step, to watch recovery")
    demo.add_argument("--output", default="forge-demo-out", help="folder for the reward curve")
    demo.add_argument("--walkthrough", action="store_true",
                      help="run the Monarch walkthrough example instead")
    demo.set_defaults(run=_demo)

    listing = commands.add_parser("plugins", help="list installed plugins and their hooks")
    listing.set_defaults(run=_plugins)

    commands.add_parser("agent", help="serve this host to Forge clients (forge agent -h)")

    bench = commands.add_parser(
        "bench", help="compare transports, each figure beside the machine's floor",
        description="Measures every installed transport (in-process, shm, tcp; cuda_ipc and "
                    "nccl weight sync on GPU hosts) beside floors measured in the same run: "
                    "raw uvloop ping-pong, raw socket bulk transfer, memcpy. Figures are "
                    "medians over repeats with min and max.")
    bench.add_argument("--quick", action="store_true",
                       help="fewer calls, sizes 1M,16M, 64 MiB weights, 3 repeats: a smoke run")
    bench.add_argument("--only", metavar="NAMES",
                       help="comma list of transports (inproc, shm, tcp), weight-sync backends "
                            "(shm, tcp, cuda_ipc, nccl) and/or sections (latency, pipelined, "
                            "mesh, tensor, weights, services)")
    bench.add_argument("--sizes", metavar="SIZES",
                       help="tensor sizes, e.g. 1M,64M,256M (the default)")
    bench.add_argument("--repeat", type=int, metavar="N",
                       help="samples per figure (default 5, quick 3; weight sync at most 3)")
    bench.add_argument("--weights-size", metavar="SIZE",
                       help="state dict for weight sync (default 1G, quick 64M)")
    bench.add_argument("--json", metavar="PATH", help="write every figure and sample here")
    bench.add_argument("--plot", metavar="PATH", help="write a PNG chart here")
    bench.add_argument("--compare", metavar="OLD.json",
                       help="print each median's ratio to an earlier --json run")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
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
    if args.walkthrough:
        return subprocess.call([sys.executable, str(_example("walkthrough.py"))])
    import asyncio

    from .demo.loop import DemoConfig, run

    options = {k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__}
    asyncio.run(run(DemoConfig(**options)))
    return 0


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
    from .bench.command import main as bench_main
    from .bench.options import Options

    try:
        options = Options.make(args.quick, args.only, args.sizes, args.repeat, args.weights_size,
                               progress=not args.no_progress)
    except ValueError as exc:
        sys.exit(f"forge bench: {exc}")
    return bench_main(options, args.json, args.plot, args.compare)


if __name__ == "__main__":
    sys.exit(main())
