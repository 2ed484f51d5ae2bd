"""DICOM C-STORE of exam files to a PACS, with pynetdicom.

One association per call: presentation contexts for exactly the SOP classes
and transfer syntaxes of the files, one C-STORE per file, then a release.
Every failure (peer unreachable, association rejected or aborted, a bad AE
title, a store the PACS refused) is a PacsError with a one-line message.
pynetdicom's own log is kept off the application's handlers for the call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from ..errors import PulselineError

DEFAULT_CALLED_AE = "ANY-SCP"
DEFAULT_CALLING_AE = "PULSELINE"


class PacsError(PulselineError):
    """A C-STORE to a PACS that did not happen or did not succeed; `results`
    holds the stores done before it (empty if none was)."""

    def __init__(self, message: str, results: list[SendResult] | None = None) -> None:
        super().__init__(message)
        self.results: list[SendResult] = results if results is not None else []


@dataclass(frozen=True)
class SendResult:
    """The outcome of one file's C-STORE: the PACS's status and whether it
    means stored (Success, or a Warning such as coercion of elements)."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    status: int
    ok: bool


def parse_destination(text: str) -> tuple[str, int]:
    """"HOST:PORT" (an IPv6 host in brackets: "[::1]:104") as (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        raise ValueError(f"bad PACS destination {text!r}: expected HOST:PORT (the port is missing)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"bad PACS destination {text!r}: expected HOST:PORT (the host is empty)")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"bad PACS destination {text!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def _check_ae(role: str, title: str) -> str:
    """An AE title as PS3.5 (and pynetdicom) has it: 1 to 16 characters of
    ASCII, no backslash, no control characters; spaces around do not count."""
    why = ""
    if not isinstance(title, str):
        why = "must be a str"
    elif not title.strip() or len(title) > 16:
        why = "must have 1 to 16 characters, not all spaces"
    elif not title.isascii():
        why = "must be ASCII"
    elif "\\" in title or any(not c.isprintable() for c in title):
        why = "must have no backslash or control characters"
    if why:
        raise PacsError(f"invalid {role} AE title {title!r}: {why}")
    return title.strip()


class _Capture(logging.Handler):
    """Holds pynetdicom's error messages of one call (the connect failure's
    reason is only ever logged)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _quiet_pynetdicom() -> Iterator[_Capture]:
    log = logging.getLogger("pynetdicom")
    saved = log.level, log.propagate
    capture = _Capture()
    log.setLevel(logging.ERROR)
    log.propagate = False
    log.addHandler(capture)
    try:
        yield capture
    finally:
        log.removeHandler(capture)
        log.setLevel(saved[0])
        log.propagate = saved[1]


def _connect_failure(capture: _Capture) -> str:
    for m in capture.messages:
        if m.startswith("TCP Initialisation Error:"):
            reason = m.partition(":")[2].strip()
            reason = re.sub(r"^\[Errno -?\d+\]\s*", "", reason)
            return reason.lower() or "no connection"
    return "no connection"


def _no_answer(capture: _Capture, timeout_s: float) -> str:
    if any("timeout" in m.lower() for m in capture.messages):
        return f"did not answer within {timeout_s:g} s"
    if any(m.startswith("Connection closed") for m in capture.messages):
        return "closed the connection"
    return "aborted the association"


def _read(path: Path, *, header_only: bool) -> Dataset:
    try:
        ds = dcmread(path, stop_before_pixels=header_only)
    except (OSError, InvalidDicomError) as e:
        raise PacsError(f"cannot read DICOM file {path}: {e}") from e
    missing = [kw for kw in ("SOPClassUID", "SOPInstanceUID") if kw not in ds]
    if "TransferSyntaxUID" not in ds.file_meta:
        missing.append("TransferSyntaxUID (file meta)")
    if missing:
        raise PacsError(f"cannot send {path}: it has no {', '.join(missing)}")
    return ds


