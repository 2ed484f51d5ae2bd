# The simulated board's HAL: the hardware is the plant model on the host.
#
# SimHal forwards the generator, interlock, detector, clock and watchdog
# calls to a plant port, and takes the link and the filesystem as given:
# - under CPython (the fast simulator) the port is the plant itself, in
#   virtual time, and the link is an in-process byte pipe;
# - on the MicroPython unix port the port is PlantClient below, a local
#   socket to the plant server, and the link is stdin/stdout (the board's
#   USB CDC, as on a Pico).
# docs/hal.md describes the calls; the plant server's side of the socket
# protocol is host/pulseline/sim/plantserver.py.
import struct

from micropython import const

from pulsefw import ticks
from pulsefw.hal import Hal
from pulsefw.journal import FileStore

# Plant socket protocol: request = op u8 + the board's time u64 (us, its
# own clock: BoardClock) + fixed arguments; every request gets an answer, so
# the two sides stay in lock step, and the plant acts at the board's time.
OP_HELLO = const(0x48)  # -> now_us u64 (the plant's time: the board's clock starts there)
OP_INPUTS = const(0x49)  # -> bits u8, stall_us u32 (the control loop hangs that long: a scripted fault)
OP_SET = const(0x53)  # kv f32, ma f32 -> ack
OP_FIRE = const(0x46)  # width_us u32 -> ok u8
OP_FEEDBACK = const(0x42)  # -> kv f32, ma f32
OP_ARM = const(0x41)  # lines u16, pixels u16, format u8 -> ack
OP_POLL = const(0x50)  # -> done u8, count u16, count x index u16, then count lines of pixel bytes
OP_WDT_START = const(0x44)  # timeout_ms u32 -> ack
OP_WDT_FEED = const(0x45)  # -> ack
OP_CAUSE = const(0x43)  # -> cause u8 (0 power, 1 watchdog, 2 soft)
OP_RESET = const(0x58)  # -> ack; the plant server restarts the board
OP_WDT_STOP = const(0x57)  # -> ack
OP_DARK = const(0x52)  # width_us u32 -> ack: read the armed frame with the beam off
OP_IDENT = const(0x4E)  # -> seed u32 (the simulated hardware's identity)
OP_EMISSION_OFF = const(0x4F)  # -> ack: the generator's enable dropped until the board restarts
REQUEST_HEAD = const(9)  # op + board time

INPUT_SWITCH = const(1)
INPUT_DOOR_CLOSED = const(2)
INPUT_KEY_ON = const(4)
INPUT_GENERATOR_READY = const(8)
INPUT_HLC_SWITCH = const(16)

CAUSES = ("power", "watchdog", "soft")
# The simulated board's supervisor reads this exit status of the interpreter
# as "hard reset": reload everything from the board's filesystem.
EXIT_HARD_RESET = const(66)


def sim_identity(seed):
    """(board serial, detector serial) of the simulated hardware drawn from seed."""
    return ("SIM-%08X" % seed, "SIMDET-%08X" % seed)


def fill_inputs(inputs, bits):
    inputs.switch = bool(bits & INPUT_SWITCH)
    inputs.door_closed = bool(bits & INPUT_DOOR_CLOSED)
    inputs.key_on = bool(bits & INPUT_KEY_ON)
    inputs.generator_ready = bool(bits & INPUT_GENERATOR_READY)
    inputs.hlc_switch = bool(bits & INPUT_HLC_SWITCH)


