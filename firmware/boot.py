# Runs first at every reset, before main.py. pulseline needs nothing here:
# the firmware sets itself up in main.py, so that a broken boot never stops
# the board from reaching the REPL (it can always be re-flashed).
