"""Shapes of meshes: named dimensions, points in them, slices, and ValueMesh.

Ranks are flat and row-major over the dimensions in the order given: for
``{"hosts": 2, "gpus": 4}``, rank 5 is ``{"hosts": 1, "gpus": 1}``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any, Iterator


class Point(Mapping):
    """A position in a mesh: maps each dimension to an index; ``.rank`` is the flat rank."""

    __slots__ = ("_coords", "_sizes", "rank")

    def __init__(self, coords: dict[str, int], sizes: dict[str, int]):
        self._coords = dict(coords)
        self._sizes = dict(sizes)
        self.rank = flat_rank(coords, sizes)

    def __getitem__(self, dim: str) -> int:
        return self._coords[dim]

    def __iter__(self) -> Iterator[str]:
        return iter(self._coords)

    def __len__(self) -> int:
        return len(self._coords)

    @property
    def extent(self) -> dict[str, int]:
        return dict(self._sizes)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self._coords.items())
        return f"Point(rank={self.rank}{', ' if inner else ''}{inner})"

    def __reduce__(self):
        return (Point, (self._coords, self._sizes))


def flat_rank(coords: Mapping[str, int], sizes: Mapping[str, int]) -> int:
    rank = 0
    for dim, size in sizes.items():
        rank = rank * size + coords.get(dim, 0)
    return rank


def points(sizes: dict[str, int]) -> list[Point]:
    dims = list(sizes)
    return [Point(dict(zip(dims, idx)), sizes)
            for idx in itertools.product(*(range(sizes[d]) for d in dims))]


def check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError("per_host must be a non-empty dict of dimension name to size, "
                        "e.g. {'gpus': 8} or {'procs': 2, 'gpus': 4}")
    out = {}
    for dim, size in sizes.items():
        if not isinstance(dim, str) or not isinstance(size, int) or size < 1:
            raise TypeError(f"dimension {dim!r}: sizes must be positive integers, got {size!r}")
        out[dim] = size
    return out


def select(sizes: dict[str, int], ranks: list[int], dims: dict[str, Any]
           ) -> tuple[dict[str, int], list[int]]:
    """Slice a mesh. ``dims`` maps a dimension to an index (the dimension is dropped) or a
    ``slice`` (kept, narrower). Returns the new sizes and the selected entries of ``ranks``."""
    for dim in dims:
        if dim not in sizes:
            raise KeyError(f"no dimension {dim!r} in this mesh; its dimensions are {list(sizes)}")
    chosen: dict[str, list[int]] = {}
    for dim, size in sizes.items():
        sel = dims.get(dim, slice(None))
        if isinstance(sel, int):
            if not -size <= sel < size:
                raise IndexError(f"index {sel} out of range for dimension {dim!r} of size {size}")
            chosen[dim] = [sel % size]
        elif isinstance(sel, slice):
            chosen[dim] = list(range(size))[sel]
            if not chosen[dim]:
                raise IndexError(f"slice {sel} of dimension {dim!r} selects nothing")
        else:
            raise TypeError(f"slice dimension {dim!r} with an int or a slice, not {sel!r}")
    new_sizes = {d: len(v) for d, v in chosen.items() if not isinstance(dims.get(d), int)}
    dim_names = list(sizes)
    picked = []
    for idx in itertools.product(*(chosen[d] for d in dim_names)):
        picked.append(ranks[flat_rank(dict(zip(dim_names, idx)), sizes)])
    return new_sizes, picked


class ValueMesh:
    """The results of ``call()``: one value per actor.

    It iterates, indexes and compares like a list in rank order
    (``await mesh.get.call() == [1, 1, 1, 1]``) and also maps points to values
    (``.items()``, ``values[point]``, ``values[{"gpus": 2}]``).
    """

    __slots__ = ("_sizes", "_values")

    def __init__(self, sizes: dict[str, int], values: list[Any]):
        self._sizes = dict(sizes)
        self._values = list(values)

    @property
    def extent(self) -> dict[str, int]:
        return dict(self._sizes)

    sizes = extent

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self._values[key]
        if isinstance(key, Mapping):
            return self._values[flat_rank(key, self._sizes)]
        raise TypeError(f"index a ValueMesh by rank, slice or point, not {key!r}")

    def items(self) -> Iterator[tuple[Point, Any]]:
        return zip(points(self._sizes) if self._sizes else [Point({}, {})], self._values)

    def values(self) -> list[Any]:
        return list(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ValueMesh):
            return self._values == other._values and self._sizes == other._sizes
        if isinstance(other, (list, tuple)):
            return self._values == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ValueMesh({self._sizes}, {self._values})"


def nelement(sizes: Mapping[str, int]) -> int:
    return math.prod(sizes.values()) if sizes else 1
