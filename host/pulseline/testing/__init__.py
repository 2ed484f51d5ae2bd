"""The pytest plugin for the hil suite (registered as a pytest11 entry point).

Top layer, beside cli: may import every layer below.
"""
