# Each board is a folder: its files are deployed to that board only (pulseline
# flash, the simulated board) and nothing outside boards/ imports them but
# main.py, which picks the board it runs on.
