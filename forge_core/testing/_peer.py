"""The other process of the conformance suite's process checks.

    python -m forge_core.testing._peer stream ADDRESS   # connect, stream large messages forever
    python -m forge_core.testing._peer sink             # listen, check what arrives, report

The transport factory and the secret arrive pickled on stdin (they come from the test process,
which trusts itself). Lines on stdout tell the test what happened.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys

from ..transport import Authenticator, Connection, Transport
from .conformance import _check_stream_message, _run, digest

STREAM_BYTES = 4 << 20


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def stream(transport: Transport, auth: Authenticator, address: str) -> None:
    """Send numbered 4 MiB messages back to back until killed."""
    connection = await transport.connect(address, auth)
    connection.set_receiver(lambda meta, buffers: None, lambda error: os._exit(0))
    _say("connected")
    base = os.urandom(STREAM_BYTES)
    seq = 0
    while True:
        data = seq.to_bytes(8, "little") + base[8:]  # a fresh buffer: never mutate a sent one
        connection.send(seq.to_bytes(8, "little") + digest(data), [memoryview(data)])
        seq += 1
        while getattr(connection, "write_buffer_size", 0) > 16 << 20:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0)


async def sink(transport: Transport, auth: Authenticator, _: str) -> None:
    """Listen; check every message (seq + digest of one buffer); report on b"done"."""
    count = 0
    problem = ""

    def on_message(meta: bytes, buffers: list) -> None:
        nonlocal count, problem
        if meta == b"done":
            _say(problem or f"ok {count}")
            return
        try:
            _check_stream_message(meta, buffers, count)
        except AssertionError as exc:
            problem = problem or f"bad: {exc}"
        count += 1

    def on_connection(connection: Connection) -> None:
        connection.set_receiver(on_message, lambda error: None)

    _say(await transport.listen(on_connection, auth))
    await asyncio.Event().wait()


def main() -> None:
    mode, address = sys.argv[1], sys.argv[2]
    factory, secret = pickle.loads(sys.stdin.buffer.read())
    action = {"stream": stream, "sink": sink}[mode]
    _run(action(factory(), Authenticator(secret), address))


if __name__ == "__main__":
    main()
