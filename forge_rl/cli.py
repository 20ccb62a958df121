"""The RL layer's ``forge`` subcommands, registered through the ``forge.commands`` entry points."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def demo_command(commands) -> None:
    demo = commands.add_parser(
        "demo", help="a GRPO RL loop on Forge services: policy (vLLM), reward, buffer, trainer",
        description="Runs a small GRPO-style RL loop on Forge services and shows that it learns: "
                    "a policy service answers 'a+b=', a reward service scores the answers, a "
                    "trainer learns from them and syncs its weights to every policy replica.")
    demo.add_argument("--steps", type=int, default=50, help="RL steps (default 50)")
    demo.add_argument("--mode", choices=["async", "sync"], default="async",
                      help="async (default): rollouts and training overlap; sync: lock-step")
    demo.add_argument("--max-policy-age", type=int, default=1, metavar="N",
                      help="async: train on samples at most N weight versions old (default 1; "
                           "0 is exactly the sync loop)")
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
    demo.add_argument("--json", metavar="FILE", help="write the run (per-step rewards, phases, "
                                                     "samples/s, accuracy) as JSON here")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="stream the services' own output (vLLM's) here as well as to "
                           "OUTPUT/engines.log")
    demo.add_argument("--dashboard", type=int, nargs="?", const=8265, metavar="PORT",
                      help="serve the live dashboard on 127.0.0.1:PORT (default 8265)")
    demo.add_argument("--walkthrough", action="store_true",
                      help="run the Monarch walkthrough example instead")
    demo.set_defaults(run=_demo)


def grpo_command(commands) -> None:
    grpo = commands.add_parser(
        "grpo", help="GRPO on a local Hugging Face causal LM (Llama, Qwen2, Qwen3)",
        description="Trains a local Hugging Face model with GRPO on math word problems. The "
                    "config is a YAML file (at least `model: DIR` and `steps: N`) and key=value "
                    "overrides; see the README's 'Real models' section for every key.")
    grpo.add_argument("--config", metavar="FILE.yaml", help="the run's config file")
    grpo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="settings that replace the file's, e.g. steps=10 beta=0")
    grpo.add_argument("--json", metavar="FILE", help="write the run (per-step rewards and "
                                                     "losses, samples/s) as JSON here")
    grpo.set_defaults(run=_grpo)


def _grpo(args: argparse.Namespace) -> int:
    from .config import ConfigError, load

    try:
        cfg = load(args.config, args.overrides)  # every check, before any process starts
    except ConfigError as exc:
        sys.exit(f"forge grpo: {exc}")
    import asyncio
    import json

    from .grpo.run import run

    report = asyncio.run(run(cfg))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


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
