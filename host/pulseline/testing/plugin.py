"""The pulseline pytest plugin: one test file for the simulated board and a
real one (registered as a pytest11 entry point, so it is there wherever
pulseline is installed; its fixtures only start anything when a test asks).

    pytest hil_tests --target sim                      the MicroPython simulated board (default)
    pytest hil_tests --target fast                     the firmware in process, in virtual time
    pytest hil_tests --target pico                     the Pico's own MicroPython on an emulated RP2040
    pytest hil_tests --target /dev/ttyACM0             a real board (or any pyserial URL)
    pytest hil_tests --target sim --seed 7 --evidence out/

The board comes from pulseline.targets (`create`: one Target per kind), and
the fixtures ask the Target (its clock, controls, link faults, evidence),
never which kind it is.

Fixtures: `board` (the device under test), `session` (an open host session),
`plant` (the simulated hardware; a test that takes it is skipped on
hardware), `clock` (the target's time), `evidence_dir` (where a test keeps
its own evidence). Markers: `needs_plant`, `slow`,
`fidelity` (only on hardware: what the simulator cannot model closely
enough). docs/ci.md has the whole story.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..sim.controls import PlantControls

SIM = "sim"
FAST = "fast"
PICO = "pico"
SIMULATED = (SIM, FAST, PICO)
TEST_ANSWER_TIMEOUT_S = 5.0  # a command's answer, in the target's seconds (see the session fixture)
# A simulated board powers on with its plant's time this far before the
# firmware's ticks wrap (2**30 us): every test runs across a wrap, which a
# Pico sees every 17.9 minutes.
BOARD_START_US = (1 << 30) - 2_000_000


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pulseline", "pulseline hardware/simulator-in-the-loop")
    g.addoption("--target", default=SIM,
                help="sim (the MicroPython simulated board, default), fast (the firmware in process, in virtual "
                     "time), pico (the emulated Pico), or a device path or pyserial URL of a board")
    g.addoption("--seed", type=int, default=0, help="the simulated plant's seed (default 0)")
    g.addoption("--flash", action=argparse.BooleanOptionalAction, default=None,
                help="deploy the firmware before the tests (default: yes on sim, no on a real board)")
    g.addoption("--evidence", type=Path, help="write a per-test evidence bundle under this directory")
    g.addoption("--firmware", type=Path, help="the firmware source tree to deploy (default: the package's "
                "firmware/); e.g. a deliberately broken one, to see the suite catch it")


def pytest_configure(config: pytest.Config) -> None:
    for line in ("link_faults(spec): seeded link faults between host and board, e.g. 'corrupt=1e-5,drop=0.01' "
                 "(the simulated link on sim, a host-side proxy on hardware; the fast target has no link)",
                 "needs_plant: needs the simulated plant (skipped on hardware)",
                 "slow: long-running (soak) test",
                 "browser: drives a real browser (CPU-hungry: make test runs these after the parallel ones)",
                 "fidelity: needs real hardware precision (skipped on simulated targets)"):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    hardware = config.getoption("--target") not in SIMULATED
    for item in items:
        if hardware and item.get_closest_marker("needs_plant"):
            item.add_marker(pytest.mark.skip(reason=f"needs the plant; target {config.getoption('--target')} "
                                                    "is hardware"))
        if not hardware and item.get_closest_marker("fidelity"):
            item.add_marker(pytest.mark.skip(reason="a fidelity check: runs on hardware only"))


# -- the device under test --------------------------------------------------------------


@dataclass
class Board:
    """The device under test, as a test sees it: its port, its firmware, how
    to reset and flash it; `dut` is its Target (pulseline.targets)."""

    target: str  # the --target given: sim, fast, or a port
    port: str
    seed: int
    firmware: dict[str, Any] = field(default_factory=dict)  # hello: firmware, firmware_hash, serial, ...
    dut: Any = None  # the Target
    flashed: bool = False  # whether the plugin deployed the compiled bundle (what `pulseline flash` copies)

    def link_faults(self) -> list[Any]:
        """Every fault injected on the board->host link so far (ground truth)."""
        return list(self.dut.link_faults())

    @property
    def simulated(self) -> bool:
        return bool(self.dut.simulated)

    @property
    def sim(self) -> Any:
        """The simulated hardware's controls (None on hardware)."""
        return self.dut.controls

    def flash(self, source: Path | None = None) -> Any:
        """`pulseline flash` on this board: compile the firmware (the
        package's, or the tree `source`), copy what differs, verify by hash,
        restart, and wait for the handshake of exactly that bundle. Returns
        the flash plan (what was copied and removed)."""
        from ..targets import TargetError

        try:
            plan, self.firmware = _flash(self.dut, source)
        except TargetError as exc:
            pytest.skip(str(exc))
        return plan

    def reset(self) -> dict[str, Any]:
        """Restart the board and wait for its handshake (the reboot command)."""
        self.firmware = self.dut.reset()
        return self.firmware


