"""The shm transport beside its physical floors, measured in the same run.

    python benchmarks/bench_shm.py [--quick] [--json PATH] [--skip-wakeup]

Figures (medians over rounds; ratios are ours / floor):
  wakeup   p50 round trip of a 64-byte ping-pong between two uvloop processes, per wake-up
           mechanism: what the shm transport's frame path was chosen from
  rtt      trivial actor call awaited one at a time: over shm, over the TCP transport, and a
           raw uvloop Unix-socket ping-pong (target: shm <= 1.2x unix, and below tcp)
  tensor   a 256 MiB float32 tensor as an argument, answered with its sum, in GB/s, against
           single-thread memcpy (target: >= 0.6x memcpy)

Not measured: many senders at once, tensors on GPUs, hosts with more than a few cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import socket
import statistics
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import baselines as floor  # noqa: E402
import uvloop  # noqa: E402

MESSAGE = b"x" * 64


# ---------------------------------------------------------------------------------------------
# Wake-up candidates: each is (setup_parent, setup_child) over fds made before fork(); the
# child echoes, the parent times round trips. Both sides are uvloop processes.


class _Pipes:
    """A pipe each way; readiness through the loop's epoll (add_reader), raw os.read/write."""

    hot = False

    def __init__(self) -> None:
        self.parent_r, self.child_w = os.pipe()
        self.child_r, self.parent_w = os.pipe()

    def ends(self, child: bool) -> tuple[int, int]:
        return (self.child_r, self.child_w) if child else (self.parent_r, self.parent_w)

    def attach(self, loop, child: bool, on_data) -> object:
        read_fd, write_fd = self.ends(child)
        os.set_blocking(read_fd, False)
        hot = _hot(loop) if self.hot else None

        def readable() -> None:
            data = os.read(read_fd, 65536)
            if hot is not None:
                hot.poke()
            on_data(data)

        loop.add_reader(read_fd, readable)

        def send(data: bytes) -> None:
            os.write(write_fd, data)
            if hot is not None:
                hot.poke()

        return send


class _HotPipes(_Pipes):
    """Pipes, with the loop kept polling for a moment after traffic (the shm transport's
    choice: ``forge_transport_shm._hot``, which backs off when the CPU is contended)."""

    hot = True


def _hot(loop):
    from forge_transport_shm._hot import hot_loop

    return hot_loop(loop)


class _UnixPair(_Pipes):
    """A Unix stream socketpair, add_reader + recv/send (no uvloop transport object)."""

    def __init__(self) -> None:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.parent_r = self.parent_w = a.detach()
        self.child_r = self.child_w = b.detach()


class _EventfdRing:
    """A shared-memory slot per direction plus an eventfd doorbell: write the bytes into
    shared memory, then ring. (Without a doorbell, polling a ring from Python needs a memory
    fence Python cannot issue; a spinning reader then misses wake-ups.)"""

    def __init__(self) -> None:
        self.memory_fd = os.memfd_create("bench-ring")
        os.ftruncate(self.memory_fd, 8192)
        self.to_child = os.eventfd(0, os.EFD_NONBLOCK)
        self.to_parent = os.eventfd(0, os.EFD_NONBLOCK)

    def attach(self, loop, child: bool, on_data) -> object:
        memory = mmap.mmap(self.memory_fd, 8192)
        inbox, outbox = (0, 4096) if child else (4096, 0)
        bell_in, bell_out = (self.to_child, self.to_parent) if child else (
            self.to_parent, self.to_child)

        def readable() -> None:
            os.eventfd_read(bell_in)
            (size,) = struct.unpack_from("<I", memory, inbox)
            on_data(memory[inbox + 4:inbox + 4 + size])

        loop.add_reader(bell_in, readable)

        def send(data: bytes) -> None:
            struct.pack_into("<I", memory, outbox, len(data))
            memory[outbox + 4:outbox + 4 + len(data)] = data
            os.eventfd_write(bell_out, 1)

        return send


def _wakeup_pingpong(channel, iterations: int) -> list[float]:
    pid = os.fork()
    if pid == 0:  # the echo side
        try:
            async def echo() -> None:
                loop = asyncio.get_running_loop()
                box: list = []
                box.append(channel.attach(loop, True, lambda data: box[0](data)))
                await asyncio.Event().wait()

            uvloop.run(echo())
        finally:
            os._exit(0)
    try:
        async def measure() -> list[float]:
            loop = asyncio.get_running_loop()
            waiting: list = [None]
            send = channel.attach(loop, False, lambda data: waiting[0].set_result(data))
            times = []
            for i in range(iterations + 300):
                waiting[0] = loop.create_future()
                start = time.perf_counter()
                send(MESSAGE)
                await waiting[0]
                if i >= 300:
                    times.append((time.perf_counter() - start) * 1e6)
            return times

        return uvloop.run(measure())
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


