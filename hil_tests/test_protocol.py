"""Protocol conformance, from outside the board: the handshake, every
command answered, every refusal with its error code and no change."""

from __future__ import annotations

import pytest

from pulseline.protocol import wire
from pulseline.session import BoardError, Session, SessionError

COMMANDS_WITHOUT_ARGUMENTS = ["get_config", "status", "dose_report", "ping", "self_test", "alarm_reset",
                              "disarm", "fault_reset"]


def test_the_handshake_names_the_firmware_and_its_build(board, session):
    hello = session.board
    assert hello["protocol"] == wire.PROTOCOL_VERSION
    assert hello["firmware"] and len(hello["firmware_hash"]) == 64
    assert hello["serial"] and hello["detector_serial"]
    assert hello == {**hello, **board.firmware}  # the same board the fixture met


def test_another_protocol_generation_is_refused_with_the_numbers(session):
    with pytest.raises(BoardError) as err:
        session.command("hello", {"protocol": wire.PROTOCOL_VERSION + 1})
    assert err.value.status == wire.ERR_VERSION
    assert f"board speaks protocol {wire.PROTOCOL_VERSION}" in err.value.message


@pytest.mark.parametrize("name", COMMANDS_WITHOUT_ARGUMENTS)
def test_every_command_is_answered(session, name):
    session.command(name)


@pytest.mark.parametrize(("name", "args", "status"), [
    ("set_config", {"kv": 150}, wire.ERR_OUT_OF_RANGE),
    ("set_config", {"pulses_per_s": 10}, wire.ERR_OUT_OF_RANGE),
    ("set_config", {"colour": 1}, wire.ERR_BAD_ARGUMENT),
    ("set_config", {"pulses_per_s": 30, "pixels_per_line": 1024}, wire.ERR_LINK_BUDGET),
    ("arm", {"now": True}, wire.ERR_BAD_ARGUMENT),
    ("read_journal", {"max": 0}, wire.ERR_OUT_OF_RANGE),
    ("dark_frames", {"frames": 0}, wire.ERR_OUT_OF_RANGE),
])
def test_a_bad_command_is_refused_and_changes_nothing(session, name, args, status):
    before = (session.command("get_config"), session.status()["state"], session.dose_report())
    with pytest.raises(BoardError) as err:
        session.command(name, args)
    assert err.value.status == status, err.value.message
    assert (session.command("get_config"), session.status()["state"], session.dose_report()) == before


def test_a_second_host_on_the_same_port_is_told_it_is_busy(board, session):
    with pytest.raises(SessionError, match="busy"):
        Session(board.port)
