"""Physical floors that Forge's figures are compared with, measured in the same run.

- raw uvloop socket ping-pong between two processes (TCP on loopback, or a Unix socket);
- raw uvloop gather: one client, N echo processes (TCP or Unix), one small message to each,
  wait for all;
- raw socket bulk transfer of N bytes between two processes (best of sendall/recv_into);
- single-thread memcpy bandwidth.

Each server is a bare ``python -c`` process running a uvloop echo protocol: the least work
any Python actor framework could possibly do per message.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import uvloop

_ECHO_SERVER = r"""
import asyncio, socket, sys, uvloop
class Echo(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        s = t.get_extra_info("socket")
        if s is not None and s.family != socket.AF_UNIX:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def data_received(self, data):
        self.t.write(data)
async def main():
    loop = asyncio.get_running_loop()
    kind, where = sys.argv[1], sys.argv[2]
    if kind == "unix":
        server = await loop.create_unix_server(Echo, where)
        print(where, flush=True)
    else:
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

_SINK_SERVER = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
bufs = {}  # one buffer per size, kept: page faults are not the socket's cost
while True:
    header = conn.recv(8, socket.MSG_WAITALL)
    if len(header) < 8: break
    n = int.from_bytes(header, "little")
    view = memoryview(bufs.setdefault(n, bytearray(n))); got = 0
    while got < n:
        got += conn.recv_into(view[got:], min(n - got, 1 << 24))
    conn.sendall(b"k")
"""


MESSAGE = b"x" * 64


class EchoServer:
    def __init__(self, kind: str = "tcp"):
        self.kind = kind
        where = os.path.join(tempfile.mkdtemp(), "echo.sock") if kind == "unix" else "-"
        self.proc = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, kind, where],
                                     stdout=subprocess.PIPE, text=True)
        self.address = self.proc.stdout.readline().strip()

    async def connect(self):
        loop = asyncio.get_running_loop()
        client = _Client()
        if self.kind == "unix":
            await loop.create_unix_connection(lambda: client, self.address)
        else:
            await loop.create_connection(lambda: client, "127.0.0.1", int(self.address))
            client.transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client

    def close(self):
        self.proc.kill()
        self.proc.wait()


class _Client(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.waiter = None

    def data_received(self, data):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    async def roundtrip(self, message: bytes) -> bytes:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(message)
        return await self.waiter


class Rig:
    """The floors' servers and buffers, kept for a whole run: each repeat then measures the
    floor itself, not the start of a Python process or the first touch of a buffer.

    ``with Rig() as rig: rig.ping_pong_us("unix", 2000)``; the module's functions of the same
    names make a rig for one measurement."""

    def __init__(self) -> None:
        self._echo: dict[str, list[EchoServer]] = {}
        self._sink: tuple[subprocess.Popen, socket.socket] | None = None
        self._payloads: dict[int, bytearray] = {}
        self._arrays: dict[int, tuple] = {}

    def __enter__(self) -> "Rig":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _echo_servers(self, kind: str, count: int) -> list[EchoServer]:
        servers = self._echo.setdefault(kind, [])
        while len(servers) < count:
            servers.append(EchoServer(kind))
        return servers[:count]

    def ping_pong_us(self, kind: str = "tcp", iterations: int = 2000,
                     message: bytes = MESSAGE) -> list[float]:
        """Round-trip times (microseconds) of a raw uvloop ping-pong between two processes."""
        return self.gather_us(kind, 1, iterations, message, warmup=200)

    def gather_us(self, kind: str = "tcp", processes: int = 4, iterations: int = 1000,
                  message: bytes = MESSAGE, warmup: int = 100) -> list[float]:
        """One small message to each of N echo processes, wait for all: times in
        microseconds."""
        servers = self._echo_servers(kind, processes)

        async def run() -> list[float]:
            clients = [await s.connect() for s in servers]

            async def once() -> None:
                if len(clients) == 1:  # a plain ping-pong: gather() would add a task per trip
                    await clients[0].roundtrip(message)
                else:
                    await asyncio.gather(*(c.roundtrip(message) for c in clients))

            times = []
            for i in range(iterations + warmup):
                start = time.perf_counter()
                await once()
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1e6)
            for client in clients:
                client.transport.close()
            return times

        return uvloop.run(run())

    def bulk_gbps(self, nbytes: int, repeats: int = 5) -> list[float]:
        """Raw socket bulk transfer between two processes, GB/s per repeat (receiver acks)."""
        if self._sink is None:
            proc = subprocess.Popen([sys.executable, "-c", _SINK_SERVER], stdout=subprocess.PIPE,
                                    text=True)
            sock = socket.create_connection(("127.0.0.1", int(proc.stdout.readline())))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            self._sink = proc, sock
        sock = self._sink[1]
        warm = nbytes in self._payloads
        if not warm:
            # Written, not calloc'ed: untouched zero pages all map one physical page, which
            # reads faster than real memory and would flatter the floor.
            self._payloads[nbytes] = bytearray(b"\x07") * nbytes
        payload = self._payloads[nbytes]
        rates = []
        for _ in range(repeats + (0 if warm else 1)):  # a first transfer faults the sink's in
            start = time.perf_counter()
            sock.sendall(nbytes.to_bytes(8, "little"))
            sock.sendall(payload)
            sock.recv(1)
            rates.append(nbytes / (time.perf_counter() - start) / 1e9)
        return rates[-repeats:]

    def memcpy_gbps(self, nbytes: int = 256 << 20, repeats: int = 5) -> list[float]:
        """Single-thread memcpy bandwidth (numpy copy into memory already touched)."""
        import numpy as np

        if nbytes not in self._arrays:
            src = np.full(nbytes, 7, dtype=np.uint8)
            dst = np.empty_like(src)
            np.copyto(dst, src)
            self._arrays[nbytes] = src, dst
        src, dst = self._arrays[nbytes]
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.copyto(dst, src)
            rates.append(nbytes / (time.perf_counter() - start) / 1e9)
        return rates

    def forget_buffers(self) -> None:
        """Let the payloads and arrays go (the servers stay)."""
        self._payloads.clear()
        self._arrays.clear()

    def close(self) -> None:
        for server in (s for servers in self._echo.values() for s in servers):
            server.close()
        self._echo.clear()
        if self._sink is not None:
            proc, sock = self._sink
            sock.close()
            proc.kill()
            proc.wait()
            self._sink = None
        self.forget_buffers()


def ping_pong_us(kind: str = "tcp", iterations: int = 2000,
                 message: bytes = MESSAGE) -> list[float]:
    with Rig() as rig:
        return rig.ping_pong_us(kind, iterations, message)


def gather_us(processes: int = 4, iterations: int = 1000, message: bytes = MESSAGE,
              kind: str = "tcp") -> list[float]:
    with Rig() as rig:
        return rig.gather_us(kind, processes, iterations, message)


def bulk_gbps(nbytes: int, repeats: int = 5) -> list[float]:
    with Rig() as rig:
        return rig.bulk_gbps(nbytes, repeats)


def memcpy_gbps(nbytes: int = 256 << 20, repeats: int = 5) -> list[float]:
    with Rig() as rig:
        return rig.memcpy_gbps(nbytes, repeats)


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
