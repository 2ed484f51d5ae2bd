# Starts the pulseline firmware with this board's HAL. Ctrl-C from the host
# (mpremote) interrupts it and reaches the REPL; ordinary host traffic never
# contains that byte (docs/protocol.md, byte stuffing).
import sys

from pulsefw import app


def board_hal():
    if sys.platform == "rp2":
        from pulsefw.boards.rp2 import hal as rp2_hal

        return rp2_hal.Rp2Hal()
    import os

    from pulsefw.boards.sim import hal as sim_hal

    return sim_hal.connect(os.getenv("PULSELINE_BOARD_FS") or ".", os.getenv("PULSELINE_PLANT") or "127.0.0.1:7301",
                           int(os.getenv("PULSELINE_LINK_BYTES_PER_S") or 0))


app.App(board_hal()).run()
