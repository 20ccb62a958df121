"""Weight sync: a trainer publishes a versioned state dict once; every policy replica loads it.

::

    publisher = WeightPublisher()                            # in the trainer actor; backend="auto"
    handle = await publisher.publish(model.state_dict(), version=step)
    await policies.update_weights.call(handle)               # the handle is small and picklable

    # in each policy replica
    await handle.load_into(self.model)                       # copies into the module's tensors
    state_dict = await handle.fetch()                        # or: CPU tensors for an engine's loader

What users rely on:

- **One copy in.** ``publish`` packs every tensor into one flat snapshot buffer (pooled, so a
  steady loop touches no fresh memory) and returns only once the snapshot is complete: a handle
  never points at a half-written version. The trainer may change its parameters right after.
- **Monotonic versions.** Publishing a version not newer than the last one raises ValueError.
  ``load_into`` a module that already holds the same or a newer version does nothing, logs so
  and returns False.
- **Old versions are freed.** A publisher holds at most ``keep`` snapshots (default 2: the newest
  complete one and the one being written). A reader still copying an older one keeps its memory
  until it is done; a reader that arrives after the memory was reused gets ``StaleWeightsError``
  (a newer handle exists) and its model is left untouched.
- **Never mixed weights while serving.** ``WeightsGate`` is the policy-side helper: an update
  waits for the generations in flight to finish, holds new ones back while it loads, then lets
  them go. We drain rather than abort because a generation is short next to an RL step and an
  aborted one would have to be resubmitted by the caller; holding new generations back (writer
  preference) keeps a steady stream of requests from starving the update. ``generating()``
  yields the version the generation runs on, so responses can be tagged with it.

How bytes move is a plugin choice (hook ``forge_weight_sync_backends``), forced by name with
``WeightPublisher(backend=...)``. ``"auto"`` offers every suitable installed backend in the
handle, best first, and each reader takes the first one it can use from where it runs:

============  =====================================================  =======================
backend       path                                                   auto offers it for
============  =====================================================  =======================
``nccl``      CUDA broadcast from the trainer's GPU (cupy NCCL)      CUDA, ``group_size=N``
``cuda_ipc``  the replica maps the trainer's GPU memory, copies      CUDA, no ``group_size``
``shm``       memfd shared memory, mapped by replicas on the host    CPU tensors
``tcp``       actor calls to a weight server in the trainer process  always (any host)
============  =====================================================  =======================

The second half of this module is the contract a backend implements (``WeightSyncBackend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Mapping, NamedTuple, Protocol

from . import plugins
from ._runtime import host_identity
from .errors import ForgeError, PluginError

if TYPE_CHECKING:  # never import torch at module top: a bare Forge process must not pay for it
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "BackendPublisher", "Chunk", "Snapshot", "SourceUnreachable", "StaleWeightsError",
    "TensorLayout", "WeightPublisher", "WeightSyncBackend", "WeightSyncError", "WeightsGate",
    "WeightsHandle", "host_identity",
]

ALIGN = 256  # every tensor starts at a multiple of this in a snapshot (vector loads, dtype views)
# Which backends "auto" offers, best first, by where the published tensors live.
AUTO_CHAINS = {"cpu": ("shm", "tcp"), "cuda": ("cuda_ipc", "tcp")}
INSTALL_HINT = ("Install forge-weight-sync (pip install -e plugins/weight_sync) for shm and tcp, "
                "forge-transport-nccl (pip install -e 'plugins/transport_nccl[gpu]') for "
                "cuda_ipc and nccl.")


class WeightSyncError(ForgeError):
    """A version could not be read: no source of its handle is usable from this process."""


class StaleWeightsError(WeightSyncError):
    """The version was superseded and its memory reused; load the newer handle instead."""


class SourceUnreachable(WeightSyncError):
    """A backend cannot read this source from here (another host, another GPU, publisher
    gone); raised before the first chunk, so the reader moves on to the handle's next source."""


# ---------------------------------------------------------------------------------------------
# The handle: what travels from the trainer to every replica


