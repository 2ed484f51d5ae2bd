"""pulseline: host tools for the pulsed fluoroscopy controller dev kit."""

__version__ = "0.1.0"
