"""Flashing from the host: the bundle on the board is verified by hash, a
second flash changes nothing, and the firmware names the build it runs."""

from __future__ import annotations

from pulseline.targets.flash import flash, handshake


def test_flash_verifies_restarts_and_names_the_build(board, tmp_path):
    plan = board.flash()  # skipped on the fast target: nothing to flash
    assert board.firmware["firmware_hash"] == plan.firmware_hash  # the handshake after the restart
    again = flash(board.port, dry_run=True, build_dir=tmp_path / "build")
    assert again.copy == [] and again.remove == []  # a second run changes nothing
    if board.flashed:
        assert plan.copy == []  # the board already held the bundle the plugin deployed
    # The dry run left the firmware running (its handshake in the board's time: an emulated Pico boots
    # in tens of seconds of wall time).
    assert handshake(board.port, expect_hash=plan.firmware_hash, clock=board.dut.clock)
