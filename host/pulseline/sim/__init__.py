"""Simulated boards: the fast in-process simulator (virtual time) and the
plant server for a board on the MicroPython unix port.

May import link and plant; never targets or above.
"""
