"""Shed connections that never prove they belong to the run, before they exhaust the server.

ZeroMQ accepts every TCP connection to a bound socket, and each one costs the process a file
descriptor. A stranger who opens a thousand idle connections (the ports are readable in
``/proc/net/tcp``) would exhaust the descriptors, and the next file the server opens (a
checkpoint) would fail. Three layers keep that from happening:

* the server raises its soft ``RLIMIT_NOFILE`` to the hard limit (:func:`raise_fd_limit`);
* ``ZMQ_HANDSHAKE_IVL``: a connection that has not completed the ZMTP greeting within
  :data:`HANDSHAKE_S` is closed by libzmq itself (raw idle TCP connections);
* :class:`ConnectionGuard`: a socket monitor reports every accepted connection with its file
  descriptor; a connection becomes *proven* when a message carrying the run token arrives on it
  (the message's ``SRCFD``). A connection still unproven after ``timeout`` seconds, or the oldest
  unproven ones once more than ``limit`` are open, is shut down (``shutdown(2)``: libzmq sees the
  peer gone and closes its descriptor). On the data socket the clock only runs while the
  receiver reads (:class:`ActiveClock`): a client whose first step waits behind the server's own
  back-pressure is not a stranger.

A proven client that is shed by mistake loses nothing: its ZeroMQ socket reconnects, and steps
lost in flight are caught by the ledger and the FINISH check (the simulation runs again).
"""

from __future__ import annotations

import logging
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger("breed.server")
HANDSHAKE_S = 10.0
# a connection that sent nothing with the run token after this long is shed; on the data socket
# counted in seconds of reading, so back-pressure never sheds a client
CONTROL_PROOF_S = 10.0
DATA_PROOF_S = 60.0
EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


def raise_fd_limit() -> tuple[int, int]:
    """Soft ``RLIMIT_NOFILE`` up to the hard limit (many systems start processes at 1024 of a
    much higher hard limit); returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def harden(sock: zmq.Socket) -> None:
    """Before ``bind``: close connections that do not finish the ZMTP greeting in time."""
    sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))


class ActiveClock:
    """Seconds during which a socket was being read (it stops while the receiver pauses)."""

    def __init__(self) -> None:
        self._total = 0.0
        self._since: float | None = time.monotonic()  # running since
        self._stopped: float = 0.0  # stopped since (when not running)
        self.longest_stop = 0.0  # seconds, the longest pause so far

    def run(self, running: bool) -> None:
        now = time.monotonic()
        if running and self._since is None:
            self._since = now
            self.longest_stop = max(self.longest_stop, now - self._stopped)
        elif not running and self._since is not None:
            self._total += now - self._since
            self._since, self._stopped = None, now

    def __call__(self) -> float:
        return self._total + (0.0 if self._since is None else time.monotonic() - self._since)


@dataclass
class _Conn:
    since: float  # guard clock at accept
    ends: tuple | None  # (local, peer) addresses: a reused descriptor is never shut down
    proven: bool = False


def _ends(fd: int) -> tuple | None:
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return sock.getsockname(), sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()


class ConnectionGuard:
    """Watches one bound socket's connections and sheds the unproven ones (module docstring).

    Single-threaded: call :meth:`events` when the monitor socket is readable (or often),
    :meth:`prove` with the ``SRCFD`` of each authentic message, :meth:`sweep` once a second.
    """

    def __init__(
        self,
        sock: zmq.Socket,
        name: str,
        timeout: float,
        limit: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.timeout, self.limit, self.clock = name, timeout, limit, clock
        self._sock = sock
        self.monitor = sock.get_monitor_socket(EVENTS)
        self.conns: dict[int, _Conn] = {}
        self.unproven = 0
        self.shed_count = 0

    @property
    def pending(self) -> bool:
        """Some connection awaits its first authentic message (receive with ``copy=False``
        so its ``SRCFD`` can be read)."""
        return self.unproven > 0

    def events(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            fd = int(ev["value"])
            if ev["event"] == zmq.EVENT_ACCEPTED:
                self._drop(fd)  # a reused descriptor: the old connection is gone
                self.conns[fd] = _Conn(self.clock(), _ends(fd))
                self.unproven += 1
            else:
                self._drop(fd)
        if self.unproven > self.limit:
            for fd in sorted(
                (f for f, c in self.conns.items() if not c.proven),
                key=lambda f: self.conns[f].since,
            )[: self.unproven - self.limit]:
                self._shed(fd, f"more than {self.limit} connections without the run token")

    def prove(self, fd: int) -> None:
        conn = self.conns.get(fd)
        if conn is not None and not conn.proven:
            conn.proven = True
            self.unproven -= 1

    def sweep(self) -> None:
        self.events()
        now = self.clock()
        for fd in [
            f for f, c in self.conns.items() if not c.proven and now - c.since > self.timeout
        ]:
            self._shed(fd, f"no message with the run token within {self.timeout:g} s")

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None and not conn.proven:
            self.unproven -= 1

    def _shed(self, fd: int, why: str) -> None:
        conn = self.conns.get(fd)
        self._drop(fd)
        if conn is None or conn.ends is None or _ends(fd) != conn.ends:
            return  # gone, or the number now belongs to another connection
        try:  # the descriptor is libzmq's: shut the connection down, never close it here
            sock = socket.socket(fileno=fd)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.detach()
        except OSError:
            return  # already gone
        self.shed_count += 1
        if self.shed_count <= 5 or self.shed_count % 1000 == 0:
            log.warning("%s socket: connection shed (#%d): %s", self.name, self.shed_count, why)

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)


def receive(sock: zmq.Socket, watch: bool) -> tuple[list[bytes], int | None]:
    """One message without blocking (``zmq.Again`` if none); with ``watch`` (an unproven
    connection is pending) also the descriptor it came in on, for :meth:`ConnectionGuard.prove`."""
    if not watch:
        return sock.recv_multipart(zmq.NOBLOCK), None
    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
    return [p.bytes for p in parts], source_fd(parts[-1])


def source_fd(frame: zmq.Frame) -> int | None:
    """The descriptor of the connection a message came in on (``ZMQ_SRCFD``)."""
    try:
        return int(frame.get(zmq.SRCFD))
    except (zmq.ZMQError, AttributeError, ValueError):
        return None
