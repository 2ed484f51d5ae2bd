"""Targets: the boards a session can run on, behind one interface (hardware
on a port or URL, the MicroPython simulated board, the fast simulator), with
flashing and the host-side fault proxy.

May import link, plant and sim.
"""