class SimHal(Hal):
    BOARD = "sim"
    LINK_BYTES_PER_S = 1_100_000  # USB full speed, practical (SPEC 3)
    MAX_FRAME_BYTES = 8 * 1024 * 1024

    def __init__(self, port, link, storage, link_bytes_per_s=None):
        self.port = port
        self.link = link
        self.storage = storage
        if link_bytes_per_s:
            self.LINK_BYTES_PER_S = link_bytes_per_s
    # Every call goes to the plant port (or the link) as it is, but the
    # clock: the port keeps the plant's time, which does not wrap, and the
    # firmware gets its low 30 bits as ticks, as a Pico's (the plant's time
    # starts near a wrap, so every simulated board soon runs across one).
    def ticks_us(self):
        return self.port.ticks_us() & ticks.MASK

    def clock_us(self):
        return self.port.ticks_us()

    def _plant_time(self, deadline_tick):
        now = self.port.ticks_us()
        return now + ticks.diff(deadline_tick, now & ticks.MASK)

    def wait_until(self, deadline_us):
        self.port.wait_until(self._plant_time(deadline_us))

    def wait_exactly(self, deadline_us):
        self.port.wait_exactly(self._plant_time(deadline_us))

    def read_inputs(self, inputs):
        self.port.read_inputs(inputs)

    def generator_set(self, kv, ma):
        self.port.generator_set(kv, ma)

    def generator_fire(self, width_us, period_us):
        # (The plant's generator is a one-shot; the pulse rate is the
        # firmware's to keep, and the judge's to check.)
        return self.port.generator_fire(width_us)

    def generator_feedback(self, out):
        self.port.generator_feedback(out)

    def emission_off(self):
        self.port.emission_off()

    def detector_arm(self, frame_buf, landed, lines, pixels, pixel_format):
        self.port.detector_arm(frame_buf, landed, lines, pixels, pixel_format)

    def detector_release(self):
        self.port.detector_release()

    def detector_dark(self, width_us):
        self.port.detector_dark(width_us)

    def detector_poll(self):
        return self.port.detector_poll()

    def identity(self):
        return self.port.identity()

    def watchdog_start(self, timeout_ms):
        self.port.watchdog_start(timeout_ms)

    def watchdog_feed(self):
        self.port.watchdog_feed()

    def watchdog_stop(self):
        self.port.watchdog_stop()

    def reset_cause(self):
        return self.port.reset_cause()

    def reset(self):
        self.port.reset()

    def link_read(self, buf):
        return self.link.read(buf)

    def link_write(self, data):
        self.link.write(data)


