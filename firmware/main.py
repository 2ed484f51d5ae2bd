# Starts the pulseline firmware with this board's HAL. Ctrl-C from the host
# (mpremote) interrupts it and reaches the REPL; ordinary host traffic never
# contains that byte (docs/protocol.md, byte stuffing).
import sys

from pulsefw import app


def board_hal():
    if sys.platform == "rp2":
        from pulsefw import hal_rp2  # Stage 7

        return hal_rp2.Rp2Hal()
    import os

    from pulsefw import hal_sim

    return hal_sim.connect(os.getenv("PULSELINE_BOARD_FS") or ".", os.getenv("PULSELINE_PLANT") or "127.0.0.1:7301",
                           int(os.getenv("PULSELINE_LINK_BYTES_PER_S") or 0))


app.App(board_hal()).run()
