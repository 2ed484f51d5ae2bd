"""A fast board (no pixels) that keeps every byte a host sends it: to show
that a refused command line reached no board (tests/test_cli_checks.py,
tests/test_cli_fuzz.py)."""

from __future__ import annotations

from pulseline.link import evidence
from pulseline.link.session import Session
from pulseline.sim.fastboard import FastBoard


class RecordingBoard:
    def __init__(self) -> None:
        self.board = FastBoard(seed=0, pixels=False)
        self.url = self.board.url
        self.sent = bytearray()
        put = self.board.put
        self.board.put = lambda data: (self.sent.extend(data), put(data))[1]  # type: ignore[method-assign]

    def commands(self) -> list[str]:
        """The commands it was sent, by name, in order."""
        entries = evidence.entries([(evidence.TO_BOARD, 0.0, bytes(self.sent))])
        return [e.body["command"] for e in entries if e.kind == "command"]

    def config(self) -> dict:
        with Session(self.url) as s:
            return dict(s.config)

    def close(self) -> None:
        self.board.close()
