# The simulated board (MicroPython unix port): the plant over a local
# socket, the host link on stdin/stdout, the board filesystem a directory.