class TensorLayout(NamedTuple):
    """Where one tensor lies in a snapshot."""

    name: str
    dtype: str  # torch dtype name without the "torch." prefix
    shape: tuple[int, ...]
    offset: int  # bytes from the start of the snapshot
    nbytes: int


@dataclass(frozen=True, eq=False)
class WeightsHandle:
    """One published version: its layout and where replicas can read it (picklable)."""

    version: int
    layout: tuple[TensorLayout, ...]
    nbytes: int
    sources: tuple[tuple[str, Any], ...]  # (backend name, that backend's locator), best first
    publisher_id: str

    async def load_into(self, target: Any) -> bool:
        """Copy this version into ``target``; return True if it loaded, False if skipped.

        ``target`` is a ``torch.nn.Module``: its ``state_dict()`` must have exactly the
        published names and shapes (checked before anything is copied; dtypes are cast), and
        a module already holding this version or a newer one is left alone. Or ``target`` is
        a callable (an inference engine's loader): it is called once with a dict of read-only
        tensors valid only during the call, and may be async.

        Raises:
            StaleWeightsError: the version is gone (superseded); nothing was copied.
            WeightSyncError: no source is readable from here; or, with ``.partial`` True, the
                copy failed part way (a multi-chunk backend whose trainer died mid-transfer)
                and the module mixes two versions.
        """
        import torch

        if isinstance(target, torch.nn.Module):
            held = _loaded_versions.get(target)
            if held is not None and self.version <= held:
                log.info("not loading weights version %d: the model already holds version %d",
                         self.version, held)
                return False
            destinations = _destinations(target.state_dict(), self.layout)
            copied = 0
            try:
                async with contextlib.aclosing(_read(self)) as chunks:
                    async for _, chunk in chunks:
                        await asyncio.to_thread(_copy_chunk, self.layout, chunk, destinations)
                        copied += 1
            except Exception as exc:
                if not copied:
                    raise  # nothing was written: the model still holds its version
                _loaded_versions.pop(target, None)
                error = WeightSyncError(f"weights version {self.version} failed part way "
                                        f"({exc!r}): the model now mixes two versions; load a "
                                        f"whole version before serving from it")
                error.partial = True
                raise error from exc
            _loaded_versions[target] = self.version
            return True
        if not callable(target):
            raise TypeError(f"load_into takes a torch.nn.Module or a callable, not {target!r}")
        tensors: dict[str, Any] = {}
        async with contextlib.aclosing(_read(self)) as chunks:
            async for _, chunk in chunks:
                tensors.update(_views(self.layout, chunk))
            result = target(tensors)
            if inspect.isawaitable(result):
                await result
        return True

    async def fetch(self, device: str = "cpu") -> dict[str, "torch.Tensor"]:
        """This version as a new state dict on ``device``, owned by the caller."""
        import torch

        wanted = torch.device(device)
        out: dict[str, torch.Tensor] = {}
        async with contextlib.aclosing(_read(self)) as chunks:
            async for backend, chunk in chunks:
                views = _views(self.layout, chunk)
                if backend.private_chunks and chunk.data.device == wanted:
                    out.update(views)  # already this reader's own memory: no copy
                else:
                    out.update(await asyncio.to_thread(_copies, views, wanted))
        return {spec.name: out[spec.name] for spec in self.layout}

    def __repr__(self) -> str:
        names = "|".join(name for name, _ in self.sources)
        return (f"<WeightsHandle version={self.version} tensors={len(self.layout)} "
                f"{self.nbytes / 2**20:.1f} MiB via {names}>")


# Which version each module holds, for the stale-version check (weak: modules come and go).
_loaded_versions: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------
# The trainer side