def _flash(dut: Any, source: Path | None) -> tuple[Any, dict[str, Any]]:
    import tempfile

    from ..targets.flash import FIRMWARE, handshake

    with tempfile.TemporaryDirectory(prefix="pulseline-flash-") as build:
        plan = dut.flash(source or FIRMWARE, build_dir=Path(build), log=lambda m: None)
    return plan, handshake(dut.port, expect_hash=plan.firmware_hash, clock=dut.clock)


class Plant(PlantControls):
    """The simulated hardware of a simulated target, as a test works it:
    the target's controls, with scripting ahead of time and the model."""

    def __init__(self, sim: Any) -> None:
        self._sim = sim
        self.model = sim.plant  # the plant model itself: pulses, meter, detector maps

    def set_input(self, name: str, value: float | bool, at_us: int | None = None) -> int:
        from ..sim.pico.board import NotWired

        try:
            return int(self._sim.set_input(name, value) if at_us is None else
                       self._sim.set_input(name, value, at_us=at_us))
        except NotWired as exc:  # (a test of what this target's plant cannot do yet: said, not failed)
            pytest.skip(str(exc))

    def set(self, name: str, value: float | bool) -> int:
        return self.set_input(name, value)

    def at(self, seconds_from_now: float, name: str, value: float | bool) -> int:
        """Script an input or a fault ahead of time (a timeline entry: door,
        switch, generator fault, readout timeout, line loss, stall...), so it
        happens at an exact moment whatever the test is doing; returns its
        plant time."""
        t = int(self.status()["t_us"]) + max(1, round(seconds_from_now * 1e6))
        return self.set_input(name, value, at_us=t)

    def stall(self, seconds: float) -> int:
        """Hang the control loop for this long of the board's time (it spins
        in its next input read; the watchdog is not fed); returns the plant
        time it was asked for."""
        return self.set("stall", round(seconds * 1e6))

    def stalls(self) -> list[int]:
        """Plant time at which each stall actually hung the control loop."""
        return list(self._sim.stalls)

    def plant_status(self) -> dict[str, Any]:
        return dict(self._sim.plant_status())

    status = plant_status  # (what tests call it)


