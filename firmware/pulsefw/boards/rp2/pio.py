# The rp2 board's PIO programs (Raspberry Pi Pico / Pico 2), in MicroPython's
# asm_pio DSL. The words they take and their cycle counts are in
# timing.py (portable, so the host checks them); every program is run
# cycle by cycle on a PIO emulator in tests/test_pio.py. docs/board.md has
# the pins and the timing diagrams.
from rp2 import PIO, asm_pio

try:
    from typing import TYPE_CHECKING
except ImportError:
    TYPE_CHECKING = False
if TYPE_CHECKING:
    from rp2.asm_pio import *  # the DSL's names, for the type checker


# X-ray pulse gate, one state machine at 1 MHz (one cycle = 1 us). Side-set:
# the GATE pin. JMP pin: INTERLOCK_OK, the hardware interlock chain (door,
# key, generator ready in series; a cut wire reads low). Per pulse the CPU
# puts four words (timing.gate_words): the high time's coarse and fine
# counts, then the low time's. The gate rises only if INTERLOCK_OK is high,
# falls within 33 us of it going low, and the next pulse cannot rise sooner
# than the period after this one rose, whenever the CPU asks: the pulse rate
# is held in hardware. The RX FIFO says what happened: all ones fired, 0
# refused (the interlock was open).
@asm_pio(sideset_init=PIO.OUT_LOW)
def pulse_gate():
    wrap_target()
    pull(block).side(0)  # high coarse count: a fire request
    mov(x, osr).side(0)
    pull(block).side(0)  # high fine count
    mov(y, osr).side(0)
    jmp(pin, "fire").side(0)  # the interlock chain, read in hardware
    mov(isr, null).side(0)  # refused: nothing fires, the period still runs
    push(noblock).side(0)
    jmp("low").side(0)
    label("fire")
    mov(isr, invert(null)).side(1)  # gate on
    push(noblock).side(1)
    label("coarse_hi")
    jmp(pin, "hi_ok").side(1)  # 32 cycles a turn, the interlock read at the first
    jmp("low").side(0)  # the interlock opened mid-pulse: off now
    label("hi_ok")
    nop().side(1)[15]
    jmp(x_dec, "coarse_hi").side(1)[14]
    label("fine_hi")  # the last 1..32 cycles
    jmp(y_dec, "fine_hi").side(1)
    label("low")
    pull(block).side(0)  # gate off; low coarse count
    mov(x, osr).side(0)
    pull(block).side(0)  # low fine count
    mov(y, osr).side(0)
    label("fine_lo")
    jmp(y_dec, "fine_lo").side(0)
    label("coarse_lo")
    jmp(x_dec, "coarse_lo").side(0)[15]  # 16 cycles a turn
    wrap()


# Detector line readout, one state machine at the system clock. The front
# end is a line-scan ADC with a 12-bit parallel output on DATA0..11
# (GP0..GP11): LINE_SYNC (side-set bit 0) starts a line; each rising edge of
# PIX_CLK (side-set bit 1) puts the next pixel on DATA. Every pixel takes 5
# cycles, PIX_CLK high for 2, and DATA is sampled 4 cycles after the rising
# edge that presented it. The samples are packed Mono12p in the state
# machine (through the OSR, 8 + 4 bits of one pixel, 4 + 8 of the next: so
# no piece straddles a 32-bit word; autopush at 32, shifting right): the RX
# FIFO's words, DMA'd as they come into the frame buffer, are the wire's
# bytes. One word per line in the TX FIFO (pixels / 2 - 1, fed by DMA) paces
# the lines.
# (A tuple: asm_pio counts side-set pins by a tuple's length, a list would
# count as one; the stubs say list.)
@asm_pio(sideset_init=(PIO.OUT_LOW, PIO.OUT_LOW),  # type: ignore[arg-type]
         in_shiftdir=PIO.SHIFT_RIGHT, out_shiftdir=PIO.SHIFT_RIGHT, autopush=True, push_thresh=32)
def line_readout():
    wrap_target()
    pull(block).side(0)  # pixel pairs - 1: a line is due
    mov(x, osr).side(1)  # LINE_SYNC for one cycle
    nop().side(2)[1]  # first rising edge: pixel 0 on DATA
    nop().side(0)[1]
    label("pair")
    mov(osr, pins).side(0)  # sample an even pixel
    in_(osr, 8).side(2)  # rising edge: the next pixel comes out
    out(null, 8).side(2)
    in_(osr, 4).side(0)[1]
    mov(osr, pins).side(0)  # sample an odd pixel
    in_(osr, 4).side(2)  # rising edge
    out(null, 4).side(2)
    in_(osr, 8).side(0)
    jmp(x_dec, "pair").side(0)
    wrap()