class WeightPublisher:
    """Publishes versioned state dicts for policy replicas to load.

    Args:
        backend: ``"auto"`` (see the module docstring) or a backend's name to force it.
        keep: snapshots held at most, the one being written included (>= 1).
        group_size: for ``nccl``: how many replicas load each version (the broadcast group is
            the trainer plus these); ``"auto"`` offers NCCL only when it is given.
    """

    def __init__(self, backend: str = "auto", *, keep: int = 2, group_size: int | None = None):
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self.backend = backend
        self.keep = keep
        self.id = uuid.uuid4().hex[:16]
        self._options: dict[str, Any] = {"group_size": group_size, "publisher_id": self.id}
        self._latest: int | None = None
        self._exporters: list[tuple[str, BackendPublisher]] | None = None
        self._snapshots: deque[Snapshot] = deque()
        self._closed = False

    @property
    def version(self) -> int | None:
        """The newest version published (or being published), None before the first."""
        return self._latest

    async def publish(self, state_dict: Mapping[str, "torch.Tensor"], version: int) -> WeightsHandle:
        """Snapshot ``state_dict`` as ``version``; return the handle once the snapshot is whole.

        Raises:
            ValueError: ``version`` is not newer than the last one published.
            PluginError: the forced backend is not installed or cannot run here.
        """
        import torch

        if self._closed:
            raise RuntimeError("this WeightPublisher is closed")
        if isinstance(version, bool) or not isinstance(version, int):
            raise TypeError(f"version must be an int, not {version!r}")
        if self._latest is not None and version <= self._latest:
            raise ValueError(f"weights version {version} is not newer than version "
                             f"{self._latest}, published earlier: versions must increase")
        items = list(state_dict.items())
        for name, tensor in items:
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"state_dict[{name!r}] is a {type(tensor).__name__}, not a tensor")
        self._latest = version  # reserved now: a racing publish of the same version fails
        layout, nbytes = plan_layout(items)
        cuda = next((t.device for _, t in items if t.device.type == "cuda"), None)
        if self._exporters is None:
            self._exporters = self._choose("cuda" if cuda is not None else "cpu")
        while len(self._snapshots) >= self.keep:  # free the oldest before taking new memory
            self._retire(self._snapshots.popleft())
        primary = self._exporters[0][1]
        snapshot = primary.allocate(nbytes, cuda if cuda is not None else torch.device("cpu"))
        snapshot.version = version
        try:
            await _pack(items, layout, snapshot.flat)
            sources = []
            for name, exporter in self._exporters:
                sources.append((name, await exporter.export(snapshot)))
        except BaseException:
            self._retire(snapshot)
            raise
        self._snapshots.append(snapshot)
        return WeightsHandle(version, tuple(layout), nbytes, tuple(sources), self.id)

    def _choose(self, device: str) -> list[tuple[str, "BackendPublisher"]]:
        installed = plugins.weight_sync_backends()
        if self.backend != "auto":
            backend = plugins.require("weight-sync backend", self.backend, installed, INSTALL_HINT)
            ok, why = backend.available()
            if not ok:
                raise PluginError(f"weight-sync backend {self.backend!r} cannot run here: {why}")
            return [(self.backend, backend.publisher(self._options))]
        chain = AUTO_CHAINS[device]
        if device == "cuda" and self._options["group_size"] is not None:
            # The whole group takes part in every broadcast, so NCCL replaces CUDA IPC here.
            chain = ("nccl", "tcp")
        chosen, skipped = [], []
        for name in chain:
            backend = installed.get(name)
            ok, why = backend.available() if backend is not None else (False, "not installed")
            if ok:
                chosen.append((name, backend.publisher(self._options)))
            else:
                skipped.append(f"{name}: {why}")
        if not chosen:
            raise PluginError(f"no weight-sync backend can publish {device} tensors here "
                              f"({'; '.join(skipped)}). {INSTALL_HINT}")
        log.debug("weight sync offers %s (skipped: %s)", [n for n, _ in chosen], skipped)
        return chosen

    def _retire(self, snapshot: "Snapshot") -> None:
        for _, exporter in reversed(self._exporters or []):  # the owner of the memory last
            try:
                exporter.retire(snapshot)
            except Exception:
                log.exception("a weight-sync backend failed to free version %s", snapshot.version)

    async def aclose(self) -> None:
        """Free every snapshot; handles already given out stop working."""
        if self._closed:
            return
        self._closed = True
        while self._snapshots:
            self._retire(self._snapshots.popleft())
        for _, exporter in self._exporters or []:
            await exporter.aclose()

    async def __aenter__(self) -> "WeightPublisher":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        names = [n for n, _ in self._exporters] if self._exporters else [self.backend]
        return (f"<WeightPublisher {'|'.join(names)} version={self._latest} "
                f"held={[s.version for s in self._snapshots]}{' closed' if self._closed else ''}>")


