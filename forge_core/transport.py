"""What a transport plugin implements, and the helpers every transport shares.

A transport moves *messages* between two processes. A message is ``meta`` (a small bytes
object: the kernel's envelope and pickle stream) plus a list of out-of-band ``buffers`` (large
tensors and arrays, as memoryviews). The transport must deliver, per connection and in order,
exactly the ``meta`` and ``buffers`` that were sent, and it must authenticate the peer before it
hands the kernel a single byte: the kernel unpickles ``meta``, and pickle is code execution.

The kernel calls transports from an asyncio event loop (uvloop in Forge processes). A transport
object is created by the plugin's ``forge_transports`` hook and may be used from several loops
(one per thread); ``listen`` runs on the process's home loop, ``connect`` on the caller's loop.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from .errors import AuthenticationError

# Receivers the kernel installs on a connection.
OnMessage = Callable[[bytes, list], None]  # (meta, buffers)
OnClosed = Callable[[BaseException | None], None]  # None: closed cleanly by us


@dataclass(frozen=True)
class ProcInfo:
    """Who a process is and how to reach it; reported by the process itself."""

    proc_id: str  # unique per process, never reused
    host_id: str  # processes with the same host_id can share memory
    pid: int
    addresses: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def __str__(self) -> str:
        return f"proc {self.proc_id[:8]} (pid {self.pid} on {self.host_id.split(':')[0]})"


@runtime_checkable
class Connection(Protocol):
    """One authenticated, ordered, bidirectional message channel."""

    def set_receiver(self, on_message: OnMessage, on_closed: OnClosed) -> None:
        """Install the kernel's callbacks; messages that arrived before are delivered now."""

    def send(self, meta: bytes, buffers: Sequence[memoryview] = ()) -> None:
        """Queue one message; never blocks. Messages leave in the order ``send`` was called."""

    def close(self) -> None:
        """Close; ``on_closed(None)`` follows."""


@runtime_checkable
class Transport(Protocol):
    """A way to move messages between processes, provided by a plugin."""

    name: str
    # Lower is preferred when several installed transports reach a peer.
    cost: int

    def reaches(self, local: ProcInfo, peer: ProcInfo) -> bool:
        """Whether this transport can connect ``local`` to ``peer`` (same host only, etc.)."""

    async def listen(self, on_connection: Callable[[Connection], None], auth: "Authenticator",
                     **options: Any) -> str:
        """Start accepting connections on the running loop; return the address to advertise.
        ``on_connection`` is called once per authenticated connection. ``options`` are the
        user's, for this transport only (e.g. ``host`` and ``port`` for TCP on a host agent)."""

    async def connect(self, address: str, auth: "Authenticator") -> Connection:
        """Connect to an address ``listen`` returned and authenticate; raise on failure."""

    async def close(self) -> None:
        """Stop listening and release what ``listen`` allocated."""


# ---------------------------------------------------------------------------------------------
# Authentication: a mutual HMAC challenge over the cluster secret. Nothing is unpickled from a
# peer before it has proven that it holds the secret.

NONCE_BYTES = 32
DIGEST_BYTES = 32
HELLO = b"FORGE1"


class Authenticator:
    """The challenge/response both ends of every transport run before trusting each other.

    The server sends ``HELLO + server_nonce``; the client answers
    ``HELLO + mac(b"client", server_nonce) + client_nonce``; the server checks it and answers
    ``mac(b"server", client_nonce)``, which the client checks. Each side thus proves it holds the
    secret without sending it, and a replayed answer fails against a fresh nonce.
    """

    SERVER_HELLO_BYTES = len(HELLO) + NONCE_BYTES
    CLIENT_ANSWER_BYTES = len(HELLO) + DIGEST_BYTES + NONCE_BYTES
    SERVER_ANSWER_BYTES = DIGEST_BYTES

    def __init__(self, secret: bytes):
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self._secret = secret

    def _mac(self, role: bytes, nonce: bytes) -> bytes:
        return hmac.new(self._secret, role + nonce, hashlib.sha256).digest()

    # server side
    def server_hello(self) -> tuple[bytes, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return HELLO + nonce, nonce

    def check_client_answer(self, answer: bytes, server_nonce: bytes) -> bytes:
        """Verify the client's answer; return the server's answer to send back."""
        if len(answer) != self.CLIENT_ANSWER_BYTES or not answer.startswith(HELLO):
            raise AuthenticationError("peer did not speak the Forge handshake")
        mac = answer[len(HELLO):len(HELLO) + DIGEST_BYTES]
        if not hmac.compare_digest(mac, self._mac(b"client", server_nonce)):
            raise AuthenticationError("peer does not hold the cluster secret")
        client_nonce = answer[len(HELLO) + DIGEST_BYTES:]
        return self._mac(b"server", client_nonce)

    # client side
    def client_answer(self, server_hello: bytes) -> tuple[bytes, bytes]:
        if len(server_hello) != self.SERVER_HELLO_BYTES or not server_hello.startswith(HELLO):
            raise AuthenticationError("peer did not speak the Forge handshake")
        nonce = os.urandom(NONCE_BYTES)
        answer = HELLO + self._mac(b"client", server_hello[len(HELLO):]) + nonce
        return answer, nonce

    def check_server_answer(self, answer: bytes, client_nonce: bytes) -> None:
        if not hmac.compare_digest(answer, self._mac(b"server", client_nonce)):
            raise AuthenticationError("peer does not hold the cluster secret")
