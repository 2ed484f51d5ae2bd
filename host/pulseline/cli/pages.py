"""The commands that serve a page in the browser: view (a board's live view,
or an exam directory's review) and review (a recorded run). The pages are
pulseline.ui's; this module checks the options, serves until Ctrl-C and
prints where."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from .common import CliError, attach, listen_checked, operator


def _serve_page(view: Any, args: argparse.Namespace, log: Callable[[str], None], line: str,
                info: dict[str, Any]) -> int:
    """Serve a page (a LiveView or a ReviewView) until Ctrl-C: its address
    on stdout (`line`, or with --json `info` and the url), who else can reach
    it, and the browser opened on it unless --no-browser."""
    import time

    try:
        try:
            view.start()
        except OSError as exc:
            raise CliError(str(exc)) from None
        if args.json:
            print(json.dumps({"url": view.url, **info}), flush=True)
        else:
            print(f"{line} at {view.url} (Ctrl-C to stop)", flush=True)
        if view.reach():
            log(f"warning: {view.reach()}")
        if not args.no_browser:
            view.open_in_browser()  # the URL's token kept off the browser's command line
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        view.stop()  # (a live view closes the session it opened)
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    """A recorded run (an exam directory) in the browser: the review."""
    from ..exam.exam_dir import read_exam
    from ..ui.review import RISK, WHAT, ReviewView
    from ..ui.view import check_listen

    try:
        check_listen(args.listen, args.allow_remote, what=WHAT, risk=RISK)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    exam = read_exam(args.exam)
    try:
        view = ReviewView(exam, host=args.listen, port=args.http_port, allow_remote=args.allow_remote)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    def log(line: str) -> None:
        print(f"pulseline review: {line}", file=sys.stderr, flush=True)

    return _serve_page(view, args, log, f"review of {args.exam} ({len(exam)} frames)",
                       {"exam": str(args.exam), "frames": len(exam)})


@listen_checked
def cmd_view(args: argparse.Namespace) -> int:
    from ..ui.view import LiveView

    if args.exam is not None:  # an exam directory, not a board: its review
        if args.port is not None:
            raise CliError("view: give --port (a board's live view) or an exam directory (its review), not both")
        if not args.exam.is_dir():
            raise CliError(f"{args.exam} is not an exam directory (for a board's live view: pulseline view "
                           f"--port {args.exam})")
        return cmd_review(args)
    if args.port is None:
        raise CliError("view needs --port (a board's live view) or an exam directory (the review of a recorded run)")
    _check_port(args.port)

    def log(line: str) -> None:
        print(f"pulseline view: {line}", file=sys.stderr, flush=True)

    # No board yet is not an error for a monitor: the page says so, and
    # shows the board when it answers (likewise after losing it).
    try:
        view = LiveView(connect=_connector(args.port), where=args.port, host=args.listen, port=args.http_port,
                        log=log, allow_remote=args.allow_remote)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return _serve_page(view, args, log, f"live view of {args.port}", {"port": args.port})


def _check_port(port: str) -> None:
    """A port that can never be a board is said at once; a simulated board
    that is not running yet is not an error (the view shows it when it is)."""
    if port != "sim" and not port.startswith("sim:"):
        attach(port).close()


def _connector(port: str) -> Callable[[], tuple[Any, Any]]:
    """The live view's way to the board: a session and its simulated
    hardware, or an error while there is no board (yet)."""
    def connect() -> tuple[Any, Any]:
        from .. import targets

        target = targets.attach(port)
        try:
            return target.open_session(), operator(target)
        except BaseException:
            target.close()
            raise
    return connect
