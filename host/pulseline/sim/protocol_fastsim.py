"""pyserial URL handler for `fastsim://NAME`: a FastBoard (the firmware in
process, in virtual time) opened like any port. Found by pyserial through
`serial.protocol_handler_packages` (the session registers this package).

The port does not run the board by itself: reads return what the board
has sent so far, and `clock` is the FastBoard's virtual clock, which the
session moves when it waits."""

from __future__ import annotations

from typing import Any

from serial import SerialBase, SerialException


class Serial(SerialBase):
    virtual: Any = None  # the FastBoard
    clock: Any = None  # its VirtualClock: the session's clock

    def open(self) -> None:
        from .fastboard import find

        url = self.port
        if url is None:
            raise SerialException("Port must be configured before it can be used.")
        name = str(url).split("://", 1)[-1].split("?", 1)[0]
        try:
            board = find(name)
        except ValueError as exc:
            raise SerialException(str(exc)) from None
        if board.opened:
            # As a device port opened exclusively: one host at a time.
            raise SerialException(f"could not exclusively lock port {url}: Resource temporarily unavailable")
        board.opened = True
        self.virtual = board
        self.clock = board.clock
        self.is_open = True

    def close(self) -> None:
        if self.is_open and self.virtual is not None:
            self.virtual.opened = False
        self.is_open = False

    def _reconfigure_port(self, *args: Any, **kwargs: Any) -> None:
        pass

    @property
    def in_waiting(self) -> int:
        return len(self.virtual._pending) if self.virtual is not None else 0

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise SerialException("port not open")
        return bytes(self.virtual.take(size))

    def write(self, data: Any) -> int:
        if not self.is_open:
            raise SerialException("port not open")
        b = bytes(data)
        self.virtual.put(b)
        return len(b)

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass
