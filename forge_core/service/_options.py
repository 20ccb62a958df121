"""``ForgeActor.options(...)``: the validated settings of an actor mesh or a service."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``options()`` accepts. Times are in seconds."""

    procs: int = 1  # processes per replica (per actor mesh for ``as_actor``)
    num_replicas: int = 1
    with_gpus: bool = False  # name the process dimension "gpus" (one GPU per process)
    hosts: tuple[str, ...] | None = None  # spread each replica's processes over these hosts
    router: str = "round_robin"  # routing policy, by name (plugins provide them)
    router_options: dict[str, Any] = field(default_factory=dict)  # passed to the policy
    name: str | None = None  # defaults to the class name
    env: dict[str, str] = field(default_factory=dict)  # extra environment of every process
    probe_interval: float = 1.0  # how often the controller probes each replica
    probe_timeout: float = 10.0  # a replica that does not answer a probe within this is hung
    max_restarts: int = 3  # consecutive failed starts of one replica before it is given up
    restart_backoff: float = 0.5  # first wait before retrying a failed start; doubles each time
    start_timeout: float = 300.0  # spawn + constructor + setup of one replica
    retry_wait: float = 30.0  # how long a call waits for a healthy replica (retries included)
    logs: str = "stream"  # where the processes' output goes: "stream", "file" or "both"
    log_file: str | None = None  # the file for logs="file"/"both"

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def with_changes(self, owner: str, changes: dict[str, Any]) -> "ServiceConfig":
        """A copy with ``changes`` applied; unknown or invalid options raise at once."""
        valid = self.option_names()
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise TypeError(f"{owner}.options() got unknown option(s) {', '.join(unknown)}; "
                            f"valid options are: {', '.join(valid)}")
        if "hosts" in changes and changes["hosts"] is not None:
            changes["hosts"] = tuple(changes["hosts"])
        for key in ("router_options", "env"):
            if key in changes:
                changes[key] = dict(changes[key] or {})
        config = dataclasses.replace(self, **changes)
        config._check(owner)
        return config

    def _check(self, owner: str) -> None:
        for key in ("procs", "num_replicas", "max_restarts"):
            value = getattr(self, key)
            low = 0 if key == "max_restarts" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{owner}.options({key}=...) must be an int >= {low}, "
                                 f"not {value!r}")
        for key in ("probe_interval", "probe_timeout", "restart_backoff", "start_timeout",
                    "retry_wait"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{owner}.options({key}=...) must be a number of seconds >= 0, "
                                 f"not {value!r}")
        from .._logs import check_options

        try:
            check_options(self.logs, self.log_file)
        except ValueError as exc:
            raise ValueError(f"{owner}.options(): {exc}") from None
        if not isinstance(self.router, str):
            raise TypeError(f"{owner}.options(router=...) is a policy name, e.g. 'least_loaded'")

    @property
    def dimension(self) -> str:
        return "gpus" if self.with_gpus else "procs"
