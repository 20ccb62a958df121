"""Every line a proc prints reaches its client, named: ``[policy.r0 1] ...``.

A proc's stdout and stderr are pipes that the client reads on its home loop (see ``_procs``).
Each line is prefixed with its mesh's name and the proc's rank, and goes where the mesh's
``logs`` option says: ``"stream"`` (the client's stdout/stderr, the default), ``"file"``
(appended to ``log_file``) or ``"both"``.

Streamed lines are folded: the same text from several ranks of one mesh within
``FOLD_SECONDS`` comes out once, as ``[policy.r0 x8: 0-7] text`` (eight ranks printing the same
warning is one warning). A rank's own lines keep their order: a line folds into an earlier
one only if that rank has printed nothing since. Files get every line, unfolded.

Nothing is lost when a proc dies: the pipe holds what it wrote, read to its end; folded lines
still waiting are written when their window closes, or at the latest when the client exits.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Any, TextIO

MODES = ("stream", "file", "both")
FOLD_SECONDS = float(os.environ.get("FORGE_LOG_FOLD_SECONDS", "0.25"))


def check_options(logs: str, log_file: str | None) -> None:
    """Raise at once, before any process starts, for options that cannot work."""
    if logs not in MODES:
        raise ValueError(f"logs={logs!r}: choose one of {', '.join(MODES)}")
    if logs != "stream" and not log_file:
        raise ValueError(f"logs={logs!r} writes the procs' lines to a file: give log_file=PATH")


class MeshLog:
    """Where one mesh's lines go."""

    def __init__(self, name: str, logs: str = "stream", log_file: str | None = None):
        check_options(logs, log_file)
        self.name = name
        self.stream = logs in ("stream", "both")
        self.log_file = log_file if logs in ("file", "both") else None
        self._file: TextIO | None = None

    def line(self, rank: int, fd: int, text: str) -> None:
        if self.log_file is not None:
            if self._file is None:
                os.makedirs(os.path.dirname(os.path.abspath(self.log_file)), exist_ok=True)
                self._file = open(self.log_file, "a", buffering=1)
            self._file.write(f"[{self.name} {rank}] {text}\n")
        if self.stream:
            folder.add(self, rank, fd, text)


class _Entry:
    __slots__ = ("mesh", "fd", "text", "ranks", "seq")

    def __init__(self, mesh: MeshLog, fd: int, text: str, rank: int, seq: int):
        self.mesh, self.fd, self.text, self.ranks, self.seq = mesh, fd, text, [rank], seq


class _Folder:
    """Lines waiting out their fold window, in the order they first arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the home loop adds; atexit may flush from elsewhere
        self._pending: list[_Entry] = []
        self._by_text: dict[tuple[int, int, str], _Entry] = {}
        self._last_seq: dict[tuple[int, int], int] = {}  # (mesh, rank) -> its newest entry
        self._seq = 0

    def add(self, mesh: MeshLog, rank: int, fd: int, text: str) -> None:
        if FOLD_SECONDS <= 0:
            _write(fd, _format(mesh, [rank], text))
            return
        with self._lock:
            key = (id(mesh), fd, text)
            entry = self._by_text.get(key)
            last = self._last_seq.get((id(mesh), rank), -1)
            if entry is not None and rank not in entry.ranks and entry.seq >= last:
                entry.ranks.append(rank)
                self._last_seq[(id(mesh), rank)] = entry.seq
                return
            self._seq += 1
            entry = self._by_text[key] = _Entry(mesh, fd, text, rank, self._seq)
            self._pending.append(entry)
            self._last_seq[(id(mesh), rank)] = entry.seq
        _call_later(FOLD_SECONDS, self.flush_through, entry.seq)

    def flush_through(self, seq: int | None = None) -> None:
        """Write every waiting line up to entry ``seq`` (all of them for None)."""
        with self._lock:
            count = len(self._pending) if seq is None else sum(
                1 for e in self._pending if e.seq <= seq)
            due, self._pending = self._pending[:count], self._pending[count:]
            for entry in due:
                key = (id(entry.mesh), entry.fd, entry.text)
                if self._by_text.get(key) is entry:
                    del self._by_text[key]
        for entry in due:
            _write(entry.fd, _format(entry.mesh, entry.ranks, entry.text))


def _format(mesh: MeshLog, ranks: list[int], text: str) -> str:
    if len(ranks) == 1:
        return f"[{mesh.name} {ranks[0]}] {text}\n"
    return f"[{mesh.name} x{len(ranks)}: {_spans(sorted(ranks))}] {text}\n"


def _spans(ranks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    spans, start = [], ranks[0]
    for previous, rank in zip(ranks, ranks[1:] + [None]):
        if rank != previous + 1 if rank is not None else True:
            spans.append(str(start) if start == previous else f"{start}-{previous}")
            start = rank
    return ",".join(spans)


def _write(fd: int, line: str) -> None:
    stream = sys.stderr if fd == 2 else sys.stdout
    try:
        stream.write(line)
        stream.flush()
    except (OSError, ValueError):  # the client's own stream is closed: nowhere left to say it
        pass


def _call_later(delay: float, callback: Any, *args: Any) -> None:
    import asyncio

    asyncio.get_running_loop().call_later(delay, callback, *args)


folder = _Folder()
atexit.register(folder.flush_through)


class PipeReader:
    """Reads one pipe of one proc on the home loop and hands its lines to the mesh's log."""

    def __init__(self, loop: Any, fd: int, mesh: MeshLog, rank: int, target_fd: int):
        self.loop, self.fd, self.mesh, self.rank, self.target_fd = loop, fd, mesh, rank, target_fd
        self._partial = b""
        self.closed = loop.create_future()  # done at end of file: all it wrote has been read
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            if self._partial:  # a last line without its newline
                self._emit(self._partial)
            self.closed.set_result(None)
            return
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._emit(line)

    def _emit(self, raw: bytes) -> None:
        self.mesh.line(self.rank, self.target_fd, raw.decode(errors="replace").rstrip("\r"))
