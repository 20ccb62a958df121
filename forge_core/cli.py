"""The ``forge`` command: ``forge plugins``, ``forge bench``, ``forge agent``, ``forge doctor``,
``forge dashboard``, and the commands
that installed layers add (``forge demo`` comes from the RL layer, ``forge_rl``)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:  # the agent parses its own options
        from .agent import main as agent_main

        return agent_main(argv[1:])
    parser = argparse.ArgumentParser(prog="forge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    for register in _command_plugins():
        register(commands)  # e.g. `forge demo` and `forge grpo`, from the RL layer (forge_rl)

    listing = commands.add_parser("plugins", help="list installed plugins and their hooks")
    listing.set_defaults(run=_plugins)

    commands.add_parser("agent", help="serve this host to Forge clients (forge agent -h)")

    doctor = commands.add_parser(
        "doctor", help="what every actor of every Forge client on this host is doing now",
        description="For every process of the running Forge clients of this user on this host: "
                    "the endpoint each actor runs, since when, the line it is on, and the calls "
                    "waiting on it; calls running longer than --threshold show their stack.")
    doctor.add_argument("--client", type=int, metavar="PID", help="only this client process")
    doctor.add_argument("--threshold", type=float, default=5.0, metavar="S",
                        help="mark calls running this long as stuck (default 5 s)")
    doctor.add_argument("--json", action="store_true", help="print the raw reports as JSON")
    doctor.set_defaults(run=_doctor)

    dashboard = commands.add_parser(
        "dashboard", help="serve the live dashboard of the Forge clients on this host")
    dashboard.add_argument("--port", type=int, default=8265)
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default loopback only)")
    dashboard.add_argument("--client", type=int, metavar="PID", help="only this client process")
    dashboard.set_defaults(run=_dashboard)

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


def _command_plugins() -> list:
    """Subcommands that layers above the kernel add, found through the entry-point group
    ``forge.commands``: each entry is a function that takes argparse's subparsers and adds its
    own, with ``set_defaults(run=...)``. The kernel names none of them."""
    from importlib.metadata import entry_points

    return [ep.load() for ep in sorted(entry_points(group="forge.commands"), key=lambda e: e.name)]


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


def _doctor(args: argparse.Namespace) -> int:
    from .observe import collect, doctor_report

    if args.json:
        import json

        print(json.dumps(collect(args.client), indent=1, default=str))
    else:
        print(doctor_report(args.client, args.threshold))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import logging
    import time

    from .observe import serve_dashboard

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    serve_dashboard(args.port, args.host, args.client)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
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
