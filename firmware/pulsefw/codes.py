# Every code of the protocol in one place, each with its name: command
# opcodes, response status (error) codes, event codes, controller states,
# the reasons a press does not expose, and fault codes. The firmware's
# modules and the host's decoders take them from here; the error codes are
# also in native/pulseline_asm.h (tests/test_constants.py keeps the two
# equal). Board-neutral, no imports but micropython's const.
from micropython import const

# Command opcodes (COMMAND payload: opcode u16, sequence, JSON arguments).
OP_HELLO = const(1)  # {"protocol": n} -> versions, board, config
OP_GET_CONFIG = const(2)
OP_SET_CONFIG = const(3)  # {setting: value, ...}, all or nothing
OP_ARM = const(4)
OP_DISARM = const(5)
OP_NEW_EXAM = const(6)
OP_STATUS = const(7)
OP_DOSE_REPORT = const(8)
OP_READ_JOURNAL = const(9)  # {"from": seq, "max": n}
OP_FAULT_RESET = const(10)
OP_SELF_TEST = const(11)
OP_REBOOT = const(12)
OP_EXIT_TO_REPL = const(13)
OP_PING = const(14)  # keeps the link alive; any command does
OP_ALARM_RESET = const(15)  # silences the 5-minute alarm until the next 5 minutes
OP_DARK_FRAMES = const(16)  # {"frames": n}: read n frames with the beam off (calibration)

OP_NAMES = {
    OP_HELLO: "hello", OP_GET_CONFIG: "get_config", OP_SET_CONFIG: "set_config", OP_ARM: "arm",
    OP_DISARM: "disarm", OP_NEW_EXAM: "new_exam", OP_STATUS: "status", OP_DOSE_REPORT: "dose_report",
    OP_READ_JOURNAL: "read_journal", OP_FAULT_RESET: "fault_reset", OP_SELF_TEST: "self_test",
    OP_REBOOT: "reboot", OP_EXIT_TO_REPL: "exit_to_repl", OP_PING: "ping", OP_ALARM_RESET: "alarm_reset",
    OP_DARK_FRAMES: "dark_frames",
}

# Response status / error codes.
ERR_OK = const(0)
ERR_UNKNOWN_COMMAND = const(1)
ERR_MALFORMED = const(2)  # payload could not be parsed
ERR_BAD_ARGUMENT = const(3)  # unknown or wrongly typed argument
ERR_OUT_OF_RANGE = const(4)  # value outside the permitted range
ERR_BAD_STATE = const(5)  # not allowed in the current controller state
ERR_INTERLOCK = const(6)  # a permissive is not met
ERR_LINK_BUDGET = const(7)  # data rate exceeds the link
ERR_VERSION = const(8)  # incompatible protocol version
ERR_BUSY = const(9)
ERR_STORAGE = const(10)  # journal / filesystem failure
ERR_INTERNAL = const(11)

ERROR_NAMES = {
    ERR_OK: "ok",
    ERR_UNKNOWN_COMMAND: "unknown command",
    ERR_MALFORMED: "malformed command",
    ERR_BAD_ARGUMENT: "bad argument",
    ERR_OUT_OF_RANGE: "out of range",
    ERR_BAD_STATE: "not allowed in this state",
    ERR_INTERLOCK: "interlock",
    ERR_LINK_BUDGET: "link budget exceeded",
    ERR_VERSION: "incompatible protocol version",
    ERR_BUSY: "busy",
    ERR_STORAGE: "storage failure",
    ERR_INTERNAL: "internal error",
}

# Event codes (EVENT payload: code u16, timestamp_us u64, JSON body).
EV_BOOT = const(1)  # firmware started: version, reset cause
EV_STATE = const(2)  # controller state changed
EV_FAULT = const(3)  # a fault latched: code, name, message
EV_ALARM = const(4)  # alarm on/off: 5-minute timer, high-level control tone, dose notification
EV_DOSE = const(5)  # dose displays, at least once a second while exposing
EV_BLOCKED = const(6)  # a press did not expose: why
EV_EXAM = const(7)  # a new exam started
EV_IRRADIATION = const(8)  # an irradiation event (one press) was committed to the journal
EV_STOPPED = const(9)  # the firmware stops running (to the REPL, or for a reset): why

EVENT_NAMES = {
    EV_BOOT: "boot",
    EV_STATE: "state",
    EV_FAULT: "fault",
    EV_ALARM: "alarm",
    EV_DOSE: "dose",
    EV_BLOCKED: "blocked",
    EV_EXAM: "exam",
    EV_IRRADIATION: "irradiation",
    EV_STOPPED: "stopped",
}

# Controller states (EV_STATE and status).
BOOT = const(0)
IDLE = const(1)  # disarmed
READY = const(2)  # armed, waiting for a fresh press of the exposure switch
EXPOSING = const(3)
HOLD = const(4)  # switch released after exposing: last image hold; armed
FAULT = const(5)  # latched until fault reset
STATE_NAMES = ("BOOT", "IDLE", "READY", "EXPOSING", "HOLD", "FAULT")

# Why a press is not allowed to expose (for status and events).
BLOCK_NONE = const(0)
BLOCK_DOOR = const(1)
BLOCK_KEY = const(2)
BLOCK_GENERATOR = const(3)
BLOCK_LINK = const(4)
BLOCK_FAULT = const(5)
BLOCK_NOT_ARMED = const(6)
BLOCK_NEEDS_RELEASE = const(7)
BLOCK_NAMES = ("none", "door open", "key off", "generator not ready", "host link lost", "fault latched",
               "not armed", "release the switch first")

# Fault codes (EV_FAULT and status).
FAULT_KV_TOLERANCE = const(1)
FAULT_MA_TOLERANCE = const(2)
FAULT_PULSE_REFUSED = const(3)
FAULT_DETECTOR = const(4)
FAULT_STORAGE = const(5)
FAULT_WATCHDOG_RESET = const(6)
FAULT_SELF_TEST = const(7)
FAULT_CONFIG = const(8)
FAULT_NAMES = {
    FAULT_KV_TOLERANCE: "kV out of tolerance",
    FAULT_MA_TOLERANCE: "mA out of tolerance",
    FAULT_PULSE_REFUSED: "hardware interlock refused a pulse",
    FAULT_DETECTOR: "detector readout failed",
    FAULT_STORAGE: "dose journal could not be written",
    FAULT_WATCHDOG_RESET: "the watchdog reset the board",
    FAULT_SELF_TEST: "self-test failed",
    FAULT_CONFIG: "configuration over the board's budget",
}