@pytest.fixture(scope="session")
def pulseline_bundle(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path | None:
    """The firmware bundle the simulated boards get (what `pulseline flash`
    deploys: compiled with mpy-cross), or None for source (--no-flash)."""
    if pytestconfig.getoption("--flash") is False:
        return None
    from ..targets.flash import build_bundle

    out = tmp_path_factory.mktemp("bundle")
    build_bundle("linux", out, source=_firmware(pytestconfig))
    return out


def _firmware(config: pytest.Config) -> Path:
    from ..targets.flash import FIRMWARE

    chosen: Path | None = config.getoption("--firmware")
    return chosen if chosen is not None else FIRMWARE


@pytest.fixture(scope="session")
def pulseline_pico_image(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """The emulated Picos' flash: one Pico flashed once per run (`pulseline
    flash --board rp2`), copied for every test's board."""
    from ..targets.flash import FlashError
    from ..targets.pico import flash_image

    try:
        return flash_image(tmp_path_factory.mktemp("pico-image"), source=_firmware(pytestconfig))
    except FlashError as exc:
        pytest.fail(f"flashing the emulated Pico: {exc}", pytrace=False)


@pytest.fixture
def board(request: pytest.FixtureRequest, tmp_path: Path, pulseline_bundle: Path | None) -> Iterator[Board]:
    """A fresh board per test. On sim: a new simulated board (own pty, own
    filesystem, the seeded plant), so tests never see each other's state and
    run in parallel under xdist. On fast: a new board in this process. On
    hardware: the board on --target, reset."""
    from .. import targets

    cfg = request.config
    spec, seed = cfg.getoption("--target"), int(cfg.getoption("--seed"))
    marker = request.node.get_closest_marker("link_faults")
    faults = str(marker.args[0]) if marker is not None else ""
    flashed = pulseline_bundle is not None if spec == SIM else spec != FAST and bool(cfg.getoption("--flash"))
    pico_image = None
    if spec == PICO:
        pico_image = request.getfixturevalue("pulseline_pico_image")
        flashed = True
    if spec not in SIMULATED:
        # A board on a port: flashed once per run (with --flash), then
        # restarted before each test, so that every test starts from a
        # booted board, as on the simulated targets (its journal, like a
        # board's, stays).
        request.getfixturevalue("_pulseline_flashed")
        try:
            targets.HardwareTarget(spec).reset()
        except Exception as exc:  # SessionError, with its one-line reason
            pytest.fail(f"the board on {spec} did not restart: {exc}", pytrace=False)
    try:
        dut = targets.create(spec, seed=seed, faults=faults, workdir=tmp_path, bundle=pulseline_bundle,
                             source=_firmware(cfg), start_us=BOARD_START_US, pico_image=pico_image)
    except targets.TargetError as exc:
        pytest.skip(str(exc))
    b = None
    try:
        b = Board(spec, dut.port, seed, dut.wait_for_firmware(), dut, flashed=flashed)
        yield b
    finally:
        _evidence(request, b)
        dut.close()


@pytest.fixture(scope="session")
def _pulseline_flashed(pytestconfig: pytest.Config) -> bool:
    """--flash on a board on a port: `pulseline flash`, once per run."""
    if not pytestconfig.getoption("--flash"):
        return False
    from .. import targets
    from ..targets.flash import FlashError

    try:
        _flash(targets.HardwareTarget(pytestconfig.getoption("--target")), _firmware(pytestconfig))
    except FlashError as exc:
        pytest.fail(f"--flash: {exc}", pytrace=False)
    return True


@pytest.fixture
def session(board: Board, request: pytest.FixtureRequest) -> Iterator[Any]:
    # The suite judges what the board answers, not how fast: a simulated
    # board on a loaded CI machine can be starved of a CPU or a disk for
    # seconds, so a test's session waits longer than an operator's.
    s = board.dut.open_session(record=request.config.getoption("--evidence") is not None,
                               answer_timeout_s=TEST_ANSWER_TIMEOUT_S)
    request.node.stash[_SESSION] = s
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def plant(board: Board) -> Plant:
    if not board.simulated:
        pytest.skip(f"needs the plant; target {board.target} is hardware")
    return Plant(board.sim)


@pytest.fixture
def clock(board: Board) -> Any:
    """The target's time (pulseline.link.clock): virtual time on the fast
    target, wall time on the others. Every wait in a test goes through it
    (now, sleep, wait_for), so one test file means the same on both."""
    return board.dut.clock


@pytest.fixture
def evidence_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a test keeps its own evidence (screenshots, say): its bundle
    under --evidence, or a temporary directory without one."""
    root = request.config.getoption("--evidence")
    out = _bundle_dir(request) if root is not None else tmp_path / "evidence"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _bundle_dir(request: pytest.FixtureRequest) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in request.node.nodeid)
    return Path(request.config.getoption("--evidence")) / safe


_SESSION = pytest.StashKey[Any]()
_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_REPORT] = report
        if report.failed and "board" in getattr(item, "fixturenames", ()):
            cfg = item.config
            cmd = f"pytest '{item.nodeid}' --target {cfg.getoption('--target')} --seed {cfg.getoption('--seed')}"
            report.sections.append(("pulseline replay", cmd))
    return report


def _evidence(request: pytest.FixtureRequest, board: Board | None) -> None:
    """The test's evidence bundle: the target, seed and firmware; the
    protocol transcript (board->host bytes and the decoded events); the
    plant's timeline; linked from the JUnit XML as a property."""
    root = request.config.getoption("--evidence")
    if root is None or board is None:
        return
    node = request.node
    out = _bundle_dir(request)
    out.mkdir(parents=True, exist_ok=True)
    report = node.stash.get(_REPORT, None)
    cfg = request.config
    meta = {"test": node.nodeid, "outcome": report.outcome if report else None, "target": board.target,
            "seed": board.seed, "firmware": board.firmware.get("firmware"),
            "firmware_hash": board.firmware.get("firmware_hash"), "serial": board.firmware.get("serial"),
            "replay": f"pytest '{node.nodeid}' --target {cfg.getoption('--target')} --seed {board.seed}"}
    (out / "evidence.json").write_text(json.dumps(meta, indent=1))
    s = node.stash.get(_SESSION, None)
    if s is not None:
        with open(out / "events.jsonl", "w") as fh:
            for e in s.events:
                fh.write(json.dumps(e.as_dict()) + "\n")
        if s.recorder is not None:
            s.recorder.write_transcript(out / "transcript.bin")
            if s.recorder.frames:
                meta["frames_kept"] = s.recorder.write_frames(out / "frames.npz")
                meta["frames_assembled"] = s.recorder.frames_seen
            (out / "evidence.json").write_text(json.dumps(meta, indent=1))
    board.dut.write_evidence(out)
    node.user_properties.append(("evidence", str(out)))