def send(paths: list[Path], host: str, port: int, *, called_ae: str = DEFAULT_CALLED_AE,
         calling_ae: str = DEFAULT_CALLING_AE, timeout_s: float = 10.0) -> list[SendResult]:
    """C-STORE each file to the PACS at host:port over one association.

    Returns one SendResult per file, in order, when every store succeeded;
    raises PacsError otherwise (the results so far are on its `results`).
    """
    called = _check_ae("called", called_ae)
    calling = _check_ae("calling", calling_ae)
    if not host:
        raise PacsError("no PACS host given")
    if not 1 <= port <= 65535:
        raise PacsError(f"bad PACS port {port}: must be from 1 to 65535")
    if timeout_s <= 0:
        raise PacsError(f"bad timeout {timeout_s} s: must be positive")
    if not paths:
        return []
    where = f"{host}:{port}"
    # Headers first (a bad file fails before any network); each file is read
    # whole only when its turn comes, so one exam image is in memory at once.
    datasets = [(Path(p), _read(Path(p), header_only=True)) for p in paths]

    # One presentation context per (SOP class, transfer syntax) the files
    # have: the PACS picks one syntax per context, so each is proposed alone.
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in datasets})
    if len(contexts) > 128:
        raise PacsError(f"the files need {len(contexts)} presentation contexts, more than one association has (128)")
    ae = AE(ae_title=calling)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s

    connected: list[bool] = []

    def on_open(event: Event) -> None:
        connected.append(True)

    with _quiet_pynetdicom() as capture:
        try:
            assoc = ae.associate(host, port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
        except OSError as e:  # name resolution
            raise PacsError(f"no PACS answers at {where} (cannot resolve {host!r}: {e})") from e
        if not assoc.is_established:
            if not connected:
                reason = _connect_failure(capture)
                if reason == "timed out":
                    reason = f"no connection within {timeout_s:g} s"
                raise PacsError(f"no PACS answers at {where} ({reason})")
            rsp = assoc.acceptor.primitive
            if rsp is None:
                # pynetdicom 3.0.4 race: a PACS that rejects and at once closes
                # the connection (Orthanc does) can have the socket seen closed
                # before the A-ASSOCIATE-RJ is read; the answer is still queued.
                pending = assoc.dul.peek_next_pdu()
                if isinstance(pending, A_ASSOCIATE):
                    rsp = pending
            titles = f"called AE {called!r}, calling AE {calling!r}"
            if rsp is not None and rsp.result in (0x01, 0x02):
                raise PacsError(f"the PACS at {where} rejected the association ({titles}): {rsp.reason_str}")
            if rsp is not None and rsp.result == 0x00:
                refused = ", ".join(sorted({UID(str(cx.abstract_syntax)).name for cx in assoc.rejected_contexts}))
                raise PacsError(f"the PACS at {where} accepted none of the presentation contexts ({refused})")
            if any(m.startswith("ACSE timeout") for m in capture.messages):
                raise PacsError(f"the PACS at {where} did not answer the association request within {timeout_s:g} s")
            raise PacsError(f"the PACS at {where} aborted the association request ({titles})")

        results: list[SendResult] = []
        try:
            accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
            for path, ds in datasets:
                key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
                if key not in accepted:
                    raise PacsError(f"the PACS at {where} does not accept {UID(key[0]).name} "
                                    f"in {UID(key[1]).name} ({path})")
            for n, (path, header) in enumerate(datasets, start=1):
                ds = _read(path, header_only=False)
                if ds.SOPInstanceUID != header.SOPInstanceUID:
                    raise PacsError(f"{path} changed while being sent")
                try:
                    rsp_ds = assoc.send_c_store(ds, msg_id=n)
                except (ValueError, AttributeError) as e:
                    raise PacsError(f"cannot send {path}: {e}") from e
                if "Status" not in rsp_ds:
                    raise PacsError(f"the PACS at {where} {_no_answer(capture, timeout_s)} while storing {path}")
                status = int(rsp_ds.Status)
                ok = code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING)
                results.append(SendResult(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), status, ok))
            failed = [r for r in results if not r.ok]
            if failed:
                f = failed[0]
                more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
                raise PacsError(f"the PACS at {where} refused {f.path}: status 0x{f.status:04X} "
                                f"({code_to_category(f.status)}){more}")
        except PacsError as e:
            e.results = results
            raise
        finally:
            if assoc.is_established:
                assoc.release()
    return results
