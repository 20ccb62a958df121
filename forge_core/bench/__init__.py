"""``forge bench``: Forge's transports beside the physical floors of the machine they run on.

Per installed transport (in-process, shm, tcp): round-trip latency of a trivial call, pipelined
calls/s, ``call()`` on a 4-process mesh, tensor-argument bandwidth; weight sync of a state dict
to 2 replicas per weight-sync backend (cuda_ipc and nccl on GPU hosts); ``route()`` beside a
direct call and each routing policy with one slow replica. Each figure is a median over repeats
(with min and max) beside a floor measured in the same run: raw uvloop ping-pong, raw socket
bulk transfer, single-thread memcpy.

- ``options``: what runs; ``suite``: in which order, samples into figures; ``calls``,
  ``services``, ``weights``: the measurements; ``floors``: the bare-machine floors.
- ``report``, ``plot``, ``header``: the table, JSON, comparison, chart and machine header.
- ``command``: what the ``forge bench`` command does with them.

Nothing here is imported by a spawned process except the actor classes' modules (``calls``,
``services``), which import no torch.
"""
