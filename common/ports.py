"""Free TCP ports on 127.0.0.1 for servers the demo, the benches and the tests start: one implementation, so every
caller binds the loopback interface only and closes its probe socket before handing the number on."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 right now. All probe sockets are held open until every port is chosen, so
    the kernel cannot hand the same port out twice; another process may still take one before the caller binds it."""
    if n < 1:
        raise ValueError(f"free_ports: n must be >= 1, got {n}")
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port free on 127.0.0.1 right now (see `free_ports`)."""
    return free_ports(1)[0]
