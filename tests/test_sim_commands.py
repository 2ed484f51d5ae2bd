"""The board's command layer on generated input: whatever the host sends,
the board answers once, and an error response leaves the configuration,
the state, the exam and the journal exactly as they were."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from pulseline.mpcompat import import_firmware
from pulseline.plant import Plant, PlantConfig, Timeline
from pulseline.sim.fast import FastSim

wire = import_firmware("pulsefw.wire")
codes = import_firmware("pulsefw.codes")
config = import_firmware("pulsefw.config")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)
setting_names = st.sampled_from([*config.FIELDS, "colour", "protocol", "from", "max"])
args = st.dictionaries(setting_names, json_values | st.sampled_from([0, 1, 7.5, 15.0, 80.0, 256, 2, True]),
                       max_size=4)
opcodes = st.integers(0, 255) | st.sampled_from(sorted(codes.OP_NAMES))
payloads = st.one_of(
    st.builds(lambda op, a: bytes([op]) + json.dumps(a).encode(), opcodes, args),
    st.builds(lambda op, raw: bytes([op]) + raw, opcodes, st.binary(max_size=40)),
)
# Commands that change things on purpose when they succeed (a success is allowed to).
CHANGING = {codes.OP_SET_CONFIG, codes.OP_ARM, codes.OP_DISARM, codes.OP_NEW_EXAM,
            codes.OP_FAULT_RESET, codes.OP_REBOOT, codes.OP_EXIT_TO_REPL, codes.OP_ALARM_RESET,
            codes.OP_SELF_TEST}


def snapshot(sim: FastSim) -> tuple[object, ...]:
    app = sim.app
    return (app.config.as_dict(), app.ctl.state, app.ctl.fault_code, app.exam_id, app.journal.next_seq,
            sim.store.read("journal.bin"), app.account.pulses)


@settings(max_examples=300, deadline=None)
@given(payload_list=st.lists(payloads, min_size=1, max_size=6))
def test_every_command_is_answered_and_a_refused_one_changes_nothing(payload_list):
    sim = FastSim(Plant(PlantConfig(seed=0, structures=False), Timeline()), pixels=False)
    sim.run_until(2000)
    for seq, payload in enumerate(payload_list, start=1000):
        before = snapshot(sim)
        sim.link.to_board += wire.stuff(wire.encode(wire.PKT_COMMAND, seq, payload))
        sim.run_until(sim.now_us + 2000)
        sim.parse_output()
        answers = [r for r in [sim.host.responses.pop(seq, None)] if r is not None]
        assert len(answers) == 1, payload
        r = answers[0]
        if r.status != codes.ERR_OK:
            assert isinstance(r.body, str) and r.body and "\n" not in r.body
            assert snapshot(sim) == before, (payload, r.body)
        elif payload[0] not in CHANGING:
            assert snapshot(sim)[:4] == before[:4], payload
        if not sim.app.running or sim.resets:
            break  # exit to the REPL or a reboot: a fresh board for the rest
