# Board->host packets: responses, events and logs, with the board's one
# sequence counter. Line packets go through readout.py, which shares it.
import json
import struct

from micropython import const

from . import codes, wire

# Log levels (LOG payload: level u8, timestamp_us u64, text).
LOG_DEBUG = const(10)
LOG_INFO = const(20)
LOG_WARNING = const(30)
LOG_ERROR = const(40)


class Tx:
    def __init__(self, write, clock):
        self.write = write  # the HAL's link write: takes bytes-like, sends all of it
        self.clock = clock  # ticks.BoardClock: events carry board time, not ticks
        self.seq = 0
        self._trailer = wire.TrailerEncoder()
        self._ping = wire.PingAnswer()

    def next_seq(self):
        s = self.seq
        self.seq = (s + 1) & 0xFFFF
        return s

    def send(self, ptype, payload):
        self.write(wire.encode(ptype, self.next_seq(), payload))

    def response(self, command_seq, status, body):
        if status == codes.ERR_OK:
            body = json.dumps(body).encode()
        else:
            body = str(body).encode()
        self.send(wire.PKT_RESPONSE, wire.response_payload(command_seq, status, body))

    def ping_answer(self, command_seq, now_us):
        """A ping's answer ({"t_us": board time at the tick now_us}), from
        a packet made once: the heartbeat allocates nothing."""
        self.write(self._ping.fill(self.next_seq(), command_seq, self.clock.hi(now_us), now_us))

    def event(self, code, now_us, body):
        """An event at the tick now_us."""
        head = struct.pack(wire.EVENT_HEAD_FORMAT, code, self.clock.us(now_us))
        self.send(wire.PKT_EVENT, head + json.dumps(body).encode())

    def log(self, level, now_us, text):
        self.send(wire.PKT_LOG, struct.pack(wire.LOG_HEAD_FORMAT, level, self.clock.us(now_us)) + str(text).encode())

    def trailer(self, frame_id, pulse_id, t_us, lines_per_frame, lines_sent, kv, ma, pulse_width_ms,
                air_kerma_ugy, kap_ugy_m2):
        """A frame's trailer, for the pulse at the tick t_us, from one
        preallocated packet."""
        self.write(self._trailer.fill(self.next_seq(), frame_id, pulse_id, self.clock.hi(t_us), t_us,
                                      lines_per_frame, lines_sent, kv, ma, pulse_width_ms, air_kerma_ugy,
                                      kap_ugy_m2))
