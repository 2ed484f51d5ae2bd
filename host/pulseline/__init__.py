"""pulseline: host tools for the pulsed fluoroscopy controller dev kit.

The package is in layers, and imports point down only (tests/test_layers.py
checks it from the import graph):

    cli, testing    the command line; the pytest plugin              (may import everything below)
    ui              terminal display, monitor, live view, review
    exam            acquiring an exam; calibration, presets, journal, writers, PACS
    targets         one Target per kind of board: hardware, simulated, fast
    sim             the simulated boards (MicroPython unix port; fast, in process)
    plant           the simulated X-ray hardware and its ground truth
    link            protocol, session, native frame assembler, frames, evidence
    (base)          errors, mpcompat, _native: imported by any layer
"""

__version__ = "0.1.0"
