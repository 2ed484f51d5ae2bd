# The Raspberry Pi Pico / Pico 2 (MicroPython rp2 port): PIO pulse gate and
# line readout, GPIO interlocks, PWM setpoints, machine.WDT, flash journal.