class BoardClock:
    """The simulated board's own time, in us: what its interpreter ran and
    the time it asked to wait, never the time the host took from it.

    The interpreter is a process on a shared host. Its wall time is its
    running time, plus the time it waited for a host CPU (its run-queue
    delay, which the kernel keeps exactly: /proc/self/schedstat), plus the
    time it was blocked. Of the blocked time the board counts what it asked
    for (a wait, up to what it asked plus WAIT_SLACK_US) and nothing of a
    host call (`hold`): the plant's answer (hardware answers at once), a
    link write the host is slow to take, a write of its filesystem (the
    host's disk). So a starved host slows the board down and never makes
    it look stalled, and a firmware that spins is still a spinning board.

    Stopped outside a wait or a host call (SIGSTOP, a long page fault, a
    hypervisor's steal), the interpreter neither ran nor queued: a gap of
    at least GAP_US between two of its clock readings, at least half of
    which its CPU time and run-queue delay do not explain, is the host's
    too, less EXEC_SLACK_US. Only long gaps: the kernel credits a run-queue
    wait or CPU time up to tens of ms late (measured beside a CPU hog: 22
    ms unexplained in one reading, credited in the next), so a shorter
    one cannot be told from a late credit."""

    REFRESH_US = 200  # a wall step this long re-reads the run-queue delay
    WAIT_SLACK_US = 1000  # a wait woken up to this late is still the board's
    HOLD_EXACT_US = 20  # a host call this long re-reads the run-queue delay (a short one: a pipe write)
    GAP_US = 200_000  # a gap between readings this long, half unexplained, is a stop
    EXEC_SLACK_US = 10_000  # (what of it may still be a late credit)

    def __init__(self, time_mod):
        self._time = time_mod
        self._last_raw = time_mod.ticks_us()
        self._wall = 0  # local monotonic us, summed from ticks_diff (ticks_us wraps)
        self._taken = 0  # us the host took, run-queue delay apart
        self._buf = bytearray(64)
        try:
            # By its host path: the board's "/" is its own filesystem, with
            # no /proc (an unmounted VfsPosix opens the host's paths).
            import vfs

            self._stat = vfs.VfsPosix().open("/proc/self/schedstat", "rb")  # type: ignore[abstract]  # (the stub's ABC)
        except (ImportError, OSError):  # no such kernel table: wall time, less the host calls
            self._stat = None
        self._ran = 0  # CPU time run, as last read (us)
        self._queued0 = self._run_delay_us()
        self._queued = 0  # run-queue delay since the clock started, as last read
        self._read_at = 0  # wall us of that read
        self._given = 0  # the last time given: the clock never goes back
        self._hold_wall = 0
        self._hold_queued = 0
        self.offset = 0  # board time = local time + offset (set from the plant at hello)

    def _wall_us(self):
        raw = self._time.ticks_us()
        self._wall += self._time.ticks_diff(raw, self._last_raw)
        self._last_raw = raw
        return self._wall

    def _run_delay_us(self):
        # "sum_exec_runtime run_delay pcount", in ns: the second field is
        # returned, the first kept as self._ran (both in us).
        f = self._stat
        if f is None:
            return 0
        f.seek(0)
        n = f.readinto(self._buf)
        buf = self._buf
        i = 0
        v = 0
        while i < n:
            c = buf[i]
            i += 1
            if c < 48 or c > 57:
                break
            v = v * 10 + c - 48
        self._ran = v // 1000
        v = 0
        while i < n:
            c = buf[i]
            if c < 48 or c > 57:
                break
            v = v * 10 + c - 48
            i += 1
        return v // 1000

    def _refresh(self, wall, running=False):
        # running: the board only ran since the last read (no wait, no host
        # call), so a long gap its CPU time and queueing leave unexplained
        # was taken by the host (a stop).
        ran, queued = self._ran, self._queued
        self._queued = self._run_delay_us() - self._queued0
        span = wall - self._read_at
        if running and span >= self.GAP_US and self._stat is not None:
            stopped = span - (self._queued - queued) - (self._ran - ran)
            if stopped >= span // 2:
                self._taken += stopped - self.EXEC_SLACK_US
        self._read_at = wall

    def now(self):
        wall = self._wall_us()
        if wall - self._read_at >= self.REFRESH_US:
            self._refresh(wall, True)
        t = wall - self._queued - self._taken
        if t > self._given:
            self._given = t
        return self._given + self.offset

    def hold(self):
        """A host call begins: until `release`, the board's time stands."""
        wall = self._wall_us()
        if wall - self._read_at >= self.REFRESH_US:
            self._refresh(wall, True)
        self._hold_wall = wall
        self._hold_queued = self._queued

    def release(self):
        wall = self._wall_us()
        if wall - self._hold_wall >= self.HOLD_EXACT_US:
            self._refresh(wall)
        # The call's time, less what of it the run-queue delay takes anyway
        # (the board's time just after is the time just before, whatever
        # the delay read then and now).
        self._taken += (wall - self._hold_wall) - (self._queued - self._hold_queued)

    def waited(self, since, asked_us):
        """A wait the board asked for (asked_us long) began at board time
        `since` and is over: past what was asked, it was the host's."""
        self._refresh(self._wall_us())  # a wait, not a running span
        over = self.now() - since - asked_us - self.WAIT_SLACK_US
        if over > 0:
            self._taken += over
            self._given -= over


