"""A simulated board's endpoints on the host: a pty and a `socket://` port
that behave like a board's USB serial port (one host at a time; another
uid's connection refused), and the client bookkeeping every listening
socket of the board shares (non-blocking sends, hang-ups, dropping a client
that stopped reading).

Nothing here blocks: the board's I/O loop polls the descriptors and calls
in when one is ready.

May import link and plant; never targets or above.
"""

from __future__ import annotations

import contextlib
import os
import pty
import socket
import time
import tty
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import peer

# Output is never dropped for a host that has the port open, however slowly
# it reads (on a busy machine it may not run for seconds): while a host's
# queue holds more than this, the board's output waits (the interpreter's
# pipe fills, then its writes block), as USB CDC slows a board to its
# reader. A pty queue that takes nothing for CDC_TIMEOUT_S while no program
# has the port open is dropped, as a Pico's USB stack drops output with no
# host on the line (DTR low).
HIGH_WATER = 64 * 1024
CDC_TIMEOUT_S = 0.5
BUSY_MESSAGE = b"port busy: another program has it open\r\n"
# Output a socket:// client has not taken: beyond this it is disconnected,
# as a serial server (ser2net) drops a TCP client that stopped reading,
# rather than hold up the board and the other host (the pty) for it.
MAX_CLIENT_BACKLOG = 4 << 20


@dataclass
class Client:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)  # received, not yet handled (control lines)
    out: bytearray = field(default_factory=bytearray)  # to send: the socket is non-blocking
    progress_s: float = field(default_factory=time.monotonic)  # when it last took output (or had little queued)


class Clients(ABC):
    """The connected clients of one listening socket."""

    def __init__(self, log_error: Callable[[str], None]) -> None:
        self.clients: list[Client] = []
        self._log_error = log_error

    @staticmethod
    def listen(port: int = 0) -> socket.socket:
        """A listening socket on loopback (who may connect is checked on accept)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(4)
        return sock

    def close_listener(self, sock: socket.socket | None) -> None:
        """The listening socket closed, then every client."""
        if sock is not None:
            sock.close()
        self.close_clients()

    @abstractmethod
    def read(self, c: Client) -> None:
        """A client's socket is readable (or hung up, or reset)."""

    def drop(self, c: Client, why: str) -> None:
        """Hang up on a client, saying why in the log."""
        if c in self.clients:
            self.clients.remove(c)
        c.sock.close()
        self._log_error(f"dropped a client: {why}")

    def hung_up(self, c: Client) -> None:
        """A client that closed its side (or reset it): forgotten."""
        self.clients.remove(c)
        c.sock.close()

    def flush(self, c: Client) -> None:
        """Send what a client can take now, without waiting for it."""
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as exc:  # reset, or gone
            self.drop(c, f"{exc.strerror or exc}")
            return
        del c.out[:n]
        if n:
            c.progress_s = time.monotonic()

    def close_clients(self) -> None:
        for c in self.clients:
            if c.out:  # a last answer (to the stop, say), if it fits
                with contextlib.suppress(OSError):
                    c.sock.send(c.out)
            c.sock.close()