# ---------------------------------------------------------------------------------------------
# The policy side


class WeightsGate:
    """Keeps generations and weight updates of one policy actor apart (see module docstring).

    ::

        @endpoint(concurrent=True)
        async def generate(self, prompt):
            async with self.gate.generating() as version:   # waits while an update loads
                return self.run(prompt), version

        @endpoint(concurrent=True)
        async def update_weights(self, handle):
            return await self.gate.update(handle, self.model)  # drains, loads, resumes
    """

    def __init__(self, version: int | None = None):
        self.version = version  # the version generations currently run on
        self._active = 0
        self._pending_updates = 0
        self._open: asyncio.Event | None = None  # set while new generations may start
        self._idle: asyncio.Event | None = None  # set while no generation runs
        self._updating: asyncio.Lock | None = None
        self._mixed: WeightSyncError | None = None  # set by an update that failed part way

    def _events(self) -> tuple[asyncio.Event, asyncio.Event, asyncio.Lock]:
        if self._open is None:  # made on first use, inside the actor's event loop
            self._open, self._idle, self._updating = asyncio.Event(), asyncio.Event(), asyncio.Lock()
            self._open.set()
            self._idle.set()
        return self._open, self._idle, self._updating  # type: ignore[return-value]

    @contextlib.asynccontextmanager
    async def generating(self) -> AsyncIterator[int | None]:
        """Hold the current weights for one generation; yields their version.

        Raises:
            WeightSyncError: an update failed part way and the model mixes two versions: no
                generation runs on it until a whole version loads.
        """
        open_, idle, _ = self._events()
        while not open_.is_set():
            await open_.wait()
        if self._mixed is not None:
            raise WeightSyncError("this policy's weights mix two versions after a failed "
                                  "update; it serves nothing until a whole version loads") \
                from self._mixed
        self._active += 1  # no await between the check and this: an update cannot slip in
        idle.clear()
        try:
            yield self.version
        finally:
            self._active -= 1
            if self._active == 0:
                idle.set()

    async def update(self, handle: WeightsHandle, target: Any) -> bool:
        """Load ``handle`` into ``target`` (see ``WeightsHandle.load_into``) with no generation
        running; False (and nothing paused) if this gate already serves that version or newer."""
        if self.version is not None and handle.version <= self.version:
            log.info("not loading weights version %d: already serving version %d",
                     handle.version, self.version)
            return False
        open_, idle, updating = self._events()
        self._pending_updates += 1
        open_.clear()
        try:
            async with updating:  # one update at a time; the newest wins
                if self.version is not None and handle.version <= self.version:
                    return False
                await idle.wait()
                try:
                    loaded = await handle.load_into(target)
                except WeightSyncError as exc:
                    if getattr(exc, "partial", False):
                        self._mixed = exc  # refuse generations until a whole version loads
                        self.version = None
                    raise
                if loaded:
                    self.version, self._mixed = handle.version, None
                return loaded
        finally:
            self._pending_updates -= 1
            if self._pending_updates == 0:
                open_.set()

    def __repr__(self) -> str:
        state = "updating" if self._pending_updates else "open"
        return f"<WeightsGate version={self.version} generating={self._active} {state}>"


# =============================================================================================
# The backend contract (plugins implement this; users never call it)


