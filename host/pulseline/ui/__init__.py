"""What the operator sees: the terminal display, the monitor, the live view
and the review station (web pages served on loopback with a per-launch secret).

May import link and exam (the recorded run); never cli.
"""
