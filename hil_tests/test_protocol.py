"""Protocol conformance, from outside the board: the handshake, every
command answered and doing its job, every refusal with its error code and
no change.

Error codes not provoked here: ERR_STORAGE and ERR_INTERNAL need a broken
board (full storage, a firmware defect) and are covered by the firmware's
unit tests (tests/fw/test_app.py); ERR_INTERLOCK is reserved (a missing
permissive blocks pulses, not commands: the `blocked` event says which)."""

from __future__ import annotations

import pytest

from pulseline.link.protocol import codes, wire
from pulseline.link.session import OPCODES, BoardAtRepl, BoardError, Session, SessionError

COMMANDS_WITHOUT_ARGUMENTS = ["get_config", "status", "dose_report", "ping", "self_test", "alarm_reset",
                              "disarm", "fault_reset"]


def test_the_handshake_names_the_firmware_and_its_build(board, session):
    hello = session.board
    assert hello["protocol"] == wire.PROTOCOL_VERSION
    assert hello["firmware"] and len(hello["firmware_hash"]) == 64
    assert hello["serial"] and hello["detector_serial"]
    # The same board the fixture met (each session is told back its own id).
    assert hello["session"] == session.session_id != board.firmware["session"]
    assert {k: v for k, v in hello.items() if k != "session"} == \
        {k: v for k, v in board.firmware.items() if k != "session"}


def test_another_protocol_generation_is_refused_with_the_numbers(session):
    with pytest.raises(BoardError) as err:
        session.command("hello", {"protocol": wire.PROTOCOL_VERSION + 1})
    assert err.value.status == codes.ERR_VERSION
    assert f"board speaks protocol {wire.PROTOCOL_VERSION}" in err.value.message


@pytest.mark.parametrize("name", COMMANDS_WITHOUT_ARGUMENTS)
def test_every_command_is_answered(session, name):
    session.command(name)


@pytest.mark.parametrize(("name", "args", "status"), [
    ("set_config", {"kv": 150}, codes.ERR_OUT_OF_RANGE),
    ("set_config", {"pulses_per_s": 10}, codes.ERR_OUT_OF_RANGE),
    ("set_config", {"colour": 1}, codes.ERR_BAD_ARGUMENT),
    # (2.9 MB/s: over a USB full-speed link, within a Pico's RAM)
    ("set_config", {"pulses_per_s": 30, "pixels_per_line": 512, "lines_per_frame": 128}, codes.ERR_LINK_BUDGET),
    ("arm", {"now": True}, codes.ERR_BAD_ARGUMENT),
    ("read_journal", {"max": 0}, codes.ERR_OUT_OF_RANGE),
    ("dark_frames", {"frames": 0}, codes.ERR_OUT_OF_RANGE),
])
def test_a_bad_command_is_refused_and_changes_nothing(session, name, args, status):
    def state():
        report = session.dose_report()
        del report["board_us"]  # the board's time now: not state
        return session.command("get_config"), session.status()["state"], report

    before = state()
    with pytest.raises(BoardError) as err:
        session.command(name, args)
    assert err.value.status == status, err.value.message
    assert state() == before


def test_a_second_host_on_the_same_port_is_told_it_is_busy(board, session):
    with pytest.raises(SessionError, match="busy"):
        Session(board.port)


def test_an_unknown_opcode_and_a_malformed_command_are_refused(session):
    before = (session.command("get_config"), session.status()["state"])
    assert session.request(0xEE, b"{}")[0] == codes.ERR_UNKNOWN_COMMAND
    assert session.request(OPCODES["set_config"], b"kv=90")[0] == codes.ERR_MALFORMED
    assert session.request(OPCODES["set_config"], b"[90]")[0] == codes.ERR_MALFORMED
    assert (session.command("get_config"), session.status()["state"]) == before


def test_commands_refused_in_the_wrong_state(session):
    session.arm()
    with pytest.raises(BoardError) as err:
        session.command("dark_frames", {"frames": 2})  # only while disarmed
    assert err.value.status == codes.ERR_BAD_STATE, err.value.message
    session.disarm()
    session.command("dark_frames", {"frames": 3})
    with pytest.raises(BoardError) as err:
        session.arm()  # not while dark frames are being read
    assert err.value.status == codes.ERR_BUSY, err.value.message
    assert all(session.next_frame(5) is not None for _ in range(3))
    assert session.status()["state"] == "IDLE"


def read_whole_journal(session):
    records, at = [], 0
    while True:
        page = session.command("read_journal", {"from": at})
        if not page["records"]:
            return records
        records += page["records"]
        at = page["next"]


def test_every_command_does_its_job(session):
    assert session.configure(kv=70.0, pulses_per_s=3.75)["kv"] == 70.0
    assert session.command("get_config")["pulses_per_s"] == 3.75
    assert session.command("arm")["state"] == "READY" and session.status()["state"] == "READY"
    assert session.command("disarm")["state"] == "IDLE"
    exam = session.command("new_exam")["exam"]
    assert session.status()["exam"] == exam and session.dose_report()["pulses"] == 0
    assert {"kind": "exam", "exam": exam} in [r["record"] for r in read_whole_journal(session)]
    dark = session.command("dark_frames", {"frames": 2})
    frames = [session.next_frame(5) for _ in range(2)]
    first = dark["first_frame"]
    assert [f.frame_id for f in frames if f is not None and f.complete] == [first, first + 1]
    assert session.command("self_test")["passed"]


def test_reboot_restarts_the_board_disarmed_with_its_exam(board, session):
    session.arm()
    exam = session.status()["exam"]
    session.close()
    board.reset()
    with board.dut.open_session() as s:
        status = s.status()
        s.sleep(0.2)
        events = [(e.name, e.body) for e in s.events]
    assert status["state"] == "IDLE" and status["exam"] == exam and status["uptime_s"] < 5, (repr(status), events)


def test_exit_to_repl_stops_the_firmware_and_a_soft_reset_brings_it_back(board, session):
    if board.target == "fast":
        pytest.skip("the fast target has no REPL to exit to")
    from mpremote.transport_serial import SerialTransport

    from pulseline.targets import resolve_port as resolve
    from pulseline.targets.flash import flash

    session.command("exit_to_repl")
    assert session.wait_event("stopped", 5, then="REPL") is not None  # the firmware says it is going
    session.close()
    # A new session is told where the board is, and how to start the firmware again.
    with pytest.raises(BoardAtRepl, match=r"the board is at the MicroPython REPL.*restart it with: mpremote"):
        Session(board.port)
    # A soft reset at the REPL (Ctrl-D, as `mpremote soft-reset` leaves it)
    # runs boot.py and main.py again. Ctrl-C first, as mpremote does: the
    # handshakes above were typed into the REPL's line, and may have left it
    # inside an unfinished statement, where Ctrl-D only ends the statement.
    t = SerialTransport(resolve(board.port))
    t.serial.timeout = 1
    t.serial.write(b"\x03\x03\x04")
    t.close()
    assert board.dut.wait_for_firmware(30)["firmware_hash"] == board.firmware["firmware_hash"]
    with board.dut.open_session() as s:
        assert s.status()["state"] == "IDLE"
    # And through the raw REPL, as `pulseline flash` goes (it restarts the board).
    with board.dut.open_session() as s:
        s.command("exit_to_repl")
    flash(board.port, dry_run=True)
    assert board.dut.wait_for_firmware(30)["firmware_hash"] == board.firmware["firmware_hash"]
