"""What the shm tests look at: memfd mappings and descriptors, /dev/shm, live processes."""

from __future__ import annotations

import gc
import os
import time

MEMFD = "memfd:forge-shm"


def memfd_mappings(pid: int | str = "self") -> int:
    """Mappings of forge-shm segments in a process (sender pools and receiver views)."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(MEMFD in line for line in f)


def memfd_fds(pid: int | str = "self") -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += MEMFD in os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return count


def dev_shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def eventually(predicate, timeout: float = 10.0) -> bool:
    """True once ``predicate()`` holds (collecting garbage in between), False at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def address_of(value) -> int:
    """Where a tensor's or a numpy array's data starts."""
    if hasattr(value, "data_ptr"):
        return value.data_ptr()
    return value.ctypes.data


def in_shared_memory(value) -> bool:
    """Whether a tensor's or array's data lies in a forge-shm mapping of this process."""
    address = address_of(value)
    with open("/proc/self/maps") as f:
        for line in f:
            if MEMFD not in line:
                continue
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if start <= address < end:
                return True
    return False