class HostEndpoints(Clients):
    """The board's serial port, as a pty and a socket:// port. What the
    host sends goes to `from_host`; what the board sends comes to send()."""

    master: int  # the board's side of the pty; the host opens pty_path, the other side
    _slave: int
    pty_path: str
    tcp: socket.socket
    url: str

    def __init__(self, from_host: Callable[[bytes], None], log_error: Callable[[str], None]) -> None:
        super().__init__(log_error)
        self._from_host = from_host
        self.pending_out = bytearray()  # for the pty, not yet taken
        self.pty_progress_s = time.monotonic()  # when the pty last took output (or had little queued)
        self.dropped_out = 0
        # Refused clients: [when the next step is due, connection, step (0 say busy, 1 hang up, 2 close)]
        self._refused: list[list[Any]] = []

    def open(self, tcp_port: int) -> None:
        self.master, self._slave = pty.openpty()
        # The owner's alone: a pty can come out 0620, group tty (write(1),
        # wall(1)), and whoever opens it talks to the board's REPL.
        os.fchmod(self._slave, 0o600)
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.pty_path = os.ttyname(self._slave)
        self.tcp = self.listen(tcp_port)
        self.url = f"socket://127.0.0.1:{self.tcp.getsockname()[1]}"

    def close(self) -> None:
        self.close_listener(getattr(self, "tcp", None))
        for _, conn, _ in self._refused:
            conn.close()
        for fd in (getattr(self, "master", None), getattr(self, "_slave", None)):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def accept(self) -> None:
        """A connection to the socket:// port."""
        # Another uid's connection is closed unread: see peer.py.
        try:
            conn = peer.accept_own(self.tcp)
        except OSError:  # gone before it was accepted, or no descriptor left for it
            return
        if conn is None:
            return
        conn.setblocking(False)
        self._drop_closed_clients()
        if self.clients:
            # One host at a time, as a board's one USB port: a second
            # would steal the first one's bytes. Said the way serial
            # servers (ser2net) say it, then closed.
            # Said a moment later (pyserial empties its input right after
            # connecting) and hung up a moment after that (a client
            # reading with a timeout loses what came in the same read as
            # the hang-up).
            self._refused.append([time.monotonic() + 0.05, conn, 0])
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.append(Client(conn))

    def read_pty(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return
        self._from_host(data)

    def read(self, c: Client) -> None:
        """A socket:// client's input."""
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:  # reset by the client
            self.drop(c, f"{exc.strerror or exc}")
            return
        if not data:  # hung up (or half-closed: a serial port has no half)
            self.hung_up(c)
        else:
            self._from_host(data)

    def send(self, out: bytes) -> None:
        """What the link delivered toward the host (if anything), then what
        the pty can take of what is queued for it."""
        if out:
            self.pending_out += out
            for c in list(self.clients):
                c.out += out
                if len(c.out) > MAX_CLIENT_BACKLOG:
                    self.drop(c, f"it left more than {MAX_CLIENT_BACKLOG >> 20} MB of output unread")
                else:
                    self.flush(c)
        if self.pending_out:
            try:
                n = os.write(self.master, self.pending_out)
                del self.pending_out[:n]
                if n:
                    self.pty_progress_s = time.monotonic()
            except BlockingIOError:
                pass
            except OSError:
                self.pending_out.clear()

    def holding(self, now_s: float) -> bool:
        """Whether the board's output must wait: a host that reads has more
        than HIGH_WATER queued. The pty's queue, stuck for CDC_TIMEOUT_S
        (nobody reading), is dropped instead; a stuck socket:// client holds
        nothing (it is disconnected at MAX_CLIENT_BACKLOG)."""
        if len(self.pending_out) <= HIGH_WATER:
            self.pty_progress_s = now_s
        elif now_s - self.pty_progress_s >= CDC_TIMEOUT_S and not self._pty_open_elsewhere():
            self.dropped_out += len(self.pending_out)
            self.pending_out.clear()
            self.pty_progress_s = now_s
        elif now_s - self.pty_progress_s >= CDC_TIMEOUT_S:
            self.pty_progress_s = now_s  # a slow reader: it holds the board (asked again in CDC_TIMEOUT_S)
            return True
        else:
            return True
        for c in self.clients:
            if len(c.out) <= HIGH_WATER:
                c.progress_s = now_s
            elif now_s - c.progress_s < CDC_TIMEOUT_S:
                return True
        return False

    def _pty_open_elsewhere(self) -> bool:
        """Whether any descriptor but the board's own keeps its pty open (a
        host on the line). The pty is its owner's alone, so the owner's
        processes are all there is to look at (/proc/PID/fd)."""
        try:
            rdev = os.fstat(self._slave).st_rdev
        except OSError:
            return False
        seen = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with os.scandir(f"/proc/{pid}/fd") as fds:
                    for fd in fds:
                        with contextlib.suppress(OSError):
                            if os.stat(fd.path).st_rdev == rdev:
                                seen += 1
                                if seen > 1:  # (the board's own slave is one)
                                    return True
            except OSError:
                continue
        return False

    def refused_clients(self) -> None:
        """Refused clients: told the port is busy, then hung up on. What they
        send is read and dropped (closing a socket with unread data resets
        the connection, and the client loses the message)."""
        now = time.monotonic()
        for entry in list(self._refused):
            when, conn, phase = entry
            done = False
            try:
                while conn.recv(4096):
                    pass
                done = True  # the client closed its side
            except BlockingIOError:
                pass
            except OSError:
                done = True
            if not done and now >= when:
                try:
                    if phase == 0:
                        conn.sendall(BUSY_MESSAGE)
                        entry[0], entry[2] = now + 0.2, 1
                    elif phase == 1:
                        conn.shutdown(socket.SHUT_WR)
                        entry[0], entry[2] = now + 2.0, 2
                    else:
                        done = True
                except OSError:
                    done = True
            if done:
                conn.close()
                self._refused.remove(entry)

    def _drop_closed_clients(self) -> None:
        """Forget clients that have hung up but whose hang-up this loop has
        not read yet (a host that closes and reconnects at once). What one
        sent before it left is read first (it goes to the board, as it would
        have): its hang-up, or reset, comes after that."""
        for c in list(self.clients):
            while True:
                try:
                    data = c.sock.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break  # still there
                except OSError:
                    data = b""
                if not data:
                    self.hung_up(c)
                    break
                self._from_host(data)
