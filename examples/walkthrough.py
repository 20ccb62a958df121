"""The Monarch walkthrough, with `monarch.actor` replaced by `forge_core.actor`.

Like the original it has no `if __name__ == "__main__":` guard: Forge never re-runs the user's
script in its child processes, and `Counter`, defined here in `__main__`, travels by value.
Run it with `python examples/walkthrough.py` (or `forge demo --walkthrough`).
"""

import asyncio

from forge_core.actor import Actor, endpoint, this_host, this_proc


class Counter(Actor):
    def __init__(self, initial_value: int):
        self.value = initial_value

    @endpoint
    def increment(self) -> None:
        self.value += 1

    @endpoint
    def get_value(self) -> int:
        return self.value


async def main() -> None:
    counter = this_proc().spawn("counter", Counter, initial_value=0)   # actor in this process
    print("local counter:", await counter.get_value.call_one())
    procs = this_host().spawn_procs(per_host={"gpus": 8})              # 8 processes
    counters = procs.spawn("counters", Counter, 0)                      # one Counter in each
    await counters.increment.call()                                     # all, gather results
    print("call_one:", await counters.get_value.call_one())            # rank 0
    print("choose:", await counters.get_value.choose())                # one, picked by the kernel
    print("call:", list(await counters.get_value.call()))              # all -> ValueMesh
    await counters.increment.broadcast()                                # fire and forget
    print("after broadcast:", list(await counters.get_value.call()))
    await procs.stop()
    print("stopped 8 processes")


asyncio.run(main())
