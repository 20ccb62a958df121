"""The wire format's own corner cases."""

from __future__ import annotations

import sys
import types

from forge_core import _wire


class Point:
    def __init__(self, x):
        self.x = x


def test_pickling_while_another_thread_is_still_importing_torch(monkeypatch):
    # A half-imported torch is in sys.modules before it has a Tensor class: nothing being
    # pickled can be a tensor then, and pickling must not fail on it.
    monkeypatch.setitem(sys.modules, "torch", types.ModuleType("torch"))
    payload, buffers = _wire.dumps({"point": Point(3), "blob": bytearray(1 << 20)})
    value = _wire.loads(payload, buffers)
    assert value["point"].x == 3 and len(value["blob"]) == 1 << 20


async def test_a_call_whose_pickle_is_megabytes_crosses_tcp_whole():
    # Its frame is too large to collect in one go, so TCP reads it part by part.
    from forge_core.actor import Actor, endpoint, spawn_procs

    class Echoer(Actor):
        @endpoint
        def echo(self, value):
            return value

    procs = spawn_procs(per_host={"procs": 1}, transport="tcp")
    big = ["x" * 10] * 200_000 + [str(i) for i in range(50_000)]  # pickled in band
    assert await procs.spawn("e", Echoer).echo.call_one(big) == big
    await procs.stop()