WAKEUPS = {
    "unix socket, uvloop protocol": None,  # baselines.ping_pong_us("unix")
    "unix socketpair, add_reader": _UnixPair,
    "pipe pair, add_reader": _Pipes,
    "eventfd doorbell + shared slot": _EventfdRing,
    "pipe pair + hot loop (shm's choice)": _HotPipes,
}


def wakeups(rounds: int, iterations: int) -> dict[str, dict[str, float]]:
    """Run before anything starts a thread: it forks."""
    samples: dict[str, list[list[float]]] = {name: [] for name in WAKEUPS}
    for _ in range(rounds):  # interleaved, so that a busy moment hits every candidate
        for name, make in WAKEUPS.items():
            if make is None:
                samples[name].append(floor.ping_pong_us("unix", iterations, MESSAGE))
            else:
                samples[name].append(_wakeup_pingpong(make(), iterations))
    return {name: {"p50_us": statistics.median(statistics.median(r) for r in runs),
                   "p99_us": statistics.median(floor.percentile(r, 99) for r in runs)}
            for name, runs in samples.items()}


# ---------------------------------------------------------------------------------------------
# Forge over shm and over tcp


def run(quick: bool, skip_wakeup: bool) -> dict:
    rounds = 3 if quick else 7
    iterations = 1000 if quick else 3000
    results: dict = {}
    if not skip_wakeup:
        results["wakeup"] = wakeups(rounds, iterations)
        print("wake-up between two uvloop processes (64-byte ping-pong, p50 / p99):")
        for name, figures in results["wakeup"].items():
            print(f"  {name:<38} {figures['p50_us']:7.1f} us  {figures['p99_us']:7.1f} us")

    # Imported only now: the wake-up candidates above fork, and must do so before the
    # runtime starts a thread.
    from forge_core.actor import spawn_procs
    from forge_core.bench.calls import Bench
    from forge_core.bench.calls import latencies_us, tensor_gbps
    shm_procs = spawn_procs(per_host={"procs": 1})
    tcp_procs = spawn_procs(per_host={"procs": 1}, transport="tcp")
    shm_mesh, tcp_mesh = shm_procs.spawn("b", Bench), tcp_procs.spawn("b", Bench)

    rtt: dict[str, list[float]] = {"shm": [], "tcp": [], "unix": []}
    for _ in range(rounds):
        rtt["unix"].append(floor.median(floor.ping_pong_us("unix", iterations)))

        async def both() -> tuple[float, float]:
            return (floor.median(await latencies_us(shm_mesh, iterations, warmup=300)),
                    floor.median(await latencies_us(tcp_mesh, iterations, warmup=300)))

        shm, tcp = uvloop.run(both())
        rtt["shm"].append(shm)
        rtt["tcp"].append(tcp)
    medians = {k: statistics.median(v) for k, v in rtt.items()}
    results["rtt_us"] = medians
    results["rtt_ratio_shm_vs_unix"] = medians["shm"] / medians["unix"]
    results["rtt_ratio_shm_vs_tcp"] = medians["shm"] / medians["tcp"]
    print(f"rtt      shm {medians['shm']:7.1f} us   tcp {medians['tcp']:7.1f} us   raw unix "
          f"{medians['unix']:7.1f} us   shm/unix {results['rtt_ratio_shm_vs_unix']:.2f} "
          f"(target <= 1.2)   shm/tcp {results['rtt_ratio_shm_vs_tcp']:.2f} (target < 1)")

    try:
        import torch
    except ImportError:
        print("tensor   skipped: torch is not installed")
    else:
        tensor = torch.rand(64 << 20)  # 256 MiB of float32
        repeats = 3 if quick else 5
        shm_rates, memcpy_rates, tcp_rates = [], [], []
        for _ in range(rounds):
            memcpy_rates.append(floor.median(floor.memcpy_gbps(256 << 20, repeats)))
            shm_rates.append(floor.median(uvloop.run(
                tensor_gbps(shm_mesh, tensor, repeats, warmup=2, endpoint="total"))))
        tcp_rates.append(floor.median(uvloop.run(
            tensor_gbps(tcp_mesh, tensor, 2, warmup=2, endpoint="total"))))
        shm, memcpy, tcp = (statistics.median(r) for r in (shm_rates, memcpy_rates, tcp_rates))
        results["tensor_gbps"] = {"shm": shm, "memcpy": memcpy, "tcp": tcp}
        results["tensor_ratio_shm_vs_memcpy"] = shm / memcpy
        print(f"tensor   shm {shm:5.2f} GB/s   memcpy {memcpy:5.2f} GB/s   tcp {tcp:5.2f} GB/s   "
              f"shm/memcpy {shm / memcpy:.2f} (target >= 0.6)")
    shm_procs.stop().get(timeout=10)
    tcp_procs.stop().get(timeout=10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-wakeup", action="store_true")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
          flush=True)
    results = run(args.quick, args.skip_wakeup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