@dataclass(eq=False)
class Snapshot:
    """One version's tensors packed into ``flat`` (a 1-D uint8 tensor of at least ``nbytes``),
    allocated by the publisher's first backend. ``pins`` counts in-process readers (a backend
    serving a copy of it, say): the owner must not reuse a pinned snapshot's memory."""

    flat: "torch.Tensor"
    nbytes: int
    version: int = -1
    pins: int = 0
    owner_state: Any = None  # the allocating backend's bookkeeping (its segment, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # other backends' per-version state


class Chunk(NamedTuple):
    """Tensors ``first`` to ``stop - 1`` of a layout; byte 0 of ``data`` (1-D uint8) is the
    first byte of tensor ``first``."""

    first: int
    stop: int
    data: "torch.Tensor"


class BackendPublisher(Protocol):
    """A backend's state in one publisher. Methods run on the publisher's event loop."""

    def allocate(self, nbytes: int, device: "torch.device") -> Snapshot:
        """Memory for the next snapshot, on this backend's kind of device (``device`` is the
        CUDA device of the published tensors, or cpu). Pool it: reuse retired snapshots whose
        readers are done. Only called on the first backend of a publisher."""

    async def export(self, snapshot: Snapshot) -> Any:
        """Make the complete snapshot readable; return the picklable source for the handle.
        A backend listed after the first one in an auto chain (only ``tcp`` today) gets
        snapshots another backend allocated: then only ``flat`` is its to read, and it must
        ``pins`` the snapshot while it does so outside ``export``."""

    def retire(self, snapshot: Snapshot) -> None:
        """The version is no longer offered: drop it, and take its memory back if yours."""

    async def aclose(self) -> None:
        """The publisher is closing: release everything."""


class WeightSyncBackend(Protocol):
    """What ``forge_weight_sync_backends`` returns, one per way of moving weights."""

    name: str
    device: str  # "cpu" or "cuda": where the snapshots it allocates live
    private_chunks: bool  # the chunks ``read`` yields are the reader's own memory

    def available(self) -> tuple[bool, str]:
        """Whether it can run in this process, and if not why, by name (never an ImportError
        at import time): ``(False, "cupy is not installed")``."""

    def publisher(self, options: Mapping[str, Any]) -> BackendPublisher:
        """A new publisher-side state; ``options`` holds ``group_size`` and ``publisher_id``."""

    def read(self, handle: WeightsHandle, source: Any) -> AsyncIterator[Chunk]:
        """Yield the version's bytes as chunks, in layout order. A chunk is valid until the
        next one is asked for or the iterator is closed (the reader copies it out first).
        Raise ``SourceUnreachable`` before the first chunk if this process cannot read
        ``source``, and ``StaleWeightsError`` if the version is gone."""


# ---------------------------------------------------------------------------------------------
# Machinery shared by every backend: layout, packing, reading, copying out


