"""The segment pool on its own: no event loop, no processes."""

from __future__ import annotations

import gc
import os

import pytest

from forge_transport_shm._segments import (ARENA_BYTES, FreeBudget, InboundMaps, OutboundPool,
                                           Segment, aligned, segment_size_for)
from shm_probes import memfd_fds, memfd_mappings


def test_sizes():
    assert aligned(1) == 64 and aligned(64) == 64 and aligned(65) == 128
    assert segment_size_for(1) == ARENA_BYTES
    assert segment_size_for(256 << 20) == 256 << 20  # exactly one tensor: no waste
    assert segment_size_for((256 << 20) + 1) == 512 << 20


def test_extents_are_carved_and_coalesced():
    segment = Segment(1, ARENA_BYTES)
    try:
        a, b, c = (segment.allocate(1 << 20) for _ in range(3))
        assert (a, b, c) == (0, 1 << 20, 2 << 20)
        assert segment.free(b) and not segment.free(b)  # a second release is refused
        assert segment.allocate(1 << 20) == b  # first fit reuses the hole
        for offset in (a, b, c):
            segment.free(offset)
        assert segment.idle and segment.holes == [(0, ARENA_BYTES)]
    finally:
        segment.close()


def test_a_free_segment_is_reused_and_the_budget_drops_the_rest():
    pool = OutboundPool(FreeBudget(limit=ARENA_BYTES))
    first, offset, new = pool.allocate(1000)
    assert new and pool.release(first.id, offset) is None  # kept: within the budget
    again, offset, new = pool.allocate(2000)
    assert not new and again is first
    other, other_offset, _ = pool.allocate(ARENA_BYTES)  # no room left in the first
    assert other is not first and pool.created == 2
    assert pool.release(first.id, offset) is None
    assert pool.release(other.id, other_offset) == other.id  # over budget: peer must forget it
    assert pool.segments == 1
    pool.close()
    assert pool.segments == 0


def test_inbound_views_release_once_every_view_is_gone():
    segment = Segment(7, ARENA_BYTES)
    maps = InboundMaps()
    released = []
    try:
        segment.mm[0:5] = b"hello"
        maps.add(7, os.dup(segment.fd))
        views = maps.views(7, 0, 1000, [(0, 5), (64, 10)], lambda s, o: released.append((s, o)))
        assert bytes(views[0]) == b"hello" and views[1].nbytes == 10
        first = views[0]
        del views
        gc.collect()
        assert released == []  # one view is still alive
        del first
        gc.collect()
        assert released == [(7, 0)]
    finally:
        maps.clear()
        segment.close()


def test_inbound_maps_refuse_what_is_not_a_sealed_memfd():
    maps = InboundMaps()
    plain = os.memfd_create("plain")
    os.ftruncate(plain, 4096)
    with pytest.raises(ValueError, match="sealed"):
        maps.add(1, plain)  # takes ownership of the descriptor, and closes it
    read_end, write_end = os.pipe()
    with pytest.raises(ValueError):
        maps.add(2, read_end)
    os.close(write_end)
    assert len(maps) == 0


def test_closing_a_pool_unmaps_everything():
    maps_before, fds_before = memfd_mappings(), memfd_fds()
    pool = OutboundPool(FreeBudget(limit=1 << 30))
    for size in (100, ARENA_BYTES, 3 * ARENA_BYTES):
        pool.allocate(size)
    assert memfd_mappings() > maps_before
    pool.close()
    assert memfd_mappings() == maps_before and memfd_fds() == fds_before
