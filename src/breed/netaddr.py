"""Addresses to bind: the one reader of ``launcher.host`` (an interface name or a host name),
used by the server to bind and by the launcher to check the config before anything starts."""

from __future__ import annotations

import socket


def resolve_host(host: str) -> str:
    """An interface name (``eth0``, ``ib0``) or host name -> an address to bind; never guessed."""
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", host.encode()[:15]))
            return socket.inet_ntoa(packed[20:24])
    except OSError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ValueError(f"launcher.host: cannot resolve {host!r} to an address") from exc
