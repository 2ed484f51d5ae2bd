"""Flashing from the host: the bundle on the board is verified by hash, a
second flash changes nothing, and the firmware names the build it runs."""

from __future__ import annotations

import pytest

from pulseline.flash import flash, handshake


def test_flash_verifies_restarts_and_names_the_build(board, tmp_path):
    if board.target == "fast":
        pytest.skip("the fast target runs the firmware in process: nothing to flash")
    plan = flash(board.port, build_dir=tmp_path / "build", log=lambda m: None)
    hello = handshake(board.port, expect_hash=plan.firmware_hash)
    assert hello["firmware_hash"] == plan.firmware_hash
    again = flash(board.port, dry_run=True, build_dir=tmp_path / "build")
    assert again.copy == [] and again.remove == []  # a second run changes nothing
    if board.flashed:
        assert plan.copy == []  # the board already held the bundle the plugin deployed
