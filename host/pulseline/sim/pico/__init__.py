"""The emulated Raspberry Pi Pico: the RP2040's boot ROM and the Pico's own
MicroPython on the rp2040js emulator (emulator.mjs), as a board on the host
(board.py), with what it needs found by firmware.py."""
