"""The exceptions Forge raises to its users."""

from __future__ import annotations


class ForgeError(Exception):
    """Base class of every error Forge itself raises."""


class ActorError(ForgeError):
    """An endpoint raised. The actor lives on.

    ``.exception`` is the original exception (or a ``RemoteException`` stand-in when the
    original could not be pickled); the remote traceback is part of the message.
    """

    def __init__(self, message: str, exception: BaseException | None = None, traceback: str = ""):
        super().__init__(message)
        self.exception = exception
        self.traceback = traceback

    def __reduce__(self):
        return (type(self), (self.args[0], self.exception, self.traceback))


class RemoteException(Exception):
    """Stands in for a remote exception that could not travel back by pickle."""


class SupervisionError(ForgeError):
    """The process hosting an actor died (or stopped answering). Calls waiting on it fail with
    this error and later calls fail fast."""


class PluginError(ForgeError):
    """A capability was asked for that no installed plugin provides."""


class TransportError(ForgeError):
    """A transport could not reach a peer, or a peer broke the protocol."""


class AuthenticationError(TransportError):
    """A peer failed to prove it holds the cluster secret."""


class RoutingError(ForgeError):
    """A service could not route a call."""


class NoReplicaAvailable(RoutingError):
    """No healthy replica of a service can take a call: every replica is dead, restarting or
    failed, or the service was shut down. ``reason`` says which."""

    def __init__(self, *, service: str = "?", endpoint: str = "?", reason: str = ""):
        self.service = service
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"no healthy replica of service {service!r} can take {endpoint!r}"
                         + (f": {reason}" if reason else ""))

    def __reduce__(self):
        return (_no_replica_available, (self.service, self.endpoint, self.reason))


def _no_replica_available(service: str, endpoint: str, reason: str) -> NoReplicaAvailable:
    return NoReplicaAvailable(service=service, endpoint=endpoint, reason=reason)
