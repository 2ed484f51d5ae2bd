"""The plant: simulated X-ray hardware (generator, interlocks, phantom,
line-scan detector, reference dose meter) behind the firmware's sim HAL, and
the ground truth the firmware is judged against.

May import link (pixel formats and the stream encoder); never sim or above.
"""

from .detector import DetectorMaps, DetectorSpec, FrameTruth
from .plant import InputState, Plant, PlantConfig, PulseTruth, ReferenceMeter
from .timeline import EVENT_NAMES, Event, Timeline

__all__ = [
    "EVENT_NAMES",
    "DetectorMaps",
    "DetectorSpec",
    "Event",
    "FrameTruth",
    "InputState",
    "Plant",
    "PlantConfig",
    "PulseTruth",
    "ReferenceMeter",
    "Timeline",
]