class PlantClient:
    """The plant port over a local socket (MicroPython unix port)."""

    def __init__(self, host, tcp_port, link, clock):
        import socket
        import time

        self._time = time
        self.link = link  # wait_until wakes on host bytes
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(socket.getaddrinfo(host, tcp_port)[0][-1])
        self.sock = s
        self.req = bytearray(REQUEST_HEAD + 8)
        self.ans = bytearray(16)
        self.ans_mv = memoryview(self.ans)
        # Views made once: a request allocates nothing.
        req_mv = memoryview(self.req)
        self.req_views = [req_mv[:REQUEST_HEAD + n] for n in range(9)]
        self.ans_views = [self.ans_mv[:n] for n in range(9)]
        self.clock = clock
        self.frame_views = []  # type: list
        self.landed = bytearray(0)
        self._index = bytearray(2 * 4096)
        self.ask(OP_HELLO, 0, 8)
        # The board's clock starts at the plant's time.
        self.clock.offset = struct.unpack_from("<Q", self.ans)[0] - (self.clock.now() - self.clock.offset)

    # -- socket plumbing ------------------------------------------------------
    def _recv_into(self, mv):
        got = 0
        n = len(mv)
        while got < n:
            part = mv if got == 0 else mv[got:]  # slice only for a short read
            k = self.sock.readinto(part) if hasattr(self.sock, "readinto") else None
            if k is None:
                data = self.sock.recv(n - got)
                k = len(data)
                mv[got:got + k] = data
            if not k:
                raise OSError("plant connection closed")
            got += k

    def ask(self, op, nargs, nans):
        # The request carries the board's time; the answer is the
        # hardware's, at once: the round trip is the host's time.
        self.req[0] = op
        struct.pack_into("<Q", self.req, 1, self.clock.now())
        self.clock.hold()
        try:
            self.sock.write(self.req_views[nargs])
            if nans:
                self._recv_into(self.ans_views[nans])
        finally:
            self.clock.release()

    # -- clock ----------------------------------------------------------------
    def ticks_us(self):
        return self.clock.now()

    def wait_exactly(self, deadline_us):
        while self.ticks_us() < deadline_us:
            pass

    def wait_until(self, deadline_us):
        # As a board with a 1 ms loop: sleep at most 1 ms, less if host
        # bytes are already waiting.
        now = self.ticks_us()
        dt = deadline_us - now
        if dt > 1000:
            dt = 1000
        if dt > 0:
            ms = (dt + 999) // 1000
            self.link.wait_readable_ms(ms)
            self.clock.waited(now, ms * 1000)

    # -- hardware -------------------------------------------------------------
    def read_inputs(self, inputs):
        self.ask(OP_INPUTS, 0, 5)
        fill_inputs(inputs, self.ans[0])
        stall_us = struct.unpack_from("<I", self.ans, 1)[0]
        if stall_us:
            # A scripted fault: the control loop hangs here, spinning, that
            # long of its own time (no code of the firmware runs meanwhile).
            end = self.ticks_us() + stall_us
            while self.ticks_us() < end:
                pass

    def generator_set(self, kv, ma):
        struct.pack_into("<ff", self.req, REQUEST_HEAD, kv, ma)
        self.ask(OP_SET, 8, 1)

    def generator_fire(self, width_us):
        struct.pack_into("<I", self.req, REQUEST_HEAD, width_us)
        self.ask(OP_FIRE, 4, 1)
        return self.ans[0] == 1

    def emission_off(self):
        self.ask(OP_EMISSION_OFF, 0, 1)

    def generator_feedback(self, out):
        self.ask(OP_FEEDBACK, 0, 8)
        kv, ma = struct.unpack_from("<ff", self.ans)
        out[0] = kv
        out[1] = ma

    def detector_arm(self, frame_buf, landed, lines, pixels, pixel_format):
        line_bytes = len(frame_buf) // lines
        if len(self.frame_views) != lines or len(self.frame_views[0]) != line_bytes:
            mv = memoryview(frame_buf)
            self.frame_views = [mv[i * line_bytes:(i + 1) * line_bytes] for i in range(lines)]
        self.landed = landed
        struct.pack_into("<HHB", self.req, REQUEST_HEAD, lines, pixels, pixel_format)
        self.ask(OP_ARM, 5, 1)

    def detector_release(self):
        self.frame_views = []
        self.landed = bytearray(0)

    def detector_dark(self, width_us):
        struct.pack_into("<I", self.req, REQUEST_HEAD, width_us)
        self.ask(OP_DARK, 4, 1)

    def identity(self):
        self.ask(OP_IDENT, 0, 4)
        return sim_identity(struct.unpack_from("<I", self.ans)[0])

    def detector_poll(self):
        self.ask(OP_POLL, 0, 3)
        done = self.ans[0]
        count = self.ans[1] | (self.ans[2] << 8)
        if count:
            self.clock.hold()  # the lines' bytes: still the hardware's answer
            try:
                idx = memoryview(self._index)[:2 * count]
                self._recv_into(idx)
                for k in range(count):
                    i = idx[2 * k] | (idx[2 * k + 1] << 8)
                    self._recv_into(self.frame_views[i])
                    self.landed[i] = 1
            finally:
                self.clock.release()
        return done == 1

    def watchdog_start(self, timeout_ms):
        struct.pack_into("<I", self.req, REQUEST_HEAD, timeout_ms)
        self.ask(OP_WDT_START, 4, 1)

    def watchdog_feed(self):
        self.ask(OP_WDT_FEED, 0, 1)

    def watchdog_stop(self):
        self.ask(OP_WDT_STOP, 0, 1)

    def reset_cause(self):
        self.ask(OP_CAUSE, 0, 1)
        return CAUSES[self.ans[0]] if self.ans[0] < len(CAUSES) else "power"

    def reset(self):
        # The simulated board's reset line: the supervisor restarts the
        # interpreter when the plant has this request. Until then the CPU
        # waits, as a board's does for its reset to take.
        self.ask(OP_RESET, 0, 1)
        while True:
            self._time.sleep_ms(10)


