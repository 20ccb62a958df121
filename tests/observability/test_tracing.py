"""With tracing configured, one call that calls another actor is one trace across three
processes; with it off, nothing is traced (and no OpenTelemetry module is loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(60)

HERE = os.path.dirname(__file__)

CLIENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {here!r})
    from forge_core.actor import spawn_procs
    from obs_actors import Caller, Worker

    async def main():
        workers = spawn_procs({{"procs": 1}}, name="workers")
        callers = spawn_procs({{"procs": 1}}, name="callers")
        worker = workers.spawn("worker", Worker)
        caller = callers.spawn("caller", Caller, worker)
        await worker.ping.call_one()
        await caller.relay.call_one()
        print("opentelemetry" in " ".join(sys.modules))
        await callers.stop()
        await workers.stop()

    asyncio.run(main())
""")


def run_client(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_TRACE_FILE", "FORGE_TRACING")}
    return subprocess.run([sys.executable, "-c", CLIENT.format(here=HERE)],
                          env={**env, **env_extra}, capture_output=True, text=True, timeout=50)


def test_a_call_that_calls_another_actor_is_one_trace_across_processes(tmp_path):
    path = tmp_path / "spans.jsonl"
    done = run_client({"FORGE_TRACE_FILE": str(path)})
    assert done.returncode == 0, done.stderr
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    relay = [s for s in spans if s["name"] == "Caller.relay"]
    assert {s["kind"] for s in relay} == {"SpanKind.CLIENT", "SpanKind.SERVER"}, spans
    trace_id = relay[0]["context"]["trace_id"]
    in_trace = [s for s in spans if s["context"]["trace_id"] == trace_id]
    names = sorted((s["name"], s["kind"]) for s in in_trace)
    assert names == [("Caller.relay", "SpanKind.CLIENT"), ("Caller.relay", "SpanKind.SERVER"),
                     ("Worker.ping", "SpanKind.CLIENT"), ("Worker.ping", "SpanKind.SERVER")]
    by_kind = {(s["name"], s["kind"]): s for s in in_trace}
    # Each server span is the child of its client span; the nested call, of the relay's.
    assert (by_kind[("Caller.relay", "SpanKind.SERVER")]["parent_id"]
            == by_kind[("Caller.relay", "SpanKind.CLIENT")]["context"]["span_id"])
    assert (by_kind[("Worker.ping", "SpanKind.CLIENT")]["parent_id"]
            == by_kind[("Caller.relay", "SpanKind.SERVER")]["context"]["span_id"])
    assert (by_kind[("Worker.ping", "SpanKind.SERVER")]["parent_id"]
            == by_kind[("Worker.ping", "SpanKind.CLIENT")]["context"]["span_id"])
    pids = {s["resource"]["attributes"]["process.pid"] for s in in_trace}
    assert len(pids) == 3  # client, caller's proc, worker's proc


def test_tracing_is_off_unless_configured():
    done = run_client({})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # no OpenTelemetry module was even imported
