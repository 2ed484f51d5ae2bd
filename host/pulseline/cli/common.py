"""What every command module of the CLI shares: its one error type
(CliError, caught once, in main), the signals a command ends on, the one
place a --port becomes a board (attach), and the checks made before a
board hears anything."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PulselineError

if TYPE_CHECKING:
    from ..link.session import Session
    from ..sim.controls import PlantControls
    from ..targets import Target

Handler = Callable[[argparse.Namespace], int]


class CliError(PulselineError):
    """A user-facing error: printed as one line, exit status 2."""


class Signals:
    """Ctrl-C, SIGTERM and SIGHUP (a closed terminal) end a command the same
    way: a KeyboardInterrupt naming the signal, so a capture releases the
    switch, disarms and saves what came. Only the first one interrupts, and
    none inside `deferred()` (the clean-up and the saving): a second signal
    must not cut those short. main() installs it for the command's life."""

    HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._deferred = 0

    def _handler(self, signum: int, frame: Any) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        self.seen.append(name)
        if len(self.seen) == 1 and not self._deferred:
            raise KeyboardInterrupt(name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        import threading

        self.seen = []
        if threading.current_thread() is not threading.main_thread():
            yield  # (signals reach the main thread only: called in-process from another, leave them be)
            return
        before = {sig: signal.signal(sig, self._handler) for sig in self.HANDLED}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)


SIGNALS = Signals()


def say_error(text: str) -> None:
    """The one line of an error, if there is still somewhere to say it (a
    closed terminal has gone: the exit status says it)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"pulseline: error: {text}", file=sys.stderr, flush=True)


# -- the board behind --port -------------------------------------------------------------


def attach(port: str) -> Target:
    """The board behind a --port (pulseline.targets.attach: a device path, a
    pyserial URL, or a simulated board by name, pty, link or URL): the one
    place a port becomes a board. A port that cannot be: one line."""
    from .. import targets

    try:
        return targets.attach(port)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def operator(target: Target) -> PlantControls | None:
    """The simulated hardware the CLI works for its user (the exposure switch,
    the phantom): that of a board `pulseline sim` runs. A fast board of this
    process (fastsim://) is worked by the program that made it: none."""
    return target.controls if target.kind == "sim" else None


@contextlib.contextmanager
def board_session(port: str) -> Iterator[Session]:
    """A session with the board behind `port`, closed (and the target's
    control channel with it) when done."""
    with attach(port) as target:
        try:
            s = target.open_session()
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            yield s
        finally:
            s.close()


# -- before anything is done -------------------------------------------------------------


def check_can_write(path: Path, *, directory: bool) -> None:
    """Before a board is opened (or a stream decoded): `path` can be
    written, as a directory that is there or can be made (directory), or
    as a file in a directory that is there. Nothing is left behind: a
    command that fails later has created nothing. The probe is a nameless
    temporary file, so a read-only filesystem says so even to root."""
    import tempfile

    try:
        if directory:
            base = path
            while not base.exists() and base.parent != base:  # the nearest existing ancestor: mkdir makes the rest
                base = base.parent
        elif path.is_dir():
            raise CliError(f"cannot write to {path}: it is a directory")
        else:
            base = path.parent
        if not base.is_dir():
            raise CliError(f"cannot write to {path}: {base} " + ("is not a directory" if base.exists() else
                                                                  "does not exist"))
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as exc:
        raise CliError(f"cannot write to {path}: {exc.strerror or exc}") from None


def listen_checked(cmd: Handler) -> Handler:
    """`cmd`, refusing first (before any board is opened) a live view's
    --listen beyond this machine without --allow-remote."""
    def checked(args: argparse.Namespace) -> int:
        from ..ui.view import check_listen

        # capture: only with --view; view EXAM (a review) says its own
        if getattr(args, "view", True) and getattr(args, "exam", None) is None:
            try:
                check_listen(args.listen, args.allow_remote)
            except ValueError as exc:
                raise CliError(str(exc)) from None
        return cmd(args)
    checked.__name__ = checked.__qualname__ = cmd.__name__
    checked.__doc__ = cmd.__doc__
    return checked