class SimStorage:
    """The simulated board's filesystem is a directory on the host's disk,
    whose write can stall for the host's reasons (its writeback: 170 ms
    seen for a 450-byte file): a write is a host call, whose time is not
    the board's (the journal's FileStore otherwise)."""

    def __init__(self, store, clock):
        self.store = store
        self.clock = clock

    def read(self, name):
        return self.store.read(name)

    def append(self, name, data):
        self.clock.hold()
        try:
            self.store.append(name, data)
        finally:
            self.clock.release()

    def replace(self, name, data):
        self.clock.hold()
        try:
            self.store.replace(name, data)
        finally:
            self.clock.release()


class StdioLink:
    """The host link on stdin/stdout (the USB CDC port of a board)."""

    def __init__(self, clock):
        import select
        import sys

        self.rx = sys.stdin.buffer
        self.txs = sys.stdout.buffer
        self.poller = select.poll()
        self.poller.register(self.rx, select.POLLIN)
        self.one = bytearray(1)
        self.clock = clock  # the board's: a write the host is slow to take is not its time


    def wait_readable_ms(self, timeout_ms):
        self.poller.poll(timeout_ms)

    def read(self, buf):
        n = 0
        while n < len(buf) and self.poller.poll(0):
            if self.rx.readinto(self.one) != 1:
                # End of input (the host closed the link): stop polling it, or
                # it reads as ready forever and the loop never sleeps again.
                self.poller.unregister(self.rx)
                break
            if self.one[0] == 0x03:
                # Ctrl-C: ordinary host traffic never holds it (byte
                # stuffing), so it is mpremote asking for the REPL. A Pico's
                # USB stack raises this itself; on stdin the link does.
                raise KeyboardInterrupt
            buf[n] = self.one[0]
            n += 1
        return n

    def write(self, data):
        clock = self.clock
        clock.hold()
        try:
            self.txs.write(data)
        finally:
            clock.release()


def connect(root, address, link_bytes_per_s=0):
    """The sim HAL of a MicroPython simulated board: plant at address
    ("host:port"), board filesystem at root, and the emulated link's
    capacity (0: USB full speed)."""
    import time

    host, _, tcp_port = address.rpartition(":")
    clock = BoardClock(time)
    link = StdioLink(clock)
    port = PlantClient(host, int(tcp_port), link, clock)
    return SimHal(port, link, SimStorage(FileStore(root), clock), link_bytes_per_s)
