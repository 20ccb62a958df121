"""Physical floors that Forge's figures are compared with, measured in the same run.

- raw uvloop socket ping-pong between two processes (TCP on loopback, or a Unix socket);
- raw uvloop gather: one client, N echo processes, one small message to each, wait for all;
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
while True:
    header = conn.recv(8, socket.MSG_WAITALL)
    if len(header) < 8: break
    n = int.from_bytes(header, "little")
    buf = bytearray(n); view = memoryview(buf); got = 0
    while got < n:
        got += conn.recv_into(view[got:], min(n - got, 1 << 24))
    conn.sendall(b"k")
"""


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


def ping_pong_us(kind: str = "tcp", iterations: int = 2000, message: bytes = b"x" * 64) -> list[float]:
    """Round-trip times (microseconds) of a raw uvloop ping-pong between two processes."""
    server = EchoServer(kind)
    try:
        async def run():
            client = await server.connect()
            for _ in range(200):
                await client.roundtrip(message)
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                await client.roundtrip(message)
                times.append((time.perf_counter() - start) * 1e6)
            return times

        return uvloop.run(run())
    finally:
        server.close()


def gather_us(processes: int = 4, iterations: int = 1000, message: bytes = b"x" * 64) -> list[float]:
    """One small message to each of N echo processes, wait for all: times in microseconds."""
    servers = [EchoServer("tcp") for _ in range(processes)]
    try:
        async def run():
            clients = [await s.connect() for s in servers]
            times = []
            for i in range(iterations + 100):
                start = time.perf_counter()
                await asyncio.gather(*(c.roundtrip(message) for c in clients))
                if i >= 100:
                    times.append((time.perf_counter() - start) * 1e6)
            return times

        return uvloop.run(run())
    finally:
        for s in servers:
            s.close()


def bulk_gbps(nbytes: int, repeats: int = 5) -> list[float]:
    """Raw socket bulk transfer between two processes, GB/s per repeat (receiver acks)."""
    proc = subprocess.Popen([sys.executable, "-c", _SINK_SERVER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    try:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        payload = bytearray(os.urandom(1 << 20)) * (nbytes >> 20)
        rates = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            sock.sendall(nbytes.to_bytes(8, "little"))
            sock.sendall(payload)
            sock.recv(1)
            rates.append(nbytes / (time.perf_counter() - start) / 1e9)
        sock.close()
        return rates[1:]
    finally:
        proc.kill()
        proc.wait()


def memcpy_gbps(nbytes: int = 256 << 20, repeats: int = 5) -> list[float]:
    """Single-thread memcpy bandwidth (numpy copy into memory already touched)."""
    import numpy as np

    src = np.frombuffer(os.urandom(1 << 20) * (nbytes >> 20), dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return rates


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]
