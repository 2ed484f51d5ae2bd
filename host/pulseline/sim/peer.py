"""Who is on the other end of a loopback TCP connection.

A simulated board's endpoints (its `socket://` port, control channel and
plant server) listen on 127.0.0.1, which every local user can reach, and
TCP carries no credentials (SO_PEERCRED is for Unix sockets). Linux does
know who owns each socket: /proc/net/tcp (and tcp6, for an IPv6 socket
that connected to a v4-mapped address) lists every socket of this network
namespace with its owner's uid. The connecting socket is the row whose
local address is our peer's address and whose remote address is ours.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys

TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_TIME_WAIT = "06"  # a closed connection's leftover: the kernel shows it with uid 0


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _plain(ip: Address) -> Address:
    """A v4-mapped IPv6 address (an IPv6 socket talking IPv4) as the IPv4 one."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _endpoint(field: str) -> tuple[Address, int] | None:
    """"0100007F:1F90" -> (127.0.0.1, 8080). The kernel prints the address
    as 32-bit words in host byte order; a v4-mapped IPv6 one reads as IPv4."""
    addr_hex, _, port_hex = field.partition(":")
    if len(addr_hex) not in (8, 32) or not port_hex:
        return None
    try:
        raw = b"".join(int(addr_hex[i:i + 8], 16).to_bytes(4, sys.byteorder) for i in range(0, len(addr_hex), 8))
        ip = ipaddress.ip_address(raw)
        port = int(port_hex, 16)
    except ValueError:
        return None
    return _plain(ip), port


def peer_uid(conn: socket.socket, tables: tuple[str, ...] = TCP_TABLES) -> int | None:
    """The uid that owns the other end of an accepted loopback TCP
    connection; None when it cannot be told (not found, gone already,
    ambiguous, no /proc): a caller then refuses the connection."""
    try:
        peer_host, peer_port = conn.getpeername()[:2]
        our_host, our_port = conn.getsockname()[:2]
        peer = (_plain(ipaddress.ip_address(peer_host)), peer_port)
        ours = (_plain(ipaddress.ip_address(our_host)), our_port)
    except (OSError, ValueError, TypeError):
        return None
    uids = set()
    port_tail = f":{peer_port:04X}"  # most rows fail this: no address parsed for them
    for table in tables:
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 8 or cols[3] == _TIME_WAIT or not cols[1].upper().endswith(port_tail):
                continue
            if _endpoint(cols[1]) == peer and _endpoint(cols[2]) == ours:
                try:
                    uids.add(int(cols[7]))
                except ValueError:
                    return None
    return uids.pop() if len(uids) == 1 else None


def is_own(conn: socket.socket) -> bool:
    """The connection comes from a process of our own uid."""
    return peer_uid(conn) == os.getuid()


def accept_own(listener: socket.socket) -> socket.socket | None:
    """Accept one connection; one from another uid (or of an owner that
    cannot be told) is closed at once, before a byte is read from or sent
    to it, and None is returned. OSError from accept() is the caller's."""
    conn, _ = listener.accept()
    if not is_own(conn):
        conn.close()
        return None
    return conn
