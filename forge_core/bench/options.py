"""What ``forge bench`` runs: transports, sections, sizes, repeats, and how many calls make
one sample. ``--quick`` is the same suite with less of everything."""

from __future__ import annotations

from dataclasses import dataclass

TRANSPORTS = ("in-process", "shm", "tcp")
WEIGHT_BACKENDS = ("shm", "tcp", "cuda_ipc", "nccl")
SECTIONS = ("latency", "pipelined", "mesh", "tensor", "weights", "services")
ALIASES = {"inproc": "in-process", "local": "in-process"}
# Each cross-process transport's latency floor: the same bytes through the kernel's cheapest
# equivalent socket, between two bare uvloop processes.
SOCKET_KIND = {"shm": "unix", "tcp": "tcp"}
MESH_PROCS = 4
WEIGHTS_MAX_REPEATS = 3  # a 1 GiB step takes seconds: 3 bound the weights' share of a run


@dataclass
class Options:
    quick: bool = False
    transports: tuple[str, ...] = TRANSPORTS
    weight_backends: tuple[str, ...] = WEIGHT_BACKENDS
    sections: tuple[str, ...] = SECTIONS
    sizes: tuple[int, ...] = (1 << 20, 64 << 20, 256 << 20)
    repeat: int = 5
    weights_bytes: int = 1 << 30
    rtt_calls: int = 2000
    pipelined_calls: int = 10000
    gather_calls: int = 500
    route_calls: int = 1000
    window_s: float = 1.0  # one sample of a routing policy under load
    progress: bool = True

    @classmethod
    def make(cls, quick: bool = False, only: str | None = None, sizes: str | None = None,
             repeat: int | None = None, weights_size: str | None = None,
             progress: bool = True) -> "Options":
        base = cls.quick_defaults() if quick else cls()
        out = cls(**{**base.__dict__, "progress": progress})
        if only:
            out.transports, out.weight_backends, out.sections = _parse_only(only)
        if sizes:
            out.sizes = tuple(parse_size(s) for s in sizes.split(",") if s.strip())
        if repeat is not None:
            if repeat < 1:
                raise ValueError("--repeat must be at least 1")
            out.repeat = repeat
        if weights_size:
            out.weights_bytes = parse_size(weights_size)
        return out

    @classmethod
    def quick_defaults(cls) -> "Options":
        return cls(quick=True, sizes=(1 << 20, 16 << 20), repeat=3, weights_bytes=64 << 20,
                   rtt_calls=300, pipelined_calls=2000, gather_calls=100, route_calls=200,
                   window_s=0.3)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def parse_size(text: str) -> int:
    """``"64M"``, ``"1G"``, ``"512K"`` or a number of bytes (binary units: 1M is 1 MiB)."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = float(text[:-1] if scale > 1 else text)
    if number <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return int(number * scale) // 4 * 4 or 4  # float32 tensors: a whole number of elements


def format_size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def _parse_only(only: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``--only`` names transports, weight-sync backends and sections, in any mix; a kind not
    named is not filtered (``--only tcp,shm`` runs every section over those two)."""
    names = [ALIASES.get(n.strip(), n.strip()) for n in only.split(",") if n.strip()]
    known = set(TRANSPORTS) | set(WEIGHT_BACKENDS) | set(SECTIONS)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--only: unknown {', '.join(unknown)}; choose from transports "
                         f"{', '.join(TRANSPORTS)} (or inproc), weight-sync backends "
                         f"{', '.join(WEIGHT_BACKENDS)}, sections {', '.join(SECTIONS)}")
    picked_transports = [n for n in names if n in TRANSPORTS or n in WEIGHT_BACKENDS]
    sections = tuple(n for n in SECTIONS if n in names) or SECTIONS
    if not picked_transports:
        return TRANSPORTS, WEIGHT_BACKENDS, sections
    return (tuple(t for t in TRANSPORTS if t in picked_transports),
            tuple(b for b in WEIGHT_BACKENDS if b in picked_transports), sections)
