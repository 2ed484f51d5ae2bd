"""The link to any board: the wire protocol (the firmware's own definitions),
the host session, the native frame assembler and its Python references,
frames, and evidence recordings.

Imports only the base (errors, mpcompat, _native): a session knows no
simulator and no plant; it is given a transport and a clock.
"""
