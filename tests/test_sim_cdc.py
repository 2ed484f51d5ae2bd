"""The simulated board's USB CDC output: text gets a board's CRLF line
endings, the firmware's framed binary writes pass as they are, however the
interpreter's stdout is cut into reads."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.sim.cdc import RAW_MARK, CdcOutput


def frame(data: bytes) -> bytes:
    return RAW_MARK + struct.pack("<I", len(data)) + data


def cooked(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# Text as the REPL and print make it: no NUL (so no mark), LF and CRLF both.
texts = st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b"."))
pieces = st.lists(st.one_of(texts.map(lambda t: ("text", t)), st.binary(max_size=60).map(lambda b: ("raw", b))),
                  max_size=12)


@settings(max_examples=300, deadline=None)
@given(pieces=pieces, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_text_is_cooked_and_binary_passes_untouched_at_any_cut(pieces, cuts) -> None:
    stream = b"".join(frame(p) if kind == "raw" else p for kind, p in pieces)
    # What the host should get: each text run cooked as a whole (a CR and
    # its LF may sit in two pieces of text), each binary write as it is.
    expected = bytearray()
    run = b""
    for kind, p in pieces:
        if kind == "text":
            run += p
        else:
            expected += cooked(run) + p
            run = b""
    expected += cooked(run)
    cdc = CdcOutput()
    got = bytearray()
    at = 0
    for cut in sorted(set(cuts)):
        got += cdc.feed(stream[at:cut])
        at = max(at, cut)
    got += cdc.feed(stream[at:])
    assert bytes(got) == bytes(expected)


def test_a_cr_and_a_lf_either_side_of_a_binary_write_are_no_crlf() -> None:
    assert CdcOutput().feed(b"a\r" + frame(b"x") + b"\nb") == b"a\r" + b"x" + b"\r\nb"


def test_binary_holding_lf_cr_and_the_mark_itself_passes_as_it_is() -> None:
    data = b"\n\r\n\r" + RAW_MARK + b"\x00\x00\x00\x00\n"
    assert CdcOutput().feed(b"a\nb" + frame(data) + b"c\r\n") == b"a\r\nb" + data + b"c\r\n"
