"""Exams: how an exam is acquired (from a target and a plan), calibration,
presets, the board's journal read back, and the writers (DICOM RF, dose SR,
TIFF, PNG, JSON), export and PACS.

May import link, plant (timelines for presets), sim and targets; never ui or cli.
"""