def plan_layout(items: list[tuple[str, "torch.Tensor"]]) -> tuple[list[TensorLayout], int]:
    """Offsets of every tensor in a snapshot, each aligned to ``ALIGN``; and the total size."""
    layout, offset = [], 0
    for name, tensor in items:
        nbytes = tensor.numel() * tensor.element_size()
        dtype = str(tensor.dtype).removeprefix("torch.")
        layout.append(TensorLayout(name, dtype, tuple(tensor.shape), offset, nbytes))
        offset += -(-nbytes // ALIGN) * ALIGN
    return layout, offset


def _view(data: "torch.Tensor", start: int, spec: TensorLayout) -> "torch.Tensor":
    import torch

    raw = data[start:start + spec.nbytes]
    return raw.view(getattr(torch, spec.dtype)).view(spec.shape)


def _views(layout: tuple[TensorLayout, ...], chunk: Chunk) -> dict[str, "torch.Tensor"]:
    base = layout[chunk.first].offset
    return {layout[i].name: _view(chunk.data, layout[i].offset - base, layout[i])
            for i in range(chunk.first, chunk.stop)}


async def _pack(items: list, layout: list[TensorLayout], flat: "torch.Tensor") -> None:
    """Copy every tensor into the snapshot; return when the bytes are all there."""
    import torch

    def copy_all() -> None:
        with torch.no_grad():
            _copy_many([_view(flat, spec.offset, spec) for spec in layout],
                       [tensor.detach() for _, tensor in items])
        if flat.device.type == "cpu" and any(t.device.type == "cuda" for _, t in items):
            torch.cuda.synchronize()  # device-to-host copies into a CPU snapshot

    if flat.device.type == "cuda":
        # Enqueue on the caller's stream (ordered after the trainer's own kernels); wait for the
        # copies in a thread so that the event loop keeps serving.
        copy_all()
        done = torch.cuda.Event()
        done.record()
        await asyncio.to_thread(done.synchronize)
    else:
        await asyncio.to_thread(copy_all)


def _destinations(own: dict[str, Any], layout: tuple[TensorLayout, ...]) -> dict[str, Any]:
    """The module's tensors by name, after checking they match the layout (before any copy)."""
    names = {spec.name for spec in layout}
    missing, unexpected = sorted(set(own) - names), sorted(names - set(own))
    if missing or unexpected:
        raise ValueError(f"the published weights do not fit this model: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for spec in layout:
        if tuple(own[spec.name].shape) != spec.shape:
            raise ValueError(f"{spec.name}: published shape {spec.shape}, model has "
                             f"{tuple(own[spec.name].shape)}")
    return own


def _copy_chunk(layout: tuple[TensorLayout, ...], chunk: Chunk, destinations: dict) -> None:
    """Copy one chunk into the model (in a worker thread: torch releases the GIL)."""
    import torch

    views = _views(layout, chunk)
    targets = [destinations[name] for name in views]
    with torch.no_grad():
        _copy_many(targets, list(views.values()))
    if chunk.data.device.type == "cuda" or any(t.device.type == "cuda" for t in targets):
        torch.cuda.synchronize()  # the source may be freed or reused once we return


def _copy_many(destinations: list, sources: list) -> None:
    """``d.copy_(s)`` for each pair; on a GPU as a few multi-tensor kernels, not one launch per
    tensor (a 256-tensor state dict spends more in launches than in copying otherwise)."""
    import torch

    devices = {t.device for t in destinations} | {t.device for t in sources}
    foreach = getattr(torch, "_foreach_copy_", None)
    if foreach is not None and len(devices) == 1 and next(iter(devices)).type == "cuda":
        foreach(destinations, sources, non_blocking=True)
        return
    for destination, source in zip(destinations, sources):
        destination.copy_(source, non_blocking=True)


def _copies(views: dict[str, "torch.Tensor"], device: "torch.device") -> dict[str, "torch.Tensor"]:
    copies = {name: view.to(device, copy=True) for name, view in views.items()}
    if device.type == "cuda" or any(v.device.type == "cuda" for v in views.values()):
        import torch

        torch.cuda.synchronize()
    return copies


async def _read(handle: WeightsHandle) -> AsyncIterator[tuple[WeightSyncBackend, Chunk]]:
    """The chunks of ``handle``, from the first of its sources this process can read."""
    if not handle.layout:
        return
    installed = plugins.weight_sync_backends()
    reasons = []
    for name, source in handle.sources:
        backend = installed.get(name)
        if backend is None:
            reasons.append(f"{name}: not installed here")
            continue
        ok, why = backend.available()
        if not ok:
            reasons.append(f"{name}: {why}")
            continue
        stream = backend.read(handle, source)
        try:
            first = await stream.__anext__()
        except SourceUnreachable as exc:
            reasons.append(f"{name}: {exc}")
            await stream.aclose()
            continue
        except BaseException:
            await stream.aclose()
            raise
        try:
            yield backend, first
            async for chunk in stream:
                yield backend, chunk
        finally:
            await stream.aclose()
        return
    raise WeightSyncError(f"no source of weights version {handle.version} can be read in this "
                          f"process: {'; '.join(reasons) or 'the handle lists none'}")
